"""Hostile tests of the engine's changes of 2026-12-04: backward borrowing the first whole
cotangent of a batch as its gradient (aliasing: one array for two arguments, views, read-only
broadcasts, arenas of gathered rows, fused programs), the late scheduler's rewrite, gathers of
20 rows a source or more, `_run_each`'s cached rules and shared attribute dicts, the fast path
of a forward whose targets are computed, and `+`/`*` with a Python float.

Every gradient of every node and parameter is compared with the unbatched engine
(`autobatch=False, fuse=False`), in float64, under every strategy with and without fusion,
and against central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn

MODES = [(mode, fuse) for mode in (True, "late", "depth", "agenda", False)
         for fuse in (True, False)]
MODE_IDS = [f"{m}-fuse{f}" for m, f in MODES]
D = 4


def _model():
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    return pc, {
        "W": pc.add_parameters((D, D)),
        "U": pc.add_parameters((D, D)),
        "b": pc.add_parameters(D, init="normal", scale=0.3),
        "E": pc.add_lookup_parameters((10, D)),
    }


def _step(P, rng, a, b, honest=False):
    """One random node over a and b: ops whose VJPs return one array for two arguments
    (add, x + x, esum of a node twice), views (reshape, transpose, pick_range, slices of a
    concatenation), read-only broadcasts (sum_elems, mean_elems), constants, parameters read
    twice, and shared subexpressions."""
    k = int(rng.integers(30))
    if honest and k in (18, 19):  # (their gradients are not the function's, by design)
        k = 0
    if k == 0:
        return a + b
    if k == 1:
        return a + a
    if k == 2:
        return a - b
    if k == 3:
        return dn.cmult(a, b)
    if k == 4:
        return dn.tanh(P["W"] @ a + b)
    if k == 5:
        return dn.reshape(dn.reshape(a, (2, 2)), (D,))
    if k == 6:
        return dn.concatenate([dn.pick_range(a, 0, 2), dn.pick_range(b, 2, 4)])
    if k == 7:
        return dn.concatenate([a, b])[1:1 + D]
    if k == 8:
        return a * 2.5
    if k == 9:
        return 0.5 + a
    if k == 10:
        return dn.sum_elems(a) * b
    if k == 11:
        return dn.logistic(a)
    if k == 12:
        return dn.esum([a, b, a])
    if k == 13:
        return dn.average([a, b])
    if k == 14:
        return dn.dot_product(a, b) * a
    if k == 15:
        return dn.reshape(dn.transpose(dn.transpose(dn.reshape(a, (2, 2)))), (D,))
    if k == 16:
        return dn.softmax(a)
    if k == 17:
        rows = dn.select_rows(dn.reshape(dn.concatenate([a, b]), (4, 2)), [0, 3, 3, 1])
        return dn.pick_range(dn.reshape(rows, (8,)), 2, 6)
    if k == 18:
        return dn.flip_gradient(a) + b
    if k == 19:
        return dn.nobackprop(a) * 0.5 + b
    if k == 20:
        return dn.mean_elems(a) + b
    if k == 21:
        return dn.rectify(a - b) + P["b"]
    if k == 22:
        return dn.affine_transform([P["b"], P["W"], a, P["U"], b])
    if k == 23:
        return dn.maximum(a, b)
    if k == 24:
        return dn.exp(dn.tanh(a)) * b
    if k == 25:
        return dn.sum_dim(dn.concatenate_cols([a, b]), 1)
    if k == 26:
        w = dn.parameter(P["b"])
        return dn.cmult(w, w) + w + w + a   # (a parameter as both arguments)
    if k == 27:
        return P["E"][int(rng.integers(10))] + P["E"][3] * 0.5 + a  # (one row looked up twice)
    if k == 28:
        return dn.cmult(a, a) - a
    return dn.squared_norm(a) * b


def _bad_step(rng, a):
    """An op that its shape check refuses, while building."""
    k = int(rng.integers(4))
    with pytest.raises(dn.ShapeError):
        if k == 0:
            dn.cmult(a, dn.inputs(np.ones(D + 1)))
        elif k == 1:
            dn.reshape(a, (D + 1,))
        elif k == 2:
            dn.concatenate_cols([a, dn.inputs(np.ones(D + 1))])
        else:
            a + dn.inputs(np.ones(D + 1))


def _build(P, rng, examples, size, hostile=False):
    """Per example a random DAG of `size` nodes over a row, a constant and a parameter, read by
    a loss of its last nodes; all nodes, and the sum of the losses. hostile: now and then read
    a value or forward a few nodes in the middle of building, or build an op that is refused."""
    nodes_all, losses = [], []
    for _ in range(examples):
        nodes = [P["E"][int(rng.integers(10))], dn.inputs(rng.normal(size=D)),
                 dn.parameter(P["b"])]
        for _ in range(size):
            i, j = (int(k) for k in rng.integers(len(nodes), size=2))
            nodes.append(_step(P, rng, nodes[i], nodes[j]))
            if hostile:
                r = rng.random()
                if r < 0.1:
                    nodes[int(rng.integers(len(nodes)))].npvalue()
                elif r < 0.2:
                    picks = rng.integers(len(nodes_all) + len(nodes), size=3)
                    everything = nodes_all + nodes
                    dn.current_graph().forward([everything[int(p)] for p in picks])
                elif r < 0.3:
                    _bad_step(rng, nodes[-1])
        nodes_all.extend(nodes)
        losses.append(dn.squared_norm(nodes[-1]) + dn.sum_elems(dn.cmult(nodes[-2], nodes[-3]))
                      + dn.pick_neg_log_softmax(nodes[-4], 1))
    return nodes_all, dn.esum(losses)


def _gradients(exprs):
    out = []
    for e in exprs:
        try:
            out.append(e.gradient())
        except dn.GraphError:  # (a node a fused loss reads through has none of its own)
            out.append(None)
    return out


def _run_dag(mode, fuse, seed, examples=5, size=14, hostile=False):
    pc, P = _model()
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        exprs, loss = _build(P, rng, examples, size, hostile)
        value = loss.scalar_value()
        loss.backward()
        first = _gradients(exprs)
        again = _gradients(exprs)  # (reading gradients must not change them)
        for a, b in zip(first, again):
            if a is not None:
                np.testing.assert_array_equal(a, b)
        values = [e.npvalue() for e in exprs]
    return value, first, {n: p.grad_as_array() for n, p in P.items()}, values


_REFERENCE: dict = {}


def _reference(seed, hostile=False):
    if (seed, hostile) not in _REFERENCE:
        _REFERENCE[seed, hostile] = _run_dag(False, False, seed, hostile=hostile)
    return _REFERENCE[seed, hostile]


@pytest.mark.parametrize("hostile", [False, True])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_random_dags_every_node_gradient_matches_unbatched(mode, fuse, seed, hostile):
    """(hostile: values read and partial forwards in the middle of building, refused ops)"""
    want_value, want_grads, want_params, want_values = _reference(seed, hostile)
    value, grads, params, values = _run_dag(mode, fuse, seed, hostile=hostile)
    assert value == pytest.approx(want_value, rel=1e-12)
    for name, want in want_params.items():
        np.testing.assert_allclose(params[name], want, rtol=1e-10, atol=1e-12, err_msg=name)
    for i, (got, want) in enumerate(zip(grads, want_grads)):
        np.testing.assert_allclose(values[i], want_values[i], rtol=1e-12, atol=1e-14)
        if got is not None and want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"node {i}")


def _dag_of_leaves(seed):
    """A function of three vectors: a random DAG with shared subexpressions (for gradcheck)."""
    def f(x, y, z):
        _, P = _model()
        rng = np.random.default_rng(seed)
        nodes = [x, y, z]
        for _ in range(12):
            i, j = (int(k) for k in rng.integers(len(nodes), size=2))
            nodes.append(_step(P, rng, nodes[i], nodes[j], honest=True))
        return dn.esum([dn.squared_norm(nodes[-1]), dn.sum_elems(dn.cmult(nodes[-2], nodes[-5])),
                        dn.sum_elems(nodes[-3] * 0.3)])
    return f


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("mode", [True, "late", "depth", "agenda", False])
def test_random_dags_against_central_differences(mode, seed):
    rng = np.random.default_rng(100 + seed)
    arrays = [rng.normal(size=D) for _ in range(3)]
    # (rectify and maximum have kinks: inputs away from them come from the seed's draw)
    dn.gradcheck(_dag_of_leaves(seed), *arrays, autobatch=mode, rtol=1e-5, atol=1e-6)


# -- gathers of many rows from several source batches -------------------------------------------
def _gather_graph(mode, fuse, per_source, repeat, read=None):
    """Three source batches (tanh, logistic, exp nodes: three signatures), `per_source` nodes
    each, `read` of each (all by default) read interleaved (and each node `repeat` times) by
    one batch of W @ s."""
    pc, P = _model()
    rng = np.random.default_rng(per_source * 10 + repeat)
    read = per_source if read is None else read
    data = rng.normal(size=(3, per_source, D))
    weights = rng.normal(size=(3 * read * repeat, D))
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        srcs = [[f(dn.inputs(v)) for v in data[k]]
                for k, f in enumerate((dn.tanh, dn.logistic, dn.exp))]
        # (every other node when only some are read: rows scattered through each source)
        chosen = range(0, 2 * read, 2) if read < per_source else range(per_source)
        order = [srcs[k][i] for _ in range(repeat) for i in chosen for k in (2, 0, 1)]
        loss0 = dn.esum([dn.sum_elems(s) for group in srcs for s in group]) * 1e-3
        outs = [P["W"] @ s for s in order]
        loss = dn.esum([dn.dot_product(o, dn.inputs(w)) for o, w in zip(outs, weights)]) + loss0
        value = loss.scalar_value()
        loss.backward()
        grads = [[s.gradient() for s in group] for group in srcs]
        values = [o.npvalue() for o in outs]
    return value, values, grads, P["W"].grad_as_array()


@pytest.mark.parametrize("per_source,repeat,read", [
    (20, 1, None), (25, 1, None), (21, 2, None), (40, 1, None), (7, 3, None),
    (19, 1, None), (300, 1, 50), (300, 3, 20), (200, 1, 45)])
@pytest.mark.parametrize("mode,fuse", MODES[:-2], ids=MODE_IDS[:-2])
def test_gather_of_many_rows_a_source_matches_unbatched(mode, fuse, per_source, repeat, read):
    """(300 rows a source, 150 read: more than 128 rows, a quarter of the sources at most)"""
    want = _gather_graph(False, False, per_source, repeat, read)
    got = _gather_graph(mode, fuse, per_source, repeat, read)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for ga, gb in zip(got[2], want[2]):
        for a, b in zip(ga, gb):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-10)


# -- backward twice, gradients read twice, forward of what is computed ---------------------------
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_backward_twice_gives_the_same_gradients_and_parameters_accumulate(mode, fuse):
    pc, P = _model()
    rng = np.random.default_rng(5)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        exprs, loss = _build(P, rng, 4, 12)
        loss.backward()
        first = _gradients(exprs)
        params = {n: p.grad_as_array() for n, p in P.items()}
        loss.backward()
        second = _gradients(exprs)
        for i, (a, b) in enumerate(zip(first, second)):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"node {i}")
        for n, p in P.items():  # (parameter gradients add up over backward calls)
            np.testing.assert_allclose(p.grad_as_array(), 2 * params[n], rtol=1e-12)


@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_gradient_of_an_intermediate_read_twice_and_the_first_copy_kept(mode, fuse):
    v = np.array([0.5, -1.0, 2.0, 0.25])
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        x = dn.inputs(v)
        h = dn.tanh(x)
        y = h + h                      # (one array for both arguments: add's VJP)
        z = dn.reshape(y, (2, 2))      # (a view of the cotangent)
        loss = dn.sum_elems(z) + dn.sum_elems(dn.cmult(y, y)) + dn.sum_elems(h * 3.0)
        loss.backward()
        th = np.tanh(v)
        gy = 1.0 + 2 * (2 * th)
        gh = 2 * gy + 3.0
        got = h.gradient()
        got[...] = 1e9  # (a caller's copy: writing it changes nothing in the graph)
        np.testing.assert_allclose(y.gradient(), gy, rtol=1e-12)
        np.testing.assert_allclose(h.gradient(), gh, rtol=1e-12)
        np.testing.assert_allclose(x.gradient(), gh * (1 - th * th), rtol=1e-12)
        np.testing.assert_allclose(z.gradient(), np.ones((2, 2)))


@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_forward_of_a_computed_target_then_more_pending_nodes(mode, fuse):
    """The fast path (every target computed: return without scheduling) must leave nodes built
    since pending and computed by the next forward that needs them."""
    v = np.array([0.3, -0.7, 1.1, 0.2])
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        x = dn.inputs(v)
        a = dn.tanh(x)
        assert a.npvalue() == pytest.approx(np.tanh(v))
        b = dn.logistic(a) * 2.0   # pending
        c = dn.exp(x)              # pending, not read by a
        a.forward()                # (computed: the fast path)
        loss = dn.sum_elems(a)
        loss.forward()
        loss.forward()
        np.testing.assert_allclose(c.npvalue(), np.exp(v))
        np.testing.assert_allclose(b.npvalue(), 2 / (1 + np.exp(-np.tanh(v))))
        total = loss + dn.sum_elems(b)
        total.backward()
        total.backward()
        s = 1 / (1 + np.exp(-np.tanh(v)))
        np.testing.assert_allclose(x.gradient(), (1 + 2 * s * (1 - s)) * (1 - np.tanh(v) ** 2),
                                   rtol=1e-12)


def _parser_loop(mode, fuse, peek):
    """A parser-like loop: each step builds over what it read of earlier values, reads a value
    in the middle of building (the next step's choice depends on it) and goes on."""
    pc, P = _model()
    rng = np.random.default_rng(9)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        stack = [P["E"][int(i)] for i in rng.integers(10, size=6)]
        losses, choices = [], []
        while len(stack) > 1:
            scores = [dn.dot_product(dn.tanh(P["W"] @ stack[i] + P["U"] @ stack[i + 1]),
                                     dn.parameter(P["b"])) for i in range(len(stack) - 1)]
            vec = dn.concatenate([dn.reshape(s, (1,)) for s in scores])
            best = int(np.argmax(vec.npvalue())) if peek else len(stack) // 2 - 1
            choices.append(best)
            losses.append(dn.pick_neg_log_softmax(vec, 0))
            merged = dn.tanh(P["W"] @ stack[best] + P["U"] @ stack[best + 1] + P["b"])
            stack[best:best + 2] = [merged]
        loss = dn.esum(losses) + dn.squared_norm(stack[0])
        value = loss.scalar_value()
        loss.backward()
    return value, choices, {n: p.grad_as_array() for n, p in P.items()}


@pytest.mark.parametrize("peek", [True, False])
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_forwards_interleaved_with_building_match_unbatched(mode, fuse, peek):
    want = _parser_loop(False, False, peek)
    got = _parser_loop(mode, fuse, peek)
    assert got[1] == want[1]
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for n in want[2]:
        np.testing.assert_allclose(got[2][n], want[2][n], rtol=1e-10, atol=1e-12, err_msg=n)


# -- a graph used on after an error in forward ----------------------------------------------------
class _Boom(Exception):
    pass


def _failing_op():
    def forward(x, fail):
        if fail:
            raise _Boom("forward failed")
        return np.tanh(x)
    op = dn.Op("hostile3_maybe_fail", shape=lambda s, fail: s, forward=forward,
               vjp=lambda g, out, x, fail: (g * (1 - out * out),),
               jvp=lambda ts, out, x, fail: ts[0] * (1 - out * out), batch=(dn.STACK,))
    return dn.op_function(op)


@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_a_graph_after_an_error_in_forward_computes_everything_else(mode, fuse):
    maybe = _failing_op()
    rng = np.random.default_rng(2)
    vs = rng.normal(size=(6, D))
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        xs = [dn.inputs(v) for v in vs]
        good = [dn.logistic(maybe(x, fail=0)) for x in xs[:3]]
        bad = dn.sum_elems(maybe(xs[3], fail=1)) + dn.sum_elems(good[0])
        with pytest.raises(_Boom):
            bad.forward()
        with pytest.raises(_Boom):  # (again: still pending, fails again, nothing half-run)
            bad.value()
        # nodes built before and after the error, over nodes the failed forward scheduled
        later = [dn.exp(maybe(x, fail=0)) for x in xs[3:]]
        loss = dn.esum([dn.sum_elems(e) for e in good + later])
        loss.backward()
        want = sum((1 / (1 + np.exp(-np.tanh(v)))).sum() for v in vs[:3]) + \
            sum(np.exp(np.tanh(v)).sum() for v in vs[3:])
        assert loss.scalar_value() == pytest.approx(want, rel=1e-12)
        for x, v in zip(xs[3:], vs[3:]):
            t = np.tanh(v)
            np.testing.assert_allclose(x.gradient(), np.exp(t) * (1 - t * t), rtol=1e-12)


# -- _run_each: rules cached by op, one attribute dict per static attributes --------------------
@pytest.mark.parametrize("mode", [False, True, "agenda"])
def test_one_op_with_alternating_argument_counts(mode):
    """esum and concatenate over 2, 3, 2, 1, 3 arguments in turn: the rule cached by op must be
    the one for each count."""
    rng = np.random.default_rng(4)
    vs = rng.normal(size=(5, D))
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=False):
        xs = [dn.inputs(v) for v in vs]
        outs, want = [], []
        for count in (2, 3, 2, 1, 3, 2):
            outs.append(dn.esum(xs[:count]))
            want.append(vs[:count].sum(axis=0))
            outs.append(dn.concatenate(xs[:count]))
            want.append(np.concatenate(vs[:count]))
        for o, w in zip(outs, want):
            np.testing.assert_allclose(o.npvalue(), w, rtol=1e-12)


