"""dn.fused: a function of expressions made one node per call, equal to the same code run as
written (fuse=False) in values, gradients and JVPs under every strategy."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import traced
from dynlp.traced import Window

MODES = ["late", "depth", "agenda", False]
D = 3


def _params(seed=2):
    pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
    U = [pc.add_parameters((D, 2 * D), init="normal", scale=0.5) for _ in range(3)]
    UF = [pc.add_parameters((D, D), init="normal", scale=0.5) for _ in range(2)]
    B = [pc.add_parameters((D,), init="normal", scale=0.5) for _ in range(4)]
    W = [pc.add_parameters((D, D), init="normal", scale=0.5) for _ in range(3)]
    O = pc.add_parameters((2, D), init="normal", scale=0.5)  # noqa: E741
    return pc, U, UF, B, W, O


class TreeCells:
    """The DyNet benchmark's binary Tree-LSTM cells, written op by op, as fused functions."""

    def __init__(self, seed=2):
        self.pc, self.U, self.UF, self.B, self.W, self.O = _params(seed)

    @dn.fused
    def leaf(self, x):
        Wi, Wo, Wu = [dn.parameter(w) for w in self.W]
        bi, bo, bu, _ = [dn.parameter(b) for b in self.B]
        i = dn.logistic(Wi @ x + bi)
        o = dn.logistic(Wo @ x + bo)
        u = dn.tanh(Wu @ x + bu)
        c = i * u
        return o * dn.tanh(c), c

    @dn.fused
    def node(self, h1, c1, h2, c2):
        Ui, Uo, Uu = [dn.parameter(u) for u in self.U]
        Uf1, Uf2 = [dn.parameter(u) for u in self.UF]
        bi, bo, bu, bf = [dn.parameter(b) for b in self.B]
        e = dn.concatenate([h1, h2])
        i = dn.logistic(Ui @ e + bi)
        o = dn.logistic(Uo @ e + bo)
        f1 = dn.logistic(Uf1 @ h1 + bf)
        f2 = dn.logistic(Uf2 @ h2 + bf)
        u = dn.tanh(Uu @ e + bu)
        c = i * u + f1 * c1 + f2 * c2
        return o * dn.tanh(c), c


def _forest(cells, fuse, autobatch="late", trees=5, seed=6):
    """Random binary trees over random leaf vectors, a loss at every node; returns what a
    user could read: loss, parameter gradients, the roots' h values and gradients, stats."""
    rng = np.random.default_rng(seed)
    cells.pc.clear_grads()
    O = cells.O  # noqa: E741

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            out = cells.leaf(dn.inputs(rng.normal(size=D)))
        else:
            out = cells.node(*tree(depth - 1), *tree(depth - 1))
        losses.append(dn.pick_neg_log_softmax(dn.parameter(O) @ out[0], len(losses) % 2))
        return out

    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
        losses = []
        roots = [tree(4) for _ in range(trees)]
        loss = dn.esum(losses) + dn.sum_elems(roots[0][1])
        loss.backward()
        return {"loss": loss.scalar_value(),
                "grads": [p.grad_as_array() for p in cells.pc.parameters()],
                "h": [h.npvalue() for h, _ in roots],
                "dh": [h.gradient() for h, _ in roots],
                "dc": [c.gradient() for _, c in roots],
                "stats": g.stats(), "ops": {g.ops[n].name for n in range(len(g))}}


