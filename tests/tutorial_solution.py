"""A reference solution of the tutorial's assignment (docs/tutorial/assignment/my_op.py), for
teachers and for the test that runs the checker on it."""

import numpy as np

import dynlp as dn


def shape(x_shape, W_shape, y_shape):
    if len(W_shape) != 2 or x_shape != W_shape[:1] or y_shape != W_shape[1:]:
        raise ValueError(f"bilinear needs x (m,), W (m, n), y (n,); got {x_shape}, {W_shape}, "
                         f"{y_shape}")
    return ()


def forward(x, W, y):
    return np.einsum("bi,ij,bj->b", x, W, y)


def vjp(g, out, x, W, y):
    # ds/dx = W y, ds/dW = x y^T (summed over the batch), ds/dy = W^T x
    return (g[:, None] * (y @ W.T), np.einsum("b,bi,bj->ij", g, x, y), g[:, None] * (x @ W))


def jvp(ts, out, x, W, y):
    tx, tW, ty = ts
    result = np.zeros_like(out)
    if tx is not None:
        result = result + forward(tx, W, y)
    if tW is not None:
        result = result + np.einsum("bi,ij,bj->b", x, tW, y)
    if ty is not None:
        result = result + forward(x, W, ty)
    return result


BATCH = (dn.STACK, dn.SHARED, dn.STACK)

OP = dn.Op("bilinear", shape=shape, forward=forward, vjp=vjp, jvp=jvp, batch=BATCH,
           cases=[dn.Case([(3,), (3, 4), (4,)])])
bilinear = dn.op_function(OP)
