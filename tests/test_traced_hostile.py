"""`dn.fused` attacked: every model here is built twice, its cells under `@dn.fused` in a fused
graph and the same code as written under `fuse=False`, in float64 under every autobatch
strategy; losses, parameter gradients, values and gradients of outputs and windows, JVPs and
`nodes_before_fusion` must agree. Misuse must raise the project's errors with a message saying
what to do. The tests at the end are the bugs this file found, fixed: each names what was
wrong."""

import dataclasses

import numpy as np
import pytest

import dynlp as dn

STRATEGIES = [True, "late", "depth", "agenda", False]


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
    """A node whose two children are the same subtree: h and c each read twice by one call,
    and also read as nodes (tanh(h), c * 3) by the loss, c before the calls; one output left
    unused."""
    def model(g):
        rng = np.random.default_rng(5)
        x = g.leaf(rng.normal(size=D))
        h, c = tree_leaf(x)
        early = dn.tanh(c)  # (c read as a node before any call reads it: a node from then on)
        h2, c2 = tree_node(h, c, h, c)
        _, unused = tree_node(h2, c, h, c2)
        top, _ = tree_node(h2, c2, h2, c2)
        loss = dn.sum_elems(dn.tanh(h) + c * 3.0 + early) + dn.logsumexp(top)
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
            reads[f"x{chain}"], reads[f"h0 {chain}"] = xs[1], h0
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


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_values_read_while_building_choose_what_comes_next(autobatch):
    """Greedy decoding: each step's window is read (a forward pass) before the next call
    reads it in place; the loss depends on those choices."""
    def model(g):
        rng = np.random.default_rng(15)
        h = h0 = g.leaf(rng.normal(size=H))
        c = g.leaf(rng.normal(size=H))
        losses, reads, xs = [], {}, []
        for t in range(4):
            xs.append(g.leaf(rng.normal(size=D)))
            h, c = lstm(xs[-1], h, c)
            choice = int(np.argmax(h.npvalue()))
            losses.append(dn.logsumexp(dn.parameter(LSTM["O"]) @ h) * float(choice + 1))
            reads[f"h{t}"], reads[f"x{t}"] = h, xs[-1]
        return dn.esum(losses), reads, [xs[0], h0, LSTM["O"]]
    _check(LSTM_PC, model, autobatch)


@dn.fused
def unusual(x, y):
    """nobackprop, flip_gradient, average and esum of repeated terms inside."""
    n = dn.nobackprop(dn.tanh(x))
    flipped = dn.flip_gradient(dn.logistic(y))
    return (dn.tanh(n * y + flipped * x),
            dn.average([x, y, n]) + dn.esum([flipped, flipped, x]))


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_ops_with_unusual_gradients_inside(autobatch):
    def model(g):
        rng = np.random.default_rng(16)
        x, y = _leaves(g, rng, (H,), (H,))
        a, b = unusual(x, y)
        a2, b2 = unusual(b, a)
        loss = dn.sum_elems(a2 * b2) + dn.sum_elems(a)
        return loss, {"value a": a, "b": b, "a2": a2, "b2": b2, "x": x, "y": y}, [x, y]
    _check(dn.ParameterCollection(dtype=np.float64), model, autobatch)


def test_two_losses_backward_in_turn():
    """The second backward's gradients replace the first's, windows' and arguments' alike."""
    got = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x, h, c = g.leaf(np.ones(D)), g.leaf(np.full(H, 0.5)), g.leaf(np.full(H, -0.5))
            h1, c1 = lstm(x, h, c)
            h2, _ = lstm(x, h1, c1)
            dn.sum_elems(h2).backward()
            first = [h1.gradient(), h.gradient(), x.gradient()]
            dn.sum_elems(h1 * 3.0).backward()
            got[fuse] = first + [h1.gradient(), h.gradient(), h2.gradient()]
        LSTM_PC.clear_grads()
    for want, have in zip(got[False], got[True]):
        np.testing.assert_allclose(have, want, rtol=1e-10, atol=1e-12)