def _equal(a, b):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    for key in ("grads", "h", "dh", "dc"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("autobatch", MODES)
def test_fused_cells_equal_the_same_code_unfused(autobatch):
    cells = TreeCells()
    plain = _forest(cells, False, autobatch)
    fused = _forest(cells, True, autobatch)
    _equal(fused, plain)
    assert not any(op.startswith("fused:") for op in plain["ops"])
    assert {"fused:TreeCells.leaf", "fused:TreeCells.node"} <= fused["ops"]


def test_one_node_per_call_and_stats_count_the_unfused_nodes():
    cells = TreeCells()
    plain = _forest(cells, False)
    fused = _forest(cells, True)
    assert fused["stats"]["nodes_before_fusion"] == plain["stats"]["nodes"] + 1  # (+ zero bias)
    assert fused["stats"]["nodes_after_fusion"] < 0.35 * plain["stats"]["nodes"]
    assert fused["stats"]["forward_batches"] < plain["stats"]["forward_batches"]


def test_calls_of_one_kind_share_one_trace_and_batch():
    """Leaves' windows and nodes' windows are the same kind of argument, so the node cell is
    traced once whatever the tree below, and its calls at one height run as one batch."""
    cells = TreeCells()
    rng = np.random.default_rng(0)
    with dn.Graph(dtype=np.float64) as g:
        leaves = [cells.leaf(dn.inputs(rng.normal(size=D))) for _ in range(8)]
        level = leaves
        while len(level) > 1:
            level = [cells.node(*level[k], *level[k + 1]) for k in range(0, len(level), 2)]
        dn.sum_elems(level[0][0]).forward()
        stats = g.stats()
    assert len(cells.node.traces) == 1 and len(cells.leaf.traces) == 1  # (this instance's)
    assert stats["nodes"] - stats["forward_batches"] >= 7 + 6  # 8 leaves in 1, 4 + 2 + 1 in 3


def test_windows_read_in_place_and_as_nodes():
    """An output read by another fused call is a window of the call's node (no node of its
    own); read by anything else it is a pick_range node; value() and gradient() of a window
    that never became a node answer from the call's node."""
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    results = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            h1, c1 = cells.leaf(dn.inputs(x0))
            h2, c2 = cells.leaf(dn.inputs(-x0))
            h, c = cells.node(h1, c1, h2, c2)
            loss = dn.sum_elems(h * h) + dn.sum_elems(dn.tanh(c1))
            loss.backward()
            results[fuse] = [v.npvalue() for v in (h1, c1, h2, c2, h, c)] + \
                [v.gradient() for v in (h1, c1, h2, c2, h, c)]
            if fuse:
                assert type(c2) is Window and c2._node < 0  # (never a node: read in place)
                assert type(c1) is Window and c1._node >= 0  # (read by tanh: a node)
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_jvp_through_fused_calls():
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    t = np.array([0.3, -0.2, 0.5])
    out = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            x = dn.inputs(x0)
            h1, c1 = cells.leaf(x)
            h, c = cells.node(h1, c1, h1, c1)
            y = dn.sum_elems(h * c)
            out[fuse] = dn.jvp(y, {x: t, cells.U[0]: np.ones((D, 2 * D))})
    assert out[True] == pytest.approx(out[False], rel=1e-12)


def test_gradcheck_through_a_fused_node():
    cells = TreeCells()

    def f(x, y):
        h1, c1 = cells.leaf(x)
        h2, c2 = cells.leaf(y)
        h, c = cells.node(h1, c1, h2, c2)
        return h * c

    assert dn.gradcheck(f, np.linspace(-1.0, 1.0, D), np.array([0.2, -0.4, 0.9]))


@dn.fused
def _gru(x, h, Wz, Wr, Wh):
    """A GRU step whose weights are passed in as expressions: per-call matrices."""
    z = dn.logistic(Wz @ dn.concatenate([x, h]))
    r = dn.logistic(Wr @ dn.concatenate([x, h]))
    hh = dn.tanh(Wh @ dn.concatenate([x, r * h]))
    return (1.0 - z) * h + z * hh


@pytest.mark.parametrize("autobatch", ["late", False])
def test_a_function_of_matrices_constants_and_one_output(autobatch):
    """Weights passed as arguments are per-call matrices; constants made inside are kept;
    a single output is a plain expression."""
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=(2, 4)) * 0.5 for _ in range(3)]
    xs = [rng.normal(size=2) for _ in range(4)]
    out = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch):
            W = [dn.inputs(w) for w in ws]
            h = dn.inputs(np.zeros(2))
            for x in xs:
                h = _gru(dn.inputs(x), h, *W)
                assert type(h) is dn.Expression
            loss = dn.sum_elems(h)
            loss.backward()
            out[fuse] = [loss.scalar_value()] + [w.gradient() for w in W]
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_static_arguments_tell_kinds_of_calls_apart():
    @dn.fused
    def scaled(x, k, name):
        return dn.tanh(x * float(k)) if name == "tanh" else dn.exp(x * float(k))

    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([0.1, 0.2]))
        a, b, c = scaled(x, 2, "tanh"), scaled(x, 3, "tanh"), scaled(x, 2, "exp")
        np.testing.assert_allclose(a.npvalue(), np.tanh([0.2, 0.4]))
        np.testing.assert_allclose(b.npvalue(), np.tanh([0.3, 0.6]))
        np.testing.assert_allclose(c.npvalue(), np.exp([0.2, 0.4]))
        assert len(scaled.traces) == 3
        with pytest.raises(dn.GraphError, match="hashable"):
            scaled(x, [2], "tanh")

    @dn.fused
    def keyed(x, scale=1.0, name="tanh"):
        return getattr(dn, name)(x * scale)

    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([0.1, 0.2]))
        np.testing.assert_allclose(keyed(x, scale=2.0).npvalue(), np.tanh([0.2, 0.4]))
        np.testing.assert_allclose(keyed(x, name="exp").npvalue(), np.exp([0.1, 0.2]))
        np.testing.assert_allclose(keyed(x).npvalue(), np.tanh([0.1, 0.2]))
        assert len(keyed.traces) == 3
        with pytest.raises(dn.GraphError, match="positional"):
            keyed(x, scale=x)


