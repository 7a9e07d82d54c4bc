"""Linear algebra and reductions: matmul (shared and per-example left operand), affine_transform,
transpose, outer, sums, extrema, logsumexp, norms. Imports only the op-table core.
"""

import numpy as np

from .core import SHARED, STACK, Case, OuterProduct, bilinear, define, linear, ragged


def _matmul_shape(a, b):
    if len(a) != 2:
        raise ValueError("the left operand must be a matrix")
    if len(b) not in (1, 2) or b[0] != a[1]:
        raise ValueError("inner dimensions differ")
    return (a[0],) + tuple(b[1:])


def _mm(a, b):
    """Shared matrix a (m, n) times batched b (B, n) or (B, n, k)."""
    if b.ndim == 2:
        return b @ a.T
    return np.matmul(a, b)


def _mm_grads(g, a, b):
    """Cotangents of _mm: (summed over the batch for a, batched for b)."""
    if b.ndim == 2:
        return OuterProduct(g, b), g @ a
    if a.shape[0] == 1:
        # (a row vector a (1, n): b's cotangent is an outer product, several times faster
        # broadcast than through matmul, and a's a product per example summed, faster than
        # tensordot's copy of b)
        return np.matmul(b, g.swapaxes(1, 2)).sum(axis=0).T, a.T[None] * g
    return np.tensordot(g, b, axes=([0, 2], [0, 2])), np.matmul(a.T, g)


def _matmul_pad(shapes, out):
    """W @ X: X's columns (a sequence's vectors) are computed independently."""
    return ((None, 1), 1, (None, "edge")) if len(shapes[1]) == 2 else None


bilinear("matmul", shape=_matmul_shape, batch=(SHARED, STACK), cost=4,
         forward=_mm, vjp=lambda g, out, a, b: _mm_grads(g, a, b), pad=_matmul_pad,
         cases=[Case([(3, 4), (4,)]), Case([(3, 4), (4, 2)]), Case([(1, 4), (4, 3)])],
         doc="a @ b with a shared across the batch (a weight): (m, n) @ (n,) or (n, k)")


def _bmm(a, b):
    if b.ndim == 2:
        return np.matmul(a, b[:, :, None])[:, :, 0]
    return np.matmul(a, b)


def _bmm_vjp(g, out, a, b):
    at = a.swapaxes(1, 2)
    if b.ndim == 2:
        return g[:, :, None] * b[:, None, :], np.matmul(at, g[:, :, None])[:, :, 0]
    # (one column b (n, 1): a's cotangent is an outer product, broadcast as above)
    ga = g * b.swapaxes(1, 2) if b.shape[2] == 1 else np.matmul(g, b.swapaxes(1, 2))
    return ga, np.matmul(at, g)


bilinear("batched_matmul", shape=_matmul_shape, batch=STACK, cost=4,
         forward=_bmm, vjp=_bmm_vjp,
         cases=[Case([(3, 4), (4,)]), Case([(3, 4), (4, 2)]), Case([(3, 4), (4, 1)])],
         # a contraction over a length: zero padding on both sides adds nothing
         pad=lambda shapes, out: ((1, 0), None, ("zero", "zero")), pad_probe=0,
         doc="a @ b with a different left matrix per example")


