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


def _random_dag(seed, fuse, autobatch, dtype=np.float64, steps=24, examples=2, rounds=False):
    """Per example, a random DAG over leaves and parameters of SHAPES; elementwise nodes
    mixed with products, sums, picks and concatenations; values read in the middle of
    building; a loss over some of the expressions (others never read). Returns what a user
    can read: values, gradients of every expression, leaf and parameter, and a JVP. With
    `rounds`, a backward pass after each example too (the next example reads the previous
    ones' expressions) and the gradients it gives."""
    rng = np.random.default_rng(seed)
    pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
    W = pc.add_parameters((D, D), init="normal", scale=0.5)
    b = pc.add_parameters((D,), init="normal", scale=0.5)
    P = [pc.add_parameters(s, init="normal", scale=0.5) for s in SHAPES]
    with dn.Graph(dtype=dtype, autobatch=autobatch, fuse=fuse, seed=seed) as g:
        leaves, exprs, mids, losses = [], [], [], []
        for _ in range(examples):
            pool = [] if not rounds else [e for e in exprs if rng.random() < 0.3]
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
            chosen = [e for e in pool if rng.random() < 0.6 and e not in leaves] or pool[-1:]
            weights = [dn.inputs(rng.normal(size=e.shape)) for e in chosen]
            losses.append(dn.esum([dn.sum_elems(e * w) for e, w in zip(chosen, weights)]))
            if rounds:
                losses[-1].backward()
                mids += [e.gradient() for e in exprs + leaves]
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

