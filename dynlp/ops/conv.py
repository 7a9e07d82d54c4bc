"""Convolution and pooling primitives (DyNet's conv2d, maxpooling2d, kmax_pooling). Images are
(height, width, channels) per example, filters (fh, fw, in, out); convolution is a
cross-correlation, as in DyNet. Each op is one block; imports only the op-table core.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .core import SHARED, STACK, Case, define


def _padding(n, k, stride, valid):
    """(output size, padding before, padding after) along one axis; SAME pads as TensorFlow."""
    if valid:
        if n < k:
            raise ValueError(f"window {k} larger than the input {n}")
        return (n - k) // stride + 1, 0, 0
    out = -(-n // stride)
    total = max((out - 1) * stride + k - n, 0)
    return out, total // 2, total - total // 2


def _geometry(h, w, kh, kw, stride, valid):
    oh, top, bottom = _padding(h, kh, stride[0], valid)
    ow, left, right = _padding(w, kw, stride[1], valid)
    return oh, ow, ((top, bottom), (left, right))


def _conv_shape(x, f, stride, valid):
    if len(x) != 3 or len(f) != 4 or x[2] != f[2]:
        raise ValueError("conv2d takes x (h, w, c) and f (fh, fw, c, out)")
    oh, ow, _ = _geometry(x[0], x[1], f[0], f[1], stride, valid)
    return (oh, ow, f[3])


def _pad(x, pads):
    if not any(a or b for a, b in pads):
        return x
    return np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))


def _conv_forward(x, f, stride, valid):
    oh, ow, pads = _geometry(x.shape[1], x.shape[2], f.shape[0], f.shape[1], stride, valid)
    xp = _pad(x, pads)
    win = sliding_window_view(xp, f.shape[:2], axis=(1, 2))
    win = win[:, :oh * stride[0]:stride[0], :ow * stride[1]:stride[1]]
    return np.einsum("bijcuv,uvco->bijo", win, f, optimize=True)


def _conv_vjp(g, out, x, f, stride, valid):
    oh, ow, pads = _geometry(x.shape[1], x.shape[2], f.shape[0], f.shape[1], stride, valid)
    xp = _pad(x, pads)
    gxp = np.zeros_like(xp)
    gf = np.zeros_like(f)
    sh, sw = stride
    for u in range(f.shape[0]):
        for v in range(f.shape[1]):
            rows = slice(u, u + (oh - 1) * sh + 1, sh)
            cols = slice(v, v + (ow - 1) * sw + 1, sw)
            gxp[:, rows, cols, :] += np.einsum("bijo,co->bijc", g, f[u, v])
            gf[u, v] = np.einsum("bijc,bijo->co", xp[:, rows, cols, :], g)
    (top, _), (left, _) = pads
    return gxp[:, top:top + x.shape[1], left:left + x.shape[2]], gf


def _conv_jvp(ts, out, x, f, stride, valid):
    tx, tf = ts
    result = np.zeros_like(out)
    if tx is not None:
        result = result + _conv_forward(tx, f, stride, valid)
    if tf is not None:
        result = result + _conv_forward(x, tf, stride, valid)
    return result


define("conv2d", shape=_conv_shape, forward=_conv_forward, vjp=_conv_vjp, jvp=_conv_jvp,
       batch=(STACK, SHARED), cost=4,
       cases=[Case([(4, 5, 2), (2, 3, 2, 3)], {"stride": (1, 1), "valid": True}),
              Case([(5, 4, 1), (3, 2, 1, 2)], {"stride": (2, 1), "valid": False})],
       doc="x (h, w, c), f (fh, fw, c, out) -> (h', w', out); stride (sh, sw); valid or SAME")


def _pool_shape(x, ksize, stride, valid):
    if len(x) != 3:
        raise ValueError("maxpooling2d takes x (h, w, c)")
    oh, ow, _ = _geometry(x[0], x[1], ksize[0], ksize[1], stride, valid)
    return (oh, ow, x[2])


def _pool_argmax(x, ksize, stride, valid):
    """The flat index into the padded image of each window's maximum, and the padded image."""
    oh, ow, pads = _geometry(x.shape[1], x.shape[2], ksize[0], ksize[1], stride, valid)
    xp = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=-np.inf)
    win = sliding_window_view(xp, tuple(ksize), axis=(1, 2))
    win = win[:, :oh * stride[0]:stride[0], :ow * stride[1]:stride[1]]  # (B, oh, ow, c, kh, kw)
    flat = win.reshape(win.shape[:4] + (-1,))
    k = flat.argmax(axis=-1)
    du, dv = np.divmod(k, ksize[1])
    b, i, j, c = np.indices(k.shape, sparse=True)
    return (b, i * stride[0] + du, j * stride[1] + dv, c), xp, pads


def _pool_forward(x, ksize, stride, valid):
    idx, xp, _ = _pool_argmax(x, ksize, stride, valid)
    return xp[idx]


def _pool_vjp(g, out, x, ksize, stride, valid):
    idx, xp, pads = _pool_argmax(x, ksize, stride, valid)
    gxp = np.zeros(xp.shape, g.dtype)
    np.add.at(gxp, idx, g)
    (top, _), (left, _) = pads
    return (gxp[:, top:top + x.shape[1], left:left + x.shape[2]],)


def _pool_jvp(ts, out, x, ksize, stride, valid):
    idx, _, pads = _pool_argmax(x, ksize, stride, valid)
    tp = np.pad(ts[0], ((0, 0),) + tuple(pads) + ((0, 0),))
    return tp[idx]


define("maxpooling2d", shape=_pool_shape, forward=_pool_forward, vjp=_pool_vjp, jvp=_pool_jvp,
       cases=[Case([(4, 4, 2)], {"ksize": (2, 2), "stride": (2, 2), "valid": True}),
              Case([(5, 3, 1)], {"ksize": (2, 2), "stride": (2, 1), "valid": False})],
       doc="x (h, w, c) -> the maximum of each window, per channel")


def _kmax_shape(x, k, dim):
    if len(x) != 2 or not 0 < k <= x[dim]:
        raise ValueError(f"kmax_pooling takes a matrix with at least {k} entries along {dim}")
    return (k, x[1]) if dim == 0 else (x[0], k)


def _kmax_index(x, k, dim):
    """The positions of the k largest entries along dim, in their original order."""
    axis = dim + 1
    top = np.argpartition(-x, k - 1, axis=axis)
    top = np.take(top, np.arange(k), axis=axis)
    return np.sort(top, axis=axis)


def _kmax_forward(x, k, dim):
    return np.take_along_axis(x, _kmax_index(x, k, dim), axis=dim + 1)


def _kmax_vjp(g, out, x, k, dim):
    gx = np.zeros_like(x)
    np.put_along_axis(gx, _kmax_index(x, k, dim), g, axis=dim + 1)
    return (gx,)


def _kmax_jvp(ts, out, x, k, dim):
    return np.take_along_axis(ts[0], _kmax_index(x, k, dim), axis=dim + 1)


define("kmax_pooling", shape=_kmax_shape, forward=_kmax_forward, vjp=_kmax_vjp, jvp=_kmax_jvp,
       cases=[Case([(3, 5)], {"k": 2, "dim": 1}), Case([(4, 2)], {"k": 3, "dim": 0})],
       doc="the k largest entries of each row (dim 1) or column (dim 0), in their order")
