"""Tensor-layout primitives for DyNet's API: column-major reshape, axis permutation and strided
slices over any number of axes. Each op is one block; imports only the op-table core.
"""

import numpy as np

from .core import Case, linear


def _reshape_shape(x, shape):
    if int(np.prod(x)) != int(np.prod(shape)):
        raise ValueError(f"cannot reshape to {shape}")
    return tuple(shape)


def _colmajor(x, shape):
    """Reshape every example of x (B, *s) to `shape` in column-major (Fortran) order."""
    moved = np.moveaxis(x, 0, -1)  # the batch last: the slowest index in Fortran order
    return np.moveaxis(moved.reshape(tuple(shape) + (x.shape[0],), order="F"), -1, 0)


linear("reshape_colmajor", shape=_reshape_shape,
       forward=lambda x, shape: _colmajor(x, shape),
       vjp=lambda g, out, x, shape: (_colmajor(g, x.shape[1:]),),
       cases=[Case([(2, 3)], {"shape": (3, 2)}), Case([(2, 3)], {"shape": (6,)}),
              Case([(2, 2, 3)], {"shape": (4, 3)})],
       doc="reshape in column-major order (DyNet's reshape)")


def _permute_shape(x, axes):
    if sorted(axes) != list(range(len(x))):
        raise ValueError(f"axes {axes} are not a permutation of {len(x)} axes")
    return tuple(x[a] for a in axes)


def _permute(x, axes):
    return np.transpose(x, (0,) + tuple(a + 1 for a in axes))


linear("permute", shape=_permute_shape,
       forward=lambda x, axes: _permute(x, axes),
       vjp=lambda g, out, x, axes: (_permute(g, tuple(np.argsort(axes))),),
       cases=[Case([(2, 3)], {"axes": (1, 0)}), Case([(2, 3, 4)], {"axes": (2, 0, 1)})],
       doc="transpose by a permutation of the axes (DyNet's transpose with dims)")


def _slices(box):
    return (slice(None),) + tuple(slice(a, b, c) for a, b, c in box)


def _box_shape(x, box):
    if len(box) > len(x):
        raise ValueError("more slices than axes")
    out = []
    for d, n in enumerate(x):
        if d < len(box):
            start, stop, step = box[d]
            if not (0 <= start <= n and 0 <= stop <= n and step > 0):
                raise ValueError(f"slice {box[d]} out of range for axis {d} of size {n}")
            out.append(len(range(start, stop, step)))
        else:
            out.append(n)
    return tuple(out)


def _box_vjp(g, out, x, box):
    gx = np.zeros_like(x)
    gx[_slices(box)] = g
    return (gx,)


linear("strided_slice", shape=_box_shape,
       forward=lambda x, box: x[_slices(box)],
       vjp=_box_vjp,
       cases=[Case([(4, 5)], {"box": ((1, 3, 1), (0, 5, 2))}),
              Case([(3, 3, 4)], {"box": ((0, 3, 1), (1, 2, 1), (0, 4, 3))})],
       doc="x[a0:b0:c0, a1:b1:c1, ...]: a (start, stop, step) per leading axis")