def _same_as_unfused(build, autobatch, rtol, atol):
    """build(fuse, autobatch) -> (numbers, len(g), stats): fused under `autobatch` against
    unfused and unbatched, number by number, and the node count fusion reports."""
    want = build(False, False)
    got = build(True, autobatch)
    assert len(got[0]) == len(want[0])
    for a, b in zip(got[0], want[0]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert got[2]["nodes_before_fusion"] == want[1]


@pytest.mark.parametrize("seed", range(12))
def test_random_dags_fused_equal_unfused(seed):
    want = _random_dag(seed, False, False)
    for autobatch in MODES:
        got = _random_dag(seed, True, autobatch)
        _assert_same(got, want)
        assert got[6]["nodes_before_fusion"] == want[7]
        assert got[7] <= want[7]


@pytest.mark.parametrize("seed", range(6))
def test_random_dags_backward_after_each_example(seed):
    want = _random_dag(seed, False, False, examples=3, rounds=True)
    for autobatch in MODES:
        got = _random_dag(seed, True, autobatch, examples=3, rounds=True)
        _assert_same(got, want)
        assert got[6]["nodes_before_fusion"] == want[7]


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


def _dynet_program(dy, seed):
    """A DyNet program written op by op: a gated cell over a batch of 3, `-x`, `1 - x`,
    `x / 2`, cmult, cdiv, colwise_add and a scalar (1,) broadcast."""
    rng = np.random.default_rng(seed)
    m = dy.ParameterCollection()
    W = m.parameters_from_numpy(rng.normal(size=(D, D)) * 0.5)
    U = m.parameters_from_numpy(rng.normal(size=(D, D)) * 0.5)
    b = m.parameters_from_numpy(rng.normal(size=(D,)) * 0.5)
    O = m.parameters_from_numpy(  # noqa: E741
        rng.normal(size=(2, D)) * 0.5)
    dy.renew_cg()
    x = dy.inputTensor(rng.normal(size=(D, 3)), batched=True)
    h = dy.inputTensor(rng.normal(size=(D, 3)), batched=True)
    s = dy.scalarInput(0.7)
    i = dy.logistic(W * x + b)
    u = dy.tanh(U * h)
    c = dy.cmult(i, u) + dy.cmult(1 - i, h) * s
    out = dy.cmult(-c, dy.cdiv(u, dy.square(c) + 2.0)) / 2
    mid = out.npvalue()
    scores = O * (out + c)
    loss = dy.sum_batches(dy.pickneglogsoftmax_batch(scores, [0, 1, 1]))
    loss.forward()
    loss.backward()
    return ([loss.scalar_value(), mid] + [e.gradient() for e in (i, u, c, out, x, h)]
            + [p.grad_as_array() for p in (W, U, b, O)]), type(c.es[0]).__name__


def test_the_dynet_layer_building_elementwise_expressions_equals_unfused(monkeypatch):
    import dynlp.dynet as dy
    from dynlp import graph as G
    got, kind = _dynet_program(dy, 3)
    assert kind == "Pointwise"
    renew = G.renew_cg
    monkeypatch.setattr(G, "renew_cg", lambda **options: renew(fuse=False, **options))
    want, kind = _dynet_program(dy, 3)
    assert kind == "Expression"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_equal_cells_across_examples_share_one_fused_op_and_batch():
    """The same expression written per example (constants on either side, a shared weight
    read through a product): one fused op, one signature, one batch forward."""
    rng = np.random.default_rng(7)
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((D, D))
    with dn.Graph() as g:
        outs = []
        for _ in range(5):
            x, y = dn.inputs(rng.normal(size=D)), dn.inputs(rng.normal(size=D))
            h = W @ x
            z = (1.0 - dn.logistic(h)) * y + 2.0 / (dn.square(y) + 1.0) - h * 0.5
            outs.append(z)
        nodes = [z.i for z in outs]
        assert len({g.ops[n] for n in nodes}) == 1
        assert len({g.sigs[n] for n in nodes}) == 1
        assert g.ops[nodes[0]].name.startswith("fused(")
        before = g.stats()["forward_batches"]
        g.forward(outs)
        # h read by logistic (an affine_transform node) and by `h * 0.5` (a matmul node): the
        # five of each in one batch, the five fused cells in another
        assert g.stats()["forward_batches"] - before == 3


@pytest.mark.parametrize("autobatch", MODES)
def test_float32_fused_equals_unfused(autobatch):
    def run(fuse, ab):
        got = _random_dag(4, fuse, ab, dtype=np.float32)
        return got
    want = run(False, False)
    got = run(True, autobatch)
    _assert_same(got, want, rtol=2e-4, atol=1e-5)
    assert {a.dtype for a in got[3]} == {np.dtype(np.float32)}


def test_shape_errors_name_the_op_and_leave_the_graph_usable():
    counts = []
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x, y = dn.inputs(np.ones(3)), dn.inputs(np.ones(4))
            t = dn.tanh(x) * 2.0          # a Pointwise operand
            for build, name in [(lambda: t * y, "mul"), (lambda: y / t, "div"),
                                (lambda: t + y, "add"), (lambda: t - y, "add"),
                                (lambda: y - dn.tanh(t), "add"), (lambda: x * y, "mul")]:
                with pytest.raises(dn.ShapeError, match=rf"^{name}\(\((3|4),\), \((3|4),\)\)"):
                    build()
            loss = dn.sum_elems(t * x)
            loss.backward()
            np.testing.assert_allclose(t.gradient(), np.ones(3))
            np.testing.assert_allclose(x.gradient(), 2 * (1 - np.tanh(1.0) ** 2) + 2 * np.tanh(1))
            counts.append(g.stats()["nodes_before_fusion"])
    assert counts[0] == counts[1]


def test_expressions_of_an_ended_graph_raise_graph_errors():
    with dn.Graph() as g:
        x = dn.inputs(np.ones(2))
        taken = x * x + 1.0
        later = dn.tanh(taken)    # takes taken's program
        kept = later * 2.0
        kept.value()              # its node
        pending = kept - x        # never read
    uses = [lambda e: e * e, lambda e: e * 2.0, lambda e: 1.0 - e, lambda e: 2.0 / e,
            lambda e: -e, lambda e: dn.tanh(e), lambda e: e ** 2, lambda e: e.value(),
            lambda e: e.gradient(), lambda e: e.plain(), lambda e: dn.sum_elems(e),
            lambda e: dn.esum([e, e]), lambda e: dn.dropout(e, 0.5), lambda e: e - e]
    for e in (x, taken, later, kept, pending):
        for use in uses:
            with pytest.raises(dn.GraphError):
                use(e)
    assert g.stats()["nodes_before_fusion"] == 7
    with dn.Graph():
        y = dn.inputs(np.ones(2))
        for e in (taken, pending):
            for use in (lambda e: e * y, lambda e: y - e, lambda e: y + e):
                with pytest.raises(dn.GraphError):
                    use(e)


def test_expressions_of_two_live_graphs_do_not_mix():
    g1, g2 = dn.Graph(dtype=np.float64), dn.Graph(dtype=np.float64)
    a = g1.leaf(np.array([0.5, -0.5]))
    b = g2.leaf(np.array([0.25, 1.0]))
    pa, pb = dn.tanh(a) * 2.0 + a, dn.tanh(b) * 2.0 + b   # the same program in both
    for build in (lambda: pa * pb, lambda: pa - pb, lambda: pa + b, lambda: a * pb,
                  lambda: pb / a):
        with pytest.raises(dn.GraphError):
            build()
    la, lb = dn.sum_elems(pa * pa), dn.sum_elems(pb * pb)
    la.backward()
    lb.backward()
    for e, v in ((a, [0.5, -0.5]), (b, [0.25, 1.0])):
        v = np.array(v)
        p = 2 * np.tanh(v) + v
        np.testing.assert_allclose(e.gradient(), 2 * p * (2 * (1 - np.tanh(v) ** 2) + 1))
    np.testing.assert_allclose(pa.gradient(), 2 * (2 * np.tanh([0.5, -0.5]) + [0.5, -0.5]))
    g1.close()
    g2.close()


@pytest.mark.parametrize("autobatch", [False, True])
def test_gradcheck_through_broadcasting_fused_expressions(autobatch):
    def f(v, m, c, col):
        t = dn.tanh(v * m + col) - c * m / (m * m + 1.0)
        u = 1.0 - t * 0.5
        return dn.sum_elems(u * t + 2.0 / (dn.square(u) + 1.0)) + dn.sum_elems(-v * c)
    rng = np.random.default_rng(2)
    dn.gradcheck(f, *[rng.normal(size=s) for s in SHAPES], autobatch=autobatch)


def _jvps(fuse, autobatch):
    rng = np.random.default_rng(9)
    x0, y0, tx, ty = rng.normal(size=(4, D))
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch):
        x, y = dn.inputs(x0), dn.inputs(y0)
        a = x * y - 1.0
        b = dn.tanh(a) / (dn.square(y) + 1.0)   # takes a
        c = b * a                                # a's node, b's node
        d = -c + 0.5 * b
        return [np.atleast_1d(dn.jvp(e, {x: tx, y: ty})) for e in (d, a, b, c)]


