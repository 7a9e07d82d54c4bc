"""The Windows a `dn.fused` call returns (made by `dynlp.traced._windows`, slots set without the
constructor) attacked: in every use they must answer as Windows made by `Window(...)` over the
same node (the calls rerun with `_windows` swapped for the constructor: values, gradients,
stats, the graph's nodes and op names equal bit for bit) and as the same code unfused (fuse=False
and fuse="regions", float64, values and gradients to 1e-10)."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import traced
from dynlp.graph import Window

MODES = [True, "late", "depth", "agenda", False]
D = 3


CONSTRUCTED = []  # (the calls whose windows _by_constructor made)


def _by_constructor(g, node, outputs):
    """What `_windows` stands for: one `Window(...)` per output."""
    CONSTRUCTED.append(node)
    made = []
    for windows, width, kind, position in outputs:
        w = Window(g, node, windows, kind, position)
        assert w.width == width  # (the width kept per trace is the window's)
        made.append(w)
    return tuple(made)


class Cells:
    """A leaf cell (x -> h, c), a node cell over two children and a three-output cell."""

    def __init__(self, seed=3):
        pc = self.pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
        self.Wl = pc.add_parameters((2 * D, D), init="normal", scale=0.6, name="Wl")
        self.bl = pc.add_parameters((2 * D,), init="normal", scale=0.6, name="bl")
        self.U = pc.add_parameters((3 * D, 2 * D), init="normal", scale=0.6, name="U")
        self.Uf = pc.add_parameters((D, D), init="normal", scale=0.6, name="Uf")
        self.O = pc.add_parameters((4, D), init="normal", scale=0.6, name="O")
        self.V = pc.add_parameters((D, D), init="normal", scale=0.6, name="V")
        self.mlp = dn.MLP(pc, [D, 5, 4])
        self.lstm = dn.LSTMBuilder(1, D, D, pc)

    @dn.fused
    def leaf(self, x):
        z = dn.parameter(self.Wl) @ x + dn.parameter(self.bl)
        c = dn.tanh(z[:D]) * dn.logistic(z[D:])
        return dn.tanh(c) * 0.5 + c, c

    @dn.fused
    def node(self, h1, c1, h2, c2):
        z = dn.parameter(self.U) @ dn.concatenate([h1, h2])
        f1 = dn.logistic(dn.parameter(self.Uf) @ h1)
        c = dn.logistic(z[:D]) * dn.tanh(z[D:2 * D]) + f1 * c1 + dn.logistic(z[2 * D:]) * c2
        return dn.tanh(c), c

    @dn.fused
    def three(self, a, b):
        s = dn.tanh(dn.parameter(self.V) @ a + b)
        return s, s * b, dn.logistic(a - b)


@dn.fused
def scaled(k, x, y):
    """A static first argument: the graph comes from a later one."""
    return x * float(k) + y, dn.tanh(x - y)


def _run(cells, build, fuse=True, autobatch="late", constructor=False, monkeypatch=None):
    """build(cells, g) -> (loss, {name: expression}) in a float64 graph; every value read twice
    (before and after backward), every gradient, the loss, the parameters' gradients, and the
    graph's stats and ops. With `constructor`, the calls' outputs are made by Window(...)."""
    if constructor:
        monkeypatch.setattr(traced, "_windows", _by_constructor)
    cells.pc.clear_grads()
    got = {}
    try:
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
            loss, reads = build(cells, g)
            for name, e in reads.items():
                got["before " + name] = e.npvalue()
            rng = np.random.default_rng(5)
            got["jvp"] = dn.jvp(loss, {p: rng.normal(size=p.shape)
                                       for p in cells.pc.parameters_list()})
            got["loss"] = loss.scalar_value()
            loss.backward()
            for name, e in reads.items():
                got[name] = e.npvalue()
                got[name + " again"] = e.npvalue()
                got["d " + name] = e.gradient()
                got["d " + name + " again"] = e.gradient()
            stats = {k: v for k, v in g.stats().items() if not k.startswith("seconds")}
            ops = [g.ops[n].name for n in range(len(g))]
            args = [tuple(g.args[n]) for n in range(len(g))]
    finally:
        if constructor:
            monkeypatch.undo()
    for p in cells.pc.parameters_list():
        got["grad " + p.name] = p.grad_as_array()
    cells.pc.clear_grads()
    return got, stats, ops, args


def _close(want, got, rtol=1e-10, atol=1e-12):
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def _check(build, autobatch="late", seed=3):
    """Call-made windows against constructor-made ones (bit for bit, the same graph) and the
    same code under fuse=False and fuse="regions" (1e-10)."""
    mp = pytest.MonkeyPatch()
    fast, fast_stats, fast_ops, fast_args = _run(Cells(seed), build, True, autobatch)
    CONSTRUCTED.clear()
    slow, slow_stats, slow_ops, slow_args = _run(Cells(seed), build, True, autobatch,
                                                 constructor=True, monkeypatch=mp)
    assert CONSTRUCTED and traced._windows is not _by_constructor
    assert fast.keys() == slow.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)
    assert fast_stats == slow_stats
    assert fast_ops == slow_ops and fast_args == slow_args
    assert any(op.startswith("fused:") for op in fast_ops)
    plain, plain_stats, *_ = _run(Cells(seed), build, False, autobatch)
    _close(plain, fast)
    # (as the same code unfused; + 1 where a fused softmax loss reads `O @ x`: its zero bias,
    # one per graph, a window's x or an expression's alike)
    assert fast_stats["nodes_before_fusion"] - plain_stats["nodes_before_fusion"] in (0, 1)
    regions, _, region_ops, _ = _run(Cells(seed), build, "regions", autobatch)
    assert not any(op.startswith("fused:") for op in region_ops)
    _close(plain, regions)
    return fast


def _x(g, k):
    rng = np.random.default_rng(k)
    return dn.inputs(rng.normal(size=D))


# -- uses of a call's outputs ----------------------------------------------------------------------
def _read_only(cells, g):
    """Outputs read by nothing but the loss (one of them) and by value()/gradient()."""
    h, c = cells.leaf(_x(g, 0))
    return dn.sum_elems(h), {"h": h, "c": c}


def _into_another_call(cells, g):
    h1, c1 = cells.leaf(_x(g, 1))
    h2, c2 = cells.leaf(_x(g, 2))
    h, c = cells.node(h1, c1, h2, c2)
    return dn.sum_elems(h * h) + dn.sum_elems(c), {"h1": h1, "c1": c1, "h2": h2, "c2": c2,
                                                   "h": h, "c": c}


def _same_window_twice_and_swapped(cells, g):
    """One call's windows passed twice to one call, then swapped (c before h) to another."""
    h1, c1 = cells.leaf(_x(g, 3))
    h, c = cells.node(h1, c1, h1, c1)
    k, m = cells.node(c1, h1, c, h)
    return dn.sum_elems(k) + dn.sum_elems(m * h), {"h1": h1, "c1": c1, "h": h, "c": c,
                                                   "k": k, "m": m}


