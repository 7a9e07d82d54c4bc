"""`dn.fused` attacked: every model here is built twice, its cells under `@dn.fused` in a fused
graph and the same code as written under `fuse=False`, in float64 under every autobatch
strategy; losses, parameter gradients, values and gradients of outputs and windows, JVPs and
`nodes_before_fusion` must agree. Misuse must raise the project's errors with a message saying
what to do. Known bugs are `xfail(strict=True)` with their reason."""

import numpy as np
import pytest

import dynlp as dn

STRATEGIES = [True, "late", "depth", "agenda", False]
PROJECT_ERRORS = (dn.GraphError, dn.ShapeError, dn.SettingError)


def _collection(shapes, seed=0, dtype=np.float64):
    pc = dn.ParameterCollection(seed=seed, dtype=dtype)
    return pc, {name: pc.add_parameters(shape, name=name) for name, shape in shapes.items()}


def _measure(pc, model, fuse, autobatch, dtype=np.float64):
    """Run model(g) -> (loss, {name: expression to read}, [jvp seeds]) in one graph: the loss,
    its JVP along fixed random tangents of the seeds, values and gradients of the reads (values
    only for names starting "value "), `nodes_before_fusion`, and every parameter's
    gradient."""
    got = {}
    pc.clear_grads()
    with dn.Graph(dtype=dtype, fuse=fuse, autobatch=autobatch) as g:
        loss, reads, seeds = model(g)
        rng = np.random.default_rng(7)
        if seeds:
            got["jvp"] = dn.jvp(loss, {k: rng.normal(size=k.shape) for k in seeds})
        got["loss"] = loss.scalar_value()
        loss.backward()
        for name, e in reads.items():
            got[name] = e.npvalue()
            if not name.startswith("value "):
                got[name + ".gradient"] = e.gradient()
        got["nodes_before_fusion"] = g.stats()["nodes_before_fusion"]
    for p in pc.parameters_list():
        got["grad " + p.name] = p.grad_as_array()
    pc.clear_grads()
    return got


def _same(want, got, rtol=1e-10, atol=1e-12):
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def _check(pc, model, autobatch, fuses=(True, "regions"), count=True):
    """The model under each of `fuses` against fuse=False. nodes_before_fusion is compared for
    fuse=True alone (under "regions" the engine's pending sums can count one node more than
    fuse=False, dn.fused or not), and not at all with `count=False` (a constant made inside a
    fused function is counted twice: test_a_constant_made_inside_is_counted_once)."""
    want = _measure(pc, model, False, autobatch)
    for fuse in fuses:
        got, expected = _measure(pc, model, fuse, autobatch), dict(want)
        if not count or fuse is not True:
            del got["nodes_before_fusion"], expected["nodes_before_fusion"]
        _same(expected, got)


def _leaves(g, rng, *shapes):
    return [g.leaf(rng.normal(size=s)) for s in shapes]


# -- cells written op by op ------------------------------------------------------------------------

D, H = 3, 4
LSTM_PC, LSTM = _collection({"Wx": (4 * H, D), "Wh": (4 * H, H), "b": (4 * H,), "O": (5, H)})


@dn.fused
def lstm(x, h, c):
    """One LSTM step, gates as slices of one product."""
    gates = dn.parameter(LSTM["Wx"]) @ x + dn.parameter(LSTM["Wh"]) @ h + dn.parameter(LSTM["b"])
    i = dn.logistic(dn.pick_range(gates, 0, H))
    f = dn.logistic(dn.pick_range(gates, H, 2 * H) + 1.0)
    o = dn.logistic(gates[2 * H:3 * H])
    u = dn.tanh(gates[3 * H:])
    c = f * c + i * u
    return o * dn.tanh(c), c


