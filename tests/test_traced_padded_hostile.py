"""Hostile checks of dn.fused over sequences of different lengths (padded batches): each fused
function against the same code run as written (fuse=False) in float64, under every strategy,
padded or not: values, gradients of inputs and parameters, JVPs, nothing non-finite."""

import itertools

import numpy as np
import pytest

import dynlp as dn
from dynlp.traced import Window

MODES = ["late", "depth", "agenda", False]
D, K = 3, 4
MIXED = (3, 1, 5, 2, 2, 7, 1, 4, 16, 3)  # (length 1, equal lengths, one long outlier)


def _model(seed=7):
    pc = dn.ParameterCollection(seed=seed, dtype=np.float64)
    P = {
        "W": pc.add_parameters((K, D), init="normal", scale=0.5),
        "b": pc.add_parameters((K, 1), init="normal", scale=0.5),
        "bv": pc.add_parameters((K,), init="normal", scale=0.5),
        "v": pc.add_parameters((1, K), init="normal", scale=0.5),
        "U": pc.add_parameters((D, D), init="normal", scale=0.5),
        "c": pc.add_parameters((D,), init="normal", scale=0.5),
        "s": pc.add_parameters((1,), init="normal", scale=0.5),
    }
    return pc, P


# each case: (name, argument shapes as functions of the length, the function's body)
def _attend(P, X, h):
    scores = dn.transpose(dn.parameter(P["v"]) @ dn.tanh(dn.parameter(P["W"]) @ X
                                                          + dn.parameter(P["b"])))
    return X @ dn.softmax(scores) + h


def _log_probs(P, a, X):  # (-inf, then log: -inf in the padding of a value read with zeros)
    return X @ dn.log(dn.softmax(a) + 1e-3)


def _danger(P, X):  # (log, sqrt, exp, logistic over padding)
    Y = dn.sqrt(dn.exp(X) + 1.0) * dn.logistic(X) + dn.log(dn.square(X) + 0.5)
    return dn.tanh(dn.parameter(P["U"]) @ Y)


def _vector(P, v):
    return dn.softmax(dn.tanh(v) * 2.0 + v)


def _column(P, c):  # (a sequence's scores as a column (L, 1))
    return dn.logistic(dn.tanh(c) * c + 1.0)


def _rows(P, X):  # (the length in the first dimension: (L, d))
    return dn.tanh(X @ dn.parameter(P["U"]) + dn.transpose(dn.reshape(dn.parameter(P["c"]),
                                                                        (D, 1))))


def _affine(P, X, Y):
    return dn.affine_transform([dn.parameter(P["bv"]), dn.parameter(P["W"]), X,
                                dn.parameter(P["W"]), Y], activation="tanh")


def _contract(P, X, a):  # (batched matmul over the length, then a vector)
    return dn.tanh(X @ a) * dn.parameter(P["c"])


def _no_pad(P, X):  # (sums over the length: cannot pad)
    return dn.tanh(dn.sum_dim(X, 1)) + dn.max_dim(X, 1) + dn.logsumexp(dn.transpose(X), 0)


def _pick_cols(P, X):  # (pick_range and concatenate_cols: cannot pad)
    Y = dn.concatenate_cols([dn.pick_range(X, 0, 1, dim=1), dn.tanh(X)])
    return dn.sum_dim(Y, 1)


def _two_fills(P, a, X):  # (a read by softmax (-inf) and by the product (zero))
    return X @ dn.softmax(a) + X @ a


def _edge_and_zero(P, X, a):  # (X read by tanh (edge) and by the product (zero))
    return dn.tanh(X) @ a + X @ a


def _outputs(P, X, h):  # (several outputs: windows)
    ctx = dn.reshape(X @ dn.softmax(dn.transpose(dn.parameter(P["v"]) @ (dn.parameter(P["W"])
                                                                           @ X))), (D,))
    return dn.tanh(ctx + h), dn.logistic(ctx), dn.reshape(dn.sum_dim(dn.square(X), 1), (D,))


def _scaled(P, a, X):  # (a parameter (1,) times a vector: its axis only at length 1)
    return X @ dn.softmax(dn.parameter(P["s"]) * a)