def test_parameters_are_read_at_each_graph_and_fuse_false_runs_the_code():
    """A trained parameter's new value reaches the next graph's calls (parameters are the
    node's arguments, not constants of the trace)."""
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    trainer = dn.SimpleSGDTrainer(cells.pc, learning_rate=0.5)
    seen = []
    for _ in range(2):
        for fuse in (True, False):
            with dn.Graph(dtype=np.float64, fuse=fuse) as g:
                h, c = cells.leaf(dn.inputs(x0))
                loss = dn.sum_elems(h)
                loss.backward()
                seen.append(loss.scalar_value())
                if fuse is False:
                    assert not any(g.ops[n].name.startswith("fused:") for n in range(len(g)))
        trainer.update()
    assert seen[0] == pytest.approx(seen[1], rel=1e-12)
    assert seen[2] == pytest.approx(seen[3], rel=1e-12)
    assert seen[2] != pytest.approx(seen[0], rel=1e-6)


def test_float32_graphs_trace_their_own_op():
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    values = []
    for dtype in (np.float32, np.float64, np.float32):
        with dn.Graph(dtype=dtype):
            h, _ = cells.leaf(dn.inputs(x0))
            v = h.npvalue()
            assert v.dtype == dtype
            values.append(v)
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6)


@pytest.mark.parametrize("body, message", [
    (lambda x: dn.dropout(x, 0.5), "random numbers"),
    (lambda x: dn.pick_neg_log_softmax(x, 1), "per-call data"),
    (lambda x: x * float(x.value()[0]), "cannot read values"),
    (lambda x: x, "unchanged"),
    (lambda x: 3.0, "must return an expression"),
    (lambda x: (dn.outer(x, x), x * 2.0), "must be a vector"),
])
def test_what_a_fused_function_cannot_do_says_so(body, message):
    f = dn.fused(body)
    with dn.Graph(dtype=np.float64):
        with pytest.raises(dn.GraphError, match=message):
            f(dn.inputs(np.array([0.5, -0.5, 0.25])))


def test_a_lookup_inside_says_to_do_it_outside():
    pc = dn.ParameterCollection(seed=1, dtype=np.float64)
    E = pc.add_lookup_parameters((5, 2))

    @dn.fused
    def f(x, word):
        return x + E[word]

    with dn.Graph(dtype=np.float64):
        with pytest.raises(dn.GraphError, match="outside the function"):
            f(dn.inputs(np.zeros(2)), 3)


