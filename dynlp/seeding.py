"""The global seed: `dn.seed(n)` makes every generator that is created without a seed of its own
(a `Graph`'s, a `ParameterCollection`'s) deterministic. The one piece of module state besides the
current graph. Must not import anything of dynlp.
"""

from __future__ import annotations

import numpy as np

_source: np.random.SeedSequence | None = None
_seed: int | None = None


def seed(n: int | None) -> None:
    """Seed every random draw that has no seed of its own: after `dn.seed(n)`, the k-th graph or
    parameter collection created without `seed=` draws the same numbers in every run of the same
    program. `dn.seed(None)` returns to fresh entropy. An explicit `seed=` always wins."""
    global _source, _seed
    if n is not None and (int(n) != n or n < 0):
        raise ValueError(f"a seed is a non-negative integer, got {n!r}")
    _seed = None if n is None else int(n)
    _source = None if n is None else np.random.SeedSequence(_seed)


def get_seed() -> int | None:
    """The global seed last given to `dn.seed`, or None."""
    return _seed


def generator(seed: int | None = None) -> np.random.Generator:
    """A generator for `seed`; without one, the next child of the global seed (`dn.seed`), or
    fresh entropy when no global seed is set."""
    if seed is not None:
        return np.random.default_rng(seed)
    if _source is None:
        return np.random.default_rng()
    return np.random.default_rng(_source.spawn(1)[0])
