"""Assignment (tutorial page 4): the bilinear score s = x^T W y as a dynlp op.

x (m,) and y (n,) differ per example; W (m, n) is a weight that every example shares.
Fill in the five functions below, then run
    python docs/tutorial/assignment/check_op.py docs/tutorial/assignment/my_op.py
Remember how the rules see a batch: x arrives as (B, m), y as (B, n), W once as (m, n);
the output is (B,), the cotangent g is (B,), and W's cotangent is summed over the batch.
"""

import numpy as np

import dynlp as dn


def shape(x_shape, W_shape, y_shape):
    """Per-example shapes in, the per-example output shape out; raise ValueError on a misfit."""
    raise NotImplementedError


def forward(x, W, y):
    """(B, m), (m, n), (B, n) -> (B,)"""
    raise NotImplementedError


def vjp(g, out, x, W, y):
    """Cotangents of x, W and y for the output cotangent g (B,)."""
    raise NotImplementedError


def jvp(ts, out, x, W, y):
    """The output's tangent (B,) for tangents ts = [tx, tW, ty]; a None tangent is zero."""
    raise NotImplementedError


BATCH = None  # the batching mask: one of dn.STACK / dn.SHARED per argument, as a tuple

OP = dn.Op("bilinear", shape=shape, forward=forward, vjp=vjp, jvp=jvp, batch=BATCH,
           cases=[dn.Case([(3,), (3, 4), (4,)])])
bilinear = dn.op_function(OP)
_ = np  # numpy is what the rules are written in
