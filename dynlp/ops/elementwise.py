"""Elementwise primitives: unary functions, binary arithmetic with DyNet-style broadcasting,
and arithmetic with constants. Each op is one block; imports only the op-table core.
"""

import numpy as np

from .core import (STACK, Case, bilinear, broadcast_shape, define, elementwise, linear,
                   pad_elementwise, pad_to, same_shape, unbroadcast)

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _sigmoid(x):
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: one transcendental call, stable for large |x|
    return 0.5 + 0.5 * np.tanh(0.5 * x)


elementwise("neg", lambda x: -x, lambda x, out: -1.0)
elementwise("exp", np.exp, lambda x, out: out)
elementwise("log", np.log, lambda x, out: 1.0 / x, domain="positive")
elementwise("sqrt", np.sqrt, lambda x, out: 0.5 / out, domain="positive")
elementwise("square", np.square, lambda x, out: 2.0 * x)
elementwise("cube", lambda x: x * x * x, lambda x, out: 3.0 * x * x)
elementwise("abs", np.abs, lambda x, out: np.sign(x), domain="nonzero")
elementwise("sin", np.sin, lambda x, out: np.cos(x))
elementwise("cos", np.cos, lambda x, out: -np.sin(x))
elementwise("tanh", np.tanh, lambda x, out: 1.0 - out * out)
elementwise("logistic", _sigmoid, lambda x, out: out * (1.0 - out))
# log sigmoid(x) = -softplus(-x); derivative sigmoid(-x)
elementwise("log_sigmoid", lambda x: -np.logaddexp(0.0, -x), lambda x, out: _sigmoid(-x))
elementwise("softplus", lambda x: np.logaddexp(0.0, x), lambda x, out: _sigmoid(x))
elementwise("rectify", lambda x: np.maximum(x, 0.0), lambda x, out: (x > 0).astype(x.dtype),
            domain="nonzero")
elementwise("elu", lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
            lambda x, out, alpha=1.0: np.where(x > 0, 1.0, out + alpha),
            domain="nonzero", attrs={"alpha": 0.7})
elementwise("selu",
            lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
            lambda x, out: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))),
            domain="nonzero")
elementwise("add_const", lambda x, c: x + c, lambda x, out, c: 1.0, attrs={"c": 1.5})
elementwise("mul_const", lambda x, c: x * c, lambda x, out, c: c, attrs={"c": -2.5})
elementwise("pow_const", lambda x, c: x ** c, lambda x, out, c: c * x ** (c - 1),
            domain="positive", attrs={"c": 1.7})


def _pair(x, y):
    if x.ndim == y.ndim:  # (the usual case: nothing to pad)
        return x, y
    rank = max(x.ndim, y.ndim) - 1
    return pad_to(x, rank), pad_to(y, rank)


def _binary_shape(x, y):
    return broadcast_shape(x, y)


_BINARY_CASES = [Case([(3,), (3,)]), Case([(2, 3), (2, 3)]), Case([(2, 3), (2,)]),
                 Case([(), (3,)]), Case([(2, 1), (2, 3)])]
# (binary arithmetic pads as elementwise programs do: repeating the last entry, never a zero)

linear("add", shape=_binary_shape, batch=STACK, cases=_BINARY_CASES, pad=pad_elementwise,
       forward=lambda x, y: np.add(*_pair(x, y)),
       vjp=lambda g, out, x, y: (g, g) if x.shape == y.shape else (unbroadcast(g, x),
                                                                  unbroadcast(g, y)))


def _mul_vjp(g, out, x, y):
    if x.shape == y.shape:  # (the usual case: no broadcasting)
        return g * y, g * x
    px, py = _pair(x, y)
    return unbroadcast(g * py, x), unbroadcast(g * px, y)


bilinear("mul", shape=_binary_shape, batch=STACK, cases=_BINARY_CASES, pad=pad_elementwise,
         forward=lambda x, y: np.multiply(*_pair(x, y)), vjp=_mul_vjp)


def _div_vjp(g, out, x, y):
    px, py = _pair(x, y)
    gx = g / py
    return unbroadcast(gx, x), unbroadcast(-gx * out, y)


def _div_jvp(ts, out, x, y):
    px, py = _pair(x, y)
    tx, ty = ts
    result = np.zeros_like(out)
    if tx is not None:
        result = result + pad_to(tx, out.ndim - 1) / py
    if ty is not None:
        result = result - pad_to(ty, out.ndim - 1) * out / py
    return result


define("div", shape=_binary_shape, batch=STACK, cases=_BINARY_CASES, domain="nonzero",
       forward=lambda x, y: np.divide(*_pair(x, y)), vjp=_div_vjp, jvp=_div_jvp,
       pad=pad_elementwise)


def _select_binary(name, pick_x):
    def forward(x, y):
        return (np.maximum if name == "maximum" else np.minimum)(*_pair(x, y))

    def vjp(g, out, x, y):
        px, py = _pair(x, y)
        take_x = pick_x(px, py)
        return unbroadcast(np.where(take_x, g, 0.0), x), unbroadcast(np.where(take_x, 0.0, g), y)

    def jvp(ts, out, x, y):
        px, py = _pair(x, y)
        tx, ty = (pad_to(t, out.ndim - 1) if t is not None else np.zeros_like(v)
                  for t, v in zip(ts, (px, py)))
        return np.where(pick_x(px, py), tx, ty) + np.zeros_like(out)

    define(name, shape=_binary_shape, batch=STACK, cases=_BINARY_CASES,
           forward=forward, vjp=vjp, jvp=jvp)


_select_binary("maximum", lambda x, y: x >= y)
_select_binary("minimum", lambda x, y: x <= y)

__all__ = ["same_shape"]