def test_a_loss_over_an_output_reads_the_call_node_and_windows_share_an_argument():
    """`pick_neg_log_softmax(O @ h, y)` over an output reads the call's node through h's window
    (the pick_range node that `O @ h` made never runs), and h's gradient still counts the
    loss; two windows of one node passed to a call are one argument of the call's node."""
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    grads = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            h1, c1 = cells.leaf(dn.inputs(x0))
            h, c = cells.node(h1, c1, h1, c1)
            loss = dn.pick_neg_log_softmax(dn.parameter(cells.O) @ h, 1) + dn.sum_elems(c)
            loss.backward()
            grads[fuse] = [h.gradient(), c.gradient(), h1.gradient(), c1.gradient()]
            if fuse:
                ran = [n for n in range(len(g)) if g.loc[n] >= 0]
                names = [g.ops[n].name for n in ran]
                assert "pick_range" in {g.ops[n].name for n in range(len(g))}
                assert names.count("pick_range") == 1  # (c's, read by sum_elems; not h's)
                call = max(n for n in range(len(g)) if g.ops[n].name == "fused:TreeCells.node")
                windows = [a for a in g.args[call] if g.ops[a].name == "fused:TreeCells.leaf"]
                assert windows == [h1.sources[0]]
    for a, b in zip(grads[True], grads[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_products_over_an_output_read_as_nodes_where_no_loss_reads_them():
    """`W @ h` over an output is a pending sum over its window: a softmax loss reads the call's
    node in place; an activation, a larger sum or a read of its value makes h's node; all
    answer as the same code unfused."""
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    out = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            h, c = cells.leaf(dn.inputs(x0))
            Wx, bx = dn.parameter(cells.W[0]), dn.parameter(cells.B[0])
            O = dn.parameter(cells.O)  # noqa: E741
            terms = [dn.pick_neg_log_softmax(O @ h, 0),
                     dn.pick_neg_log_softmax(O @ h + dn.parameter(cells.B[3])[:2], 1),
                     dn.sum_elems(dn.tanh(Wx @ h + bx)),
                     dn.sum_elems(Wx @ h + Wx @ c),
                     dn.sum_elems(Wx @ h)]
            loss = dn.esum(terms)
            loss.backward()
            out[fuse] = [t.scalar_value() for t in terms] + [h.gradient(), c.gradient()] + \
                [p.grad_as_array() for p in cells.pc.parameters()]
            cells.pc.clear_grads()
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("autobatch", MODES)
def test_table_rows_passed_in_are_read_in_place(autobatch):
    """A lookup table's row passed to a fused call (`cell(E[word])`) is read inside the call's
    node, the row index its per-call data: no lookup node, and the table's sparse gradient as
    unfused."""
    pc = dn.ParameterCollection(seed=4, dtype=np.float64)
    E = pc.add_lookup_parameters((7, D))
    cells = TreeCells()

    @dn.fused
    def embed(x, y):
        return dn.tanh(x + 2.0 * y)

    words = [3, 0, 6, 3, 5]
    out = {}
    for fuse in (False, True):
        pc.clear_grads()
        cells.pc.clear_grads()
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
            hs = [cells.leaf(E[w])[0] for w in words]
            hs.append(embed(E[1], E[words[0]]))
            loss = dn.esum([dn.sum_elems(h * h) for h in hs])
            loss.backward()
            out[fuse] = [loss.scalar_value(), E.grad_as_array()] + \
                [p.grad_as_array() for p in cells.pc.parameters()]
            names = {g.ops[n].name for n in range(len(g))}
            assert ("lookup" in names) != fuse
            assert g.stats()["nodes_before_fusion"] == (
                len(g) if not fuse else out[False][-1])
            if not fuse:
                out[False].append(len(g))
    for a, b in zip(out[True], out[False][:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_rows_of_two_tables_and_rows_counted_once():
    """Calls over rows of two tables of one shape are nodes of two signatures (each reads its
    own table); a row passed twice, or read in place and then as a node, counts as the one
    lookup node it is unfused."""
    pc = dn.ParameterCollection(seed=1, dtype=np.float64)
    E1, E2 = pc.add_lookup_parameters((4, 3)), pc.add_lookup_parameters((4, 3))

    @dn.fused
    def cell(x, y):
        return dn.tanh(x * 2.0 + y)

    out = {}
    for fuse in (False, True):
        pc.clear_grads()
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            r = E1[2]
            a, b, c = cell(E1[1], E1[1]), cell(E2[1], E2[3]), cell(r, E2[0])
            loss = dn.sum_elems(a) + 2.0 * dn.sum_elems(b) + dn.sum_elems(c * r)
            loss.backward()
            out[fuse] = [loss.scalar_value(), E1.grad_as_array(), E2.grad_as_array(),
                         g.stats()["nodes_before_fusion"]]
    for x, y in zip(out[True], out[False]):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_plain_of_an_output_keeps_its_gradient_under_a_fused_loss():
    cells = TreeCells()
    x0 = np.linspace(-1.0, 1.0, D)
    grads = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            h, c = cells.leaf(dn.inputs(x0))
            kept = h.plain()
            loss = dn.pick_neg_log_softmax(dn.parameter(cells.O) @ kept, 1)
            loss.backward()
            grads[fuse] = kept.gradient()
    assert np.any(grads[True] != 0.0)
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-12)


def test_static_numpy_scalars_and_nested_tuples_are_values():
    @dn.fused
    def scaled(x, k, shape):
        return dn.tanh(x * float(k)) + float(len(shape))

    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([0.1, 0.2]))
        for _ in range(3):
            scaled(x, np.float64(0.5), ((1, 2), (3,)))
        assert len(scaled.traces) == 1


def test_a_method_keeps_traces_per_instance_and_lets_it_go():
    """A fused method's traces belong to its instance (they hold its parameters), and go with
    it; `clear()` forgets a function's traces."""
    import gc
    import weakref

    cells = TreeCells()
    with dn.Graph(dtype=np.float64):
        cells.leaf(dn.inputs(np.ones(D)))
    assert len(cells.leaf.traces) == 1 and len(TreeCells().leaf.traces) == 0
    gone = weakref.ref(cells)
    del cells
    gc.collect()
    assert gone() is None

    @dn.fused
    def f(x):
        return dn.tanh(x)

    with dn.Graph(dtype=np.float64):
        f(dn.inputs(np.ones(2)))
    assert len(f.traces) == 1
    f.clear()
    assert not f.traces


def test_concatenated_lstm_outputs_keep_their_gradient_as_unfused():
    """`dn.concatenate([f, b])` of two LSTM outputs, read by an MLP loss and by another op: its
    gradient is what its readers sent, as the concatenation node's is unfused."""
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    fwd, bwd = dn.LSTMBuilder(1, 2, 3, pc), dn.LSTMBuilder(1, 2, 3, pc)
    H = pc.add_parameters((4, 6))
    rng = np.random.default_rng(2)
    xs0 = [rng.normal(size=2) for _ in range(4)]
    out = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse):
            xs = [dn.inputs(x) for x in xs0]
            fs = fwd.initial_state().transduce(xs)
            bs = bwd.initial_state().transduce(xs[::-1])[::-1]
            pairs = [dn.concatenate([f, b]) for f, b in zip(fs, bs)]
            loss = dn.esum([dn.pick_neg_log_softmax(H @ p, k % 4) for k, p in enumerate(pairs)]
                           + [dn.sum_elems(pairs[1] * pairs[1])])
            loss.backward()
            out[fuse] = [p.gradient() for p in pairs] + [f.gradient() for f in fs]
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# -- calls over sequences of different lengths: one op, padded batches --------------------------

A, E = 4, 5  # attention size, encoder state size


class Attention:
    """MLP attention as a DyNet user writes it (v tanh(W1 H + W2 s), softmax, H a), under
    dn.fused: its matrices have one column per source word."""

    def __init__(self, seed=3):
        pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
        self.pc = pc
        self.w2 = pc.add_parameters((A, E), init="normal", scale=0.5)
        self.v = pc.add_parameters((1, A), init="normal", scale=0.5)

    @dn.fused
    def attend(self, states, w1dt, h):
        w2dt = dn.parameter(self.w2) @ h
        scores = dn.transpose(dn.parameter(self.v) @ dn.tanh(w1dt + dn.reshape(w2dt, (A, 1))))
        return dn.reshape(states @ dn.softmax(scores), (E,))


def _attention_graphs(fuse, autobatch, lengths=(3, 5, 2, 7, 4, 4, 6), pad=True):
    model = Attention()
    rng = np.random.default_rng(5)
    data = [(rng.normal(size=(E, n)), rng.normal(size=(A, n)), rng.normal(size=E))
            for n in lengths]
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch, pad=pad) as g:
        inputs, terms = [], []
        for states, w1dt, h in data:
            xs = [dn.inputs(states), dn.inputs(w1dt), dn.inputs(h)]
            inputs += xs
            context = model.attend(*xs)
            context = model.attend(xs[0], xs[1], dn.tanh(context))  # (a second level)
            terms.append(dn.sum_elems(dn.square(context)))
        total = dn.esum(terms)
        tangent = dn.jvp(total, {inputs[0]: np.ones((E, lengths[0])), model.w2: np.ones((A, E))})
        value = total.scalar_value()
        total.backward()
        grads = [x.gradient().copy() for x in inputs]
        grads += [p.grad_as_array().copy() for p in (model.w2, model.v)]
        return value, tangent, grads, g.stats(), {op.name for op in g.ops}