@pytest.mark.parametrize("autobatch", MODES)
def test_jvp_of_intermediate_expressions(autobatch):
    for a, b in zip(_jvps(True, autobatch), _jvps(False, False)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def _losses(fuse, autobatch):
    """Pointwise expressions read by softmax losses (over an Affine with a bias, and over
    the expression itself), esum, lookups and `.plain()`; sparse lookup gradients."""
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    E = pc.add_lookup_parameters((5, D), init="normal", scale=0.5)
    O = pc.add_parameters((4, D), init="normal", scale=0.5)  # noqa: E741
    bo = pc.add_parameters((4,), init="normal", scale=0.5)
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
        terms, hs = [], []
        for k in range(4):
            e1, e2 = dn.lookup(E, k), dn.lookup(E, (k + 2) % 5)
            h = dn.tanh(e1 * e2 + e1) * (1.0 - dn.logistic(e2))
            hs.append(h)
            terms.append(dn.pick_neg_log_softmax(O @ h + bo, k % 4))
            terms.append(dn.pick_neg_log_softmax(h * 2.0 - e2, k % D))
            terms.append(dn.pick_neg_log_softmax(O @ (h * 0.5).plain() + bo, 1))
        loss = dn.esum(terms) + dn.esum([dn.sum_elems(h) for h in hs]) * 0.1
        loss.backward()
        return ([loss.scalar_value()] + [h.gradient() for h in hs]
                + [p.grad_as_array() for p in pc.parameters()], len(g), g.stats())


@pytest.mark.parametrize("autobatch", MODES)
def test_losses_over_pointwise_expressions(autobatch):
    _same_as_unfused(_losses, autobatch, 1e-10, 1e-12)


def _builders(fuse, autobatch):
    """Builders fed Pointwise expressions: an LSTM and a BiRNN over elementwise inputs, a
    Tree-LSTM leaf over one and a node over [c; h] states made elementwise, an MLP (with and
    without dropout) and its loss over one; builder outputs then read elementwise."""
    rng = np.random.default_rng(13)
    pc = dn.ParameterCollection(seed=5, dtype=np.float64)
    lstm = dn.LSTMBuilder(1, D, 4, pc)
    bi = dn.BiRNNBuilder(1, D, 4, pc, dn.LSTMBuilder)
    tree = dn.TreeLSTMBuilder(D, 2, pc)
    mlp = dn.MLP(pc, [4, 5, 3])
    mlp_drop = dn.MLP(pc, [4, 5, 3], dropout=0.3, name="mlp_drop")
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch, seed=2) as g:
        xs = [dn.inputs(rng.normal(size=D)) for _ in range(4)]
        ins = [dn.tanh(x) * 2.0 - x for x in xs]
        hs = lstm.initial_state().transduce(ins)
        bs = bi.transduce(ins)
        leaves = [tree.leaf(e * 0.5) for e in ins[:2]]
        states = [dn.concatenate([s.c() * 0.9, dn.tanh(s.h())]) * 1.0 for s in leaves]
        root = tree.node(states)
        terms = []
        for k, (h, b) in enumerate(zip(hs, bs)):
            z = h * dn.logistic(h) + 1.0 - h
            terms.append(mlp.pick_neg_log_softmax(z, k % 3))
            terms.append(dn.sum_elems(mlp_drop(z * 0.5) * 2.0))
            terms.append(dn.sum_elems(b[:4] * z))
        terms.append(dn.sum_elems(root.h() * root.h()))
        loss = dn.esum(terms)
        loss.backward()
        return ([loss.scalar_value()] + [e.gradient() for e in ins + xs]
                + [p.grad_as_array() for p in pc.parameters()], len(g), g.stats())