def _signer():
    def forward(x, c):
        return x * np.copysign(1.0, c)
    op = dn.Op("hostile3_signer", shape=lambda s, c: s, forward=forward,
               vjp=lambda g, out, x, c: (g * np.copysign(1.0, c),),
               jvp=lambda ts, out, x, c: ts[0] * np.copysign(1.0, c), batch=(dn.STACK,))
    return dn.op_function(op)


def test_unbatched_engine_gives_each_node_its_own_static_attributes():
    f = _signer()
    with dn.Graph(dtype=np.float64, autobatch=False, fuse=False):
        plus = f(dn.inputs(np.ones(2)), c=0.0)
        minus = f(dn.inputs(np.ones(2)), c=-0.0)
        np.testing.assert_array_equal(plus.npvalue(), [1.0, 1.0])
        np.testing.assert_array_equal(minus.npvalue(), [-1.0, -1.0])


def test_unbatched_engine_static_attributes_by_value_still_shared_safely():
    """Equal static attributes of one type: each node's rule sees its own value (and a rule
    cannot write the shared dict: it receives the attributes as keywords)."""
    seen = []

    def forward(x, scale):
        seen.append(scale)
        return x * scale
    op = dn.Op("hostile3_scale", shape=lambda s, scale: s, forward=forward,
               vjp=lambda g, out, x, scale: (g * scale,),
               jvp=lambda ts, out, x, scale: ts[0] * scale, batch=(dn.STACK,))
    f = dn.op_function(op)
    with dn.Graph(dtype=np.float64, autobatch=False, fuse=False):
        xs = [f(dn.inputs(np.ones(2)), scale=s) for s in (2.0, 3.0, 2.0, 3.0)]
        loss = dn.esum([dn.sum_elems(x) for x in xs])
        assert loss.scalar_value() == pytest.approx(20.0)
        loss.backward()
    assert seen == [2.0, 3.0, 2.0, 3.0]


