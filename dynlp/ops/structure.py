"""Structural primitives: concatenation, reshaping, picking and selecting, table lookup, gradient
control, noise, and the leaves (inputs and parameters). Imports only the op-table core.
"""

import math
from typing import Any

import numpy as np

from .core import SHARED, Case, SparseRows, define, linear

# Leaves carry their value from creation; they have no rules to run or check.
define("input", shape=None, forward=None, vjp=None, jvp=None, batch=None,
       doc="a constant: inputs, scalar, zeros, ones")
define("parameter", shape=None, forward=None, vjp=None, jvp=None, batch=None,
       doc="a trainable parameter or lookup table")

LEAVES = ("input", "parameter")


def _concat_shape(*shapes):
    if not shapes:
        raise ValueError("nothing to concatenate")
    rest = shapes[0][1:]
    if any(len(s) == 0 or s[1:] != rest for s in shapes):
        raise ValueError("shapes differ outside the first axis")
    return (sum(s[0] for s in shapes),) + rest


def _split(g, sizes, axis):
    return np.split(g, np.cumsum(sizes)[:-1], axis=axis)


linear("concatenate", shape=_concat_shape,
       forward=lambda *xs: np.concatenate(xs, axis=1),
       vjp=lambda g, out, *xs: _split(g, [x.shape[1] for x in xs], 1),
       cases=[Case([(2,), (3,)]), Case([(1, 2), (2, 2), (1, 2)])],
       doc="rows: (d1,), (d2,) -> (d1 + d2,)")


def _ranges_shape(*shapes, start, end):
    if not shapes or any(len(s) != 1 or s != shapes[0] for s in shapes):
        raise ValueError("expects vectors of one size")
    if not 0 <= start < end <= shapes[0][0]:
        raise ValueError(f"range {start}:{end} out of bounds")
    return ((end - start) * len(shapes),)


def _ranges_vjp(g, out, *xs, start, end):
    width = end - start
    cts = []
    for k, x in enumerate(xs):
        gx = np.zeros_like(x)
        gx[:, start:end] = g[:, k * width:(k + 1) * width]
        cts.append(gx)
    return cts


