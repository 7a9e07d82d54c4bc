"""Elementwise fusion while building (`Pointwise`, on by default): an expression written from
`+`, `-`, `*`, `/`, elementwise functions and constants is one node when read, with the values,
gradients and JVPs of the unfused graph (float64, every strategy); what a user reads of an
intermediate expression keeps its value and gradient; cells written op by op batch across
examples; long expressions are split."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import _ARITY, MAX_POINTWISE_TOKENS, Pointwise

from test_autobatch import MODES

UNARY = sorted(op.name for op, n in _ARITY.items()
               if n == 1 and not op.name.endswith("_const") and op.name != "reshape")
POSITIVE = {"log", "sqrt"}


def _unary_chain(name, autobatch, fuse):
    """Per example: name(x * 0.5 + 1.5) * y - x / y, summed: every op of the chain fusible."""
    rng = np.random.default_rng(4)
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse) as g:
        xs, terms = [], []
        for _ in range(3):
            x = dn.inputs(rng.uniform(0.2, 0.9, size=4))
            y = dn.inputs(rng.uniform(0.5, 1.5, size=4))
            xs += [x, y]
            inner = x * 0.5 + 1.5 if name in POSITIVE else x * 0.5 - 0.25
            z = getattr(dn, {"abs": "absolute"}.get(name, name))(inner) * y - x / y
            terms.append(dn.sum_elems(dn.square(z) + (z ** 2.0) * 0.1))
        loss = dn.esum(terms)
        loss.backward()
        grads = [x.gradient() for x in xs]
        directions = {x: rng.normal(size=x.shape) for x in xs}
        return loss.scalar_value(), grads, dn.jvp(loss, directions), g.stats()


def _fewer_nodes_same_numbers(run):
    """run(fuse) -> (loss, arrays, node count): fused, the loss and arrays of the unfused graph
    in fewer nodes."""
    (v0, g0, n0), (v1, g1, n1) = run(False), run(True)
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert n1 < n0


@pytest.mark.parametrize("name", UNARY)
def test_fused_elementwise_chains_equal_unfused(name):
    want = _unary_chain(name, False, False)
    for autobatch in MODES:
        got = _unary_chain(name, autobatch, True)
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        assert got[2] == pytest.approx(want[2], rel=1e-10)
        stats = got[3]
        assert stats["nodes_before_fusion"] == want[3]["nodes"]
        assert stats["nodes_after_fusion"] < stats["nodes_before_fusion"]


def _tree_cell(P, left, right):
    """The DyNet benchmark's binary Tree-LSTM cell, written op by op."""
    Ui, Uo, Uu, Uf1, Uf2, bi, bo, bu, bf = P
    (h1, c1), (h2, c2) = left, right
    e = dn.concatenate([h1, h2])
    i = dn.logistic(Ui @ e + bi)
    o = dn.logistic(Uo @ e + bo)
    f1 = dn.logistic(Uf1 @ h1 + bf)
    f2 = dn.logistic(Uf2 @ h2 + bf)
    u = dn.tanh(Uu @ e + bu)
    c = i * u + f1 * c1 + f2 * c2
    return o * dn.tanh(c), c


def _leaf_cell(P, W, x):
    Wi, Wo, Wu = W
    bi, bo, bu = P[5:8]
    i = dn.logistic(Wi @ x + bi)
    o = dn.logistic(Wo @ x + bo)
    u = dn.tanh(Wu @ x + bu)
    c = i * u
    return o * dn.tanh(c), c


def _tree_params(dim):
    """The cells' parameters (P for `_tree_cell`, W for `_leaf_cell`) and a (2, dim) output
    layer, in a float64 collection."""
    pc = dn.ParameterCollection(seed=2, dtype=np.float64)
    P = [pc.add_parameters(s, init="normal", scale=0.5) for s in
         [(dim, 2 * dim)] * 3 + [(dim, dim)] * 2 + [(dim,)] * 4]
    W = [pc.add_parameters((dim, dim), init="normal", scale=0.5) for _ in range(3)]
    return pc, P, W, pc.add_parameters((2, dim))


