"""The short ways of graph building (graph.py): `W @ x`, `+ b`, an activation over them, `x * y`
and `x + y` of one shape, `dn.parameter`, and the adds of a graph's nodes. Each must make the node
the long way makes (op, arguments, attributes, shape, signature), refuse what the long way
refuses, and keep no answer that could be stale."""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import Affine, Expression, Pointwise
from dynlp.ops import TABLE

AFFINE = TABLE["affine_transform"]


def _model(hidden=4, inputs=3):
    pc = dn.ParameterCollection()
    return pc, pc.add_parameters((hidden, inputs)), pc.add_parameters(hidden)


def test_a_graph_that_ended_takes_no_node_by_any_add():
    pc, W, b = _model()
    with dn.Graph() as g:
        w, bias = dn.parameter(W), dn.parameter(b)
        x = dn.inputs(np.ones(3))
        y = dn.tanh(w @ x + bias)
    count = len(g)
    with pytest.raises(dn.GraphError, match="ended"):
        g.add_node(TABLE["tanh"], (x.i,))
    with pytest.raises(dn.GraphError, match="ended"):
        g.add_over(AFFINE, (bias.i, w.i), x.i, (("activation", "tanh"),))
    with pytest.raises(dn.GraphError, match="ended"):
        g.add_like(y.i, (bias.i, w.i, x.i))
    with pytest.raises(dn.GraphError, match="ended"):
        g.add_chain(TABLE["add"], (), [x.i], x.i)
    with pytest.raises(dn.GraphError, match="ended"):
        dn.logistic(w @ x + bias)
    assert len(g) == count and len(g.ops) == len(g.args) == len(g.loc) == count
    assert g.ops[y.i] is AFFINE  # (the structure stays readable)


def test_a_pending_sum_of_an_ended_graph_refuses_its_activation():
    pc, W, b = _model()
    with dn.Graph() as g:
        pending = dn.parameter(W) @ dn.inputs(np.ones(3)) + dn.parameter(b)
        assert type(pending) is Affine
    count = len(g)
    for close in (dn.tanh, dn.logistic, dn.rectify):
        with pytest.raises(dn.GraphError, match="ended"):
            close(pending)
    assert len(g) == count


def _reference(g, like):
    """The shape and signature that `add_node` gives node `like`'s op, arguments and attributes."""
    node = g.add_node(g.ops[like], g.args[like], g.attrs[like])
    return g.shapes[node], g.sigs[node]


def test_the_gate_cache_tells_weights_biases_input_shapes_and_activations_apart():
    pc = dn.ParameterCollection()
    W1, W2 = pc.add_parameters((4, 3)), pc.add_parameters((4, 3))
    b1, b2 = pc.add_parameters(4), pc.add_parameters(4)
    with dn.Graph() as g:
        x = dn.inputs(np.ones(3))
        m = dn.inputs(np.ones((3, 2)))
        made = {}
        for wn, W in (("W1", W1), ("W2", W2)):
            for bn, b in (("b1", b1), ("b2", b2), ("none", None)):
                for xn, v in (("x", x), ("m", m)):
                    for f in (dn.tanh, dn.logistic, dn.rectify):
                        for again in range(2):
                            pre = dn.parameter(W) @ v
                            if b is not None and xn == "x":
                                pre = pre + dn.parameter(b)
                            out = f(pre)
                            assert type(out) is Expression and g.ops[out.i] is AFFINE
                            assert g.attrs[out.i] == (("activation", f.__name__),)
                            assert (g.shapes[out.i], g.sigs[out.i]) == _reference(g, out.i)
                            kind = (wn, bn if xn == "x" else "none", xn, f.__name__)
                            made.setdefault(kind, set()).add(g.sigs[out.i])
        # each kind of gate one signature, all kinds different ones
        assert all(len(sigs) == 1 for sigs in made.values())
        assert len({s for sigs in made.values() for s in sigs}) == len(made)
        assert g.shapes[dn.tanh(dn.parameter(W1) @ m).i] == (4, 2)