@pytest.mark.parametrize("autobatch", MODES)
def test_builders_over_pointwise_expressions(autobatch):
    _same_as_unfused(_builders, autobatch, 1e-10, 1e-12)


@pytest.mark.parametrize("autobatch", MODES)
def test_jvp_seeding_some_broadcasting_inputs(autobatch):
    rng = np.random.default_rng(21)
    values = [rng.normal(size=s) for s in SHAPES]
    tangents = [rng.normal(size=s) for s in SHAPES]

    def run(fuse, ab, which):
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=ab):
            v, m, c, col = leaves = [dn.inputs(a) for a in values]
            t = dn.tanh(v * m + col) - c * m / (m * m + 1.0)
            u = (1.0 - t) * c + v
            seeds = {leaves[k]: tangents[k] for k in which}
            return [dn.jvp(e, seeds) for e in (u, t, dn.sum_elems(u * t))]

    for which in ([0], [1], [2], [3], [0, 2], [1, 3]):
        for a, b in zip(run(True, autobatch, which), run(False, False, which)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def _xor(dy):
    """DyNet's xor example's shape: one graph built once, its inputs set and recomputed each
    step (the engine forgets its values), elementwise expressions read in between."""
    rng = np.random.default_rng(17)
    m = dy.ParameterCollection()
    W = m.parameters_from_numpy(rng.normal(size=(4, 2)) * 0.5)
    b = m.parameters_from_numpy(rng.normal(size=(4,)) * 0.5)
    V = m.parameters_from_numpy(rng.normal(size=(1, 4)) * 0.5)
    trainer = dy.SimpleSGDTrainer(m, 0.1)
    dy.renew_cg()
    x = dy.vecInput(2)
    y = dy.scalarInput(0)
    h = dy.tanh(W * x + b)
    g = dy.cmult(h, 1 - h) + h / 2
    out = dy.logistic(V * g)
    loss = -(y * dy.log(out)) - (1 - y) * dy.log(1 - out)
    seen = []
    for step in range(6):
        a, c = step % 2, (step // 2) % 2
        x.set([a, c])
        y.set(a != c)
        seen.append(loss.scalar_value())
        seen.append(g.npvalue())
        loss.backward()
        seen += [e.gradient() for e in (h, g, out)]
        trainer.update()
    return seen + [W.as_array(), V.as_array()]


def test_dynet_inputs_set_and_recomputed_equal_unfused(monkeypatch):
    import dynlp.dynet as dy
    from dynlp import graph as G
    got = _xor(dy)
    renew = G.renew_cg
    monkeypatch.setattr(G, "renew_cg", lambda **options: renew(fuse=False, **options))
    want = _xor(dy)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


CONSUMERS = {
    "elementwise": lambda p, z: dn.sum_elems(p * z),
    "constant": lambda p, z: dn.sum_elems(1.0 - p) * 0.5,
    "product": lambda p, z: dn.sum_elems(dn.inputs(np.eye(D)) @ p),
    "loss": lambda p, z: dn.pick_neg_log_softmax(p, 1),
    "twice": lambda p, z: dn.sum_elems(dn.tanh(p) * p),
}


def _orders(order, read, fuse, autobatch):
    rng = np.random.default_rng(19)
    x0, y0, z0 = rng.normal(size=(3, D))
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch):
        x, y, z = dn.inputs(x0), dn.inputs(y0), dn.inputs(z0)
        p = dn.tanh(x * y) + x
        unread = p * 3.0 - y   # never read
        terms = []
        for k, name in enumerate(order):
            if read == k:
                p.value()
            terms.append(CONSUMERS[name](p, z))
        loss = dn.esum(terms)
        loss.backward()
        return [p.gradient(), unread.gradient(), x.gradient(), y.gradient()] + \
            [t.gradient() for t in terms] + [np.array(t.value()) for t in terms]


@pytest.mark.parametrize("read", [None, 0, 1, 2])
@pytest.mark.parametrize("order", [("elementwise", "product", "twice"),
                                   ("product", "elementwise", "constant"),
                                   ("twice", "constant", "elementwise"),
                                   ("loss", "twice", "product"),
                                   ("constant",), ("twice",), ("product", "loss")])
def test_one_pointwise_read_in_every_order(order, read):
    """p read by one, two or three consumers (elementwise, products, a loss, p twice inside one
    program), its value read before any, after one or two of them, or never."""
    want = _orders(order, read, False, False)
    for autobatch in MODES:
        for a, b in zip(_orders(order, read, True, autobatch), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("autobatch", MODES)
def test_a_negative_zero_constant_keeps_its_sign(fuse, autobatch):
    """0.0 == -0.0 (and they hash alike): as a constant of a node's signature or of a fused
    program, -0.0 would be taken for 0.0, so arithmetic with -0.0 is written without it."""
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse):
        x = dn.inputs(np.array([1.0, -2.0]))
        a = dn.exp(x * 0.0)      # the program (mul_const 0.0, exp)
        b = dn.exp(x * -0.0)
        with np.errstate(divide="ignore"):
            inverses = (1.0 / (x * -0.0)).value(), (1.0 / (x * 0.0)).value()
        np.testing.assert_array_equal(a.value(), b.value())
        np.testing.assert_array_equal(inverses[0], [-np.inf, np.inf])
        np.testing.assert_array_equal(inverses[1], [np.inf, -np.inf])
        zeros = dn.inputs(np.array([0.0, -0.0]))
        for got, want in (((zeros + -0.0).value(), np.array([0.0, -0.0]) + -0.0),
                          ((zeros + 0.0).value(), np.array([0.0, -0.0]) + 0.0),
                          ((x * -0.0).value(), np.array([1.0, -2.0]) * -0.0)):
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def _dropped(fuse, autobatch):
    rng = np.random.default_rng(23)
    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch, seed=4) as g:
        terms, ps, leaves = [], [], []
        for _ in range(3):
            x, y = dn.inputs(rng.normal(size=(D, N))), dn.inputs(rng.normal(size=D))
            p = dn.tanh(x) * y - 1.0          # (D, N) against (D,)
            q = dn.dropout(p, 0.5)
            r = dn.dropout(q * q + p, 0.25) * 2.0
            terms.append(dn.sum_elems(r - dn.noise(p, 0.1)))
            ps += [p, q, r]
            leaves += [x, y]
        loss = dn.esum(terms)
        loss.backward()
        return ([loss.scalar_value()] + [e.gradient() for e in ps + leaves]
                + [np.array(e.value()) for e in ps], len(g), g.stats())


