"""Fusion changes nothing a user can read: fused graphs give the values, gradients and JVPs of
unfused ones (float64, every strategy) on chains around every op of the table, on random graphs
and on hand-written cells; absorbed nodes keep their values and gradients; gradcheck passes
through fused nodes; equal regions batch together."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.fusion import ABSORBED
from dynlp.gradcheck import case_inputs
from dynlp.graph import Affine, apply
from dynlp.ops import LEAVES, SHARED, TABLE

from test_autobatch import MODES, RandomModel

FUSIBLE = [(name, k) for name, op in sorted(TABLE.items()) if name not in LEAVES
           and op.batch is not None and op.ragged is None for k in range(len(op.cases))]


def _chain_graph(name, k, autobatch, fuse, examples=3):
    """Per example: the op over inputs made by elementwise nodes (which fusion may absorb), its
    output through more elementwise nodes, dotted with a constant; summed. Returns the loss,
    the gradients of the leaves, the JVP along a random direction, and the graph's stats."""
    op = TABLE[name]
    case = op.cases[k]
    rng = np.random.default_rng(17)
    mask = op.mask(len(case.shapes))
    shared_values = case_inputs(op, case, 1, np.random.default_rng(18))[0]
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse) as g:
        shared = [g.leaf(x) if m == SHARED else None for x, m in zip(shared_values, mask)]
        leaves, terms = [], []
        for _ in range(examples):
            xs, attrs = case_inputs(op, case, 1, rng)
            args = []
            for s, x in zip(shared, xs):
                if s is not None:
                    args.append(s)
                    continue
                leaf = g.leaf(x[0])
                leaves.append(leaf)
                # an elementwise node in front keeps the op's domain (x * 1.0 + 0.0)
                args.append(leaf * 1.0 + 0.0)
            static = tuple((a, v) for a, v in attrs.items() if a not in op.batched_attrs)
            battrs = tuple(attrs[a][0] for a in op.batched_attrs) or None
            out = apply(name, *args, attrs=static, battrs=battrs)
            out = dn.tanh(out * 0.5) + out
            terms.append(dn.sum_elems(out * dn.inputs(rng.normal(size=out.shape))))
        loss = dn.esum(terms)
        loss.backward()
        grads = [x.gradient() for x in leaves + [s for s in shared if s is not None]]
        directions = {x: rng.normal(size=x.shape) for x in leaves}
        tangent = dn.jvp(loss, directions)
        return loss.scalar_value(), grads, tangent, g.stats()


@pytest.mark.parametrize("name,k", FUSIBLE)
def test_fused_chain_equals_unfused_for_every_op(name, k):
    want = _chain_graph(name, k, False, False)
    for autobatch in MODES:
        got = _chain_graph(name, k, autobatch, "regions")
        assert got[0] == pytest.approx(want[0], rel=1e-10, abs=1e-12)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        assert got[2] == pytest.approx(want[2], rel=1e-9, abs=1e-12)
    stats = got[3]
    assert stats["nodes_after_fusion"] < stats["nodes_before_fusion"]


def _random_graph(build, autobatch, fuse, dtype=np.float64, examples=10):
    m = RandomModel(dtype=dtype)
    rng = np.random.default_rng(23)
    with dn.Graph(dtype=dtype, autobatch=autobatch, fuse=fuse) as g:
        loss = dn.esum([build(m, rng, i) for i in range(examples)])
        value = loss.scalar_value()
        loss.backward()
        grads = {p.name: p.grad_as_array() for p in m.pc.parameters()}
        return value, grads, g.stats()


BUILDS = {
    "sequences": lambda m, rng, i: m.sequence(list(rng.integers(m.vocab, size=3 + i % 5)),
                                               i % 3, peek=i % 4 == 1),
    "trees": lambda m, rng, i: dn.pick_neg_log_softmax(m.O @ m.tree(rng, 4, False), i % 3),
    "nary": lambda m, rng, i: dn.pick_neg_log_softmax(m.O @ m.tree(rng, 3, True), i % 3),
    "dags": lambda m, rng, i: m.dag(rng, 4 + i % 6),
}