BOTH_PC, BOTH = _collection({"W": (H, H), "b": (H,)}, seed=9)


@dn.fused
def shared_and_stacked(x):
    """Parameters read both as weights shared by all calls (W @ x) and as values of each call
    (sum_dim(W), transpose(W), b * x)."""
    W, b = dn.parameter(BOTH["W"]), dn.parameter(BOTH["b"])
    y = dn.tanh(W @ x + b)
    return y * dn.sum_dim(W, [1]) + b * x + dn.transpose(W) @ y, dn.logistic(b) * y


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_parameters_read_as_weights_and_as_values_in_one_function(autobatch):
    def model(g):
        rng = np.random.default_rng(17)
        xs = _leaves(g, rng, (H,), (H,), (H,))
        outs = [shared_and_stacked(x) for x in xs]
        a, _ = shared_and_stacked(outs[0][1])
        loss = dn.esum([dn.sum_elems(o[0] * o[1]) for o in outs]) + dn.logsumexp(a)
        return loss, {"value a": a, "x": xs[0]}, [xs[1], BOTH["W"], BOTH["b"]]
    _check(BOTH_PC, model, autobatch)


@dn.fused
def gate(s, x):
    """A scalar argument; outputs of length 1 among longer ones."""
    return dn.logistic(s) * x, dn.reshape(dn.sum_elems(x) * s, (1,)), dn.tanh(x[1:2])


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_a_scalar_argument_and_outputs_of_length_one(autobatch):
    def model(g):
        rng = np.random.default_rng(18)
        s, x = g.leaf(np.array(0.3)), g.leaf(rng.normal(size=H))
        a, b, c = gate(s, x)
        a2, b2, c2 = gate(dn.sum_elems(b) + dn.sum_elems(c), a)
        loss = dn.sum_elems(a2 * a) + dn.sum_elems(b2) * 2.0 + dn.sum_elems(c2 * c)
        return loss, {"a2": a2, "b2": b2, "c": c, "value b": b, "s": s}, [s, x]
    _check(dn.ParameterCollection(dtype=np.float64), model, autobatch)


LIB_PC = dn.ParameterCollection(seed=10, dtype=np.float64)
LIB_LSTM = dn.LSTMBuilder(2, D, H, LIB_PC)
LIB_GRU = dn.GRUBuilder(1, D, H, LIB_PC)
LIB_MLP = dn.MLP(LIB_PC, [H, 5, 3])


@dn.fused
def library_step(x, c0, c1, h0, h1):
    """A step of the library's two-layer LSTMBuilder: its state, c's then h's."""
    return tuple(LIB_LSTM.initial_state([c0, c1, h0, h1]).add_input(x).s())


@dn.fused
def library_head(h):
    return LIB_MLP(h)


@dn.fused
def library_gru(x, h):
    return LIB_GRU.initial_state([h]).add_input(x).output()


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_the_librarys_builders_inside_fused_functions(autobatch):
    """(Not counted: outputs that are lazy slices, test_a_lazy_slice_output_is_counted.)"""
    def model(g):
        rng = np.random.default_rng(19)
        state = _leaves(g, rng, *[(H,)] * 4)
        losses, reads, first = [], {}, None
        for t in range(3):
            x = g.leaf(rng.normal(size=D))
            first = first or x
            state = list(library_step(x, *state))
            gh = library_gru(x, state[2])
            losses += [dn.logsumexp(library_head(state[3])), dn.sum_elems(gh * state[1])]
            reads[f"value h{t}"], reads[f"gh{t}"] = state[3], gh
        return dn.esum(losses), reads, [first, LIB_LSTM.params[0][0]]
    _check(LIB_PC, model, autobatch, count=False)


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