def test_the_gate_cache_belongs_to_its_graph():
    small, large = _model(4, 3), _model(6, 5)
    shapes = []
    for pc, W, b in (small, large, small):
        with dn.Graph() as g:  # (the same node numbers in each graph, other shapes)
            y = dn.tanh(dn.parameter(W) @ dn.inputs(np.ones(W.shape[1])) + dn.parameter(b))
            shapes.append(y.shape)
            assert (g.shapes[y.i], g.sigs[y.i]) == _reference(g, y.i)
            np.testing.assert_allclose(
                y.npvalue(), np.tanh(W.value @ np.ones(W.shape[1]) + b.value), atol=1e-6)
    assert shapes == [(4,), (6,), (4,)]


def test_gates_are_the_nodes_affine_transform_makes_in_value_and_gradient():
    pc, W, b = _model()
    xs = [np.arange(3.0) + k for k in range(3)]
    results = []
    for short in (True, False):
        with dn.Graph() as g:
            w, bias = dn.parameter(W), dn.parameter(b)
            xe = [dn.inputs(x) for x in xs]
            if short:
                pre = w @ xe[0] + bias
                outs = [dn.logistic(pre), dn.tanh(pre), dn.rectify(w @ xe[1] + bias),
                        dn.tanh(w @ xe[2])]
            else:
                zero = g.zero_bias((4,))
                outs = [dn.affine_transform([bias, w, xe[0]], "logistic"),
                        dn.affine_transform([bias, w, xe[0]], "tanh"),
                        dn.affine_transform([bias, w, xe[1]], "rectify"),
                        dn.affine_transform([Expression(g, zero), w, xe[2]], "tanh")]
            loss = dn.sum_elems(dn.esum(outs))
            loss.backward()
            results.append(([o.npvalue() for o in outs], [o.gradient() for o in outs],
                            W.grad.copy(), b.grad.copy()))
            W.clear_grad()
            b.clear_grad()
    (v1, g1, w1, b1), (v2, g2, w2, b2) = results
    for a, c in zip(v1 + g1, v2 + g2):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)


def test_products_over_rows_and_elementwise_expressions_take_the_short_way():
    pc = dn.ParameterCollection(seed=3)  # (seeded: the same float32 sums every run)
    E = pc.add_lookup_parameters((5, 3))
    W = pc.add_parameters((4, 3))
    with dn.Graph() as g:
        w = dn.parameter(W)
        row = E[2]
        p1 = w @ row
        p2 = w @ row  # (the row's lookup node once)
        h = dn.tanh(dn.inputs(np.ones(3))) * dn.inputs(np.full(3, 2.0))
        assert type(h) is Pointwise
        p3 = w @ h
        assert type(p1) is type(p2) is type(p3) is Affine
        assert p1.terms[0][1] == p2.terms[0][1] == row.i
        assert [g.ops[n].name for n in range(len(g))].count("lookup") == 1
        # (float32 sums against float64 ones: an entry near 0 needs an absolute tolerance)
        np.testing.assert_allclose(p1.npvalue(), W.value @ E.value[2], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(p3.npvalue(), W.value @ (np.tanh(1.0) * 2 * np.ones(3)),
                                   rtol=1e-6, atol=1e-6)
        m = w @ dn.inputs(np.ones((3, 2)))
        assert type(m) is Affine and m.shape == (4, 2)
        with pytest.raises(dn.ShapeError):
            w @ dn.inputs(np.ones(4))
        with pytest.raises(dn.ShapeError):
            w @ dn.inputs(np.ones(()))
        computed = dn.tanh(dn.inputs(np.ones((2, 3))))  # (a computed left operand)
        batched = computed @ dn.inputs(np.ones(3))
        assert g.ops[batched.i].name == "batched_matmul"


def test_arithmetic_short_ways_refuse_what_the_long_way_refuses():
    with dn.Graph():
        x, y = dn.inputs(np.ones(3)), dn.inputs(np.full(3, 2.0))
        s = x * y + x
        assert type(s) is Pointwise and s.shape == (3,)
        np.testing.assert_array_equal(s.npvalue(), np.full(3, 3.0))
        col = dn.inputs(np.ones((3, 2)))
        np.testing.assert_array_equal((x * col).npvalue(), np.ones((3, 2)))  # (broadcast)
        np.testing.assert_array_equal((col + x).npvalue(), np.full((3, 2), 2.0))
        with pytest.raises(dn.ShapeError):
            x + dn.inputs(np.ones(4))
        with pytest.raises(dn.ShapeError):
            x * dn.inputs(np.ones(4))
        with dn.Graph():
            other = dn.inputs(np.ones(3))
        with pytest.raises(dn.GraphError):
            x * other
        with pytest.raises(dn.GraphError):
            x + other
    with dn.Graph(fuse=False) as h:
        a, b = dn.inputs(np.ones(3)), dn.inputs(np.ones(3))
        assert type(a * b) is Expression and h.ops[(a + b).i].name == "add"


def test_parameters_are_told_apart_by_object_not_by_value():
    pc = dn.ParameterCollection()
    p, q = pc.add_parameters(3, init=0.0), pc.add_parameters(3, init=0.0)
    with dn.Graph() as g:
        assert dn.parameter(p) is dn.parameter(p)
        assert dn.parameter(p).i != dn.parameter(q).i
        assert g.node_params[dn.parameter(q).i] is q
    with dn.Graph():
        assert dn.parameter(p).g is dn.current_graph()
        with pytest.raises(AttributeError):
            dn.parameter(np.zeros(3))  # (not a parameter, not hashable: as before)
        with pytest.raises(AttributeError):
            dn.parameter([1, 2])


def _slots(obj):
    return [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())
            if name not in ("__weakref__", "i") and not name.startswith("__")]