def _softmax_loss(cells, g):
    """`W @ w` then pick_neg_log_softmax: the loss reads the call's node through the window."""
    h1, c1 = cells.leaf(_x(g, 4))
    h2, c2 = cells.leaf(_x(g, 5))
    h, c = cells.node(h1, c1, h2, c2)
    O = dn.parameter(cells.O)  # noqa: E741
    loss = dn.esum([dn.pick_neg_log_softmax(O @ h, 1), dn.pick_neg_log_softmax(O @ h1, 3),
                    dn.pick_neg_log_softmax(O @ c2, 0)])
    return loss, {"h": h, "c": c, "h1": h1, "c1": c1, "h2": h2, "c2": c2}


def _concatenations(cells, g):
    """Windows concatenated: of one call, of two calls, with a plain expression."""
    h1, c1 = cells.leaf(_x(g, 6))
    h2, c2 = cells.leaf(_x(g, 7))
    both = dn.concatenate([h1, c1])
    across = dn.concatenate([h1, h2])
    mixed = dn.concatenate([_x(g, 8), c2, h1])
    loss = dn.sum_elems(dn.tanh(both)) + dn.sum_elems(across * across) + dn.sum_elems(mixed)
    return loss, {"h1": h1, "c1": c1, "h2": h2, "c2": c2, "both": both, "across": across,
                  "mixed": mixed}


