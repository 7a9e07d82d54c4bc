"""Adversarial checks of elementwise fusion while building (`Pointwise`): random expression
DAGs with reuse (a Pointwise read once, twice, three times, by elementwise and other consumers,
in any order), values read in the middle of building, deep chains, broadcasting, constants on
either side, Affine sums, losses, dropout, several graphs, float32 and the DyNet layer, each
against the same code with `fuse=False` (float64, every strategy): values, gradients of leaves,
parameters and intermediates, JVPs and the node counts of `stats()`."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import MAX_POINTWISE_TOKENS

from test_autobatch import MODES

D, N = 3, 2
SHAPES = [(D,), (D, N), (), (D, 1)]


def _safe_unary(rng, x):
    """An elementwise function of x whose domain is everything (log and sqrt of a positive)."""
    k = rng.integers(13)
    if k == 0:
        return dn.tanh(x)
    if k == 1:
        return dn.logistic(x)
    if k == 2:
        return dn.log(dn.square(x) + 1.0)
    if k == 3:
        return dn.sqrt(dn.square(x) + 0.5)
    if k == 4:
        return dn.sin(x) * 0.5
    if k == 5:
        return dn.cos(x)
    if k == 6:
        return dn.softplus(x) - 0.5
    if k == 7:
        return dn.exp(dn.tanh(x))
    if k == 8:
        return -x
    if k == 9:
        return 1.0 - x
    if k == 10:
        return 2.0 / (dn.square(x) + 1.0)
    if k == 11:
        return dn.cube(dn.tanh(x))
    return dn.log_sigmoid(x) + dn.rectify(x) * 0.3


def _safe_binary(rng, x, y):
    k = rng.integers(5)
    if k == 0:
        return x + y
    if k == 1:
        return x - y
    if k == 2:
        return x * y
    if k == 3:
        return x / (dn.square(y) + 1.0)
    return (x * 0.5 + y) * dn.tanh(y - x)


def _random_dag(seed, fuse, autobatch, dtype=np.float64, steps=24, examples=2):
    """Per example, a random DAG over leaves and parameters of SHAPES; elementwise nodes
    mixed with products, sums, picks and concatenations; values read in the middle of
    building; a loss over some of the expressions (others never read). Returns what a user
    can read: values, gradients of every expression, leaf and parameter, and a JVP."""
    rng = np.random.default_rng(seed)
    pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
    W = pc.add_parameters((D, D), init="normal", scale=0.5)
    b = pc.add_parameters((D,), init="normal", scale=0.5)
    P = [pc.add_parameters(s, init="normal", scale=0.5) for s in SHAPES]
    with dn.Graph(dtype=dtype, autobatch=autobatch, fuse=fuse, seed=seed) as g:
        leaves, exprs, mids, losses = [], [], [], []
        for _ in range(examples):
            pool = []
            for s in SHAPES:
                x = dn.inputs(rng.normal(size=s))
                leaves.append(x)
                pool.append(x)
            pool += [dn.parameter(p) for p in P]
            for _ in range(steps):
                k = rng.integers(10)
                x = pool[rng.integers(len(pool))]
                y = pool[rng.integers(len(pool))]
                if k < 3:
                    e = _safe_unary(rng, x)
                elif k < 7:
                    if x.shape != y.shape and dn.graph._broadcast(x.shape, y.shape) is None:
                        y = pool[rng.integers(len(SHAPES))] if x.shape == () else x
                    e = _safe_binary(rng, x, y)
                elif k == 7 and x.shape == (D,):
                    e = dn.tanh(W @ x + b) * x if rng.random() < 0.5 else (W @ x + b) * x
                elif k == 8:
                    e = dn.sum_elems(x) * dn.sum_elems(y) if rng.random() < 0.5 else \
                        dn.dropout(x, 0.3)
                elif x.shape == (D,) and y.shape == (D,):
                    e = dn.concatenate([x, y])[1:D + 1] * x
                else:
                    e = dn.tanh(x)
                pool.append(e)
                exprs.append(e)
                if rng.random() < 0.15:  # read in the middle of building
                    mids.append(np.array(pool[rng.integers(len(pool))].value()))
            chosen = [e for e in pool[2 * len(SHAPES):] if rng.random() < 0.6] or pool[-1:]
            weights = [dn.inputs(rng.normal(size=e.shape)) for e in chosen]
            losses.append(dn.esum([dn.sum_elems(e * w) for e, w in zip(chosen, weights)]))
        loss = dn.esum(losses)
        loss.backward()
        values = [np.array(e.value()) for e in exprs]
        grads = [e.gradient() for e in exprs + leaves]
        pgrads = [p.grad_as_array() for p in pc.parameters()]
        directions = {x: rng.normal(size=x.shape) for x in leaves}
        tangent = dn.jvp(loss, directions)
        return (loss.scalar_value(), mids, values, grads, pgrads, tangent, g.stats(), len(g))


def _assert_same(got, want, rtol=1e-10, atol=1e-12):
    assert got[0] == pytest.approx(want[0], rel=rtol, abs=atol)
    for k in (1, 2, 3, 4):
        assert len(got[k]) == len(want[k])
        for a, b in zip(got[k], want[k]):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert got[5] == pytest.approx(want[5], rel=rtol, abs=atol)


@pytest.mark.parametrize("seed", range(12))
def test_random_dags_fused_equal_unfused(seed):
    want = _random_dag(seed, False, False)
    for autobatch in MODES:
        got = _random_dag(seed, True, autobatch)
        _assert_same(got, want)
        assert got[6]["nodes_before_fusion"] == want[7]
        assert got[7] <= want[7]


def _deep(fuse, autobatch, steps=40):
    """Each step reads the previous expression three to five times (programs that double
    past MAX_POINTWISE_TOKENS and split); gradients of every step."""
    rng = np.random.default_rng(31)
    x0 = rng.uniform(-0.8, 0.8, size=D)
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse) as g:
        x = dn.inputs(x0)
        hs = [x]
        h = x
        for k in range(steps):
            if k % 3 == 0:
                h = h * h - h / (dn.square(h) + 2.0) + x * 0.1
            elif k % 3 == 1:
                h = dn.tanh(h * 0.7) + 0.2 * (1.0 - h)
            else:
                h = (h + hs[-2]) * 0.5 - dn.logistic(-h) * 0.1
            hs.append(h)
            if k == steps // 2:
                h.value()
        loss = dn.sum_elems(h)
        loss.backward()
        return (loss.scalar_value(), [e.gradient() for e in hs], [np.array(e.value()) for e in hs],
                len(g), g.stats())


@pytest.mark.parametrize("autobatch", MODES)
def test_deep_chains_with_reuse_split_and_stay_exact(autobatch):
    v0, g0, x0, n0, _ = _deep(False, False)
    v1, g1, x1, n1, stats = _deep(True, autobatch)
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(g1 + x1, g0 + x0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert stats["nodes_before_fusion"] == n0
    assert n1 < n0


def test_no_program_grows_past_the_token_limit():
    with dn.Graph() as g:
        x = dn.inputs(np.full(2, 0.5))
        h = x
        for _ in range(30):
            h = h * h * 0.5 + h * 0.5
        h.forward()
        sizes = [len(g.ops[n].program.steps) for n in g.pointwise]
        assert sizes and max(sizes) < MAX_POINTWISE_TOKENS


def _plain(fuse, autobatch):
    rng = np.random.default_rng(5)
    x0, y0 = rng.normal(size=(2, D))
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse):
        x, y = dn.inputs(x0), dn.inputs(y0)
        a = x * y + 1.0
        b = dn.tanh(a)           # takes a's program
        ap = a.plain()           # a's node, kept
        c = a * 3.0              # a's node
        loss = dn.sum_elems(b) + dn.sum_elems(ap * 2.0) + dn.sum_elems(c * y)
        loss.backward()
        return [ap.gradient(), a.gradient(), b.gradient(), x.gradient(), y.gradient()]


@pytest.mark.parametrize("autobatch", MODES)
def test_plain_of_an_expression_taken_into_a_program_keeps_its_whole_gradient(autobatch):
    """`a.plain()` after `tanh(a)` took a's program in: the plain expression's gradient is
    a's (what flowed through tanh(a)'s fused node included), as without fusion."""
    want = _plain(False, False)
    for a, b in zip(_plain(True, autobatch), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
