"""Hostile tests of the LSTM / Tree-LSTM cells' layout of 2026-12-04 (W @ a.T over a C-ordered
a.T, float32 products over batches of fewer than 16 rows in blocks of 4 rows, one tanh over all
gates, gate-major state, `_row_sum`): every batch size 1..40, float32 and float64, weights just
below and above the small-matrix threshold, inputs that are broadcasts, Fortran-ordered or
strided views, read-only cotangents; values and cotangents against a plain numpy reference,
derivatives against central differences, and the cells through the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn
from dynlp.gradcheck import check_rule
from dynlp.ops import TABLE, Case, OuterProduct, Parts
from dynlp.ops import cells

OPS = ["lstm_step", "treelstm_binary", "treelstm_binary_nox", "treelstm_binary_leaf"]
CHILDREN = {"lstm_step": 1, "treelstm_binary": 2, "treelstm_binary_nox": 2,
            "treelstm_binary_leaf": 2}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def dense(ct, shape):
    if isinstance(ct, (OuterProduct, Parts)):
        return ct.dense(shape)
    return np.asarray(ct)


def make_inputs(name, hidden, width, batch, rng, scale=0.3):
    """The op's batched arguments, in float64: (W, b, x, s...) as the op takes them."""
    n = CHILDREN[name]
    W = rng.normal(scale=scale, size=((n + 3) * hidden, width + n * hidden))
    b = rng.normal(scale=scale, size=(n + 3) * hidden)
    x = rng.normal(size=(batch, width))
    states = [rng.normal(size=(batch, 2 * hidden)) for _ in range(n)]
    if name == "treelstm_binary_nox":
        return [W, b] + states
    if name == "treelstm_binary_leaf":
        return [W, b, x]
    return [W, b, x] + states


def reference(name, args):
    """[c'; h'] and the cotangents of every argument, batch-major, one gate at a time, in
    float64, from the textbook equations."""
    args = [np.asarray(a, np.float64) for a in args]
    W, b = args[0], args[1]
    n = CHILDREN[name]
    hidden = W.shape[0] // (n + 3)
    if name == "treelstm_binary_nox":
        x, states = None, args[2:]
        Wx = W[:, W.shape[1] - 2 * hidden:]
    elif name == "treelstm_binary_leaf":
        x = args[2]
        states = [np.zeros((len(x), 2 * hidden)) for _ in range(2)]
        Wx = W
    else:
        x, states, Wx = args[2], args[3:], W
    parts = ([] if x is None else [x]) + [s[:, hidden:] for s in states]
    a = np.concatenate(parts, axis=1)
    pre = a @ Wx.T + b
    sig = sigmoid(pre[:, :(n + 2) * hidden])
    u = np.tanh(pre[:, (n + 2) * hidden:])
    i, o = sig[:, :hidden], sig[:, (n + 1) * hidden:]
    c = i * u
    for k, s in enumerate(states, 1):
        c = c + sig[:, k * hidden:(k + 1) * hidden] * s[:, :hidden]
    out = np.concatenate([c, o * np.tanh(c)], axis=1)

    def vjp(g):
        g = np.asarray(g, np.float64)
        gc_out, gh = g[:, :hidden], g[:, hidden:]
        tc = np.tanh(c)
        gc = gc_out + gh * o * (1 - tc ** 2)
        gsig = [gc * u] + [gc * s[:, :hidden] for s in states] + [gh * tc]
        gpre = np.concatenate([np.concatenate(gsig, axis=1) * sig * (1 - sig),
                               gc * i * (1 - u ** 2)], axis=1)
        ga = gpre @ Wx
        gW = gpre.T @ a
        if name == "treelstm_binary_nox":
            gW = np.concatenate([np.zeros((W.shape[0], W.shape[1] - 2 * hidden)), gW], axis=1)
        cts = [gW, gpre.sum(axis=0)]
        width = 0
        if x is not None:
            width = x.shape[1]
            cts.append(ga[:, :width])
        if name == "treelstm_binary_leaf":
            return cts
        for k, s in enumerate(states):
            f = sig[:, (k + 1) * hidden:(k + 2) * hidden]
            cts.append(np.concatenate([gc * f, ga[:, width + k * hidden:width + (k + 1) * hidden]],
                                      axis=1))
        return cts

    return out, vjp


def run(name, args, g):
    op = TABLE[name]
    out, residual = op.forward(*args)
    cts = op.vjp(g, out, *args, residual=residual)
    return out, [None if c is None else dense(c, a.shape) for c, a in zip(cts, args)], residual