@pytest.mark.parametrize("autobatch", MODES)
def test_calls_over_different_lengths_batch_padded_and_equal_unfused(autobatch):
    # the softmax inside reads scores whose padding the program fills with -inf, the product
    # with the states reads zeros there: values, gradients and JVPs are the unfused graph's
    value, tangent, grads, stats, names = _attention_graphs(True, autobatch)
    value2, tangent2, grads2, stats2, _ = _attention_graphs(False, autobatch)
    assert "fused:Attention.attend" in names
    assert value == pytest.approx(value2, rel=1e-12)
    assert tangent == pytest.approx(tangent2, rel=1e-10)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if autobatch:  # (the calls of a level, over six lengths, are one padded batch)
        _, _, _, unpadded, _ = _attention_graphs(True, autobatch, pad=False)
        assert stats["forward_batches"] < unpadded["forward_batches"]
        assert stats["forward_batches"] <= 8


def test_calls_over_different_lengths_share_one_op_and_signature():
    model = Attention()
    with dn.Graph(dtype=np.float64) as g:
        nodes = []
        for n in (2, 3, 3, 6):
            args = [dn.inputs(np.ones((E, n))), dn.inputs(np.ones((A, n))), dn.inputs(np.ones(E))]
            nodes.append(model.attend(*args).i)
        assert len({g.ops[n] for n in nodes}) == 1
        assert len({g.sigs[n] for n in nodes}) == 1
        assert len(Attention.attend._bound[id(model)][1].traces) == 3  # (one per length)