def _lstm_model(steps=4, seed=0):
    def model(g):
        rng = np.random.default_rng(seed)
        xs = _leaves(g, rng, *[(D,)] * steps)
        h0, c0 = _leaves(g, rng, (H,), (H,))
        h, c = h0, c0
        losses, reads = [], {}
        for t, x in enumerate(xs):
            h, c = lstm(x, h, c)
            reads[f"h{t}"], reads[f"value c{t}"] = h, c
            losses.append(dn.logsumexp(dn.parameter(LSTM["O"]) @ h))
        return dn.esum(losses) + dn.sum_elems(c * c), reads, [xs[0], h0, LSTM["Wh"]]
    return model


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_lstm_over_a_sequence(autobatch):
    _check(LSTM_PC, _lstm_model(), autobatch)


def test_lstm_over_sequences_of_several_lengths_in_one_graph():
    """Examples of several lengths in one graph: calls of one kind batch across them."""
    def model(g):
        parts, reads, seeds = [], {}, []
        for k, steps in enumerate((1, 3, 5)):
            loss, r, s = _lstm_model(steps, seed=k)(g)
            parts.append(loss)
            reads.update({f"{n} {k}": e for n, e in r.items()})
            seeds += s[:2]
        return dn.esum(parts), reads, seeds + [LSTM["b"]]
    for autobatch in STRATEGIES:
        _check(LSTM_PC, model, autobatch)


GRU_PC, GRU = _collection({"Wz": (H, D), "Uz": (H, H), "Wr": (H, D), "Ur": (H, H),
                           "Wn": (H, D), "Un": (H, H), "bz": (H,), "br": (H,), "bn": (H,)},
                          seed=1)


@dn.fused
def gru(x, h):
    """One GRU step: a single output (an Expression, not windows)."""
    p = {k: dn.parameter(v) for k, v in GRU.items()}
    z = dn.logistic(p["Wz"] @ x + p["Uz"] @ h + p["bz"])
    r = dn.logistic(p["Wr"] @ x + p["Ur"] @ h + p["br"])
    n = dn.tanh(p["Wn"] @ x + p["Un"] @ (r * h) + p["bn"])
    return (1.0 - z) * n + z * h


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_gru_over_a_sequence_reading_every_state(autobatch):
    def model(g):
        rng = np.random.default_rng(3)
        xs = _leaves(g, rng, *[(D,)] * 4)
        h = h0 = g.leaf(rng.normal(size=H))
        reads = {}
        for t, x in enumerate(xs):
            h = gru(x, h)
            reads[f"h{t}"] = h
        return dn.sum_elems(dn.softmax(h) * h), reads, [h0, xs[2], GRU["Un"]]
    _check(GRU_PC, model, autobatch)


TREE_PC, TREE = _collection({"W": (3 * H, D), "U": (3 * H, 2 * H), "Uf1": (H, H),
                             "Uf2": (H, H), "b": (3 * H,), "bf": (H,), "O": (3, H), "bO": (3,)},
                             seed=2)


@dn.fused
def tree_leaf(x):
    gates = dn.parameter(TREE["W"]) @ x + dn.parameter(TREE["b"])
    i, o, u = (gates[k * H:(k + 1) * H] for k in range(3))
    c = dn.logistic(i) * dn.tanh(u)
    return dn.logistic(o) * dn.tanh(c), c


@dn.fused
def tree_node(h1, c1, h2, c2):
    e = dn.concatenate([h1, h2])
    gates = dn.parameter(TREE["U"]) @ e + dn.parameter(TREE["b"])
    i, o, u = (gates[k * H:(k + 1) * H] for k in range(3))
    f1 = dn.logistic(dn.parameter(TREE["Uf1"]) @ h1 + dn.parameter(TREE["bf"]))
    f2 = dn.logistic(dn.parameter(TREE["Uf2"]) @ h2 + dn.parameter(TREE["bf"]))
    c = dn.logistic(i) * dn.tanh(u) + f1 * c1 + f2 * c2
    return dn.logistic(o) * dn.tanh(c), c