def test_float32_graphs_and_float64_graphs_in_a_row():
    """The dtype is part of the kind of call: a float32 graph between two float64 ones gets
    float32 values close to the float64 ones, and the float64 graphs stay exact."""
    model = _lstm_model(steps=3, seed=2)
    want = _measure(LSTM_PC, model, False, True)
    for dtype in (np.float64, np.float32, np.float64):
        got = _measure(LSTM_PC, model, True, True, dtype=dtype)
        if dtype is np.float64:
            _same(want, got)
        else:
            assert got["h2"].dtype == np.float32
            del got["nodes_before_fusion"]
            _same({k: v for k, v in want.items() if k in got}, got, rtol=2e-4, atol=2e-5)


EMB_PC, EMB = _collection({"W": (H, D), "b": (H,)}, seed=7)
EMBEDDINGS = EMB_PC.add_lookup_parameters((6, D), name="E")


@dn.fused
def embed(x, W):
    """A Parameter object (not an expression) as a static argument."""
    return dn.tanh(W @ x + dn.parameter(EMB["b"])), x * 2.0


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_lookup_rows_passed_in_and_a_parameter_as_a_static_argument(autobatch):
    def model(g):
        outs = [embed(EMBEDDINGS[i], EMB["W"]) for i in (1, 3, 1, 5)]
        loss = dn.esum([dn.sum_elems(y * y) + dn.logsumexp(z) for y, z in outs])
        return loss, {"y0": outs[0][0], "z3": outs[3][1]}, [EMB["W"], EMB["b"]]
    _check(EMB_PC, model, autobatch)
    for fuse in (False, True):  # (the sparse gradient of the lookup table, beside)
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
            model(g)[0].backward()
        if fuse is False:
            want = EMBEDDINGS.grad_as_array()
        else:
            np.testing.assert_allclose(EMBEDDINGS.grad_as_array(), want, rtol=1e-10)
        EMB_PC.clear_grads()


@dn.fused
def recursive(x, n):
    return dn.tanh(x) if n == 0 else dn.tanh(recursive(x, n - 1) * 2.0 + x)


@pytest.mark.parametrize("autobatch", [True, False])
def test_a_fused_function_calling_itself_with_a_smaller_static_argument(autobatch):
    def model(g):
        x = g.leaf(np.linspace(-1.0, 1.0, 5))
        ys = [recursive(x, n) for n in (0, 3, 2)]
        return dn.sum_elems(ys[0] * ys[1] + ys[2]), {"y1": ys[1]}, [x]
    _check(dn.ParameterCollection(dtype=np.float64), model, autobatch)


def test_renew_cg_stays_the_current_graph_through_a_trace():
    """A graph made by renew_cg (no `with` block) is still the current one after a call that
    traces, and after one whose trace failed."""
    g = dn.renew_cg(dtype=np.float64)
    x = dn.inputs(np.ones(D))
    h, _ = tree_leaf(x)
    assert dn.current_graph() is g
    with pytest.raises(dn.ShapeError):
        tree_leaf(dn.inputs(np.ones(D + 1)))
    assert dn.current_graph() is g
    np.testing.assert_allclose((h + dn.inputs(np.ones(H))).npvalue(), h.npvalue() + 1.0)
    g.close()


# -- misuse: the project's errors, with advice -----------------------------------------------------

def _error(fn, *shapes, error=dn.GraphError, match=None, static=()):
    with dn.Graph(dtype=np.float64) as g:
        args = [g.leaf(np.ones(s)) for s in shapes]
        with pytest.raises(error, match=match):
            dn.fused(fn)(*args, *static)
        # the graph is still usable, and so is the function under fuse=False (as written)
        assert dn.current_graph() is g
        np.testing.assert_allclose(dn.sum_elems(args[0] * 2.0).scalar_value(),
                                   2.0 * np.prod(shapes[0]))


@pytest.mark.parametrize("body", [
    lambda x: dn.dropout(x, 0.5),
    lambda x: dn.noise(x, 0.1),
    lambda x: dn.tanh(EMBEDDINGS[2] + x[:D]),
    lambda x: dn.pick_neg_log_softmax(x, 1),
    lambda x: dn.pick(x, 1) * x,
    lambda x: dn.hinge(x, 0),
    lambda x: dn.tanh(dn.select_rows(dn.reshape(x, (2, 2)), [0])),
], ids=["dropout", "noise", "lookup", "pick_neg_log_softmax", "pick", "hinge", "select_rows"])
def test_per_call_data_inside_is_refused_with_advice(body):
    _error(body, (H,), match="outside the function and pass the result in")