@pytest.mark.parametrize("autobatch", MODES)
def test_dropout_and_noise_on_pointwise_expressions(autobatch):
    _same_as_unfused(_dropped, autobatch, 1e-12, 1e-14)


def _tree_states(fuse, autobatch):
    """Random Tree-LSTMs written op by op (tests/test_pointwise.py's cells), some cells' c read
    while building: the gradients of every cell's h and c."""
    from test_pointwise import _leaf_cell, _tree_cell, _tree_params
    dim = 3
    pc, P, W, O = _tree_params(dim)  # noqa: E741
    B = pc.add_parameters((2,), init="normal", scale=0.5)
    rng = np.random.default_rng(6)
    cells = []

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            out = _leaf_cell(P, W, dn.inputs(rng.normal(size=dim)))
        else:
            out = _tree_cell(P, tree(depth - 1), tree(depth - 1))
        cells.append(out)
        if rng.random() < 0.2:
            out[1].value()
        return out

    with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch):
        roots = [tree(4) for _ in range(4)]
        loss = dn.esum([dn.pick_neg_log_softmax(O @ h + B, k % 2)
                        for k, (h, _) in enumerate(roots)])
        loss.backward()
        return [e.gradient() for cell in cells for e in cell] + \
            [p.grad_as_array() for p in pc.parameters()]


@pytest.mark.parametrize("autobatch", MODES)
def test_tree_lstm_cells_keep_the_gradients_of_their_states(autobatch):
    for a, b in zip(_tree_states(True, autobatch), _tree_states(False, False)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