@pytest.mark.parametrize("kind", sorted(BUILDS))
@pytest.mark.parametrize("autobatch", MODES)
def test_random_graphs_fused_equal_unfused(kind, autobatch):
    want_value, want_grads, _ = _random_graph(BUILDS[kind], False, False)
    value, grads, stats = _random_graph(BUILDS[kind], autobatch, "regions")
    assert value == pytest.approx(want_value, rel=1e-10)
    for name, want in want_grads.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-9, atol=1e-12)
    value, grads, stats = _random_graph(BUILDS[kind], autobatch, True)
    assert value == pytest.approx(want_value, rel=1e-10)
    for name, want in want_grads.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-9, atol=1e-12)
    assert stats["nodes_after_fusion"] <= stats["nodes_before_fusion"]


def _lstm_cell(params, x, h, c):
    """An LSTM cell as users write it from ops."""
    Wi, Ui, bi, Wf, Uf, bf, Wo, Uo, bo, Wu, Uu, bu = params
    i = dn.logistic(Wi @ x + Ui @ h + bi)
    f = dn.logistic(Wf @ x + Uf @ h + bf)
    o = dn.logistic(Wo @ x + Uo @ h + bo)
    u = dn.tanh(Wu @ x + Uu @ h + bu)
    c = f * c + i * u
    return o * dn.tanh(c), c


def _gru_cell(params, x, h):
    Wz, Uz, bz, Wr, Ur, br, Wh, Uh, bh = params
    z = dn.logistic(Wz @ x + Uz @ h + bz)
    r = dn.logistic(Wr @ x + Ur @ h + br)
    candidate = dn.tanh(Wh @ x + Uh @ (r * h) + bh)
    return (1.0 - z) * h + z * candidate


def _cell_params(pc, count, dim):
    shapes = [(dim, dim), (dim, dim), (dim,)] * count
    return [pc.add_parameters(s, init="normal", scale=0.3) for s in shapes]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hand_written_cells_fuse_and_batch(cell):
    dim = 4
    results = {}
    for fuse in (False, "regions"):
        pc = dn.ParameterCollection(seed=5, dtype=np.float64)
        params = _cell_params(pc, 4 if cell == "lstm" else 3, dim)
        E = pc.add_lookup_parameters((10, dim))
        rng = np.random.default_rng(3)
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            losses = []
            for length in (3, 5, 4, 6):
                h = c = dn.zeros(dim)
                for w in rng.integers(10, size=length):
                    if cell == "lstm":
                        h, c = _lstm_cell(params, E[int(w)], h, c)
                    else:
                        h = _gru_cell(params, E[int(w)], h)
                losses.append(dn.squared_norm(h))
            loss = dn.esum(losses)
            loss.backward()
            results[fuse] = (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                             g.stats())
    (v0, g0, s0), (v1, g1, s1) = results[False], results["regions"]
    assert v1 == pytest.approx(v0, rel=1e-10)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # a step is a few nodes, not a dozen, and the steps of the four sequences batch together
    assert s1["nodes_after_fusion"] * 2 < s0["nodes"]
    assert s1["forward_batches"] < s0["forward_batches"]


def test_absorbed_nodes_keep_their_values_and_gradients():
    pc = dn.ParameterCollection(seed=1, dtype=np.float64)
    W = pc.add_parameters((3, 3))
    b = pc.add_parameters(3)
    got = {}
    for fuse in (False, True, "regions"):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x = dn.inputs(np.array([0.5, -1.0, 2.0]))
            pre = W @ x + b
            a = dn.tanh(pre)
            m = a * 3.0
            s = dn.logistic(m) + a * a
            loss = dn.sum_elems(s)
            loss.backward()
            if fuse == "regions":
                assert g.loc[m.i] == ABSORBED and type(pre) is Affine
            got[fuse] = [e.value() for e in (a, m, s)] + [e.gradient() for e in (pre, a, m, s, x)]
    for fused in (True, "regions"):
        for u, f in zip(got[False], got[fused]):
            np.testing.assert_allclose(f, u, rtol=1e-12)