def _tree(g, rng, depth, reads, name="t"):
    if depth == 0:
        h, c = tree_leaf(g.leaf(rng.normal(size=D)))
    else:
        h1, c1 = _tree(g, rng, depth - 1, reads, name + "l")
        h2, c2 = _tree(g, rng, max(0, depth - 1 - (rng.random() < 0.5)), reads, name + "r")
        h, c = tree_node(h1, c1, h2, c2)
    reads[name + ".h"], reads["value " + name + ".c"] = h, c
    return h, c


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_tree_lstm_over_a_forest(autobatch):
    def model(g):
        rng = np.random.default_rng(4)
        reads, losses = {}, []
        for k in range(3):
            h, _ = _tree(g, rng, 2 + k % 2, reads, f"tree{k}")
            losses.append(dn.pick_neg_log_softmax(dn.parameter(TREE["O"]) @ h + TREE["bO"], k))
        return dn.esum(losses), reads, [TREE["U"], TREE["bf"]]
    _check(TREE_PC, model, autobatch)


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_one_window_passed_twice_and_read_as_a_node_too(autobatch):
    """A node whose two children are the same subtree: h and c each read twice in place by one
    call, and also read as nodes (tanh(h), c * 3) by the loss; one output left unused."""
    def model(g):
        rng = np.random.default_rng(5)
        x = g.leaf(rng.normal(size=D))
        h, c = tree_leaf(x)
        h2, c2 = tree_node(h, c, h, c)
        _, unused = tree_node(h2, c, h, c2)
        top, _ = tree_node(h2, c2, h2, c2)
        loss = dn.sum_elems(dn.tanh(h) + c * 3.0) + dn.logsumexp(top)
        reads = {"h": h, "value c": c, "h2": h2, "value c2": c2, "top": top}
        return loss, reads, [x, TREE["Uf1"]]
    _check(TREE_PC, model, autobatch)


# -- random cells composed from the op table -------------------------------------------------------

RAND_PC, RAND = _collection({"A": (H, H), "c": (H,), "B": (H, 2 * H), "d": (H,),
                             "C": (2, H)}, seed=3)
CONSTANT = np.array([0.5, -1.0, 2.0, 0.25])


def _p(name):
    return dn.parameter(RAND[name])


UNARY = [
    dn.tanh, dn.logistic, dn.sin, dn.cos, dn.softplus, dn.elu, dn.selu, dn.log_sigmoid,
    lambda a: dn.log(dn.exp(a) + 1.0),
    lambda a: dn.sqrt(dn.square(a) + 1.0),
    lambda a: dn.cube(a * 0.5) - a,
    lambda a: dn.softmax(a) * 4.0,
    dn.log_softmax,
    lambda a: -a * 0.5 + 0.25,
    lambda a: dn.tanh(_p("A") @ a + _p("c")),
    lambda a: _p("A") @ a + _p("c"),
    lambda a: dn.transpose(_p("C")) @ a[2:] + a * 0.1,
    lambda a: a * dn.sum_elems(a) * 0.1,
    lambda a: a - dn.logsumexp(a),
    lambda a: a * dn.mean_elems(dn.square(a)),
    lambda a: dn.concatenate([a[2:], a[:2]]),
    lambda a: dn.reshape(dn.reshape(a, (2, 2)) * 2.0, (H,)),
    lambda a: dn.concatenate([dn.transpose(dn.reshape(a, (2, 2))) @ a[:2], a[2:]]),
    lambda a: dn.power(dn.square(a) + 1.0, 1.5),
]
# ops that make a constant inside the function
WITH_CONSTANT = [
    lambda a: a + dn.inputs(CONSTANT),
    lambda a: a * dn.inputs(CONSTANT) + dn.l2_norm(a),
    lambda a: dn.softmax(dn.concatenate_cols([a, a * 2.0]), 1) @ dn.inputs(np.array([1.0, -1.0])),
]
UNARY += WITH_CONSTANT
BINARY = [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
    lambda a, b: dn.cdiv(a, dn.square(b) + 1.0),
    lambda a, b: dn.maximum(a, b) + dn.minimum(a, b * 0.5),
    lambda a, b: dn.tanh(_p("B") @ dn.concatenate([a, b]) + _p("d")),
    lambda a, b: _p("A") @ a + _p("A") @ b + _p("c"),
    lambda a, b: dn.concatenate([a[:2], b[1:3]]),
    lambda a, b: a * dn.dot_product(a, b) * 0.1,
    lambda a, b: dn.outer(a, b) @ a * 0.1,
    lambda a, b: dn.sum_dim(dn.outer(a, b), 1) * 0.1,
    lambda a, b: dn.max_dim(dn.outer(a, b), 0),
    lambda a, b: dn.logsumexp(dn.concatenate_cols([a, b]), 1),
    lambda a, b: a * dn.squared_distance(a, b) * 0.05,
    lambda a, b: dn.mean_dim(dn.concatenate_cols([a, b, a * b]), 1),
]


