"""Special functions and matrix primitives for DyNet's API: arcsine, arccosine, arctangent, the
error function, the matrix inverse and the log-determinant. Each op is one block; imports only
the op-table core.
"""

import math

import numpy as np

from .core import Case, define, elementwise

elementwise("asin", np.arcsin, lambda x, out: 1.0 / np.sqrt(1.0 - x * x), domain="unit")
elementwise("acos", np.arccos, lambda x, out: -1.0 / np.sqrt(1.0 - x * x), domain="unit")
elementwise("atan", np.arctan, lambda x, out: 1.0 / (1.0 + x * x))
_erf = np.vectorize(math.erf, otypes=[float])
# erf'(x) = 2 / sqrt(pi) exp(-x^2)
elementwise("erf", lambda x: _erf(x).astype(x.dtype),
            lambda x, out: 2.0 / math.sqrt(math.pi) * np.exp(-x * x))


def _square(x):
    if len(x) != 2 or x[0] != x[1]:
        raise ValueError("a square matrix is needed")
    return x


def _inverse_vjp(g, out, x):
    # d(X^-1) = -X^-1 dX X^-1, so the cotangent is -X^-T g X^-T
    t = np.swapaxes(out, 1, 2)
    return (-t @ g @ t,)


define("inverse", shape=_square, forward=lambda x: np.linalg.inv(x), vjp=_inverse_vjp,
       jvp=lambda ts, out, x: -out @ ts[0] @ out, cost=2,
       cases=[Case([(3, 3)]), Case([(2, 2)])], doc="the inverse of a square matrix")


def _logdet_forward(x):
    return np.linalg.slogdet(x)[1].astype(x.dtype)


def _logdet_vjp(g, out, x):
    # d log|det X| = tr(X^-1 dX): the cotangent is g X^-T
    return (g[:, None, None] * np.swapaxes(np.linalg.inv(x), 1, 2),)


def _logdet_jvp(ts, out, x):
    return np.einsum("bij,bji->b", np.linalg.inv(x), ts[0])


def _logdet_shape(x):
    _square(x)
    return ()


define("logdet", shape=_logdet_shape, forward=_logdet_forward,
       vjp=_logdet_vjp, jvp=_logdet_jvp, cost=2,
       cases=[Case([(3, 3)]), Case([(1, 1)])], domain="positive",
       doc="log |det X| of a square matrix (log det X for DyNet's positive definite X)")