# -- + and * with a Python float ------------------------------------------------------------------
CONSTANTS = [0.5, -2.0, 0.0, -0.0, 1.0, float("inf"), 1e-300]


@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_float_constants_on_both_sides(mode, fuse):
    v = np.array([0.5, -1.5, 2.0])
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        x = dn.inputs(v)
        exprs, want = [], []
        for c in CONSTANTS:
            for e, w in ((x + c, v + c), (c + x, c + v), (x * c, v * c), (c * x, c * v),
                         (dn.tanh(x) * c, np.tanh(v) * c), (c * dn.tanh(x), c * np.tanh(v))):
                exprs.append(e)
                want.append(w)
        for e, w in zip(exprs, want):
            got = e.npvalue()
            np.testing.assert_array_equal(got, w)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(w))  # (-0.0 kept)
        loss = dn.esum([dn.sum_elems(x * c) for c in (0.5, -2.0)] + [dn.sum_elems(0.25 + x)])
        loss.backward()
        np.testing.assert_allclose(x.gradient(), np.full(3, 0.5 - 2.0 + 1.0))


@pytest.mark.parametrize("fuse", [True, False])
def test_float_plus_affine_either_side(fuse):
    pc, P = _model()
    v = np.array([0.5, -1.5, 2.0, 0.1])
    W = P["W"].as_array()
    with dn.Graph(dtype=np.float64, fuse=fuse):
        x = dn.inputs(v)
        left = 0.5 + P["W"] @ x
        right = P["W"] @ x + 0.5
        scaled = 2.0 * (P["W"] @ x)
        np.testing.assert_allclose(left.npvalue(), W @ v + 0.5, rtol=1e-12)
        np.testing.assert_allclose(right.npvalue(), W @ v + 0.5, rtol=1e-12)
        np.testing.assert_allclose(scaled.npvalue(), 2 * (W @ v), rtol=1e-12)
        loss = dn.sum_elems(left) + dn.sum_elems(scaled)
        loss.backward()
        np.testing.assert_allclose(x.gradient(), 3 * W.sum(axis=0), rtol=1e-12)