def _trees(fuse, autobatch="late"):
    dim = 3
    pc, P, W, O = _tree_params(dim)  # noqa: E741
    rng = np.random.default_rng(6)

    def tree(depth):  # random binary trees of up to `depth` levels
        if depth == 0 or rng.random() < 0.3:
            return _leaf_cell(P, W, dn.inputs(rng.normal(size=dim)))
        return _tree_cell(P, tree(depth - 1), tree(depth - 1))

    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
        roots = [tree(4) for _ in range(6)]
        loss = dn.esum([dn.pick_neg_log_softmax(O @ h, k % 2) for k, (h, _) in
                        enumerate(roots)])
        loss.backward()
        return (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()], g.stats(),
                {g.ops[n].name for n in range(len(g))})


@pytest.mark.parametrize("autobatch", MODES)
def test_a_tree_lstm_written_op_by_op_equals_unfused(autobatch):
    v0, g0, s0, _ = _trees(False, autobatch)
    v1, g1, s1, names = _trees(True, autobatch)
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert s1["nodes_before_fusion"] == s0["nodes"] + 1  # (+ the fused loss's zero bias)
    assert s1["nodes_after_fusion"] < 0.7 * s0["nodes"]
    if autobatch:
        assert s1["forward_batches"] < s0["forward_batches"]


def test_cells_are_two_fused_nodes_whatever_the_tree_below():
    """c = i * u + f1 * c1 + f2 * c2 and h = o * tanh(c): one node each; the parent's cell reads
    its children's c as nodes (not their programs), so every internal cell has the same two
    fused ops, which batch across trees."""
    _, _, _, names = _trees(True)
    fused = {n for n in names if n.startswith("fused(")}
    assert fused == {"fused(mul,mul,add,mul,add)", "fused(mul,mul,add,mul,add,tanh,mul)",
                          "fused(mul,tanh,mul)"}


def test_intermediate_expressions_keep_their_values_and_gradients():
    """An expression taken into a fused node, then read again (its own node), or never read
    itself: value() and gradient() answer as without fusion."""
    rng = np.random.default_rng(8)
    a0, b0, c0 = rng.normal(size=(3, 4))

    def run(fuse):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            a, b, c = dn.inputs(a0), dn.inputs(b0), dn.inputs(c0)
            ab = a * b                   # taken into t below, and read again by `late`
            t = dn.tanh(ab + c)          # taken into y
            y = dn.logistic(t) * t       # t read twice inside one program
            late = ab * 3.0
            loss = dn.sum_elems(y) + dn.sum_elems(late * c)
            loss.backward()
            return ([e.value() for e in (ab, t, y, late)],
                    [e.gradient() for e in (a, b, c, ab, t, y, late)])

    (v0, g0), (v1, g1) = run(False), run(True)
    for x, y in zip(v1 + g1, v0 + g0):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_gradient_of_an_expression_fused_into_several_nodes():
    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([0.3, -0.2]))
        u = dn.exp(x) * 2.0
        v = dn.tanh(u)          # takes u's program
        w = u * u               # reads u's node
        loss = dn.sum_elems(v) + dn.sum_elems(w)
        loss.backward()
        assert type(u) is Pointwise
        e = 2 * np.exp([0.3, -0.2])
        np.testing.assert_allclose(u.gradient(), (1 - np.tanh(e) ** 2) + 2 * e, rtol=1e-12)
        np.testing.assert_allclose(x.gradient(), ((1 - np.tanh(e) ** 2) + 2 * e) * e,
                                   rtol=1e-12)


def test_long_expressions_are_split_and_stay_exact():
    rng = np.random.default_rng(9)
    x0 = rng.uniform(-1, 1, size=5)

    def run(fuse):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x = dn.inputs(x0)
            h = x
            for _ in range(100):
                h = dn.tanh(h) * 0.9 + x
            loss = dn.sum_elems(h)
            loss.backward()
            return loss.scalar_value(), x.gradient(), len(g)

    (v0, g0, n0), (v1, g1, n1) = run(False), run(True)
    assert v1 == pytest.approx(v0, rel=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-10)
    assert n1 < n0 // 10
    assert n1 >= 300 // MAX_POINTWISE_TOKENS