def _ordinary_ops(cells, g):
    """tanh, +, *, a scalar, sums and a product read the windows as nodes."""
    h, c = cells.leaf(_x(g, 9))
    t = dn.tanh(h) + c
    u = h * c - 2.0 * h
    v = dn.parameter(cells.V) @ c + h
    return dn.sum_elems(t) + dn.sum_elems(u * v), {"h": h, "c": c, "t": t, "u": u, "v": v}


def _in_place_then_as_node(cells, g):
    """A window read in place by a call and as a node, in both orders."""
    h1, c1 = cells.leaf(_x(g, 10))
    h, c = cells.node(h1, c1, h1, c1)   # in place first ...
    t1 = dn.tanh(c1)                   # ... then a node
    h2, c2 = cells.leaf(_x(g, 11))
    t2 = dn.logistic(h2)               # a node first ...
    k, m = cells.node(h2, c2, h, c)    # ... then read by a call
    loss = dn.sum_elems(t1 * k) + dn.sum_elems(t2) + dn.sum_elems(m)
    return loss, {"h1": h1, "c1": c1, "h2": h2, "c2": c2, "h": h, "c": c, "k": k, "m": m}


def _plain(cells, g):
    h, c = cells.leaf(_x(g, 12))
    kept = h.plain()
    again = h.plain()
    loss = dn.pick_neg_log_softmax(dn.parameter(cells.O) @ kept, 2) + dn.sum_elems(again * c)
    return loss, {"kept": kept, "again": again, "c": c}


def _three_outputs(cells, g):
    a, b, s = cells.three(_x(g, 13), _x(g, 14))
    p, q, r = cells.three(s, a)          # windows of one node as both arguments
    x, y, z = cells.three(q, _x(g, 15))
    return dn.sum_elems(p * r) + dn.sum_elems(dn.concatenate([y, z, b])) + dn.sum_elems(x), \
        {"a": a, "b": b, "s": s, "p": p, "q": q, "r": r, "x": x, "y": y, "z": z}


def _static_first(cells, g):
    """A static first argument (no graph of its own): the graph is the expressions'."""
    h, c = cells.leaf(_x(g, 16))
    u, v = scaled(3, h, c)
    w, z = scaled(0.5, u, _x(g, 17))
    return dn.sum_elems(w * v) + dn.sum_elems(dn.tanh(z)), {"h": h, "c": c, "u": u, "v": v,
                                                             "w": w, "z": z}


def _a_forest(cells, g):
    """Binary trees of calls, a softmax loss at every node, across several examples."""
    rng = np.random.default_rng(21)
    losses, reads = [], {}
    O = dn.parameter(cells.O)  # noqa: E741

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            out = cells.leaf(dn.inputs(rng.normal(size=D)))
        else:
            out = cells.node(*tree(depth - 1), *tree(depth - 1))
        losses.append(dn.pick_neg_log_softmax(O @ out[0], len(losses) % 4))
        return out

    for k in range(4):
        h, c = tree(3)
        reads[f"h{k}"], reads[f"c{k}"] = h, c
    return dn.esum(losses) + dn.sum_elems(reads["c0"]), reads


def _picks_and_reductions(cells, g):
    h, c = cells.leaf(_x(g, 18))
    k, m = cells.leaf(_x(g, 19))
    parts = [dn.pick(h, 2), dn.sum_elems(h[1:]), dn.dot_product(h, c), dn.logsumexp(k),
             dn.pick_neg_log_softmax(m, 1), dn.squared_distance(c, k), dn.sum_elems(dn.cmult(m, h))]
    return dn.esum(parts), {"h": h, "c": c, "k": k, "m": m}


