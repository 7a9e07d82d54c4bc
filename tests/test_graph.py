"""Graphs and expressions: the public API walk-through, values, constants, broadcasting, graph
life cycle, float64, forward mode and function transforms."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.graph import Expression
from dynlp.ops import TABLE


def test_issue_walkthrough():
    pc = dn.ParameterCollection(seed=0)
    W = pc.add_parameters((8, 4), init="glorot")
    b = pc.add_parameters(8, init="zeros")
    E = pc.add_lookup_parameters((1000, 8))
    with dn.Graph():
        x = dn.inputs(np.ones(4))
        h = dn.tanh(W @ x + b) + E[3]
        loss = dn.pick_neg_log_softmax(h, 2)
        z = np.tanh(W.value @ np.ones(4)) + E.value[3]
        want = np.log(np.exp(z).sum()) - z[2]
        assert loss.value() == pytest.approx(want, rel=1e-5)
        assert isinstance(loss.value(), float)
        assert loss.npvalue().shape == ()
        assert loss.scalar_value() == pytest.approx(want, rel=1e-5)
        loss.backward()
        gx = x.gradient()
        assert gx.shape == (4,)
        assert W.as_array().shape == (8, 4) and np.abs(W.grad_as_array()).sum() > 0
        assert dn.jvp(loss, {x: np.ones(4)}) == pytest.approx(gx.sum(), rel=1e-4)
    trainer = dn.AdamTrainer(pc, learning_rate=1e-3)
    before = W.as_array()
    trainer.update()
    assert not np.array_equal(before, W.as_array())
    assert np.all(W.grad_as_array() == 0)


def test_constants_on_either_side_and_broadcasting():
    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([1.0, 2.0, 4.0]))
        np.testing.assert_allclose((2 - x).npvalue(), [1, 0, -2])
        np.testing.assert_allclose((x / 2).npvalue(), [0.5, 1, 2])
        np.testing.assert_allclose((8 / x).npvalue(), [8, 4, 2])
        np.testing.assert_allclose((x ** 2).npvalue(), [1, 4, 16])
        np.testing.assert_allclose((np.float64(3.0) * x).npvalue(), [3, 6, 12])
        np.testing.assert_allclose((x + np.array([1.0, 1.0, 1.0])).npvalue(), [2, 3, 5])
        m = dn.inputs(np.ones((3, 2)))
        np.testing.assert_allclose((m + x).npvalue(), [[2, 2], [3, 3], [5, 5]])  # (d,) over (d, n)
        np.testing.assert_allclose(dn.cmult(x, m).npvalue()[:, 1], [1, 2, 4])
        assert x[1].value() == 2.0 and x[-1].value() == 4.0
        np.testing.assert_allclose(x[0:2].npvalue(), [1, 2])


def test_composites():
    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([1.0, 2.0, 3.0]))
        y = dn.inputs(np.array([0.5, -1.0, 2.0]))
        assert dn.dot_product(x, y).value() == pytest.approx(4.5)
        assert dn.mean_elems(x).value() == pytest.approx(2.0)
        assert dn.average([x, y]).npvalue()[2] == pytest.approx(2.5)
        assert dn.logsumexp([dn.scalar(0.0), dn.scalar(0.0)]).value() == pytest.approx(np.log(2))
        np.testing.assert_allclose(dn.concatenate_cols([x, y]).npvalue()[:, 1], [0.5, -1, 2])
        assert dn.squared_distance(x, y).value() == pytest.approx(0.25 + 9 + 1)


def test_value_of_intermediate_then_more_building():
    with dn.Graph(dtype=np.float64):
        x = dn.inputs(np.array([0.1, 0.2]))
        h = dn.tanh(x)
        first = h.npvalue()
        y = dn.sum_elems(h * 3.0)
        assert y.value() == pytest.approx(3 * first.sum())
        y.backward()
        np.testing.assert_allclose(x.gradient(), 3 * (1 - np.tanh([0.1, 0.2]) ** 2))


def test_renew_cg_and_current_graph():
    g1 = dn.renew_cg()
    x = dn.inputs(np.ones(2))
    assert dn.current_graph() is g1
    g2 = dn.renew_cg()
    assert g2 is not g1 and not g1.alive
    with pytest.raises(dn.GraphError):
        x.value()
    with dn.Graph() as inner:
        assert dn.current_graph() is inner
    assert dn.current_graph() is g2


def test_mixing_graphs_is_an_error():
    with dn.Graph() as g1:
        a = dn.inputs(np.ones(2))
        with dn.Graph():
            b = dn.inputs(np.ones(2))
            with pytest.raises(dn.GraphError, match="different graphs"):
                dn.cmult(b, a) + a
        assert g1.alive


def test_backward_needs_a_scalar_and_gradient_needs_backward():
    with dn.Graph():
        x = dn.inputs(np.ones(3))
        with pytest.raises(dn.GraphError, match="backward"):
            x.gradient()
        with pytest.raises(dn.ShapeError, match="scalar"):
            dn.tanh(x).backward()


def test_dtypes():
    with dn.Graph():
        assert dn.inputs([1, 2]).npvalue().dtype == np.float32
    with dn.Graph(dtype=np.float64):
        assert dn.inputs([1, 2]).npvalue().dtype == np.float64


def test_grad_transform_and_gradcheck():
    f = lambda a, b: dn.log(a) + a * b - dn.sin(b)  # noqa: E731
    da, db = dn.grad(f)(np.array(2.0), np.array(5.0))
    assert da == pytest.approx(5.5) and db == pytest.approx(2 - np.cos(5.0))
    value, grads = dn.value_and_grad(f, argnums=1)(np.array(2.0), np.array(5.0))
    assert value == pytest.approx(np.log(2) + 10 - np.sin(5)) and grads == pytest.approx(db)
    assert dn.gradcheck(lambda w, x: dn.tanh(dn.transpose(w) @ x), np.ones((3, 2)) * 0.3,
                        np.arange(3.0))
    with pytest.raises(dn.GradcheckError):
        dn.gradcheck(lambda x: dn.flip_gradient(x) * 2.0, np.ones(2), modes=("reverse",))


def test_dropout_is_identity_when_evaluating_and_deterministic_by_seed():
    with dn.Graph(training=False):
        x = dn.inputs(np.ones(100))
        assert dn.dropout(x, 0.5) is x
    def draw(seed):
        with dn.Graph(seed=seed):
            return dn.dropout(dn.inputs(np.ones(100)), 0.5).npvalue()
    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))
    assert set(np.unique(draw(3))) == {0.0, 2.0}


def test_stats_report_batches():
    pc = dn.ParameterCollection(seed=0)
    W = pc.add_parameters((4, 4))
    with dn.Graph() as g:
        losses = [dn.sum_elems(dn.tanh(W @ dn.inputs(np.ones(4) * i))) for i in range(10)]
        dn.esum(losses).backward()
        stats = g.stats()
    assert stats["forward_batches"] <= 5 and stats["mean_batch_size"] > 2
    assert {"seconds_scheduling", "seconds_forward_numpy", "nodes"} <= set(stats)


def test_add_chain_makes_the_nodes_add_makes():
    op = TABLE["lstm_step"]
    pc = dn.ParameterCollection(seed=1)
    W, b = pc.add_parameters((8, 5)), pc.add_parameters((8,))
    xs = np.random.default_rng(0).normal(size=(4, 3))

    def build(chain):
        with dn.Graph() as g:
            inputs = [dn.inputs(x).i for x in xs]
            state = g.leaf(np.zeros(4)).i
            shared = (g.param_node(W), g.param_node(b))
            if chain:
                nodes = g.add_chain(op, shared, inputs, state)
            else:
                nodes = []
                for x in inputs:
                    state = g.add(op, shared + (x, state)).i
                    nodes.append(state)
            value = dn.esum([dn.sum_elems(Expression(g, n)) for n in nodes]).scalar_value()
            return nodes, [g.args[n] for n in nodes], [g.sigs[n] for n in nodes], value

    assert build(True) == build(False)
    with dn.Graph() as g:
        shared = (g.param_node(W), g.param_node(b))
        state = g.leaf(np.zeros(4)).i
        bad = [dn.inputs(np.zeros(3)).i, dn.inputs(np.zeros(2)).i]
        with pytest.raises(dn.ShapeError, match="lstm_step"):
            g.add_chain(op, shared, bad, state)


def test_uniform_numbers_come_in_the_order_of_a_draw_per_call():
    # drawn a block at a time, they are the numbers that one draw per call would give
    g = dn.Graph(seed=7)
    sizes = [(3,), (2, 5), (1,), (9000,), (4,)]
    got = [g.uniform(shape) for shape in sizes]
    rng = np.random.default_rng(7)
    for shape, u in zip(sizes, got):
        assert u.shape == shape
        np.testing.assert_array_equal(u, rng.random(shape))
    with pytest.raises(ValueError):
        got[0][0] = 1.0  # read-only: a node's numbers cannot be changed afterwards
    mask = dn.Graph(seed=7).random_mask((1000,), 0.25)
    np.testing.assert_array_equal(
        mask, (np.random.default_rng(7).random(1000) >= 0.25).astype(np.float32) / 0.75)