def test_objects_of_the_short_ways_have_every_field_set():
    """The short ways make their objects without `__init__` (graph._new): each field must be
    set there too, or reading it raises."""
    pc = dn.ParameterCollection()
    W, b, Out = pc.add_parameters((4, 3)), pc.add_parameters(4), pc.add_parameters((5, 4))
    E = pc.add_lookup_parameters((6, 3))
    with dn.Graph():
        w, bias, o = dn.parameter(W), dn.parameter(b), dn.parameter(Out)
        x, y = dn.inputs(np.ones(3)), dn.inputs(np.ones(3))
        made = [w @ x, w @ E[1], w @ x + bias, dn.tanh(w @ x + bias), x * y, x + y,
                dn.tanh(x * y), dn.logistic(x * y), (x * y) * (x + y), dn.tanh(x * y) * x,
                dn.pick_neg_log_softmax(o @ dn.tanh(dn.inputs(np.ones(4)) * dn.inputs(
                    np.full(4, 2.0))), 2),
                dn.pick_neg_log_softmax(o @ (dn.tanh(w @ x + bias) * dn.inputs(np.ones(4))),
                                        1)]
        for obj in made:
            for name in _slots(obj):
                getattr(obj, name)  # (raises AttributeError if never set)
        assert {type(m).__name__ for m in made} >= {"Affine", "Expression", "Pointwise",
                                                     "AffineLoss"}


def test_a_sum_read_several_ways_sums_its_readers_gradients():
    pc, W, b = _model()
    W2 = pc.add_parameters((4, 3))
    x0 = np.arange(3.0) / 3
    grads = []
    for fuse in (True, False):
        with dn.Graph(fuse=fuse):
            w, w2, bias = dn.parameter(W), dn.parameter(W2), dn.parameter(b)
            x = dn.inputs(x0)
            pre = w @ x + bias
            one = dn.tanh(pre)  # (one reader: kept without a list)
            two = dn.logistic(pre)  # (a second: a list)
            three = dn.rectify(pre + w2 @ x)  # (a larger sum)
            loss = dn.sum_elems(one * two + three)
            loss.backward()
            grads.append(pre.gradient())
            only = w2 @ x  # (one reader, a larger sum)
            bigger = only + bias
            loss2 = dn.sum_elems(dn.tanh(bigger))
            loss2.backward()
            grads.append(only.gradient())
    np.testing.assert_allclose(grads[0], grads[2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1], grads[3], rtol=1e-5, atol=1e-7)
    with dn.Graph():
        o = dn.parameter(pc.add_parameters((5, 4)))
        h = dn.tanh(dn.inputs(np.ones(4)))
        scores = o @ h
        loss = dn.pick_neg_log_softmax(scores, 3)
        also = dn.tanh(scores)  # (read by a fused loss and by an activation: a list)
        dn.esum([loss, dn.sum_elems(also)]).backward()
        with pytest.raises(dn.GraphError, match="fused loss"):
            scores.gradient()