def _library_layers(cells, g):
    """An MLP (scores and its fused loss) and an LSTMBuilder over a call's windows."""
    h, c = cells.leaf(_x(g, 20))
    k, m = cells.leaf(_x(g, 21))
    outputs = cells.lstm.initial_state([c, h]).transduce([k, m, h])
    loss = cells.mlp.pick_neg_log_softmax(m, 2) + dn.sum_elems(cells.mlp(c)) \
        + dn.sum_elems(outputs[-1]) + cells.mlp.pick_neg_log_softmax(outputs[0], 1)
    return loss, {"h": h, "c": c, "k": k, "m": m}


BUILDS = [_picks_and_reductions, _library_layers, _read_only, _into_another_call,
          _same_window_twice_and_swapped, _softmax_loss, _concatenations, _ordinary_ops,
          _in_place_then_as_node, _plain, _three_outputs, _static_first, _a_forest]


@pytest.mark.parametrize("autobatch", MODES)
@pytest.mark.parametrize("build", BUILDS, ids=[b.__name__.strip("_") for b in BUILDS])
def test_call_windows_answer_as_constructed_windows_and_as_unfused(build, autobatch):
    got = _check(build, autobatch)
    assert any(np.any(v != 0.0) for k, v in got.items() if k.startswith("d "))


def test_outputs_are_windows_with_every_slot_set():
    cells = Cells()
    with dn.Graph(dtype=np.float64) as g:
        h, c = cells.leaf(_x(g, 0))
        a, b, s = cells.three(h, c)
        for w, width in ((h, D), (c, D), (a, D), (b, D), (s, D)):
            assert type(w) is Window
            assert w.g is g and w._node < 0 and not w._fused and w.readers is None
            assert w.counted is True and w.width == width == w.shape[0] == w.dim()[0]
            assert len(w.sources) == 1 and w.windows[0][1] - w.windows[0][0] == width
            assert w.kind == ("window", g.shapes[w.sources[0]], w.windows[0])
            assert "node" in repr(w) and "shape=(3,)" in repr(w)
        assert h.sources == c.sources and a.sources == b.sources == s.sources
        assert h.sources != a.sources
        assert [w.windows[0] for w in (a, b, s)] == [(0, D), (D, 2 * D), (2 * D, 3 * D)]
        h2, c2 = cells.leaf(_x(g, 1))
        # (the windows and kinds are kept per trace: equal for every call of one kind)
        assert h2.windows == h.windows and h2.kind == h.kind and h2.sources != h.sources


def test_a_function_reused_across_graphs_and_after_clear():
    """Calls in a row of graphs, before and after `clear()`, and after the parameters changed:
    each graph's windows answer as the same code unfused in that graph."""
    cells = Cells()
    results = []
    for round_ in range(4):
        if round_ == 2:
            cells.leaf.clear()
            cells.node.clear()
            type(cells).leaf.clear()
            cells.Wl.value[...] *= 0.5  # (read at each graph: no clear needed for values)
        fused, *_ = _run(cells, _softmax_loss)
        plain, *_ = _run(cells, _softmax_loss, fuse=False)
        _close(plain, fused)
        results.append(fused["loss"])
    assert results[0] == results[1] and results[2] == results[3] and results[1] != results[2]


def test_windows_of_an_ended_graph_refuse_everything():
    cells = Cells()
    with dn.Graph(dtype=np.float64) as g:
        h, c = cells.leaf(_x(g, 0))
        a, b, s = cells.three(h, c)
        loss = dn.sum_elems(a)
        loss.backward()
        assert np.all(np.isfinite(h.npvalue()))
    for w in (h, c, a, s):
        with pytest.raises(dn.GraphError, match="ended"):
            w.npvalue()
        with pytest.raises(dn.GraphError, match="ended"):
            w.gradient()
        with pytest.raises(dn.GraphError, match="ended"):
            w.plain()
    with dn.Graph(dtype=np.float64) as g2:
        x = _x(g2, 1)
        with pytest.raises(dn.GraphError, match="ended"):
            cells.leaf(h)                 # an ended window first
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            cells.node(h, c, h, c)
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            cells.three(x, c)             # a live expression first, an ended window after
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            scaled(2, x, c)
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            dn.tanh(h)
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            x + c
        with pytest.raises(dn.GraphError, match="ended|different graphs"):
            dn.concatenate([x, h])
        assert np.all(np.isfinite(dn.sum_elems(cells.leaf(x)[0]).scalar_value()))