def test_dropout_is_refused_when_training_and_nothing_when_not():
    """A trace follows the caller's graph: dropout inside draws masks when training (refused:
    they would be the same for every call) and is the identity when not, as unfused."""
    f = dn.fused(lambda x: dn.tanh(dn.dropout(x, 0.5)))
    with dn.Graph(dtype=np.float64) as g:
        with pytest.raises(dn.GraphError, match="dropout"):
            f(g.leaf(np.ones(3)))
    for fuse in (True, False):
        with dn.Graph(dtype=np.float64, training=False, fuse=fuse) as g:
            np.testing.assert_allclose(f(g.leaf(np.full(3, 0.5))).npvalue(), np.tanh(0.5))


@pytest.mark.parametrize("read", [
    lambda e: e.npvalue(), lambda e: e.value(), lambda e: e.scalar_value(),
    lambda e: e.forward(), lambda e: e.backward(),
], ids=["npvalue", "value", "scalar_value", "forward", "backward"])
def test_reading_a_computed_value_inside_is_refused(read):
    def body(x):
        y = dn.sum_elems(dn.tanh(x))
        read(y)
        return y * 2.0
    _error(body, (H,), match="cannot read values")


@pytest.mark.parametrize("body", [
    lambda x: x,
    lambda x: dn.parameter(EMB["b"]),
    lambda x: EMB["b"],
], ids=["argument", "parameter", "parameter object"])
def test_returning_an_argument_or_a_parameter_unchanged_is_refused(body):
    _error(body, (H,), match="must compute what it returns|must return an expression")


@pytest.mark.parametrize("body", [
    lambda x: 3.0, lambda x: None, lambda x: (), lambda x: [], lambda x: (dn.tanh(x), 3),
    lambda x: np.ones(3), lambda x: {"h": dn.tanh(x)},
], ids=["float", "None", "empty tuple", "empty list", "tuple with a float", "array", "dict"])
def test_returning_what_is_not_an_expression_is_refused(body):
    _error(body, (H,), match="must return an expression")


@pytest.mark.parametrize("body, shape", [
    (lambda x: (dn.tanh(x), dn.tanh(x)), (2, 2)),
    (lambda x: (dn.tanh(x), dn.sum_elems(x)), (H,)),
    (lambda x: (dn.outer(x, x), dn.tanh(x)), (H,)),
], ids=["matrices", "a scalar", "a matrix and a vector"])
def test_several_outputs_that_are_not_vectors_are_refused(body, shape):
    _error(body, shape, match="must be a vector")


@pytest.mark.parametrize("static", [[1, 2], {"n": 1}, np.ones(2), {1}],
                         ids=["list", "dict", "array", "set"])
def test_unhashable_static_arguments_are_refused(static):
    _error(lambda x, s: dn.tanh(x), (H,), match="hashable", static=(static,))


def test_a_shape_error_inside_is_a_shape_error_and_is_not_remembered():
    f = dn.fused(lambda x: dn.tanh(dn.parameter(EMB["W"]) @ x))
    with dn.Graph(dtype=np.float64) as g:
        with pytest.raises(dn.ShapeError, match="matmul"):
            f(g.leaf(np.ones(D + 1)))
        assert not f.traces
        np.testing.assert_allclose(f(g.leaf(np.zeros(D))).npvalue(), np.zeros(H))