# -- every batch size, float32 and float64, around the small-matrix threshold -------------------
# (hidden, input width) per op: the weight's entries are (n + 3)H x (X + nH); the blocked
# float32 product runs when entries * 4 <= _SMALL_PRODUCT < entries * batch and batch < 16
def _entries(name, hidden, width):
    n = CHILDREN[name]
    return (n + 3) * hidden * (width + n * hidden)


SHAPES = {
    "lstm_step": [(3, 2), (8, 5), (25, 1225), (25, 1226), (50, 1200), (50, 1201), (128, 128)],
    "treelstm_binary": [(3, 2), (20, 2460), (20, 2461), (40, 1170), (40, 1171), (150, 3),
                        (64, 128)],
    # (nox reads the h columns only: (5H, 2H), blocked at H = 150 from 5 rows on, not at 159)
    "treelstm_binary_nox": [(3, 2), (150, 3), (159, 3), (64, 128)],
    "treelstm_binary_leaf": [(3, 2), (20, 2460), (64, 128)],
}
CASES = [(name, h, w) for name, shapes in SHAPES.items() for h, w in shapes]


def test_the_shapes_straddle_the_threshold():
    """(so that the cases below exercise both sides of `_blocked`)"""
    small = cells._SMALL_PRODUCT
    assert _entries("lstm_step", 50, 1200) * cells._BLOCK == small
    assert _entries("lstm_step", 50, 1201) * cells._BLOCK > small
    assert _entries("lstm_step", 25, 1225) * 8 == small
    assert _entries("treelstm_binary", 20, 2460) * cells._BLOCK == small
    W = np.zeros((4 * 25, 1225 + 25), np.float32)
    assert [cells._blocked(W, b) for b in (7, 8, 9, 13, 15, 16)] == [0, 0, 8, 12, 12, 0]
    assert cells._blocked(W.astype(np.float64), 9) == 0
    nox = np.zeros((5 * 150, 3 + 300), np.float32)[:, 3:]
    assert [cells._blocked(nox, b) for b in (4, 5, 15)] == [0, 4, 12]
    assert cells._blocked(np.zeros((5 * 159, 318), np.float32), 5) == 0
    assert cells._blocked(np.zeros((512, 256), np.float32), 9) == 8  # (the engine's below)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("name,hidden,width", CASES)
def test_every_batch_size_matches_the_reference(name, hidden, width, dtype, tol):
    rng = np.random.default_rng(hidden + width)
    big = hidden * max(width, hidden) > 10_000
    batches = range(1, 41) if not big else [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17,
                                           19, 20, 33, 40]
    scale = 0.3 if not big else 0.3 / np.sqrt((width + 2 * hidden) / 8)
    for batch in batches:
        args64 = make_inputs(name, hidden, width, batch, rng, scale)
        args = [a.astype(dtype) for a in args64]
        g = rng.normal(size=(batch, 2 * hidden))
        want, vjp = reference(name, args)  # (the reference over the same rounded inputs)
        want_cts = vjp(g.astype(dtype))
        keep = [a.copy() for a in args]
        got, cts, _ = run(name, args, g.astype(dtype))
        for a, k in zip(args, keep):
            np.testing.assert_array_equal(a, k)  # (inputs never written)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"B={batch}")
        assert len(cts) == len(want_cts)
        for k, (ct, wct) in enumerate(zip(cts, want_cts)):
            assert ct.dtype == dtype and ct.shape == wct.shape, (batch, k)
            # (a weight's cotangent sums over the batch and the columns: its tolerance grows)
            t = tol * (10 if k == 0 and dtype == np.float32 else 1)
            np.testing.assert_allclose(ct, wct, rtol=t, atol=t,
                                       err_msg=f"{name} B={batch}, cotangent {k}")


# -- central differences (float64), small shapes, every remainder mod 4 and around 16 ----------
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17])
@pytest.mark.parametrize("name", OPS)
def test_rules_against_central_differences(name, batch):
    n = CHILDREN[name]
    hidden, width = 2, 3
    W = ((n + 3) * hidden, width + n * hidden)
    b = ((n + 3) * hidden,)
    s = (2 * hidden,)
    shapes = {"lstm_step": [W, b, (width,), s], "treelstm_binary": [W, b, (width,), s, s],
              "treelstm_binary_nox": [W, b, s, s], "treelstm_binary_leaf": [W, b, (width,)]}
    check_rule(TABLE[name], Case(shapes[name]), batch=batch, seed=batch, rtol=1e-6, atol=1e-8)