CASES = {
    "attend": (_attend, [lambda n: (D, n), lambda n: (D,)]),
    "log_probs": (_log_probs, [lambda n: (n,), lambda n: (D, n)]),
    "danger": (_danger, [lambda n: (D, n)]),
    "vector": (_vector, [lambda n: (n,)]),
    "column": (_column, [lambda n: (n, 1)]),
    "rows": (_rows, [lambda n: (n, D)]),
    "affine": (_affine, [lambda n: (D, n), lambda n: (D, n)]),
    "contract": (_contract, [lambda n: (D, n), lambda n: (n,)]),
    "no_pad": (_no_pad, [lambda n: (D, n)]),
    "pick_cols": (_pick_cols, [lambda n: (D, n)]),
    "two_fills": (_two_fills, [lambda n: (n,), lambda n: (D, n)]),
    "edge_and_zero": (_edge_and_zero, [lambda n: (D, n), lambda n: (n,)]),
    "outputs": (_outputs, [lambda n: (D, n), lambda n: (D,)]),
    "scaled": (_scaled, [lambda n: (n,), lambda n: (D, n)]),
}


def _fresh(name, body, P):
    """A fused function of its own (a new qualname: its own op in fusion._TRACED)."""
    def fn(*xs):
        return body(P, *xs)
    fn.__qualname__ = f"hostile_{name}_{next(_COUNTER)}"
    return dn.fused(fn)


_COUNTER = itertools.count()


def _run(name, fuse, autobatch, pad=True, lengths=MIXED, dtype=np.float64, twice=False):
    body, shapes = CASES[name]
    pc, P = _model()
    f = _fresh(name, body, P)
    rng = np.random.default_rng(11)
    data = [[rng.normal(size=s(n)) for s in shapes] for n in lengths]
    with dn.Graph(dtype=dtype, fuse=fuse, autobatch=autobatch, pad=pad) as g:
        inputs, terms = [], []
        for arrays in data:
            xs = [dn.inputs(a) for a in arrays]
            inputs += xs
            out = f(*xs)
            outs = out if isinstance(out, tuple) else (out,)
            if twice:  # (a second level over the first's output)
                outs = [f(*xs[:-1], dn.tanh(outs[0]))]
            terms += [dn.sum_elems(dn.square(o)) * (k + 1) for k, o in enumerate(outs)]
        total = dn.esum(terms)
        seeds = {inputs[0]: np.ones(inputs[0].shape), P["W"]: np.ones((K, D))}
        tangent = dn.jvp(total, seeds)
        value = total.scalar_value()
        total.backward()
        grads = [x.gradient().copy() for x in inputs]
        grads += [p.grad_as_array().copy() for p in pc.parameters()]
        stats = g.stats()
        ops = {g.ops[o.i] if not isinstance(o, Window) else g.ops[o.sources[0]] for o in outs}
    return value, tangent, grads, stats, ops


def _check(name, autobatch, pad=True, lengths=MIXED, twice=False):
    got = _run(name, True, autobatch, pad, lengths, twice=twice)
    want = _run(name, False, autobatch, pad, lengths, twice=twice)
    assert np.isfinite(got[0]) and np.isfinite(got[1])
    assert got[0] == pytest.approx(want[0], rel=1e-11)
    assert got[1] == pytest.approx(want[1], rel=1e-9, abs=1e-10)
    for a, b in zip(got[2], want[2]):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    return got


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("autobatch", MODES)
@pytest.mark.parametrize("name", sorted(set(CASES) - {"scaled"}))
def test_fused_over_mixed_lengths_equals_unfused(name, autobatch, pad):
    _check(name, autobatch, pad)


# (two_fills and edge_and_zero read an argument with two fills: the engine pads it with the
# first step's, and the program refills it for the other)
PADS = ["log_probs", "danger", "vector", "column", "affine", "two_fills", "edge_and_zero"]
REFUSES = ["no_pad", "pick_cols"]


@pytest.mark.parametrize("name", PADS)
def test_calls_of_different_lengths_batch_padded(name):
    # (lengths 3, 2, 2, 1, 3 and 5 fall in a few power-of-two ranges: fewer batches padded)
    lengths = (3, 2, 2, 3, 5, 6, 7, 4)
    *_, padded, ops = _check(name, "late", True, lengths)
    *_, unpadded, _ = _run(name, True, "late", False, lengths)
    assert all(op.takes_lengths for op in ops)
    assert padded["forward_batches"] < unpadded["forward_batches"]


@pytest.mark.parametrize("name", ["attend", "contract"])
def test_an_elementwise_step_after_a_contraction_still_pads(name):
    lengths = (3, 2, 2, 3, 5, 6, 7, 4)
    *_, ops = _check(name, "late", True, lengths)
    assert all(op.takes_lengths for op in ops)


