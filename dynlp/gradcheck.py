"""Finite-difference checks of reverse and forward mode, for users and for the op-table tests.

`gradcheck(f, *arrays)` checks any function that builds an expression; `check_rule(op, case)`
checks one op's rules directly on batched arrays, as the test over the whole table does.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .graph import Expression, Graph
from .ops import SHARED, Case, Op, OuterProduct, Parts, SparseRows


class GradcheckError(AssertionError):
    """A derivative disagrees with central differences."""


def sample(shape: tuple[int, ...], domain: str, rng: np.random.Generator) -> np.ndarray:
    """Test inputs: real (normal), positive (0.5..2), nonzero (|x| in 0.3..1.5), unit (0.1..0.9)."""
    if domain == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if domain == "nonzero":
        return rng.uniform(0.3, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    if domain == "unit":
        return rng.uniform(0.1, 0.9, size=shape)
    return rng.normal(size=shape)


def _close(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise GradcheckError(f"{name}: shape {got.shape}, expected {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want))
        raise GradcheckError(f"{name}: max abs error {err:.3g}\n got  {got.ravel()[:8]}\n "
                             f"want {want.ravel()[:8]}")


def gradcheck(f: Callable[..., Expression], *arrays: Any, eps: float = 1e-6,
              rtol: float = 1e-5, atol: float = 1e-6, seed: int = 0,
              modes: tuple[str, ...] = ("reverse", "forward"), autobatch: Any = True) -> bool:
    """Check f's reverse and forward derivatives against central differences, in float64.

    f takes one expression per array and returns an expression of any shape; a non-scalar
    output is checked through a random projection. Raises GradcheckError on a mismatch.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]

    def evaluate(values: list[np.ndarray]) -> np.ndarray:
        with Graph(dtype=np.float64, autobatch=autobatch) as g:
            return f(*[g.leaf(v) for v in values]).npvalue()

    out0 = evaluate(arrays)
    weights = rng.normal(size=out0.shape)
    if "reverse" in modes:
        with Graph(dtype=np.float64, autobatch=autobatch) as g:
            xs = [g.leaf(a) for a in arrays]
            out = f(*xs)
            loss = out if out.shape == () and weights.ndim == 0 else None
            if loss is None:
                from .functions import dot_product, inputs
                loss = dot_product(out, inputs(weights))
            else:
                loss = out * float(weights)
            loss.backward()
            got = [x.gradient() for x in xs]
        for k, a in enumerate(arrays):
            numeric = np.zeros_like(a)
            for j in range(a.size):
                plus, minus = [v.copy() for v in arrays], [v.copy() for v in arrays]
                plus[k].flat[j] += eps
                minus[k].flat[j] -= eps
                numeric.flat[j] = np.sum(weights * (evaluate(plus) - evaluate(minus))) / (2 * eps)
            _close(f"reverse mode, argument {k}", got[k], numeric, rtol, atol)
    if "forward" in modes:
        from .autodiff import jvp
        tangents = [rng.normal(size=a.shape) for a in arrays]
        with Graph(dtype=np.float64, autobatch=autobatch) as g:
            xs = [g.leaf(a) for a in arrays]
            got = jvp(f(*xs), dict(zip(xs, tangents)))
        plus = [a + eps * t for a, t in zip(arrays, tangents)]
        minus = [a - eps * t for a, t in zip(arrays, tangents)]
        _close("forward mode", got, (evaluate(plus) - evaluate(minus)) / (2 * eps), rtol, atol)
    return True


def case_inputs(op: Op, case: Case, batch: int, rng: np.random.Generator
                ) -> tuple[list[np.ndarray], dict]:
    """Batched test inputs for one case (shared arguments without a batch axis) and attrs."""
    mask = op.mask(len(case.shapes)) or ("stack",) * len(case.shapes)
    xs = [sample(s if m == SHARED else (batch,) + s, op.domain, rng)
          for s, m in zip(case.shapes, mask)]
    attrs = dict(case.attrs)
    for name in op.batched_attrs:
        attrs[name] = np.array([case.batched[name](rng) for _ in range(batch)])
    return xs, attrs


def run_forward(op: Op, xs: list[np.ndarray], attrs: dict) -> tuple[np.ndarray, dict]:
    """Forward of an op; returns the output and the attrs its derivatives take (with the
    residual, for ops that keep one)."""
    out = op.forward(*xs, **attrs)
    if op.residual:
        out, residual = out
        attrs = dict(attrs, residual=residual)
    return out, attrs


def check_rule(op: Op, case: Case, batch: int = 3, seed: int = 0, eps: float = 1e-6,
               rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Check op's shape rule, VJP and JVP on batched float64 inputs against central differences.

    The rules are checked against grad_scale times the numerical derivative (0 for a stop-gradient,
    -1 for a flipped one).
    """
    rng = np.random.default_rng(seed)
    xs, attrs = case_inputs(op, case, batch, rng)
    static = {k: v for k, v in attrs.items() if k not in op.batched_attrs}
    out, dattrs = run_forward(op, xs, attrs)
    want_shape = (batch,) + tuple(op.shape(*case.shapes, **static))
    if out.shape != want_shape:
        raise GradcheckError(f"{op.name}: forward gave {out.shape}, shape rule says {want_shape}")
    g = rng.normal(size=out.shape)
    cts = op.vjp(g, out, *xs, **dattrs)
    if len(cts) != len(xs):
        raise GradcheckError(f"{op.name}: vjp returned {len(cts)} cotangents for {len(xs)} inputs")
    for k, x in enumerate(xs):
        numeric = np.zeros_like(x)
        for j in range(x.size):
            plus, minus = [v.copy() for v in xs], [v.copy() for v in xs]
            plus[k].flat[j] += eps
            minus[k].flat[j] -= eps
            diff = run_forward(op, plus, attrs)[0] - run_forward(op, minus, attrs)[0]
            numeric.flat[j] = np.sum(g * diff) / (2 * eps)
        ct = cts[k]
        if isinstance(ct, (SparseRows, OuterProduct, Parts)):
            ct = ct.dense(x.shape)
        if ct is None:
            ct = np.zeros_like(x)
        _close(f"{op.name} vjp, argument {k}", ct, op.grad_scale * numeric, rtol, atol)
    ts = [rng.normal(size=x.shape) for x in xs]
    got = op.jvp(ts, out, *xs, **dattrs)
    plus = [x + eps * t for x, t in zip(xs, ts)]
    minus = [x - eps * t for x, t in zip(xs, ts)]
    numeric = (run_forward(op, plus, attrs)[0] - run_forward(op, minus, attrs)[0]) / (2 * eps)
    _close(f"{op.name} jvp", got, op.grad_scale * numeric, rtol, atol)
    for k in range(len(xs)):  # one tangent at a time exercises the None (zero tangent) paths
        only = [t if i == k else None for i, t in enumerate(ts)]
        plus = [x + eps * t if i == k else x for i, (x, t) in enumerate(zip(xs, ts))]
        minus = [x - eps * t if i == k else x for i, (x, t) in enumerate(zip(xs, ts))]
        numeric = (run_forward(op, plus, attrs)[0] - run_forward(op, minus, attrs)[0]) / (2 * eps)
        _close(f"{op.name} jvp, argument {k} alone", op.jvp(only, out, *xs, **dattrs),
               op.grad_scale * numeric, rtol, atol)