# -- sequences of several lengths: builders, padded attention, fused calls, ragged sums ---------
@dn.fused
def _cell(a, b, W):
    return dn.tanh(W @ a + b) + a * 0.5 + b


@dn.fused
def _sum_of(a, b):
    return a + b


def _run_sequences(mode, fuse, pad, seed):
    """Per example: an LSTM over a sequence of 1..6 rows, attention over its states (padded
    batches across lengths), fused calls with one node for both arguments, an esum of a
    random number of terms with repeats (ragged), a column selected three times."""
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    W, V = pc.add_parameters((D, D)), pc.add_parameters((D, D))
    b = pc.add_parameters(D)
    E = pc.add_lookup_parameters((12, D))
    lstm = dn.LSTMBuilder(1, D, D, pc)
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse, pad=pad):
        exprs, losses = [], []
        for _ in range(int(rng.integers(3, 8))):
            hs = lstm.initial_state().transduce([E[int(i)] for i in
                                                 rng.integers(12, size=int(rng.integers(1, 7)))])
            H = dn.concatenate_cols(hs)
            q = dn.tanh(W @ hs[-1] + b)
            ctx = H @ dn.softmax(dn.transpose(H) @ q)
            c1 = _cell(ctx, q, W)
            c2 = _cell(c1, c1, V)
            t = _sum_of(c2, c2)
            picks = [hs[int(i)] for i in rng.integers(len(hs), size=int(rng.integers(1, 5)))]
            total = dn.esum(picks + [c1, c1])
            m = dn.max_dim(dn.concatenate_cols([c1, c2, t, total]), 1)
            sel = dn.select_cols(H, [0] * 3)
            exprs += hs + [H, q, ctx, c1, c2, t, total, m, sel]
            losses.append(dn.pick_neg_log_softmax(m, int(rng.integers(D)))
                          + dn.squared_norm(sel) * 0.1 + dn.sum_elems(dn.cmult(ctx, ctx)))
        loss = dn.esum(losses)
        value = loss.scalar_value()
        loss.backward()
        grads = _gradients(exprs)
    return value, grads, [p.grad_as_array() for p in pc.parameters()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_sequences_every_node_gradient_matches_unbatched(mode, fuse, pad, seed):
    want = _run_sequences(False, False, False, seed)
    got = _run_sequences(mode, fuse, pad, seed)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for k, (a, w) in enumerate(zip(got[2], want[2])):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12, err_msg=f"parameter {k}")
    for i, (a, w) in enumerate(zip(got[1], want[1])):
        if a is not None and w is not None:
            np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12, err_msg=f"node {i}")


