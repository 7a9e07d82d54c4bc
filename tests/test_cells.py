"""The fused cell ops against plain numpy references written gate by gate (the gradients of the
ops are checked by tests/test_ops.py); also through a graph, unbatched and batched."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import apply
from dynlp.gradcheck import run_forward
from dynlp.ops import TABLE

X, H = 3, 4


def fwd(name, *xs):
    """An op's forward output (without the residual some ops keep)."""
    return run_forward(TABLE[name], list(xs), {})[0]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def lstm_reference(W, b, x, c, h):
    Wx, Wh = W[:, :X], W[:, X:]
    i = sigmoid(Wx[0:H] @ x + Wh[0:H] @ h + b[0:H])
    f = sigmoid(Wx[H:2 * H] @ x + Wh[H:2 * H] @ h + b[H:2 * H])
    o = sigmoid(Wx[2 * H:3 * H] @ x + Wh[2 * H:3 * H] @ h + b[2 * H:3 * H])
    g = np.tanh(Wx[3 * H:] @ x + Wh[3 * H:] @ h + b[3 * H:])
    c_new = f * c + i * g
    return c_new, o * np.tanh(c_new)


def test_lstm_step_matches_reference(rng):
    W, b = rng.normal(size=(4 * H, X + H)), rng.normal(size=4 * H)
    x, c, h = rng.normal(size=X), rng.normal(size=H), rng.normal(size=H)
    out = fwd("lstm_step", W, b, x[None], np.concatenate([c, h])[None])[0]
    c_new, h_new = lstm_reference(W, b, x, c, h)
    np.testing.assert_allclose(out[:H], c_new, rtol=1e-12)
    np.testing.assert_allclose(out[H:], h_new, rtol=1e-12)


def test_lstm_sequence_through_graph_batched_and_not(rng):
    W, b = rng.normal(size=(4 * H, X + H)), rng.normal(size=4 * H)
    seqs = [rng.normal(size=(n, X)) for n in (2, 4, 3)]
    want = []
    for seq in seqs:
        c, h = np.zeros(H), np.zeros(H)
        for x in seq:
            c, h = lstm_reference(W, b, x, c, h)
        want.append(h)
    for autobatch in (False, True):
        with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
            We, be = dn.inputs(W), dn.inputs(b)
            finals = []
            for seq in seqs:
                s = dn.zeros(2 * H)
                for x in seq:
                    s = apply("lstm_step", We, be, dn.inputs(x), s)
                finals.append(s)
            g.forward(finals)
            for s, h in zip(finals, want):
                np.testing.assert_allclose(s.npvalue()[H:], h, rtol=1e-12)


def test_binary_treelstm_node_matches_reference(rng):
    W, b = rng.normal(size=(5 * H, X + 2 * H)), rng.normal(size=5 * H)
    x = rng.normal(size=X)
    cl, hl, cr, hr = (rng.normal(size=H) for _ in range(4))

    def gate(k, z):
        rows = slice(k * H, (k + 1) * H)
        return z(W[rows, :X] @ x + W[rows, X:X + H] @ hl + W[rows, X + H:] @ hr + b[rows])

    i, f_left, f_right, o = (gate(k, sigmoid) for k in range(4))
    u = gate(4, np.tanh)
    c = i * u + f_left * cl + f_right * cr
    h = o * np.tanh(c)
    args = (x[None], np.concatenate([cl, hl])[None], np.concatenate([cr, hr])[None])
    out = fwd("treelstm_binary", W, b, *args)[0]
    np.testing.assert_allclose(out, np.concatenate([c, h]), rtol=1e-12)
    # without a word: the same node with x = 0
    nox = fwd("treelstm_binary_nox", W, b, *args[1:])[0]
    with_zero = fwd("treelstm_binary", W, b, np.zeros((1, X)), *args[1:])[0]
    np.testing.assert_allclose(nox, with_zero, rtol=1e-12)
    assert not np.allclose(nox, out)


def _binary_weights(rng):
    return rng.normal(size=(5 * H, X + 2 * H)), rng.normal(size=5 * H)


