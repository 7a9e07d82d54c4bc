"""The short ways of graph building added for cheaper recording: the gate cache keyed by a weight,
a bias and an activation; a deferred operand's node read without its property (`matmul`,
elementwise arithmetic); `matmul` over a `Slice`; `reshaped`'s memo of shapes; `dn.parameter`
in one lookup. Each must make the nodes the long way makes and refuse what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import Affine, Expression, Pointwise, Slice, _broadcast_in
from dynlp.ops import TABLE

AFFINE = TABLE["affine_transform"]


def _structure(g):
    return (list(g.ops), list(g.args), list(g.attrs), list(g.shapes), list(g.sigs), g.folded)


def _reference(g, like):
    node = g.add_node(g.ops[like], g.args[like], g.attrs[like])
    return g.shapes[node], g.sigs[node]


def test_gates_with_biases_of_vector_and_matrix_sums_over_one_weight_stay_apart():
    """A bias has the sum's shape, so W and b tell x's shape: (W, b, activation) keys a gate.
    The same W over a vector and over a matrix, each with its own bias, and without one."""
    pc = dn.ParameterCollection(seed=3)  # (seeded: the same float32 sums every run)
    W = pc.add_parameters((4, 3))
    b, B = pc.add_parameters(4), pc.add_parameters((4, 2))
    with dn.Graph() as g:
        x, m = dn.inputs(np.ones(3)), dn.inputs(np.ones((3, 2)))
        w = dn.parameter(W)
        seen = {}
        for again in range(2):
            for name, pre in (("x+b", lambda: w @ x + dn.parameter(b)),
                              ("m+B", lambda: w @ m + dn.parameter(B)),
                              ("x", lambda: w @ x), ("m", lambda: w @ m)):
                for f in (dn.tanh, dn.logistic, dn.rectify):
                    out = f(pre())
                    assert type(out) is Expression and g.ops[out.i] is AFFINE
                    assert (g.shapes[out.i], g.sigs[out.i]) == _reference(g, out.i)
                    seen.setdefault((name, f.__name__), set()).add(
                        (g.shapes[out.i], g.sigs[out.i]))
        assert all(len(v) == 1 for v in seen.values())
        assert len({s for v in seen.values() for s in v}) == len(seen)
        assert seen[("m+B", "tanh")].pop()[0] == (4, 2)
        # (float32 sums against float64 ones: a tanh near 0 needs an absolute tolerance)
        np.testing.assert_allclose(dn.tanh(w @ m + dn.parameter(B)).npvalue(),
                                   np.tanh(W.value @ np.ones((3, 2)) + B.value),
                                   rtol=1e-5, atol=1e-6)


def test_a_gate_refuses_what_the_long_way_refuses():
    pc = dn.ParameterCollection()
    W, b = pc.add_parameters((4, 3)), pc.add_parameters(4)
    with dn.Graph() as g:
        w, bias = dn.parameter(W), dn.parameter(b)
        dn.tanh(w @ dn.inputs(np.ones(3)) + bias)  # (the cache holds this gate)
        with pytest.raises(dn.ShapeError):
            dn.tanh(w @ dn.inputs(np.ones(4)) + bias)
        with pytest.raises(dn.ShapeError):
            dn.tanh(w @ dn.inputs(np.ones((4, 2))) + bias)
        count = len(g)
        pre = w @ dn.inputs(np.ones(3)) + bias
        with pytest.raises(KeyError):
            pre.close("softmax")  # (not an activation affine_transform applies: as before)
        assert len(g) == count + 1  # (only the input)


def _cells(short):
    """An LSTM-like cell over rows, slices and elementwise expressions read several times."""
    pc = dn.ParameterCollection(seed=3, dtype=np.float64)
    E = pc.add_lookup_parameters((5, 3))
    W, U, b = pc.add_parameters((4, 3)), pc.add_parameters((4, 8)), pc.add_parameters(4)
    V, O = pc.add_parameters((4, 4)), pc.add_parameters((5, 4))  # noqa: E741
    with dn.Graph(dtype=np.float64) as g:
        w, u, v, bias, o = (dn.parameter(p) for p in (W, U, V, b, O))
        state = dn.inputs(np.linspace(-1, 1, 8))
        h, c = None, None
        losses = []
        for k in range(4):
            top = Slice(g, (state.i,), 0, 4) if k % 2 == 0 else Slice(g, (state.i,), 4, 8)
            x = E[k]
            i = dn.logistic(w @ x + bias)
            f = dn.logistic(v @ (top if short else top.plain()) + bias)
            cell = i * dn.tanh(w @ x + bias)
            if c is not None:
                cell = cell + f * c  # (c taken by tanh(c) before: read as its node)
            h = f * dn.tanh(cell)
            c = cell
            state = dn.concatenate([h, c])
            losses.append(dn.pick_neg_log_softmax(o @ h, k))
            losses.append(dn.sum_elems(dn.reshape(u @ state, (2, 2))))
        total = dn.esum(losses)
        total.backward()
        return (_structure(g), total.value(), W.grad.copy(), U.grad.copy(), b.grad.copy(),
                E.grad_as_array(), h.gradient(), c.gradient())


def test_deferred_operands_read_in_place_make_the_same_graph_values_and_gradients():
    one, two = _cells(True), _cells(True)
    assert one[0] == two[0]
    for a, c in zip(one[1:], two[1:]):
        np.testing.assert_array_equal(a, c)
    plain = _cells(False)  # (`x.plain()` of a slice: the node the generic way made)
    for a, c in zip(one[1:], plain[1:]):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


def test_a_product_over_a_slice_is_the_affine_the_generic_way_made():
    pc = dn.ParameterCollection(seed=3)  # (seeded: the same float32 sums every run)
    W = pc.add_parameters((4, 3))
    with dn.Graph() as g:
        w = dn.parameter(W)
        v = dn.inputs(np.arange(6.0))
        s = Slice(g, (v.i,), 1, 4)
        p = w @ s
        assert type(p) is Affine and p.terms == ((w.i, s.i),) and p.biases == ()
        assert p.shape == (4,) and p.readers is None and not p.windowed and p._node < 0
        # (float32 sums against float64 ones: an entry near 0 needs an absolute tolerance)
        np.testing.assert_allclose(p.npvalue(), W.value @ np.arange(1.0, 4.0), rtol=1e-5,
                                   atol=1e-6)
        with pytest.raises(dn.ShapeError):
            w @ Slice(g, (v.i,), 0, 4)
        with dn.Graph():
            with pytest.raises(dn.GraphError):
                dn.parameter(W) @ s  # (another graph's slice, as before)


def test_reshape_shapes_are_remembered_apart_from_broadcasts():
    with dn.Graph() as g:
        a = dn.inputs(np.arange(6.0).reshape(2, 3))
        assert _broadcast_in(g, (2, 3), (3, 2)) is None  # (a pair of shapes that do not)
        r = dn.reshape(a * 1.0, (3, 2))
        assert type(r) is Pointwise and r.shape == (3, 2)
        again = dn.reshape(a * 2.0, (3, 2))
        assert again.shape == (3, 2)
        np.testing.assert_array_equal(again.npvalue(), np.arange(6.0).reshape(3, 2) * 2)
        assert _broadcast_in(g, (2, 3), (3, 2)) is None
        for _ in range(2):  # (refused each time, by the node, as the long way does)
            with pytest.raises(dn.ShapeError):
                dn.reshape(a * 1.0, (4, 2))


def test_parameter_outside_any_graph_and_of_an_ended_graph():
    import dynlp.graph as graph
    pc = dn.ParameterCollection()
    p = pc.add_parameters(3)
    saved = graph._current
    graph._current = None
    try:
        e = dn.parameter(p)  # (no graph yet: one is made)
        assert e.g is graph._current and e.g.alive
    finally:
        graph._current.close()
        graph._current = saved
    with dn.Graph():
        e = dn.parameter(p)
    g2 = dn.renew_cg()
    try:
        assert dn.parameter(p).g is g2 and dn.parameter(p) is not e
    finally:
        g2.close()


def test_a_looked_up_row_has_every_field_of_a_row_and_refuses_bad_indices():
    from dynlp.graph import Row
    pc = dn.ParameterCollection()
    E = pc.add_lookup_parameters((5, 3))
    with dn.Graph() as g:
        row = E[np.int64(2)]
        made = Row(g, g.param_node(E), 2)
        assert type(row) is Row
        for name in ("g", "table", "index", "_node", "_fused", "counted"):
            assert getattr(row, name) == getattr(made, name)
        assert type(row.index) is int and row.table == dn.parameter(E).i
        np.testing.assert_array_equal(row.npvalue(), E.value[2])
        for bad in (5, -1):
            with pytest.raises(IndexError, match="out of range"):
                E[bad]
    with pytest.raises(IndexError):
        E[7]  # (outside any `with`: the current graph, or a new one, as before)
    g.close()
    row = E[1]  # (the graph ended: a new current one)
    assert row.g is not g and row.g.alive