def concat_windows(xs, windows):
    """x1[:, a1:b1], x2[:, a2:b2], ... side by side (B, total): one window of each stacked
    input, a view when there is one input."""
    parts = [x[:, start:end] for x, (start, end) in zip(xs, windows)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _ranges(xs, start, end):
    return concat_windows(xs, [(start, end)] * len(xs))


linear("concatenate_ranges", shape=_ranges_shape,
       forward=lambda *xs, start, end: _ranges(xs, start, end),
       vjp=_ranges_vjp, cases=[Case([(4,), (4,)], {"start": 2, "end": 4})],
       doc="x1[start:end], x2[start:end], ... concatenated: the h halves of two [c; h] states")


def _cols(x):
    return x[:, :, None] if x.ndim == 2 else x


def _concat_cols_shape(*shapes):
    if not shapes:
        raise ValueError("nothing to concatenate")
    if any(len(s) not in (1, 2) or s[0] != shapes[0][0] for s in shapes):
        raise ValueError("column lengths differ")
    return (shapes[0][0], sum(s[1] if len(s) == 2 else 1 for s in shapes))


def _concat_cols_vjp(g, out, *xs):
    parts = _split(g, [_cols(x).shape[2] for x in xs], 2)
    return [p.reshape(x.shape) for p, x in zip(parts, xs)]


linear("concatenate_cols", shape=_concat_cols_shape,
       forward=lambda *xs: np.concatenate([_cols(x) for x in xs], axis=2),
       vjp=_concat_cols_vjp, cases=[Case([(3,), (3,)]), Case([(2, 2), (2,)])],
       doc="columns: vectors (d,) or matrices (d, k) -> (d, total columns)")


def _reshape_shape(x, shape):
    if math.prod(x) != math.prod(shape):
        raise ValueError(f"cannot reshape to {shape}")
    return tuple(shape)


linear("reshape", shape=_reshape_shape,
       forward=lambda x, shape: x.reshape((x.shape[0],) + tuple(shape)),
       vjp=lambda g, out, x, shape: (g.reshape(x.shape),),
       cases=[Case([(2, 3)], {"shape": (3, 2)}), Case([(4,)], {"shape": (2, 2)})])


def _dim_shape(x, dim=0, **unused):
    if not 0 <= dim < len(x):
        raise ValueError(f"dim {dim} out of range")
    return x[:dim] + x[dim + 1:]


def _index_along(x, dim, index):
    """x (B, ...) and one index per example along per-example axis dim."""
    rows = np.arange(x.shape[0])
    if dim == 0:
        return x[rows, index]
    return np.moveaxis(x, dim + 1, 1)[rows, index]


def _pick_vjp(g, out, x, index, dim=0):
    gx = np.zeros_like(x)
    rows = np.arange(x.shape[0])
    if dim == 0:
        gx[rows, index] = g
    else:
        np.moveaxis(gx, dim + 1, 1)[rows, index] = g
    return (gx,)


def _index_case(shape, dim=0):
    return Case([shape], {"dim": dim}, {"index": lambda rng, n=shape[dim]: int(rng.integers(n))})


linear("pick", shape=_dim_shape, batched_attrs=("index",),
       forward=lambda x, index, dim=0: _index_along(x, dim, index), vjp=_pick_vjp,
       cases=[_index_case((4,)), _index_case((3, 2)), _index_case((3, 2), 1)],
       doc="x[index] along dim, one index per example")


def _range_shape(x, start, end, dim=0):
    if not 0 <= start < end <= x[dim]:
        raise ValueError(f"range {start}:{end} out of bounds")
    return x[:dim] + (end - start,) + x[dim + 1:]


def _range_slice(start, end, dim):
    return (slice(None),) * (dim + 1) + (slice(start, end),)


def _pick_range_vjp(g, out, x, start, end, dim=0):
    gx = np.zeros_like(x)
    gx[_range_slice(start, end, dim)] = g
    return (gx,)


linear("pick_range", shape=_range_shape,
       forward=lambda x, start, end, dim=0: x[_range_slice(start, end, dim)],
       vjp=_pick_range_vjp,
       cases=[Case([(5,)], {"start": 1, "end": 4, "dim": 0}),
              Case([(2, 4)], {"start": 0, "end": 2, "dim": 1})])


def _select_shape(x, count, dim):
    if len(x) <= dim:
        raise ValueError("not enough axes")
    return x[:dim] + (count,) + x[dim + 1:]


def _select(x, idx, dim):
    rows = np.arange(x.shape[0])[:, None]
    return x[rows, idx] if dim == 0 else np.moveaxis(np.moveaxis(x, 2, 1)[rows, idx], 1, 2)


def _select_vjp(g, out, x, idx, dim):
    gx = np.zeros_like(x)
    rows = np.broadcast_to(np.arange(x.shape[0])[:, None], idx.shape)
    if dim == 0:
        np.add.at(gx, (rows, idx), g)
    else:
        np.add.at(np.moveaxis(gx, 2, 1), (rows, idx), np.moveaxis(g, 2, 1))
    return (gx,)


def _choices(n, k):
    return lambda rng: rng.integers(n, size=k)


linear("select_rows", shape=lambda x, count: _select_shape(x, count, 0),
       batched_attrs=("rows",),
       forward=lambda x, rows, count: _select(x, rows, 0),
       vjp=lambda g, out, x, rows, count: _select_vjp(g, out, x, rows, 0),
       cases=[Case([(4, 2)], {"count": 3}, {"rows": _choices(4, 3)})],
       doc="rows of a matrix (or elements of a vector), a list per example; repeats allowed")

linear("select_cols", shape=lambda x, count: _select_shape(x, count, 1),
       batched_attrs=("cols",),
       forward=lambda x, cols, count: _select(x, cols, 1),
       vjp=lambda g, out, x, cols, count: _select_vjp(g, out, x, cols, 1),
       cases=[Case([(2, 4)], {"count": 3}, {"cols": _choices(4, 3)})])


def _lookup_shape(table):
    if len(table) != 2:
        raise ValueError("a lookup table is a matrix (vocabulary, dim)")
    return table[1:]


linear("lookup", shape=_lookup_shape, batch=(SHARED,), batched_attrs=("index",),
       forward=lambda table, index: table[index],
       vjp=lambda g, out, table, index: (SparseRows(index, g),),
       cases=[Case([(5, 3)], {}, {"index": lambda rng: int(rng.integers(5))})],
       doc="one row of a table per example; its gradient is sparse")

define("nobackprop", shape=lambda x: x, forward=lambda x: x,
       vjp=lambda g, out, x: (None,), jvp=lambda ts, out, x: np.zeros_like(out),
       grad_scale=0.0, cases=[Case([(3,)])], doc="stop gradient: identity forward, no derivative")

define("flip_gradient", shape=lambda x: x, forward=lambda x: x,
       vjp=lambda g, out, x: (-g,),
       jvp=lambda ts, out, x: -ts[0] if ts[0] is not None else np.zeros_like(out),
       grad_scale=-1.0, cases=[Case([(3,)])], doc="identity forward, negated derivative")


def dropout_mask(u: np.ndarray, p: float, dtype: Any) -> np.ndarray:
    """The inverted-dropout mask of uniform numbers u: 0 where u < p, else 1 / (1 - p)."""
    dtype = np.dtype(dtype)
    return (u >= p).astype(dtype) / dtype.type(1.0 - p)


def _masked(x, uniform, rate):
    return x * dropout_mask(uniform, rate, x.dtype)


# The node keeps its uniform numbers, not its mask: drawing them is a slice of the graph's
# block of numbers, and the masks of a whole batch are made by one comparison.
linear("dropout", shape=lambda x, rate: x, batched_attrs=("uniform",),
       forward=_masked, vjp=lambda g, out, x, uniform, rate: (_masked(g, uniform, rate),),
       cases=[Case([(4,)], {"rate": 0.4}, {"uniform": lambda rng: rng.random(4)}),
              Case([(2, 3)], {"rate": 0.5}, {"uniform": lambda rng: rng.random((2, 3))})],
       doc="inverted dropout, x * mask with mask = (uniform >= rate) / (1 - rate): the uniform "
           "numbers are drawn when the node is built")

def _noise_jvp(ts, out, x, noise):
    return ts[0] if ts[0] is not None else np.zeros_like(out)


define("noise", shape=lambda x: x, batched_attrs=("noise",),
       forward=lambda x, noise: x + noise, vjp=lambda g, out, x, noise: (g,), jvp=_noise_jvp,
       cases=[Case([(3,)], {}, {"noise": lambda rng: rng.normal(size=3)})],
       doc="x plus Gaussian noise drawn when the node is built")