# -- layouts of the inputs: broadcasts, Fortran order, strided views, read-only cotangents ------
def _layouts(arr, rng, kind):
    if kind == "broadcast":  # (one node read by every example: the engine's "same" gather)
        return np.broadcast_to(arr[0], arr.shape)
    if kind == "fortran":
        return np.asfortranarray(arr)
    if kind == "strided":
        big = np.empty((arr.shape[0] * 2, arr.shape[1] + 3), arr.dtype)
        big[::2, 1:1 + arr.shape[1]] = arr
        return big[::2, 1:1 + arr.shape[1]]
    return arr


@pytest.mark.parametrize("kind", ["broadcast", "fortran", "strided"])
@pytest.mark.parametrize("batch", [1, 3, 5, 9, 12, 16, 21])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("name,hidden,width", [("lstm_step", 25, 1225), ("lstm_step", 8, 5),
                                               ("treelstm_binary", 20, 2460),
                                               ("treelstm_binary_nox", 20, 2460),
                                               ("treelstm_binary_leaf", 6, 4)])
def test_inputs_and_cotangents_in_any_layout(name, hidden, width, dtype, tol, batch, kind):
    rng = np.random.default_rng(batch)
    scale = 0.3 / np.sqrt(max(1.0, width / 8))
    args = [a.astype(dtype) for a in make_inputs(name, hidden, width, batch, rng, scale)]
    laid = args[:2] + [_layouts(a, rng, kind) for a in args[2:]]
    g = _layouts(rng.normal(size=(batch, 2 * hidden)).astype(dtype), rng, kind)
    if kind == "broadcast":
        assert not g.flags.writeable  # (a read-only cotangent: no rule may write it)
    want, vjp = reference(name, [np.array(a) for a in laid])
    want_cts = vjp(np.array(g))
    got, cts, _ = run(name, laid, g)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    for k, (ct, wct) in enumerate(zip(cts, want_cts)):
        t = tol * (10 if k == 0 and dtype == np.float32 else 1)
        np.testing.assert_allclose(ct, wct, rtol=t, atol=t, err_msg=f"cotangent {k}")


@pytest.mark.parametrize("batch", [1, 2, 4, 9])
@pytest.mark.parametrize("name", OPS)
def test_jvp_against_central_differences_over_views(name, batch):
    """JVPs over a weight that is a column view (as treelstm_binary_nox reads it) and states
    that are broadcasts, in float64, against central differences of the forward."""
    rng = np.random.default_rng(7 + batch)
    op = TABLE[name]
    args = make_inputs(name, 3, 2, batch, rng)
    args = args[:2] + [_layouts(a, rng, "broadcast" if k % 2 else "fortran")
                       for k, a in enumerate(args[2:])]
    out, residual = op.forward(*args)
    ts = [rng.normal(size=np.shape(a)) for a in args]
    got = op.jvp(ts, out, *args, residual=residual)
    eps = 1e-6
    plus = op.forward(*[a + eps * t for a, t in zip(args, ts)])[0]
    minus = op.forward(*[a - eps * t for a, t in zip(args, ts)])[0]
    np.testing.assert_allclose(got, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["lstm_step", "treelstm_binary", "treelstm_binary_nox"])
@pytest.mark.parametrize("batch", [1, 2, 9])
def test_the_output_survives_a_second_forward_and_its_vjp_reads_no_stale_state(name, batch):
    """The residual keeps the gate-major state; at one row the output may be its view. A vjp
    after a second forward of other inputs must still use the first call's residual."""
    rng = np.random.default_rng(batch)
    op = TABLE[name]
    args = make_inputs(name, 4, 3, batch, rng)
    out, residual = op.forward(*args)
    kept = out.copy()
    other = make_inputs(name, 4, 3, batch, rng)
    op.forward(*other)
    g = rng.normal(size=out.shape)
    cts = op.vjp(g, out, *args, residual=residual)
    np.testing.assert_array_equal(out, kept)
    _, want_vjp = reference(name, args)
    for k, (ct, a, w) in enumerate(zip(cts, args, want_vjp(g))):
        np.testing.assert_allclose(dense(ct, a.shape), w, rtol=1e-10, atol=1e-12,
                                   err_msg=f"cotangent {k}")


# -- through the engine: batches of 1..40 sequences and trees ----------------------------------
def _lstm_run(count, dtype, autobatch, hidden=128, width=128, length=2):
    pc = dn.ParameterCollection(seed=1, dtype=dtype)
    lstm = dn.LSTMBuilder(1, width, hidden, pc)
    rng = np.random.default_rng(count)
    data = rng.normal(size=(count, length, width))
    with dn.Graph(dtype=dtype, autobatch=autobatch, fuse=False):
        outs = [lstm.initial_state().transduce([dn.inputs(v) for v in seq])[-1] for seq in data]
        loss = dn.esum([dn.sum_elems(dn.cmult(o, o)) * (k + 1.0) for k, o in enumerate(outs)])
        value = loss.scalar_value()
        loss.backward()
    return value, [p.grad_as_array() for p in pc.parameters()]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 15, 16, 17, 21, 31, 40])