def test_a_length_in_the_first_dimension_is_correct_though_it_does_not_pad():
    # ((L, d) @ U: the product's rule pads along the contraction, d here, never along L: calls
    # of different lengths never share a signature, and the values are the unfused code's)
    lengths = (3, 2, 2, 3, 5, 6, 7, 4)
    _check("rows", "late", True, lengths)
    pc, P = _model()
    body, shapes = CASES["rows"]
    f = _fresh("rows", body, P)
    with dn.Graph(dtype=np.float64) as g:
        nodes = [f(*[dn.inputs(np.ones(s(n))) for s in shapes]).i for n in lengths]
        by_sig = {}
        for n, length in zip(nodes, lengths):
            by_sig.setdefault(g.sigs[n], set()).add(length)
        assert all(len(s) == 1 for s in by_sig.values())


@pytest.mark.parametrize("name", REFUSES)
def test_a_program_that_cannot_pad_never_batches_lengths_together(name):
    lengths = (3, 2, 2, 3, 5, 6, 7, 4)
    _check(name, "late", True, lengths)
    pc, P = _model()
    body, shapes = CASES[name]
    f = _fresh(name, body, P)
    with dn.Graph(dtype=np.float64) as g:
        outs = [f(*[dn.inputs(np.ones(s(n))) for s in shapes]) for n in lengths]
        nodes = [o.i for o in outs]
        assert not any(g.ops[n].takes_lengths for n in nodes)
        by_sig = {}
        for n, length in zip(nodes, lengths):
            by_sig.setdefault(g.sigs[n], set()).add(length)
        assert all(len(s) == 1 for s in by_sig.values())


@pytest.mark.parametrize("autobatch", MODES)
@pytest.mark.parametrize("name", ["attend", "vector"])
def test_a_second_level_over_a_padded_output(name, autobatch):
    _check(name, autobatch, True, twice=True)


@pytest.mark.parametrize("lengths", [(1,), (1, 1, 1), (4, 4, 4, 4), (2, 40),
                                     (1, 2, 3, 4, 5, 6, 7, 8)])
@pytest.mark.parametrize("name", ["attend", "log_probs", "column", "rows", "outputs"])
def test_lengths_of_one_equal_lengths_and_an_outlier(name, lengths):
    _check(name, "late", True, lengths)


@pytest.mark.parametrize("autobatch", ["late", "agenda"])
def test_a_first_trace_of_length_one_sets_the_probe_for_all(autobatch):
    _check("scaled", autobatch, True, (1, 3, 2, 3, 5))


def test_a_first_trace_of_a_longer_length_is_fine():
    _check("scaled", "late", True, (3, 1, 2, 3, 5))


def test_float32_padded_is_finite_and_close():
    got = _run("log_probs", True, "late", True, dtype=np.float32)
    want = _run("log_probs", False, "late", True)
    assert np.isfinite(got[0])
    assert got[0] == pytest.approx(want[0], rel=1e-4)
    for a, b in zip(got[2], want[2]):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_many_lengths_past_max_traces(monkeypatch):
    import dynlp.traced as traced
    monkeypatch.setattr(traced, "MAX_TRACES", 3)
    lengths = tuple(range(1, 12)) + (5, 9, 2)
    _check("attend", "late", True, lengths)
    _check("contract", "agenda", True, lengths)


