"""Seeded minibatching: shuffling, length bucketing and token-budget batches.

Owns ``batches``. Imports numpy and the standard library only; it must not import
anything from dynlp outside dynlp.data.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

Example = TypeVar("Example")

BUCKET_CHUNK_BATCHES = 100


def batches(
    examples: Iterable[Example],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    bucket: bool = False,
    length: Callable[[Example], int] = len,
    by_tokens: bool = False,
) -> Iterator[list[Example]]:
    """Yield minibatches (lists of examples); every example appears exactly once.

    - ``shuffle``: the order is drawn from ``numpy.random.default_rng((seed, epoch))``, so the
      same seed and epoch give the same batches and another epoch gives another order.
    - ``bucket``: the (shuffled) examples are cut into chunks of about
      ``BUCKET_CHUNK_BATCHES`` batches, each chunk is sorted by ``length`` (stable, so ties
      stay shuffled) and cut into batches, and then the batches are shuffled. Without
      ``shuffle`` the whole data set is sorted by length and batches keep that order.
    - ``by_tokens``: ``batch_size`` is a budget on the sum of ``length(example)`` in a batch;
      batches are filled greedily, never empty, and an example longer than the budget
      gets a batch of its own. Otherwise ``batch_size`` counts examples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed} and {epoch}")
    items: Sequence[Example] = examples if isinstance(examples, Sequence) else list(examples)
    count = len(items)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(count) if shuffle else np.arange(count)
    lengths = None
    if bucket or by_tokens:
        lengths = np.fromiter((length(item) for item in items), dtype=np.int64, count=count)
        if count and lengths.min() < 0:
            raise ValueError("length() returned a negative value")
    if bucket:
        groups = [order]
        if shuffle:
            chunk = BUCKET_CHUNK_BATCHES * _examples_per_batch(batch_size, by_tokens, lengths)
            groups = [order[start:start + chunk] for start in range(0, count, chunk)]
        index_batches = []
        for group in groups:
            group = group[np.argsort(lengths[group], kind="stable")]
            index_batches.extend(_split(group, batch_size, by_tokens, lengths))
        if shuffle:
            index_batches = [index_batches[i] for i in rng.permutation(len(index_batches))]
    else:
        index_batches = _split(order, batch_size, by_tokens, lengths)
    return ([items[index] for index in batch] for batch in index_batches)


def _examples_per_batch(batch_size: int, by_tokens: bool, lengths: np.ndarray | None) -> int:
    if not by_tokens or lengths is None or len(lengths) == 0:
        return batch_size
    mean = max(float(lengths.mean()), 1.0)
    return max(1, int(batch_size / mean))


def _split(
    order: np.ndarray, batch_size: int, by_tokens: bool, lengths: np.ndarray | None
) -> list[list[int]]:
    indices = order.tolist()
    if not by_tokens:
        return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    assert lengths is not None
    result = []
    current: list[int] = []
    total = 0
    for index in indices:
        size = int(lengths[index])
        if current and total + size > batch_size:
            result.append(current)
            current = []
            total = 0
        current.append(index)
        total += size
    if current:
        result.append(current)
    return result