def test_arguments_of_other_graphs_are_refused():
    f = dn.fused(lambda x, y: dn.tanh(x + y))
    with dn.Graph(dtype=np.float64) as ended:
        old = ended.leaf(np.ones(H))
        h, _ = tree_leaf(ended.leaf(np.ones(D)))
    other = dn.Graph(dtype=np.float64)
    live = other.leaf(np.ones(H))
    with dn.Graph(dtype=np.float64) as g:
        x = g.leaf(np.ones(H))
        with pytest.raises(dn.GraphError, match="has ended"):
            f(old, x)
        with pytest.raises(dn.GraphError, match="has ended"):
            f(h, x)  # (a window of an ended graph)
        with pytest.raises(dn.GraphError, match="different graphs|has ended"):
            f(x, old)  # (the first argument's graph is the call's)
        with pytest.raises(dn.GraphError, match="different graphs"):
            f(x, live)
    other.close()


def test_returning_an_expression_of_the_callers_graph_is_refused():
    with dn.Graph(dtype=np.float64) as g:
        captured = dn.tanh(g.leaf(np.ones(H)))
        h, c = tree_leaf(g.leaf(np.ones(D)))
        for f in (dn.fused(lambda x: captured), dn.fused(lambda x: (dn.tanh(x), h))):
            with pytest.raises(dn.GraphError, match="must return an expression of its graph"):
                f(g.leaf(np.ones(H)))


def test_an_expression_captured_from_another_graph_is_refused():
    with dn.Graph(dtype=np.float64) as first:
        captured = first.leaf(np.ones(H))
        f = dn.fused(lambda x: dn.tanh(x + captured))
        with dn.Graph(dtype=np.float64) as g:
            with pytest.raises(dn.GraphError):
                f(g.leaf(np.ones(H)))


# -- known bugs ------------------------------------------------------------------------------------

@dn.fused
def squash_and_keep(x):
    y = x * 2.0
    return dn.tanh(y), y


@pytest.mark.parametrize("f", [squash_and_keep, dn.fused(lambda x: (x * 2.0,) * 2)],
                         ids=["computed from", "the same expression twice"])
def test_gradient_of_an_output_that_another_output_is_computed_from(f):
    got = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            h, c = f(g.leaf(np.array([0.1, -0.4, 0.3])))
            dn.sum_elems(dn.tanh(h)).backward()
            got[fuse] = c.gradient()  # (h's path to the loss starts at c: c's gradient)
    np.testing.assert_allclose(got[True], got[False], rtol=1e-12)


def test_reading_an_argument_value_inside_is_refused():
    @dn.fused
    def branch(x):
        return dn.tanh(x) if x.npvalue()[0] > 0.5 else dn.exp(x)
    with dn.Graph(dtype=np.float64) as g:
        with pytest.raises(dn.GraphError, match="cannot read values"):
            branch(g.leaf(np.ones(3)))


class Configured:
    """A layer equal to any other of its size (a value-like class): equal, not the same."""

    def __init__(self, pc, n):
        self.n = n
        self.W = pc.add_parameters((n, n))

    def __eq__(self, other):
        return isinstance(other, Configured) and other.n == self.n

    def __hash__(self):
        return hash(self.n)

    @dn.fused
    def __call__(self, x):
        return dn.tanh(dn.parameter(self.W) @ x)


def test_static_arguments_equal_but_not_the_same_make_two_kinds():
    pc = dn.ParameterCollection(seed=8, dtype=np.float64)
    first, second = Configured(pc, 3), Configured(pc, 3)
    got = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x = g.leaf(np.ones(3))
            got[fuse] = [first(x).npvalue(), second(x).npvalue()]
    np.testing.assert_allclose(got[True], got[False], rtol=1e-12)


@dataclasses.dataclass
class DataLayer:
    """A model as a plain dataclass (eq=True: equal by fields, so unhashable)."""

    W: dn.Parameter

    @dn.fused
    def __call__(self, x):
        return dn.tanh(dn.parameter(self.W) @ x)


def test_a_method_of_a_dataclass():
    layer = DataLayer(dn.ParameterCollection(seed=9, dtype=np.float64).add_parameters((3, 3)))
    with dn.Graph(dtype=np.float64) as g:
        x = g.leaf(np.ones(3))
        np.testing.assert_allclose(layer(x).npvalue(), np.tanh(layer.W.value @ np.ones(3)))