# -- fused calls returning windows, read in place and by plain ops -------------------------------
class _Cell:
    def __init__(self, pc):
        self.W = pc.add_parameters((2 * D, 2 * D))
        self.b = pc.add_parameters(2 * D)

    @dn.fused
    def step(self, x, h, c):
        z = self.W @ dn.concatenate([x, h]) + self.b
        gate = dn.logistic(z[:D])
        c2 = dn.cmult(gate, c) + dn.tanh(z[D:])
        return dn.tanh(c2) * 0.5 + h * 0.5, c2


def _run_windows(mode, fuse, seed):
    pc = dn.ParameterCollection(seed=5, dtype=np.float64)
    cell = _Cell(pc)
    E = pc.add_lookup_parameters((9, D))
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        exprs, losses = [], []
        for _ in range(int(rng.integers(2, 6))):
            h = c = dn.zeros(D)
            for w in rng.integers(9, size=int(rng.integers(1, 5))):
                h, c = cell.step(E[int(w)], h, c)
                exprs += [h, c]
            # (the last h read twice by plain ops, c by a sum with itself)
            losses.append(dn.squared_norm(h * 2.0) + dn.sum_elems(c + c) + dn.dot_product(h, h))
        loss = dn.esum(losses)
        value = loss.scalar_value()
        loss.backward()
        grads = [e.gradient() for e in exprs]
    return value, grads, [p.grad_as_array() for p in pc.parameters()]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_fused_windows_gradients_match_unbatched(mode, fuse, seed):
    want = _run_windows(False, False, seed)
    got = _run_windows(mode, fuse, seed)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for i, (a, w) in enumerate(zip(got[1], want[1])):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12, err_msg=f"window {i}")
    for k, (a, w) in enumerate(zip(got[2], want[2])):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12, err_msg=f"parameter {k}")