def _affine_mask(nargs):
    return (SHARED,) + (SHARED, STACK) * ((nargs - 1) // 2)


def _affine_shape(b, *rest, activation=None):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    if len(rest) % 2 or not rest:
        raise ValueError("arguments must be b, W1, x1, W2, x2, ...")
    out = None
    for w, x in zip(rest[::2], rest[1::2]):
        s = _matmul_shape(w, x)
        if out is not None and s != out:
            raise ValueError("products have different shapes")
        out = s
    if b[:1] != out[:1] or len(b) > len(out) or \
            any(d not in (1, o) for d, o in zip(b[1:], out[1:])):
        raise ValueError("bias does not match the products")
    return out


def _sigmoid(z):
    return 0.5 + 0.5 * np.tanh(0.5 * z)


# activation applied to the affine result: f(z), and f'(z) written through out = f(z)
ACTIVATIONS = {
    None: (None, None),
    "tanh": (np.tanh, lambda out: 1.0 - out * out),
    "rectify": (lambda z: np.maximum(z, 0.0), lambda out: (out > 0).astype(out.dtype)),
    "logistic": (_sigmoid, lambda out: out * (1.0 - out)),
}


def _affine_forward(b, *rest, activation=None):
    out = None
    for w, x in zip(rest[::2], rest[1::2]):
        out = _mm(w, x) if out is None else out + _mm(w, x)
    out = out + b.reshape(b.shape + (1,) * (out.ndim - 1 - b.ndim))
    return out if activation is None else ACTIVATIONS[activation][0](out)


def _affine_vjp(g, out, b, *rest, activation=None):
    if activation is not None:
        g = g * ACTIVATIONS[activation][1](out)
    gb = g.sum(axis=0)
    gb = gb.sum(axis=tuple(range(b.ndim, gb.ndim))) if gb.ndim > b.ndim else gb
    # (a column bias (K, 1) over matrices: summed along the columns too)
    spread = tuple(k for k, (n, m) in enumerate(zip(b.shape, gb.shape)) if n == 1 and m != 1)
    if spread:
        gb = gb.sum(axis=spread, keepdims=True)
    cts = [gb]
    for w, x in zip(rest[::2], rest[1::2]):
        cts.extend(_mm_grads(g, w, x))
    return cts


def _affine_jvp(ts, out, b, *rest, activation=None):
    result = np.zeros_like(out)
    if ts[0] is not None:
        result = result + ts[0].reshape(ts[0].shape + (1,) * (out.ndim - 1 - ts[0].ndim))
    for i in range(1, len(rest), 2):
        w, x, tw, tx = rest[i - 1], rest[i], ts[i], ts[i + 1]
        if tw is not None:
            result = result + _mm(tw, x)
        if tx is not None:
            result = result + _mm(w, tx)
    return result if activation is None else result * ACTIVATIONS[activation][1](out)


def _affine_pad(shapes, out):
    """f(b + W1 @ X1 + ...) over matrices X: columns computed independently (b a column)."""
    xs = shapes[2::2]
    if len(out) != 2 or any(len(x) != 2 for x in xs):
        return None
    return (None,) + (None, 1) * len(xs), 1, (None,) + (None, "edge") * len(xs)


define("affine_transform", shape=_affine_shape, batch=_affine_mask, cost=4,
       forward=_affine_forward, vjp=_affine_vjp, jvp=_affine_jvp, pad=_affine_pad,
       cases=[Case([(3,), (3, 4), (4,)]), Case([(3,), (3, 4), (4,), (3, 2), (2,)]),
              Case([(3, 1), (3, 4), (4, 2)]),
              Case([(3,), (3, 4), (4, 2)]), Case([(3,), (3, 4), (4,)], {"activation": "tanh"}),
              Case([(3,), (3, 4), (4,)], {"activation": "logistic"}),
              Case([(3,), (3, 4), (4, 2)], {"activation": "tanh"})],
       doc="f(b + W1 @ x1 + W2 @ x2 + ...) with b and the W shared; f is the identity or an "
           "activation (tanh, rectify, logistic) fused into the same node")



def _transpose_shape(x):
    if len(x) == 1:
        return (1, x[0])
    if len(x) != 2:
        raise ValueError("transpose takes a vector or a matrix")
    return (x[1], x[0])


def _transpose(x):
    return x[:, None, :] if x.ndim == 2 else x.swapaxes(1, 2)


def _transpose_vjp(g, out, x):
    return (g[:, 0, :] if x.ndim == 2 else g.swapaxes(1, 2),)


linear("transpose", shape=_transpose_shape, forward=_transpose, vjp=_transpose_vjp,
       pad=lambda shapes, out: ((0,), 1, ("edge",)) if len(shapes[0]) == 1
       else ((1,), 0, ("edge",)),
       cases=[Case([(3,)]), Case([(2, 3)])])


def _outer_shape(x, y):
    if len(x) != 1 or len(y) != 1:
        raise ValueError("outer takes two vectors")
    return (x[0], y[0])


bilinear("outer", shape=_outer_shape, cases=[Case([(3,), (2,)])],
         forward=lambda x, y: x[:, :, None] * y[:, None, :],
         vjp=lambda g, out, x, y: (np.matmul(g, y[:, :, None])[:, :, 0],
                                   np.matmul(x[:, None, :], g)[:, 0, :]))


# ---------------------------------------------------------------------------------------------
# Reductions. A per-example axis a is the batched axis a + 1.


def _expand_back(g, x, axis=None):
    """Broadcast a reduced cotangent back over x (B, *s)."""
    if axis is None:
        g = g.reshape((g.shape[0],) + (1,) * (x.ndim - 1))
    else:
        g = np.expand_dims(g, axis + 1)
    return np.broadcast_to(g, x.shape)


linear("sum_elems", shape=lambda x: (), cases=[Case([(3,)]), Case([(2, 3)])],
       forward=lambda x: x.reshape(x.shape[0], -1).sum(axis=1),
       vjp=lambda g, out, x: (_expand_back(g, x),))


def _axis_shape(x, axis):
    if not 0 <= axis < len(x):
        raise ValueError(f"axis {axis} out of range")
    return x[:axis] + x[axis + 1:]


linear("sum_dim", shape=_axis_shape, cases=[Case([(2, 3)], {"axis": 1}), Case([(3,)], {"axis": 0})],
       forward=lambda x, axis: x.sum(axis=axis + 1),
       vjp=lambda g, out, x, axis: (_expand_back(g, x, axis),))


def _extremum(name, argfn):
    def forward(x, axis):
        return np.take_along_axis(x, np.expand_dims(argfn(x, axis=axis + 1), axis + 1),
                                  axis=axis + 1).squeeze(axis + 1)

    def vjp(g, out, x, axis):
        gx = np.zeros_like(x)
        idx = np.expand_dims(argfn(x, axis=axis + 1), axis + 1)
        np.put_along_axis(gx, idx, np.expand_dims(g, axis + 1), axis=axis + 1)
        return (gx,)

    def jvp(ts, out, x, axis):
        if ts[0] is None:
            return np.zeros_like(out)
        idx = np.expand_dims(argfn(x, axis=axis + 1), axis + 1)
        return np.take_along_axis(ts[0], idx, axis=axis + 1).squeeze(axis + 1)

    define(name, shape=_axis_shape, forward=forward, vjp=vjp, jvp=jvp,
           cases=[Case([(2, 3)], {"axis": 0}), Case([(2, 3)], {"axis": 1}),
                  Case([(4,)], {"axis": 0})])


_extremum("max_dim", np.argmax)
_extremum("min_dim", np.argmin)


def _lse(x, axis=0):
    m = x.max(axis=axis + 1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis + 1, keepdims=True))).squeeze(axis + 1)