def _random_cell(seed, outputs):
    """A function of two vectors (H,) made of random ops from the lists above."""
    rng = np.random.default_rng(seed)
    recipe = []
    for step in range(int(rng.integers(3, 8))):
        if rng.random() < 0.5:
            recipe.append((int(rng.integers(len(UNARY))), UNARY, 1))
        else:
            recipe.append((int(rng.integers(len(BINARY))), BINARY, 2))
    picks = [tuple(int(k) for k in rng.integers(0, 2 + j, size=2)) for j in range(len(recipe))]

    def cell(x, h):
        pool = [x, h]
        for (k, table, arity), (i, j) in zip(recipe, picks):
            pool.append(table[k](pool[i]) if arity == 1 else table[k](pool[i], pool[j]))
        # every value is read (dead code makes nodes under fuse=False, not in the trace); the
        # second output may be an argument, returned as it is
        last = pool[-1] if len(pool) == 3 else pool[-1] + dn.esum(pool[2:-1]) * 0.1
        if outputs == 1:
            return dn.tanh(last)
        return last, pool[1 + len(pool) // 2]
    cell.__qualname__ = f"random_cell_{seed}_{outputs}"
    constants = any(table is UNARY and UNARY[k] in WITH_CONSTANT for k, table, _ in recipe)
    return dn.fused(cell), constants


def _random_model(cell, seed):
    def model(g):
        rng = np.random.default_rng(seed)
        losses, reads, seeds = [], {}, []
        for chain in range(2):
            xs = _leaves(g, rng, *[(H,)] * 3)
            h = h0 = g.leaf(rng.normal(size=H) * 0.5)
            c = None
            seeds += [xs[0], h0]
            for t, x in enumerate(xs):
                out = cell(x, h if c is None else c)
                h, c = (out, None) if isinstance(out, dn.Expression) else out
                reads[f"value h{chain}.{t}"] = h
                losses.append(dn.logsumexp(h * 0.5))
            if c is not None:
                reads[f"value c{chain}"] = c
                losses.append(dn.sum_elems(dn.tanh(c)))
            reads[f"h{chain}"] = h  # (the last output: its gradient is its consumers' alone)
        return dn.esum(losses), reads, seeds + [RAND["A"], RAND["d"]]
    return model


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("outputs", [1, 2])
def test_random_cells(seed, outputs):
    cell, constants = _random_cell(seed, outputs)
    for autobatch in STRATEGIES:
        _check(RAND_PC, _random_model(cell, seed), autobatch, count=not constants)


# -- kinds of call: shapes, static arguments, methods, nesting -------------------------------------

@dn.fused
def mix(x, y):
    """Any shapes with x's leading length equal to y's: no parameter, shapes decide the ops."""
    s = dn.softmax(x) if len(x.shape) == 1 else dn.sum_dim(dn.softmax(x, 1), 1)
    return dn.tanh(s * y) + dn.logsumexp(y) * 0.5


@dn.fused
def matrices(m, v):
    """m: (n, k), v: (n,) -> (k,): transpose, reshape, sums along axes, products of arguments."""
    n, k = m.shape
    t = dn.transpose(m) @ v
    r = dn.reshape(m, (k, n)) @ dn.logistic(v)
    col = dn.sum_dim(dn.square(m), 0) + dn.mean_dim(m, [0])
    return dn.tanh(t + r) * col + dn.max_dim(m, 0)


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_one_function_called_with_several_shapes_in_one_graph(autobatch):
    def model(g):
        rng = np.random.default_rng(8)
        outs, reads, seeds = [], {}, []
        for k, n in enumerate((3, 5, 3, 5, 2)):
            x, y = _leaves(g, rng, (n,), (n,))
            m = g.leaf(rng.normal(size=(n, 4)))
            a = mix(x, y)
            b = mix(m, y)  # (a matrix argument: another kind)
            c = matrices(m, a)
            reads[f"a{k}"], reads[f"b{k}"], reads[f"c{k}"] = a, b, c
            outs += [dn.sum_elems(a * b), dn.logsumexp(c)]
            seeds += [x, m]
        return dn.esum(outs), reads, seeds
    _check(dn.ParameterCollection(dtype=np.float64), model, autobatch)


DEEP_PC, DEEP = _collection({"A": (H, H), "c": (H,)}, seed=4)


@dn.fused
def deep(x, n, activation):
    """n layers of `activation` (a static int and a static string)."""
    for _ in range(n):
        x = getattr(dn, activation)(dn.parameter(DEEP["A"]) @ x + dn.parameter(DEEP["c"]))
    return x


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_static_arguments_make_kinds_of_call(autobatch):
    """n = 1, 2, 3 and True (not 1: its type differs) and two activations in one graph."""
    def model(g):
        rng = np.random.default_rng(9)
        x = g.leaf(rng.normal(size=H))
        ys = [deep(x, n, act) for n in (1, 2, 3, True) for act in ("tanh", "logistic")]
        ys.append(deep(deep(x, 2, "tanh"), 1, "tanh"))
        return (dn.esum([dn.sum_elems(y * float(k + 1)) for k, y in enumerate(ys)]),
                {f"y{k}": y for k, y in enumerate(ys)}, [x, DEEP["A"]])
    _check(DEEP_PC, model, autobatch)


class Layer:
    """A cell as a method: `self` (hashed by identity) is a static argument."""

    def __init__(self, pc, n):
        self.W = pc.add_parameters((n, n))
        self.b = pc.add_parameters((n,))

    @dn.fused
    def __call__(self, x, scale):
        return dn.tanh(dn.parameter(self.W) @ x + dn.parameter(self.b)) * scale

    @dn.fused
    def pair(self, x):
        y = self(x, 2.0)  # (a fused method calling another: nested)
        return y, dn.logistic(y) + x


LAYER_PC = dn.ParameterCollection(seed=5, dtype=np.float64)
LAYERS = [Layer(LAYER_PC, H), Layer(LAYER_PC, H), Layer(LAYER_PC, 2)]


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_methods_of_several_instances_and_nested_fused_calls(autobatch):
    def model(g):
        rng = np.random.default_rng(10)
        x, z = _leaves(g, rng, (H,), (2,))
        a, b = LAYERS[0].pair(x)
        c, d = LAYERS[1].pair(b)
        e = LAYERS[0](d, 0.5)
        f, _ = LAYERS[2].pair(z)
        loss = dn.sum_elems(a + c + e) + dn.logsumexp(f)
        reads = {"value a": a, "b": b, "value c": c, "d": d, "e": e, "value f": f}
        return loss, reads, [x, z]
    _check(LAYER_PC, model, autobatch)


@dn.fused
def outer_cell(x, h, c):
    """A fused function reading another's windows inside, and passing them on."""
    h1, c1 = lstm(x, h, c)
    h2, c2 = lstm(x, h1, c1)
    return dn.tanh(h2 + h1), c2 * 0.5


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_nested_fused_functions_over_a_sequence(autobatch):
    def model(g):
        rng = np.random.default_rng(11)
        xs = _leaves(g, rng, *[(D,)] * 3)
        h = h0 = g.leaf(rng.normal(size=H))
        c = g.leaf(rng.normal(size=H))
        reads = {}
        for t, x in enumerate(xs):
            h, c = outer_cell(x, h, c)
            reads[f"h{t}"], reads[f"value c{t}"] = h, c
        return dn.sum_elems(h * c), reads, [h0, xs[1], LSTM["Wx"]]
    _check(LSTM_PC, model, autobatch)


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_windows_read_together_apart_and_by_plain_ops(autobatch):
    """The two windows of one call concatenated back, added, sliced, given to jvp directly."""
    def model(g):
        rng = np.random.default_rng(12)
        x, h, c = _leaves(g, rng, (D,), (H,), (H,))
        h1, c1 = lstm(x, h, c)
        both = dn.concatenate([h1, c1])
        swapped = dn.concatenate([c1, h1])
        loss = (dn.sum_elems(both * swapped) + dn.sum_elems(h1 + c1) + dn.logsumexp(h1[1:3])
                + dn.dot_product(c1, h1))
        return loss, {"h1": h1, "value c1": c1, "both": both, "swapped": swapped}, [x, c]
    _check(LSTM_PC, model, autobatch)


def test_jvp_of_windows_and_of_a_single_output():
    rng = np.random.default_rng(13)
    arrays = [rng.normal(size=s) for s in ((D,), (H,), (H,))]
    tangents = [rng.normal(size=a.shape) for a in arrays]
    got = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x, h, c = [g.leaf(a) for a in arrays]
            h1, c1 = lstm(x, h, c)
            h2 = gru(x, h1)
            seeds = dict(zip((x, h, c), tangents))
            got[fuse] = [dn.jvp(e, seeds) for e in (h1, c1, h2)]
    for want, have in zip(got[False], got[True]):
        np.testing.assert_allclose(have, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("autobatch", [True, "agenda", False])
def test_gradcheck_through_fused_nodes(autobatch):
    def f(x, h, c):
        h1, c1 = lstm(x, h, c)
        h2, c2 = lstm(x * 0.5, h1, c1)
        t, tc = tree_node(h1, c1, h2, c2)
        return dn.concatenate([gru(x, t), tc, mix(h2, c1)])
    rng = np.random.default_rng(14)
    assert dn.gradcheck(f, rng.normal(size=D), rng.normal(size=H), rng.normal(size=H),
                        autobatch=autobatch)


# -- across graphs ---------------------------------------------------------------------------------

def test_calls_in_graphs_in_a_row_read_updated_parameters():
    """A trace holds parameters, not their values: after each update (a trainer's, a
    set_value) the fused graph still equals the unfused one; one trace serves every graph."""
    saved = {k: p.as_array() for k, p in LSTM.items()}
    trainer = dn.SimpleSGDTrainer(LSTM_PC, learning_rate=0.5)
    model = _lstm_model(steps=3, seed=1)
    try:
        traces = None
        for step in range(4):
            _same(_measure(LSTM_PC, model, False, True), _measure(LSTM_PC, model, True, "agenda"))
            traces = traces or len(lstm.traces)
            assert len(lstm.traces) == traces
            with dn.Graph(dtype=np.float64) as g:
                model(g)[0].backward()
            trainer.update()
            LSTM["Wh"].set_value(LSTM["Wh"].as_array() * 1.1)
            LSTM_PC.clear_grads()
    finally:
        for k, v in saved.items():
            LSTM[k].set_value(v)