def test_a_program_that_cannot_pad_batches_each_length_apart():
    # a step whose rule cannot pad what it reads (a sum over the length): one op per length
    @dn.fused
    def total(x, y):
        return dn.sum_elems(dn.tanh(x) * y)

    rng = np.random.default_rng(1)
    with dn.Graph(dtype=np.float64) as g:
        xs = [(dn.inputs(rng.normal(size=n)), dn.inputs(rng.normal(size=n))) for n in (2, 3, 3)]
        outs = [total(x, y) for x, y in xs]
        value = dn.esum(outs).scalar_value()
        assert len({g.sigs[o.i] for o in outs}) == 2
    with dn.Graph(dtype=np.float64, fuse=False):
        rng = np.random.default_rng(1)
        xs = [(dn.inputs(rng.normal(size=n)), dn.inputs(rng.normal(size=n))) for n in (2, 3, 3)]
        want = dn.esum([total(x, y) for x, y in xs]).scalar_value()
    assert value == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("autobatch", ["late", False])
def test_an_lstm_output_is_read_in_place(autobatch):
    # the builder's slice of a state ([c; h] -> h) is a window of the step's node for a fused
    # call: no pick_range node, values and gradients as unfused, the slice's own gradient
    # refused (plain() keeps it), and nodes_before_fusion counts the slice's node
    @dn.fused
    def cell(h, x):
        return dn.tanh(h * x + h)

    pc = dn.ParameterCollection(seed=4, dtype=np.float64)
    lstm = dn.LSTMBuilder(1, 2, 3, pc)

    def run(fuse, plain=False):
        for p in pc.parameters():
            p.clear_grad()
        rng = np.random.default_rng(2)
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
            outs, kept = [], []
            for n in (2, 4):
                states = lstm.initial_state().add_inputs(
                    [dn.inputs(rng.normal(size=2)) for _ in range(n)])
                for s in states:
                    h = s.output().plain() if plain else s.output()
                    kept.append(h)
                    outs.append(dn.sum_elems(cell(h, dn.inputs(rng.normal(size=3)))))
            total = dn.esum(outs)
            value = total.scalar_value()
            total.backward()
            names = [op.name for op in g.ops]
            stats = g.stats()
            grads = [h.gradient().copy() for h in kept] if plain or not fuse else None
            if fuse and not plain:
                with pytest.raises(dn.GraphError, match="in place"):
                    kept[0].gradient()
        return value, [p.grad_as_array().copy() for p in pc.parameters()], names, stats, grads

    value, grads, names, stats, _ = run(True)
    value2, grads2, names2, stats2, hgrads2 = run(False)
    assert "pick_range" not in names and "pick_range" in names2
    assert stats["nodes_before_fusion"] == stats2["nodes"]
    assert value == pytest.approx(value2, rel=1e-12)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    value3, _, _, _, hgrads3 = run(True, plain=True)
    assert value3 == pytest.approx(value2, rel=1e-12)
    for a, b in zip(hgrads3, hgrads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_window_made_for_a_call_equals_one_made_by_its_constructor():
    # (traced._windows sets the slots itself: every slot of the class and its bases must match)
    g = dn.Graph()
    kind = ("window", (6,), (2, 5))
    made = Window(g, 7, ((2, 5),), kind, 3)
    fast, = traced._windows(g, 7, ((((2, 5),), 3, kind, 3),))
    slots = {name for cls in type(made).__mro__ for name in getattr(cls, "__slots__", ())
             if name != "i"}  # (a Deferred's node is a property: read, it would add the node)
    assert slots >= {"sources", "windows", "width", "kind", "position", "counted"}
    for name in slots:
        assert getattr(made, name) == getattr(fast, name), name
