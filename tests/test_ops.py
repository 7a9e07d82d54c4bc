"""One parametrized check over the whole op table: shape rule, VJP and JVP against central
differences in float64, with several batch sizes; then the same cases through graphs."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.gradcheck import case_inputs, check_rule
from dynlp.graph import apply
from dynlp.ops import LEAVES, SHARED, TABLE

CASES = [(name, k) for name, op in sorted(TABLE.items()) for k in range(len(op.cases))]


def test_every_op_has_cases():
    missing = [name for name, op in TABLE.items() if not op.cases and name not in LEAVES]
    assert not missing, f"ops without gradient-check cases: {missing}"


@pytest.mark.parametrize("name,k", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_rules(name, k, batch):
    op = TABLE[name]
    check_rule(op, op.cases[k], batch=batch, seed=k + 10 * batch)


@pytest.mark.parametrize("name,k", CASES)
def test_through_graph(name, k):
    """The same op built in a graph: reverse and forward mode through the engine."""
    op = TABLE[name]
    case = op.cases[k]
    rng = np.random.default_rng(k)
    xs, attrs = case_inputs(op, case, 1, rng)
    mask = op.mask(len(xs)) or ()
    arrays = [x if m == SHARED else x[0] for x, m in zip(xs, mask)]
    static = tuple((a, v) for a, v in attrs.items() if a not in op.batched_attrs)
    battrs = tuple(attrs[a][0] for a in op.batched_attrs) or None
    if op.grad_scale != 1.0:
        pytest.skip("stop/flip gradient: checked against their scale by test_rules")

    def f(*exprs):
        return apply(name, *exprs, attrs=static, battrs=battrs)

    dn.gradcheck(f, *arrays, atol=1e-6)


def test_shape_errors_name_the_op_and_shapes():
    pc = dn.ParameterCollection(seed=0)
    W = pc.add_parameters((3, 4))
    with dn.Graph():
        x = dn.inputs(np.ones(5))
        with pytest.raises(dn.ShapeError, match=r"matmul\(\(3, 4\), \(5,\)\)"):
            W @ x
        with pytest.raises(dn.ShapeError, match=r"add\(\(3,\), \(4,\)\)"):
            dn.inputs(np.ones(3)) + dn.inputs(np.ones(4))