def test_a_node_built_on_an_absorbed_node_later_recomputes_it():
    for autobatch in MODES:
        with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse="regions") as g:
            x = dn.inputs(np.array([0.3, 0.7]))
            inner = dn.exp(x) * 2.0
            outer = dn.sum_elems(dn.tanh(inner))
            first = outer.scalar_value()
            assert g.loc[inner.i] == ABSORBED
            later = dn.sum_elems(inner * inner)  # built after the region ran
            total = outer + later
            total.backward()
            expected = np.exp([0.3, 0.7]) * 2.0
            assert first == pytest.approx(np.tanh(expected).sum())
            assert total.scalar_value() == pytest.approx(np.tanh(expected).sum()
                                                          + (expected ** 2).sum())
            want = (1 - np.tanh(expected) ** 2) * 2 * np.exp([0.3, 0.7]) \
                + 2 * expected * 2 * np.exp([0.3, 0.7])
            np.testing.assert_allclose(x.gradient(), want, rtol=1e-12)


def test_forward_and_backward_from_an_absorbed_node():
    with dn.Graph(dtype=np.float64, fuse="regions") as g:
        x = dn.inputs(np.array([0.3, 0.7]))
        inner = dn.sum_elems(dn.exp(x) * 2.0)
        outer = dn.tanh(inner)
        outer.forward()
        g.forward([inner])
        assert inner.value() == pytest.approx(2 * np.exp([0.3, 0.7]).sum())
        inner.backward()
        np.testing.assert_allclose(x.gradient(), 2 * np.exp([0.3, 0.7]), rtol=1e-12)


def test_gradcheck_through_fused_nodes():
    def f(a, b):
        return dn.sum_elems(dn.tanh(a * b + 1.0) * dn.logistic(a) - dn.exp(b * 0.5))
    dn.gradcheck(f, np.array([0.2, -0.4, 0.9]), np.array([1.1, 0.3, -0.7]))


def test_fusion_off_keeps_every_node_and_products_as_nodes():
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((3, 3))
    with dn.Graph(fuse=False) as g:
        y = dn.tanh(W @ dn.inputs(np.ones(3)))
        y.forward()
        names = [g.ops[n].name for n in range(len(g))]
        assert names.count("matmul") == 1 and g.stats()["nodes_after_fusion"] == len(g)


def test_equal_regions_batch_across_examples_and_stats_count_nodes():
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((4, 4))
    b = pc.add_parameters(4)
    with dn.Graph(fuse="regions") as g:
        losses = []
        for k in range(6):
            h = dn.tanh(W @ dn.inputs(np.full(4, k * 0.1)) + b)
            losses.append(dn.sum_elems(dn.logistic(h * 2.0) * h))
        total = dn.esum(losses)
        total.forward()
        stats = g.stats()
        fused = {g.sigs[loss.i] for loss in losses}
    assert len(fused) == 1  # one signature: the six regions run as one batch
    assert stats["nodes_after_fusion"] < stats["nodes_before_fusion"]
    assert stats["forward_batches"] <= 2


def test_rnn_input_products_are_not_joined_with_the_recurrent_ones():
    pc = dn.ParameterCollection(seed=1)
    Wx = pc.add_parameters((4, 3))
    Wh = pc.add_parameters((4, 4))
    b = pc.add_parameters(4)
    E = pc.add_lookup_parameters((20, 3))
    with dn.Graph(fuse="regions") as g:
        hs = []
        for length in (8, 10, 12):
            h = dn.zeros(4)
            for w in range(length):
                h = dn.tanh(Wx @ E[w] + Wh @ h + b)
            hs.append(h)
        dn.esum([dn.sum_elems(h) for h in hs]).forward()
        sizes = [len(b.nodes) for b in g.engine.batches if b is not None]
    # the input products of all steps but the first two ran as one batch, and the steps of
    # the three sequences batch by position (a region never spans two steps)
    assert max(sizes) == 8 + 10 + 12 - 6
    assert len(sizes) <= 16


