"""The checker of the tutorial's assignment: `python check_op.py MODULE.py` loads the module's
`OP` (a dn.Op for s = x^T W y) and checks its mask, its rules against central differences, its
nodes in graphs (reverse and forward mode) and its batching. Exit status 0 when all pass."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

import dynlp as dn


def load(path: str):
    spec = importlib.util.spec_from_file_location("student_op", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(module) -> None:
    op = module.OP
    print("1. the shape rule")
    assert tuple(op.shape((3,), (3, 4), (4,))) == (), "x^T W y is a scalar per example: ()"
    try:
        op.shape((3,), (5, 4), (4,))
    except ValueError:
        pass
    else:
        raise AssertionError("the shape rule accepted x (3,) with W (5, 4)")
    print("2. the batching mask: x and y stacked, W shared")
    assert op.mask(3) == (dn.STACK, dn.SHARED, dn.STACK), \
        f"the mask is {op.mask(3)}: x and y differ per example, W is the same weight for all"
    print("3. forward, VJP and JVP against central differences (dn.check_rule)")
    for shapes in ([(3,), (3, 4), (4,)], [(1,), (1, 2), (2,)]):
        for batch in (1, 4):
            dn.check_rule(op, dn.Case(shapes), batch=batch)
    print("4. in graphs: reverse and forward mode (dn.gradcheck)")
    bilinear = dn.op_function(op)
    rng = np.random.default_rng(0)
    x, W, y = rng.normal(size=3), rng.normal(size=(3, 4)), rng.normal(size=4)
    dn.gradcheck(bilinear, x, W, y)
    print("5. batching: one node per example, the same numbers batched or not")
    results = {}
    for autobatch in (False, True):
        pc = dn.ParameterCollection(seed=1, dtype=np.float64)
        Wp = pc.add_parameters((3, 4))
        with dn.Graph(autobatch=autobatch, dtype=np.float64) as g:
            xs = [dn.inputs(rng_x) for rng_x in np.arange(18.0).reshape(6, 3) / 10]
            total = dn.esum([bilinear(xi, Wp, dn.inputs(np.ones(4))) for xi in xs])
            value = total.value()
            total.backward()
            results[autobatch] = (value, Wp.grad_as_array(), g.stats()["forward_batches"])
    (v0, g0, b0), (v1, g1, b1) = results[False], results[True]
    assert np.isclose(v0, v1) and np.allclose(g0, g1), "batched and unbatched results differ"
    assert b1 < b0, "the six bilinear nodes did not batch: is W shared?"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python check_op.py MODULE.py")
        return 2
    try:
        check(load(argv[0]))
    except NotImplementedError:
        print("   not written yet: fill in the functions that raise NotImplementedError")
        return 1
    except (AssertionError, dn.GradcheckError, ValueError, TypeError) as err:
        print(f"   FAILED: {type(err).__name__}: {err}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
