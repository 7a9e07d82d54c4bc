"""Tests for dynlp.data.batching: coverage, seeding, bucketing and token budgets."""

import numpy as np
import pytest

from dynlp.data.batching import batches

EXAMPLES = [list(range(length)) for length in np.random.default_rng(7).integers(1, 40, 500)]


def flatten_ids(batch_list):
    return sorted(id(example) for batch in batch_list for example in batch)


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("by_tokens", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_once(bucket, by_tokens, shuffle):
    size = 100 if by_tokens else 16
    result = list(batches(EXAMPLES, size, shuffle=shuffle, bucket=bucket, by_tokens=by_tokens))
    assert flatten_ids(result) == sorted(id(example) for example in EXAMPLES)
    assert all(result)


def test_seed_and_epoch_control_order():
    def order(**options):
        return [[id(example) for example in batch] for batch in batches(EXAMPLES, 8, **options)]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert order(seed=1, epoch=0) != order(seed=2, epoch=0)
    assert order(seed=1, epoch=2, bucket=True) == order(seed=1, epoch=2, bucket=True)
    assert order(seed=1, epoch=2, bucket=True) != order(seed=1, epoch=3, bucket=True)


def test_no_shuffle_keeps_order_and_last_partial_batch():
    result = list(batches(range(10), 4, shuffle=False))
    assert result == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bucketing_groups_equal_lengths():
    plain = list(batches(EXAMPLES, 10, seed=3))
    bucketed = list(batches(EXAMPLES, 10, seed=3, bucket=True))

    def spread(batch_list):
        return np.mean([max(map(len, batch)) - min(map(len, batch)) for batch in batch_list])

    assert spread(bucketed) < 1 < spread(plain)
    sorted_batches = list(batches(EXAMPLES, 10, shuffle=False, bucket=True))
    lengths = [len(example) for batch in sorted_batches for example in batch]
    assert lengths == sorted(lengths)


def test_bucketed_batches_are_shuffled():
    lengths = [max(map(len, batch)) for batch in batches(EXAMPLES, 10, seed=0, bucket=True)]
    assert lengths != sorted(lengths)


def test_token_budget():
    result = list(batches(EXAMPLES, 60, seed=5, by_tokens=True))
    for batch in result:
        total = sum(map(len, batch))
        assert total <= 60 or len(batch) == 1
    examples = ["aaaaaaaaaa", "b", "cc", "dddddddddddddddddddd", "e"]
    result = list(batches(examples, 5, shuffle=False, by_tokens=True))
    assert result == [["aaaaaaaaaa"], ["b", "cc"], ["dddddddddddddddddddd"], ["e"]]


def test_custom_length_and_iterables():
    pairs = [("x" * n, n) for n in range(1, 9)]
    result = list(batches(iter(pairs), 9, shuffle=False, by_tokens=True, length=lambda p: p[1]))
    assert [[n for _, n in batch] for batch in result] == [[1, 2, 3], [4, 5], [6], [7], [8]]
    assert list(batches([], 4)) == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        batches(EXAMPLES, 0)
    with pytest.raises(ValueError):
        batches(EXAMPLES, 4, seed=-1)