@pytest.mark.parametrize("autobatch", MODES)
def test_broadcasting_operands_fuse_and_equal_unfused(autobatch):
    """DyNet-style broadcasting ((d,) against (d, n), a scalar against anything) inside a fused
    expression: values and gradients as unfused; operands that do not broadcast raise the
    unfused op's ShapeError."""
    rng = np.random.default_rng(12)
    values = [rng.normal(size=s) for s in [(3,), (3, 2), (), (3, 1)]] * 2

    def run(fuse):
        with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse) as g:
            leaves = [dn.inputs(v) for v in values]
            terms = []
            for k in (0, 4):
                v, m, c, col = leaves[k:k + 4]
                s = dn.tanh(v * m + col) - c * m / (m * m + 1.0)
                terms.append(dn.sum_elems(s * s))
            loss = dn.esum(terms)
            loss.backward()
            return loss.scalar_value(), [x.gradient() for x in leaves], len(g)

    _fewer_nodes_same_numbers(run)
    with dn.Graph():
        with pytest.raises(dn.ShapeError, match=r"mul\(\(4,\), \(3,\)\)"):
            dn.inputs(np.ones(4)) * dn.inputs(np.ones(3))


def test_fusion_off_builds_every_op_as_its_node():
    with dn.Graph(fuse=False) as g:
        x = dn.inputs(np.ones(3))
        y = dn.tanh(x * x + x)
        assert type(y) is dn.Expression and len(g) == 4


def test_a_lone_op_is_its_primitive_node():
    with dn.Graph() as g:
        x, y = dn.inputs(np.ones(2)), dn.inputs(np.ones(2))
        z = x * y
        z.forward()
        assert g.ops[z.i].name == "mul"
        assert g.stats()["nodes_before_fusion"] == g.stats()["nodes_after_fusion"] == 3


def test_an_ended_graph_refuses_elementwise_expressions():
    with dn.Graph():
        x = dn.inputs(np.ones(2))
        y = x * x
    with pytest.raises(dn.GraphError):
        x * x
    with pytest.raises(dn.GraphError):
        dn.tanh(y)


def test_gradcheck_through_fused_elementwise_nodes():
    def f(a, b):
        c = a * b + dn.logistic(a) * 0.5
        return dn.sum_elems(b * dn.tanh(c) - c / (b * b + 1.0))
    dn.gradcheck(f, np.array([0.2, -0.4, 0.9]), np.array([1.1, 0.3, -0.7]))


def _bilstm(fuse, extra_read):
    """Two LSTMBuilders' outputs concatenated per word, as DyNet's bilstm-tagger.py writes it."""
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    fwd, bwd = dn.LSTMBuilder(1, 4, 3, pc), dn.LSTMBuilder(1, 4, 3, pc)
    H, O = pc.add_parameters((5, 6)), pc.add_parameters((2, 5))  # noqa: E741
    rng = np.random.default_rng(1)
    with dn.Graph(dtype=np.float64, fuse=fuse) as g:
        losses, outputs = [], []
        for length in (3, 5):
            xs = [dn.inputs(rng.normal(size=4)) for _ in range(length)]
            fs = fwd.initial_state().transduce(xs)
            bs = bwd.initial_state().transduce(xs[::-1])[::-1]
            for f, b in zip(fs, bs):
                x = dn.concatenate([f, b])
                losses.append(dn.pick_neg_log_softmax(O @ dn.tanh(H @ x), length % 2))
                if extra_read:
                    losses.append(dn.sum_elems(f * f))  # f read as a node of its own too
                outputs.append(f)
        loss = dn.esum(losses)
        loss.backward()
        return (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                [f.gradient() for f in outputs], len(g), g.stats())


