"""dn.seed: generators without a seed of their own draw the same numbers in every run."""

import numpy as np
import pytest

import dynlp as dn


@pytest.fixture(autouse=True)
def _no_global_seed():
    yield
    dn.seed(None)


def _draws() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pc = dn.ParameterCollection()
    W = pc.add_parameters((4, 3))
    with dn.Graph():
        x = dn.inputs(np.ones(3))
        h = dn.dropout(W @ x, 0.5)
        n = dn.noise(x, 1.0)
        return W.value.copy(), h.npvalue(), n.npvalue()


def test_global_seed_makes_unseeded_generators_deterministic():
    dn.seed(7)
    first = _draws()
    dn.seed(7)
    second = _draws()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert dn.get_seed() == 7
    dn.seed(8)
    assert not np.array_equal(_draws()[0], first[0])


def test_explicit_seed_wins_and_none_means_fresh_entropy():
    dn.seed(1)
    a = dn.ParameterCollection(seed=5).add_parameters(6).value
    dn.seed(2)
    b = dn.ParameterCollection(seed=5).add_parameters(6).value
    np.testing.assert_array_equal(a, b)
    dn.seed(None)
    assert dn.get_seed() is None
    c = dn.ParameterCollection().add_parameters(50).value
    d = dn.ParameterCollection().add_parameters(50).value
    assert not np.array_equal(c, d)


def test_bad_seed():
    with pytest.raises(ValueError):
        dn.seed(-1)
    with pytest.raises(ValueError):
        dn.seed(1.5)