@pytest.mark.parametrize("hidden", [None, "tanh", "rectify", "logistic"])
@pytest.mark.parametrize("bias", [False, True])
def test_softmax_losses_over_affine_sums_are_one_node_per_sum(hidden, bias):
    """pick_neg_log_softmax(O @ f(H @ x) + b, y) as users write it: per example one deferred
    loss, their esum one mlp_loss_sum node, values and gradients as written out."""
    results = {}
    for fuse in (False, True):
        pc = dn.ParameterCollection(seed=4, dtype=np.float64)
        H = pc.add_parameters((5, 6))
        O = pc.add_parameters((3, 5 if hidden else 6))  # noqa: E741
        c = pc.add_parameters(5)
        b = pc.add_parameters(3)
        rng = np.random.default_rng(2)
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            xs = [dn.inputs(rng.normal(size=6)) for _ in range(5)]
            losses = []
            for k, x in enumerate(xs):
                h = getattr(dn, hidden)(H @ x + c) if hidden else x
                scores = O @ h + b if bias else O @ h
                losses.append(dn.pick_neg_log_softmax(scores, k % 3))
            total = dn.esum(losses) + losses[0] * 0.5  # a term read twice: its own node too
            total.backward()
            names = [g.ops[n].name for n in range(len(g))]
            results[fuse] = (total.scalar_value(),
                             [p.grad_as_array() for p in pc.parameters()],
                             [x.gradient() for x in xs], names)
    (v0, g0, x0, _), (v1, g1, x1, names) = results[False], results[True]
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(g1 + x1, g0 + x0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert names.count(f"mlp_loss_sum_{2 if hidden else 1}") == 1
    assert "pick_neg_log_softmax" not in names


def test_a_sum_or_hidden_layer_read_by_a_fused_loss_says_it_has_no_gradient():
    pc = dn.ParameterCollection(seed=4)
    H = pc.add_parameters((5, 6))
    O = pc.add_parameters((3, 5))  # noqa: E741
    with dn.Graph():
        x = dn.inputs(np.ones(6))
        h = dn.tanh(H @ x)
        scores = O @ h
        loss = dn.pick_neg_log_softmax(scores, 1)
        loss.backward()
        with pytest.raises(dn.GraphError, match="plain"):
            scores.gradient()
        with pytest.raises(dn.GraphError, match="plain"):
            h.gradient()
        assert x.gradient().shape == (6,)
        np.testing.assert_allclose(h.value(), np.tanh(H.as_array() @ np.ones(6)), rtol=1e-6)


def test_a_softmax_loss_over_many_scores_stays_an_affine_and_a_loss_node():
    from dynlp.graph import FUSED_LOSS_MAX_SCORES
    pc = dn.ParameterCollection(seed=4)
    W = pc.add_parameters((FUSED_LOSS_MAX_SCORES + 1, 3))
    with dn.Graph() as g:
        loss = dn.pick_neg_log_softmax(W @ dn.inputs(np.ones(3)), 7)
        loss.forward()
        assert [g.ops[n].name for n in g.args[loss.i]] == ["matmul"]


def test_stats_count_the_nodes_an_unfused_graph_would_have():
    """nodes_before_fusion with fusion on is len(g) of the same model built with fuse=False."""
    def build(fuse):
        pc = dn.ParameterCollection(seed=1)
        Wx, Wh, O = (pc.add_parameters(s) for s in ((4, 3), (4, 4), (5, 4)))  # noqa: E741
        b, c = pc.add_parameters(4), pc.add_parameters(5)
        E = pc.add_lookup_parameters((10, 3))
        with dn.Graph(fuse=fuse) as g:
            losses = []
            for length in (3, 5):
                h = dn.zeros(4)
                for w in range(length):
                    h = dn.tanh(Wx @ E[w] + Wh @ h + b)  # split terms from step 3 on
                    losses.append(dn.pick_neg_log_softmax(O @ h + c, w % 5))
                losses.append(dn.sum_elems(Wh @ h))       # a lone product
                losses.append(dn.pick_neg_log_softmax(O @ h, 1) * 2.0)  # a loss made a node
            total = dn.esum(losses)
            total.forward()
            return len(g), g.stats()
    plain, plain_stats = build(False)
    fused, stats = build(True)
    assert plain_stats["nodes_before_fusion"] == plain_stats["nodes_after_fusion"] == plain
    # the unfused graph, less the leaves and bookkeeping that fusion adds (one zero bias)
    assert stats["nodes_before_fusion"] == plain + 1
    assert stats["nodes_after_fusion"] == fused < plain