def _run_poisoned(mode, fuse, seed):
    """A random DAG built with nodes whose forward fails (and what reads them), forwarded now
    and then (each time an error), values read in the middle of building, then a loss over
    nodes the failures never reach."""
    maybe = _failing_op()
    pc, P = _model()
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=np.float64, autobatch=mode, fuse=fuse):
        poisoned, failures = [], 0
        nodes = [dn.inputs(rng.normal(size=D)) for _ in range(3)]
        for _ in range(40):
            i, j = (int(k) for k in rng.integers(len(nodes), size=2))
            r = rng.random()
            if r < 0.1:
                poisoned.append(maybe(nodes[i], fail=1) + nodes[j])
            elif r < 0.2 and poisoned:
                with pytest.raises(_Boom):
                    (dn.tanh(poisoned[int(rng.integers(len(poisoned)))]) + nodes[i]).forward()
                failures += 1
            elif r < 0.3:
                nodes[int(rng.integers(len(nodes)))].npvalue()
            elif r < 0.8:
                nodes.append(_step(P, rng, nodes[i], nodes[j]))
            else:
                nodes.append(maybe(nodes[i], fail=0))
        loss = dn.esum([dn.squared_norm(n) * 0.01 for n in nodes[-6:]])
        value = loss.scalar_value()
        loss.backward()
        grads = _gradients(nodes)
        values = [n.npvalue() for n in nodes]
    return value, grads, values, failures, [p.grad_as_array() for p in P.values()]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode,fuse", MODES, ids=MODE_IDS)
def test_graphs_with_failing_nodes_match_unbatched(mode, fuse, seed):
    want = _run_poisoned(False, False, seed)
    got = _run_poisoned(mode, fuse, seed)
    assert got[3] == want[3]
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for a, w in zip(got[2], want[2]):
        np.testing.assert_allclose(a, w, rtol=1e-12, atol=1e-14)
    for i, (a, w) in enumerate(zip(got[1], want[1])):
        if a is not None and w is not None:
            np.testing.assert_allclose(a, w, rtol=1e-9, atol=1e-11, err_msg=f"node {i}")
    for a, w in zip(got[4], want[4]):
        np.testing.assert_allclose(a, w, rtol=1e-9, atol=1e-11)