@pytest.mark.parametrize("extra_read", [False, True])
def test_concatenated_lstm_outputs_are_one_node_and_keep_their_gradients(extra_read):
    v0, p0, f0, n0, _ = _bilstm(False, extra_read)
    v1, p1, f1, n1, stats = _bilstm(True, extra_read)
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(p1 + f1, p0 + f0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert n1 < n0
    # (+ the zero biases of the two bias-less layers that fusion made affine nodes)
    assert stats["nodes_before_fusion"] == n0 + 2


def test_fused_expressions_leave_no_reference_cycle():
    """A graph's fused expressions (elementwise programs, concatenated slices, pending sums)
    go with their last reference: the cyclic collector finds nothing to free afterwards."""
    import gc
    pc = dn.ParameterCollection(seed=1)
    fwd, bwd = dn.LSTMBuilder(1, 2, 3, pc), dn.LSTMBuilder(1, 2, 3, pc)
    W = pc.add_parameters((3, 6))
    gc.collect()
    gc.disable()
    try:
        with dn.Graph() as g:
            xs = [dn.inputs(np.ones(2)), dn.inputs(np.zeros(2))]
            pairs = list(zip(fwd.initial_state().transduce(xs),
                             bwd.initial_state().transduce(xs)))
            terms = []
            for f, b in pairs:
                h = dn.tanh(W @ dn.concatenate([f, b]) + 1.0)
                c = h * h + h
                terms.append(dn.sum_elems(dn.logistic(c) * c))
            loss = dn.esum(terms)
            loss.backward()
            f.gradient(), c.gradient()
        del g, xs, pairs, terms, f, b, h, c, loss
        assert gc.collect() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize("rate", [0.0, 0.4])
def test_mlp_and_dropout_read_concatenated_lstm_outputs_in_place(rate):
    def run(fuse):
        pc = dn.ParameterCollection(seed=3, dtype=np.float64)
        fwd, bwd = dn.LSTMBuilder(1, 4, 3, pc), dn.LSTMBuilder(1, 4, 3, pc)
        mlp = dn.MLP(pc, [6, 5, 2], dropout=rate)
        rng = np.random.default_rng(1)
        with dn.Graph(dtype=np.float64, fuse=fuse, seed=7) as g:
            losses = []
            for length in (3, 5):
                xs = [dn.inputs(rng.normal(size=4)) for _ in range(length)]
                fs = fwd.initial_state().transduce(xs)
                bs = bwd.initial_state().transduce(xs[::-1])[::-1]
                for f, b in zip(fs, bs):
                    losses.append(mlp.pick_neg_log_softmax(dn.concatenate([f, b]), length % 2))
                    losses.append(dn.sum_elems(dn.dropout(dn.concatenate([f, b]), 0.3)))
            loss = dn.esum(losses)
            loss.backward()
            return loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()], len(g)

    _fewer_nodes_same_numbers(run)


@pytest.mark.parametrize("autobatch", MODES)
def test_a_reshape_inside_an_elementwise_expression(autobatch):
    """MLP attention's `tanh(W1 H + reshape(W2 s, (d, 1)))`: the reshape is a step of the
    fused program; values and gradients as unfused, and a reshape that cannot be raises."""
    rng = np.random.default_rng(5)
    values = [(rng.normal(size=(3, k)), rng.normal(size=3)) for k in (2, 4, 2)]

    def run(fuse):
        with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse) as g:
            leaves, terms = [], []
            for m, v in values:
                m, v = dn.inputs(m), dn.inputs(v)
                leaves += [m, v]
                scores = dn.tanh(m + dn.reshape(v * 2.0, (3, 1)))
                terms.append(dn.sum_elems(dn.reshape(scores, (scores.shape[0] * scores.shape[1],))))
            loss = dn.esum(terms)
            loss.backward()
            return loss.scalar_value(), [x.gradient() for x in leaves], len(g)

    _fewer_nodes_same_numbers(run)
    with dn.Graph():
        with pytest.raises(dn.ShapeError, match="reshape"):
            dn.reshape(dn.inputs(np.ones(3)), (4,))
