"""Forward mode (JVP sweep) and function transforms (`grad`, `value_and_grad`).

The reverse sweep runs batch by batch inside the engine (autobatch.py), which alone accumulates
gradients; this module walks a graph node by node for directional derivatives.
Must not import params or trainers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .graph import Expression, Graph, as_node
from .ops import SHARED


def jvp(expr: Expression, tangents: Mapping[Any, Any]) -> np.ndarray | float:
    """The directional derivative of expr along `tangents` ({input or parameter: direction})."""
    g = expr._live()
    seeds: dict[int, np.ndarray] = {}
    for key, t in tangents.items():
        node = as_node(g, key)
        if g.args[node]:
            raise ValueError(f"jvp: tangents seed inputs and parameters, not computed "
                             f"expressions ({g.ops[node].name})")
        t = np.asarray(t, dtype=g.dtype)
        if t.shape != g.shapes[node]:
            raise ValueError(f"jvp: tangent of shape {t.shape} for an expression of shape "
                             f"{g.shapes[node]}")
        seeds[node] = t
    g.engine.forward([expr.i])
    nodes = g.engine.ancestors(expr.i)
    value = g.engine.value
    tan: dict[int, np.ndarray] = {}
    for n in nodes:
        if n in seeds:
            tan[n] = seeds[n][None]
            continue
        args = g.args[n]
        if not args or not any(a in tan for a in args):
            continue
        op = g.ops[n]
        mask = op.mask(len(args)) or ("stack",) * len(args)
        xs, ts = [], []
        for a, m in zip(args, mask):
            v, t = value(a), tan.get(a)
            if m == SHARED:
                xs.append(v)
                ts.append(None if t is None else t[0])
            else:
                xs.append(v[None])
                ts.append(t)
        attrs = dict(g.attrs[n])
        for j, name in enumerate(op.batched_attrs):
            attrs[name] = np.array([g.battrs[n][j]])
        if op.residual:
            attrs["residual"] = op.forward(*xs, **attrs)[1]
        tan[n] = op.jvp(ts, value(n)[None], *xs, **attrs)
    out = tan.get(expr.i)
    result = np.zeros(expr.shape, g.dtype) if out is None else out[0]
    return float(result) if result.ndim == 0 else result


def value_and_grad(f: Callable[..., Expression], argnums: int | Sequence[int] | None = None,
                   dtype: Any = np.float64) -> Callable[..., tuple[float, Any]]:
    """Transform f (expressions -> scalar expression) into arrays -> (value, gradients)."""

    def wrapped(*arrays: Any) -> tuple[float, Any]:
        with Graph(dtype=dtype) as g:
            xs = [g.leaf(np.asarray(a)) for a in arrays]
            out = f(*xs)
            out.backward()
            grads = [x.gradient() for x in xs]
            value = out.scalar_value()
        if argnums is None:
            return value, grads[0] if len(grads) == 1 else tuple(grads)
        if isinstance(argnums, int):
            return value, grads[argnums]
        return value, tuple(grads[i] for i in argnums)

    return wrapped


def grad(f: Callable[..., Expression], argnums: int | Sequence[int] | None = None,
         dtype: Any = np.float64) -> Callable[..., Any]:
    """Transform f (expressions -> scalar expression) into arrays -> gradients (float64)."""
    vg = value_and_grad(f, argnums, dtype)
    return lambda *arrays: vg(*arrays)[1]