def test_a_constant_made_inside_is_counted_once():
    f = dn.fused(lambda x: dn.tanh(x + dn.inputs(CONSTANT)))
    counts = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            dn.esum([dn.sum_elems(f(g.leaf(np.ones(H)))) for _ in range(3)]).value()
            counts[fuse] = g.stats()["nodes_before_fusion"]
    assert counts[True] == counts[False]


def test_a_lazy_slice_output_is_counted():
    builder = dn.LSTMBuilder(1, D, H, dn.ParameterCollection(seed=11, dtype=np.float64))
    f = dn.fused(lambda x, c, h: builder.initial_state([c, h]).add_input(x).output())
    counts = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            x, c, h = g.leaf(np.ones(D)), g.leaf(np.ones(H)), g.leaf(np.ones(H))
            dn.sum_elems(f(x, c, h)).value()
            counts[fuse] = g.stats()["nodes_before_fusion"]
    assert counts[True] == counts[False]


def _dropout_builder():
    builder = dn.LSTMBuilder(1, 6, H, dn.ParameterCollection(seed=12, dtype=np.float64))
    builder.set_dropout(0.5)
    return builder, dn.fused(lambda x, c, h: builder.initial_state([c, h]).add_input(x).output())


def test_a_builder_with_dropout_inside_is_refused():
    _, f = _dropout_builder()
    with dn.Graph(dtype=np.float64) as g:
        with pytest.raises(dn.GraphError):
            f(g.leaf(np.ones(6)), g.leaf(np.ones(H)), g.leaf(np.ones(H)))


def test_a_builder_with_dropout_inside_does_not_drop_when_not_training():
    builder, f = _dropout_builder()
    got = {}
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse, training=False) as g:
            got[fuse] = f(g.leaf(np.ones(6)), g.leaf(np.ones(H)), g.leaf(np.ones(H))).npvalue()
    np.testing.assert_allclose(got[True], got[False], rtol=1e-12)


def test_keyword_arguments():
    f = dn.fused(lambda x, scale=1.0: dn.tanh(x) * scale)
    for fuse in (False, True):
        with dn.Graph(dtype=np.float64, fuse=fuse) as g:
            try:
                y = f(g.leaf(np.ones(3)), scale=2.0)
            except TypeError as e:
                raise AssertionError(f"TypeError: {e}") from None
            np.testing.assert_allclose(y.npvalue(), 2.0 * np.tanh(np.ones(3)))


@pytest.mark.parametrize("how", ["closure", "tuple"])
def test_an_expression_not_passed_as_an_argument_is_explained(how):
    with dn.Graph(dtype=np.float64) as g:
        a, b = g.leaf(np.ones(H)), g.leaf(np.ones(H))
        if how == "closure":
            args, f = (a,), dn.fused(lambda x: dn.tanh(x + b))
        else:
            args, f = ((a, b), a), dn.fused(lambda kids, x: dn.tanh(dn.esum(list(kids)) + x))
        with pytest.raises(dn.GraphError, match="argument"):
            f(*args)


def test_tracing_leaves_the_global_seed_alone():
    f = dn.fused(lambda x: dn.tanh(x * 2.0))

    def masks(fuse):
        dn.seed(5)
        out = []
        for _ in range(2):
            with dn.Graph(dtype=np.float64, fuse=fuse) as g:
                out.append(f(dn.dropout(g.leaf(np.ones(16)), 0.5)).npvalue())
        return out
    previous = dn.get_seed()
    try:
        want = masks(False)
        np.testing.assert_array_equal(masks(True), want)  # (traces: the first run)
        np.testing.assert_array_equal(masks(True), want)
    finally:
        dn.seed(previous)


def test_the_function_runs_once_per_kind_of_call():
    runs = []

    @dn.fused
    def f(x):
        runs.append(x.shape)
        return dn.tanh(x)
    with dn.Graph(dtype=np.float64) as g:
        for n in (3, 3, 4, 3, 4):
            f(g.leaf(np.ones(n)))
    assert runs == [(3,), (4,)]