def _lse_weights(out, x, axis):
    return np.exp(x - np.expand_dims(out, axis + 1))


define("logsumexp", shape=_axis_shape, cases=[Case([(4,)], {"axis": 0}),
                                              Case([(3, 2)], {"axis": 0})],
       forward=_lse,
       vjp=lambda g, out, x, axis: (np.expand_dims(g, axis + 1) * _lse_weights(out, x, axis),),
       jvp=lambda ts, out, x, axis: (ts[0] * _lse_weights(out, x, axis)).sum(axis=axis + 1),
       doc="log(sum(exp(x))) along a per-example axis")


def _esum_shape(*shapes):
    if not shapes:
        raise ValueError("esum needs at least one expression")
    if any(s != shapes[0] for s in shapes):
        raise ValueError("all expressions must have the same shape")
    return shapes[0]


def segment_sum(x, counts):
    # the sum of each example's arguments: rows [start_k, start_k + counts_k) of x
    starts = np.zeros(len(counts), dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    return np.add.reduceat(x, starts, axis=0)


ragged("esum", shape=_esum_shape, forward=segment_sum,
       vjp=lambda g, out, x, counts: np.repeat(g, counts, axis=0),
       jvp=lambda t, out, x, counts: segment_sum(t, counts),
       cases=[Case([(3,), (3,), (3,)]), Case([()] * 2), Case([(2, 3)])],
       doc="sum of a list of expressions of one shape; nodes of any length batch together")

define("l2_norm", shape=lambda x: (), cases=[Case([(3,)]), Case([(2, 3)])],
       forward=lambda x: np.sqrt(np.square(x).reshape(x.shape[0], -1).sum(axis=1)),
       vjp=lambda g, out, x: (x * _expand_back(g / out, x),),
       jvp=lambda ts, out, x: (x * ts[0]).reshape(x.shape[0], -1).sum(axis=1) / out)

define("squared_norm", shape=lambda x: (), cases=[Case([(3,)]), Case([(2, 3)])],
       forward=lambda x: np.square(x).reshape(x.shape[0], -1).sum(axis=1),
       vjp=lambda g, out, x: (2.0 * x * _expand_back(g, x),),
       jvp=lambda ts, out, x: 2.0 * (x * ts[0]).reshape(x.shape[0], -1).sum(axis=1))