def test_binary_treelstm_leaf_equals_node_over_zero_children(rng):
    W, b = _binary_weights(rng)
    x = rng.normal(size=(3, X))
    zero = np.zeros((3, 2 * H))
    leaf, leaf_attrs = run_forward(TABLE["treelstm_binary_leaf"], [W, b, x], {})
    node, node_attrs = run_forward(TABLE["treelstm_binary"], [W, b, x, zero, zero], {})
    np.testing.assert_allclose(leaf, node, rtol=1e-13, atol=1e-15)
    g = rng.normal(size=leaf.shape)
    leaf_cts = TABLE["treelstm_binary_leaf"].vjp(g, leaf, W, b, x, **leaf_attrs)
    node_cts = TABLE["treelstm_binary"].vjp(g, node, W, b, x, zero, zero, **node_attrs)
    # two deferred blocks over the x columns: rows i, and rows [o; u] (the f rows are zero)
    blocks = [(p.row, p.start, p.left.shape[1], p.right.shape[1]) for p in leaf_cts[0].parts]
    assert blocks == [(0, 0, H, X), (3 * H, 0, 2 * H, X)]
    gW = leaf_cts[0].dense(W.shape)
    assert not gW[H:3 * H].any() and not gW[:, X:].any()
    np.testing.assert_allclose(gW, node_cts[0].dense(W.shape), rtol=1e-12, atol=1e-14)
    for got, want in zip(leaf_cts[1:], node_cts[1:3]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    ts = [rng.normal(size=W.shape), rng.normal(size=b.shape), rng.normal(size=x.shape)]
    np.testing.assert_allclose(
        TABLE["treelstm_binary_leaf"].jvp(ts, leaf, W, b, x, **leaf_attrs),
        TABLE["treelstm_binary"].jvp(ts + [None, None], node, W, b, x, zero, zero,
                                     **node_attrs), rtol=1e-12, atol=1e-14)


def test_binary_treelstm_nox_defers_its_weight_gradient(rng):
    W, b = _binary_weights(rng)
    states = [rng.normal(size=(2, 2 * H)) for _ in range(2)]
    out, attrs = run_forward(TABLE["treelstm_binary_nox"], [W, b, *states], {})
    gW = TABLE["treelstm_binary_nox"].vjp(np.ones_like(out), out, W, b, *states, **attrs)[0]
    assert gW.start == X and gW.right.shape[1] == 2 * H
    assert not gW.dense(W.shape)[:, :X].any() and gW.dense(W.shape)[:, X:].any()


@pytest.mark.parametrize("autobatch", [False, True])
def test_binary_treelstm_leaf_through_graph(rng, autobatch):
    W, b = _binary_weights(rng)
    words = rng.normal(size=(4, X))
    weights = rng.normal(size=(4, 2 * H))

    def run(leaf):
        with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
            We, be = g.leaf(W), g.leaf(b)
            xs = [g.leaf(w) for w in words]
            zero = dn.zeros(2 * H)
            outs = [apply("treelstm_binary_leaf", We, be, x) if leaf
                    else apply("treelstm_binary", We, be, x, zero, zero) for x in xs]
            # the leaves feed one internal node, so gradients also flow through the leaf outputs
            top = apply("treelstm_binary_nox", We, be, outs[0], outs[1])
            loss = dn.esum([dn.dot_product(o, dn.inputs(w))
                            for o, w in zip(outs[2:] + [top], weights)])
            loss.backward()
            names = {op.name for op in g.ops}
            return (loss.scalar_value(), [e.gradient() for e in [We, be] + xs], names)

    loss_leaf, grads_leaf, names = run(leaf=True)
    loss_node, grads_node, _ = run(leaf=False)
    assert "treelstm_binary" not in names
    np.testing.assert_allclose(loss_leaf, loss_node, rtol=1e-12)
    for got, want in zip(grads_leaf, grads_node):
        assert np.any(want != 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


def test_childsum_treelstm_node_matches_reference(rng):
    W, b = rng.normal(size=(4 * H, X + H)), rng.normal(size=4 * H)
    x = rng.normal(size=X)
    children = [(rng.normal(size=H), rng.normal(size=H)) for _ in range(3)]
    h_sum = sum(h for _, h in children)
    Wx, U = W[:, :X], W[:, X:]

    def rows(k):
        return slice(k * H, (k + 1) * H)

    i = sigmoid(Wx[rows(0)] @ x + U[rows(0)] @ h_sum + b[rows(0)])
    o = sigmoid(Wx[rows(1)] @ x + U[rows(1)] @ h_sum + b[rows(1)])
    u = np.tanh(Wx[rows(2)] @ x + U[rows(2)] @ h_sum + b[rows(2)])
    c = i * u
    for c_k, h_k in children:
        c = c + sigmoid(Wx[rows(3)] @ x + U[rows(3)] @ h_k + b[rows(3)]) * c_k
    h = o * np.tanh(c)
    states = [np.concatenate(pair)[None] for pair in children]
    out = fwd("treelstm_childsum", W, b, x[None], *states)[0]
    np.testing.assert_allclose(out, np.concatenate([c, h]), rtol=1e-12)
    leaf = fwd("treelstm_childsum", W, b, x[None])[0]
    c_leaf = sigmoid(Wx[rows(0)] @ x + b[rows(0)]) * np.tanh(Wx[rows(2)] @ x + b[rows(2)])
    np.testing.assert_allclose(leaf[:H], c_leaf, rtol=1e-12)


def test_gru_step_matches_reference(rng):
    W, b = rng.normal(size=(3 * H, X + H)), rng.normal(size=3 * H)
    x, h = rng.normal(size=X), rng.normal(size=H)
    Wx, Wh = W[:, :X], W[:, X:]
    z = sigmoid(Wx[:H] @ x + Wh[:H] @ h + b[:H])
    r = sigmoid(Wx[H:2 * H] @ x + Wh[H:2 * H] @ h + b[H:2 * H])
    u = np.tanh(Wx[2 * H:] @ x + Wh[2 * H:] @ (r * h) + b[2 * H:])
    want = (1.0 - z) * h + z * u
    out = fwd("gru_step", W, b, x[None], h[None])[0]
    np.testing.assert_allclose(out, want, rtol=1e-12)
    # the recurrent mask acts inside the gates; the carried h stays unmasked
    mask = np.array([2.0, 0.0, 2.0, 0.0])
    hm = h * mask
    z = sigmoid(Wx[:H] @ x + Wh[:H] @ hm + b[:H])
    r = sigmoid(Wx[H:2 * H] @ x + Wh[H:2 * H] @ hm + b[H:2 * H])
    u = np.tanh(Wx[2 * H:] @ x + Wh[2 * H:] @ (r * hm) + b[2 * H:])
    out = fwd("gru_step", W, b, x[None], h[None], mask[None])[0]
    np.testing.assert_allclose(out, (1.0 - z) * h + z * u, rtol=1e-12)


def test_rnn_step_matches_reference(rng):
    W, b = rng.normal(size=(H, X + H)), rng.normal(size=H)
    x, h = rng.normal(size=X), rng.normal(size=H)
    out = fwd("rnn_step", W, b, x[None], h[None])[0]
    np.testing.assert_allclose(out, np.tanh(W[:, :X] @ x + W[:, X:] @ h + b), rtol=1e-12)


def test_float32_stays_float32(rng):
    W = rng.normal(size=(4 * H, X + H)).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    out = fwd("lstm_step", W, b, np.ones((2, X), np.float32),
                                     np.ones((2, 2 * H), np.float32))
    assert out.dtype == np.float32


def test_shape_errors_name_the_cell():
    with dn.Graph():
        W, b = dn.zeros((4 * H, X + H)), dn.zeros(4 * H)
        with pytest.raises(dn.ShapeError, match="lstm_step"):
            apply("lstm_step", W, b, dn.zeros(X + 1), dn.zeros(2 * H))
        with pytest.raises(dn.ShapeError, match="even"):
            apply("lstm_step", W, b, dn.zeros(X), dn.zeros(2 * H + 1))
        with pytest.raises(dn.ShapeError, match="treelstm_childsum"):
            apply("treelstm_childsum", W, b, dn.zeros(X), dn.zeros(2 * H), dn.zeros(2 * H + 2))
        W5, b5 = dn.zeros((5 * H, X + 2 * H)), dn.zeros(5 * H)
        with pytest.raises(dn.ShapeError, match=r"treelstm_binary_leaf.*W must be \(20, 12\)"):
            apply("treelstm_binary_leaf", W5, b5, dn.zeros(X + 1))
        with pytest.raises(dn.ShapeError, match="5H"):
            apply("treelstm_binary_leaf", W, b, dn.zeros(X))
