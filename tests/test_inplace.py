"""Ops composed from the op table (dynlp/inplace.py, `fusion.composed`): shape rule, VJP and JVP
against central differences in float64 as for the table's ops, equal to the nodes they stand
for in graphs, one op per structure (so that their nodes batch), and clear shape errors."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import inplace
from dynlp.gradcheck import check_rule
from dynlp.ops import TABLE, Case

LSTM, GRU, RNN = TABLE["lstm_step"], TABLE["gru_step"], TABLE["rnn_step"]
LEAF = TABLE["treelstm_binary_leaf"]


def _rows(count):
    return lambda rng: int(rng.integers(count))


def _uniform(shape):
    return lambda rng: rng.random(shape)


COMPOSED = {
    "lstm over a row": (inplace.over_row(LSTM, 4, 2),
                        Case([(8, 5), (8,), (6, 3), (4,)], {}, {"index": _rows(6)})),
    "gru over a row": (inplace.over_row(GRU, 4, 2),
                       Case([(6, 5), (6,), (4, 3), (2,)], {}, {"index": _rows(4)})),
    "rnn over a row": (inplace.over_row(RNN, 4, 2),
                       Case([(2, 5), (2,), (5, 3), (2,)], {}, {"index": _rows(5)})),
    "tree leaf over a row": (inplace.over_row(LEAF, 3, 2),
                             Case([(10, 7), (10,), (4, 3)], {}, {"index": _rows(4)})),
    "lstm over masked inputs": (inplace.over_masked(LSTM, 4, (2, 3)),
                                Case([(8, 5), (8,), (3,), (4,), (3,), (4,)])),
    "lstm over a masked input": (inplace.over_masked(LSTM, 4, (2,)),
                                 Case([(8, 5), (8,), (3,), (4,), (3,)])),
    "dropout of a row": (inplace.dropout_row(0.4),
                         Case([(5, 3)], {}, {"index": _rows(5), "uniform": _uniform(3)})),
    "dropout of a range": (inplace.dropout_ranges(1, 2, 5, 0.4),
                           Case([(6,)], {}, {"uniform": _uniform(3)})),
    "dropout of two ranges": (inplace.dropout_ranges(2, 2, 4, 0.5),
                              Case([(4,), (4,)], {}, {"uniform": _uniform(4)})),
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
@pytest.mark.parametrize("batch", [1, 3])
def test_rules_against_central_differences(name, batch):
    op, case = COMPOSED[name]
    check_rule(op, case, batch=batch, seed=batch)


def test_one_op_per_structure():
    assert inplace.over_row(LSTM, 4, 2) is inplace.over_row(LSTM, 4, 2)
    assert inplace.over_row(LSTM, 4, 2) is not inplace.over_row(GRU, 4, 2)
    assert inplace.dropout_row(0.25) is inplace.dropout_row(0.25)
    assert inplace.dropout_row(0.25) is not inplace.dropout_row(0.5)
    assert inplace.over_row(LSTM, 4, 2).name == "lookup+lstm_step"
    assert inplace.over_masked(LSTM, 4, (2, 3)).name == "mul+mul+lstm_step"


def test_shape_errors_come_from_the_steps_rules():
    pc = dn.ParameterCollection(seed=0)
    W, b = pc.add_parameters((8, 5)), pc.add_parameters(8)
    E = pc.add_lookup_parameters((6, 2))  # rows of 2, the step takes inputs of 3
    with dn.Graph() as g:
        args = (g.param_node(W), g.param_node(b), g.param_node(E), dn.zeros(4).i)
        with pytest.raises(dn.ShapeError, match="lookup\\+lstm_step"):
            g.add(inplace.over_row(LSTM, 4, 2), args, (), (1,))


@pytest.mark.parametrize("autobatch", [False, "late"])
def test_a_step_over_rows_equals_lookup_and_step_nodes(autobatch):
    # values, gradients (the table's sparse) and JVPs of the composed node against the lookup
    # node and the step node it stands for, over several sequences that batch together
    pc = dn.ParameterCollection(seed=3)
    W, b = pc.add_parameters((8, 5)), pc.add_parameters(8)
    E = pc.add_lookup_parameters((7, 3))
    composed = inplace.over_row(LSTM, 4, 2)

    rng = np.random.default_rng(4)
    directions = {W: rng.normal(size=(8, 5)), E: rng.normal(size=(7, 3))}

    def run(fused):
        for p in (W, b, E):
            p.clear_grad()
        with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
            w, bias = g.param_node(W), g.param_node(b)
            losses = []
            for words in ((1, 4, 2), (6,), (0, 0, 5, 3)):
                s = dn.zeros(4)
                for word in words:
                    if fused:
                        s = g.add(composed, (w, bias, g.param_node(E), s.i), (), (word,))
                    else:
                        s = g.add(LSTM, (w, bias, dn.lookup(E, word).i, s.i))
                losses.append(dn.sum_elems(dn.tanh(s)))
            total = dn.esum(losses)
            value = total.scalar_value()
            tangent = dn.jvp(total, directions)
            total.backward()
            names = [op.name for op in g.ops]
        return value, [p.grad_as_array().copy() for p in (W, b, E)], names, tangent

    value, grads, names, tangent = run(True)
    value2, grads2, names2, tangent2 = run(False)
    assert names.count("lookup+lstm_step") == 8 and "lookup" not in names
    assert "lookup" in names2
    assert value == pytest.approx(value2, rel=1e-12)
    assert tangent == pytest.approx(tangent2, rel=1e-10)
    for a, c in zip(grads, grads2):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