def test_lstm_batches_of_every_size_match_unbatched_float64(count):
    want = _lstm_run(count, np.float64, False)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 2e-4)):
        got = _lstm_run(count, dtype, True)
        assert got[0] == pytest.approx(want[0], rel=tol)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def _tree_run(count, dtype, autobatch, hidden=16, width=12):
    pc = dn.ParameterCollection(seed=2, dtype=dtype)
    tree = dn.TreeLSTMBuilder(width, hidden, pc)
    rng = np.random.default_rng(100 + count)
    with dn.Graph(dtype=dtype, autobatch=autobatch, fuse=False):
        roots = []
        for _ in range(count):
            leaves = [tree.leaf(dn.inputs(rng.normal(size=width))) for _ in range(3)]
            inner = tree.node([leaves[0], leaves[1]], x=dn.inputs(rng.normal(size=width)))
            roots.append(tree.node([inner, leaves[2]]))  # (no word: treelstm_binary_nox)
        loss = dn.esum([dn.sum_elems(dn.cmult(r.state, r.state)) for r in roots])
        value = loss.scalar_value()
        loss.backward()
    return value, [p.grad_as_array() for p in pc.parameters()]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 9, 13, 16, 17, 33])
def test_tree_lstm_batches_of_every_size_match_unbatched_float64(count):
    want = _tree_run(count, np.float64, False)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 2e-4)):
        got = _tree_run(count, dtype, True)
        assert got[0] == pytest.approx(want[0], rel=tol)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


# -- reverse and forward mode through the engine, against central differences -----------------
@pytest.mark.parametrize("autobatch", [True, False])
@pytest.mark.parametrize("count", [1, 5, 9])
def test_lstm_and_tree_lstm_through_the_engine_by_central_differences(count, autobatch):
    pc = dn.ParameterCollection(seed=4, dtype=np.float64)
    lstm = dn.LSTMBuilder(1, 3, 2, pc)
    tree = dn.TreeLSTMBuilder(3, 2, pc)

    def f(*xs):
        outs = []
        for k, x in enumerate(xs):  # (count sequences and trees: batches of count rows)
            hs = lstm.initial_state().transduce([x, dn.tanh(x), x * 0.5])
            left, right = tree.leaf(x), tree.leaf(dn.tanh(x) * 0.3)
            inner = tree.node([left, right], x=x)
            root = tree.node([inner, left])
            twin = tree.node([right, right], x=x)  # (one node for both children)
            outs.append(dn.sum_elems(dn.cmult(hs[-1], hs[1])) * (k + 1.0)
                        + dn.sum_elems(root.state) + dn.dot_product(inner.state, root.state)
                        + dn.sum_elems(twin.state))
        return dn.esum(outs)

    rng = np.random.default_rng(count)
    dn.gradcheck(f, *[rng.normal(size=3) for _ in range(count)], autobatch=autobatch,
                 rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("count", [1, 4, 9, 13, 16])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_lstm_with_dropout_composed_steps_match_unbatched(count, dtype, tol):
    """Under dropout each step multiplies its input and state by masks in the same node (a
    composed program over lstm_step, which keeps the cell's residual): batched as unbatched.
    (Two layers of H = 128 over 128 inputs: float32 products blocked from 8 to 15 rows.)"""
    def run(autobatch, dt):
        pc = dn.ParameterCollection(seed=6, dtype=dt)
        lstm = dn.LSTMBuilder(2, 128, 128, pc)
        lstm.dropout_rate, lstm.recurrent_dropout_rate = 0.3, 0.2
        rng = np.random.default_rng(count)
        data = rng.normal(size=(count, 3, 128))
        with dn.Graph(dtype=dt, autobatch=autobatch, seed=11, fuse=False):
            outs = [lstm.initial_state().transduce([dn.inputs(v) for v in seq])[-1]
                    for seq in data]
            loss = dn.esum([dn.sum_elems(dn.cmult(o, o)) for o in outs])
            value = loss.scalar_value()
            loss.backward()
        return value, [p.grad_as_array() for p in pc.parameters()]

    want = run(False, np.float64)
    got = run(True, dtype)
    assert got[0] == pytest.approx(want[0], rel=tol)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