def test_windows_of_two_live_graphs_are_not_combined():
    """Two graphs alive at once (the outer one's `with` still open): a call over both refuses,
    whichever comes first, and so do ordinary ops."""
    cells = Cells()
    with dn.Graph(dtype=np.float64) as outer:
        h, c = cells.leaf(_x(outer, 0))
        with dn.Graph(dtype=np.float64) as inner:
            k, m = cells.leaf(_x(inner, 1))
            for args in ((h, c, k, m), (k, m, h, c), (k, c, h, m)):
                with pytest.raises(dn.GraphError, match="different graphs"):
                    cells.node(*args)
            with pytest.raises(dn.GraphError, match="different graphs"):
                scaled(1, k, h)
            with pytest.raises(dn.GraphError, match="different graphs"):
                k + h
            # a call over the outer graph's windows, made while the inner one is current,
            # goes into the outer graph
            p, q = cells.node(h, c, h, c)
            assert p.g is outer and q.g is outer
        assert np.all(np.isfinite(p.npvalue()))
        got = (p.npvalue(), dn.sum_elems(q).scalar_value())
    with dn.Graph(dtype=np.float64, fuse=False) as g:
        h, c = cells.leaf(_x(g, 0))
        p, q = cells.node(h, c, h, c)
        want = (p.npvalue(), dn.sum_elems(q).scalar_value())
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
    assert got[1] == pytest.approx(want[1], rel=1e-10)


def test_gradient_before_backward_is_refused_and_values_before_and_after_agree():
    cells = Cells()
    with dn.Graph(dtype=np.float64) as g:
        h, c = cells.leaf(_x(g, 0))
        with pytest.raises(dn.GraphError, match="backward"):
            h.gradient()
        first = c.npvalue()
        k, m = cells.node(h, c, h, c)     # built on after a value was read
        loss = dn.sum_elems(k * m)
        loss.backward()
        np.testing.assert_array_equal(c.npvalue(), first)
        assert np.any(h.gradient() != 0.0)


def test_the_first_argument_is_not_trusted_for_its_graph_when_it_is_no_expression():
    """An object that carries a `g` of another (live) graph as the first, static argument: the
    call still goes into the expressions' graph, as the same code unfused does."""
    class Holder:
        def __init__(self, g):
            self.g = g

        def __hash__(self):
            return 1

        def __eq__(self, other):
            return isinstance(other, Holder)

    @dn.fused
    def f(holder, x, y):
        return x * y + x, dn.tanh(y)

    with dn.Graph(dtype=np.float64) as outer:
        with dn.Graph(dtype=np.float64) as g:
            x, y = _x(g, 0), _x(g, 1)
            a, b = f(Holder(outer), x, y)
            assert a.g is g and b.g is g
            np.testing.assert_allclose(a.npvalue(), x.npvalue() * y.npvalue() + x.npvalue())


def test_windows_outlive_the_traces_they_were_made_by():
    """More kinds of call than a function remembers (MAX_TRACES: its traces are forgotten and
    remade): the windows made before still answer as the same code unfused."""
    @dn.fused
    def f(k, x, y):
        return x * (k % 7 - 3.0) + y, dn.tanh(y * (k % 5))

    def build(fuse):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x, y = _x(g, 0), _x(g, 1)
            outs = [f(k, x, y) for k in range(traced.MAX_TRACES + 40)]
            again = f(0, *outs[0])  # (the first kind again, after its trace was forgotten)
            loss = dn.sum_elems(dn.esum([a * b for a, b in outs[::37]])) + dn.sum_elems(again[1])
            loss.backward()
            return [loss.scalar_value()] + [w.npvalue() for w in outs[0] + again] + \
                [w.gradient() for w in outs[0] + outs[-1]]

    fused, plain = build(True), build(False)
    assert len(f.traces) <= traced.MAX_TRACES
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