def test_two_functions_with_one_program_and_other_parameters():
    # (the same qualname and body over two models: one op, its parameters per call)
    def make(seed):
        pc, P = _model(seed)

        def fn(X, h):
            return _attend(P, X, h)
        fn.__qualname__ = "hostile_twins"
        return pc, dn.fused(fn)

    def run(fuse):
        models = [make(1), make(2)]
        rng = np.random.default_rng(3)
        with dn.Graph(dtype=np.float64, fuse=fuse):
            xs, terms = [], []
            for k, n in enumerate((3, 2, 5, 3, 1, 6)):
                X, h = dn.inputs(rng.normal(size=(D, n))), dn.inputs(rng.normal(size=D))
                xs += [X, h]
                terms.append(dn.sum_elems(dn.square(models[k % 2][1](X, h))))
            total = dn.esum(terms)
            value = total.scalar_value()
            total.backward()
            grads = [x.gradient().copy() for x in xs]
            for pc, _ in models:
                grads += [p.grad_as_array().copy() for p in pc.parameters()]
        return value, grads

    value, grads = run(True)
    value2, grads2 = run(False)
    assert value == pytest.approx(value2, rel=1e-11)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_windows_of_a_padded_batch_values_and_gradients():
    def run(fuse):
        pc, P = _model()
        f = _fresh("outputs", _outputs, P)
        rng = np.random.default_rng(4)
        with dn.Graph(dtype=np.float64, fuse=fuse):
            outs, terms = [], []
            for n in (3, 2, 5, 7, 1, 6):
                o = f(dn.inputs(rng.normal(size=(D, n))), dn.inputs(rng.normal(size=D)))
                outs.append(o)
                terms += [dn.sum_elems(dn.tanh(x)) * (k + 1) for k, x in enumerate(o)]
            total = dn.esum(terms)
            total.backward()
            values = [x.npvalue().copy() for o in outs for x in o]
            grads = [x.gradient().copy() for o in outs for x in o]
        return values, grads

    values, grads = run(True)
    values2, grads2 = run(False)
    for a, b in zip(values + grads, values2 + grads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_padded_calls():
    pc, P = _model()
    f = _fresh("log_probs", _log_probs, P)

    def total(a1, X1, a2, X2, a3, X3):
        return dn.sum_elems(dn.square(f(a1, X1))) + dn.sum_elems(f(a2, X2) * f(a3, X3))

    rng = np.random.default_rng(6)
    arrays = []
    for n in (3, 5, 2):
        arrays += [rng.normal(size=n), rng.normal(size=(D, n))]
    for autobatch in (True, False):
        assert dn.gradcheck(total, *arrays, autobatch=autobatch)


def test_a_fused_call_inside_another_fused_function():
    pc, P = _model()
    inner = _fresh("attend", _attend, P)

    def body(P, X, h):
        return dn.tanh(inner(X, h)) * inner(X, dn.logistic(h))

    CASES["nested"] = (body, [lambda n: (D, n), lambda n: (D,)])
    try:
        for autobatch in ("late", False):
            _check("nested", autobatch, True)
    finally:
        del CASES["nested"]


# -- an LSTM's output read in place -------------------------------------------------------------
@pytest.mark.parametrize("autobatch", MODES)
@pytest.mark.parametrize("bi", [False, True])
def test_lstm_outputs_read_twice_by_fused_and_plain_ops(autobatch, bi):
    @dn.fused
    def cell(h, g, x):
        return dn.tanh(h * x + g)

    pc = dn.ParameterCollection(seed=4, dtype=np.float64)
    rnn = dn.BiRNNBuilder(1, 2, 4, pc) if bi else dn.LSTMBuilder(1, 2, 4, pc)

    def run(fuse):
        for p in pc.parameters():
            p.clear_grad()
        rng = np.random.default_rng(2)
        with dn.Graph(dtype=np.float64, fuse=fuse, autobatch=autobatch) as g:
            terms = []
            for n in (1, 3, 4):
                xs = [dn.inputs(rng.normal(size=2)) for _ in range(n)]
                hs = (rnn.transduce(xs) if bi else
                      [s.output() for s in rnn.initial_state().add_inputs(xs)])
                for k, h in enumerate(hs):
                    other = hs[k - 1]
                    terms.append(dn.sum_elems(cell(h, h, dn.inputs(rng.normal(size=4)))))
                    terms.append(dn.sum_elems(cell(h, other, dn.inputs(rng.normal(size=4)))))
                    terms.append(dn.sum_elems(dn.square(h)))  # (a plain op over it too)
            total = dn.esum(terms)
            value = total.scalar_value()
            total.backward()
            stats = g.stats()
        return value, [p.grad_as_array().copy() for p in pc.parameters()], stats

    value, grads, stats = run(True)
    value2, grads2, stats2 = run(False)
    assert value == pytest.approx(value2, rel=1e-11)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert stats["nodes_before_fusion"] == stats2["nodes"]


def test_affine_with_a_column_bias_over_a_matrix_has_a_gradient():
    pc, P = _model()
    with dn.Graph(dtype=np.float64, fuse=False):
        X = dn.inputs(np.ones((D, 5)))
        y = dn.affine_transform([dn.parameter(P["b"]), dn.parameter(P["W"]), X])
        total = dn.sum_elems(y)
        total.backward()
    np.testing.assert_allclose(P["b"].grad_as_array(), np.full((K, 1), 5.0))
