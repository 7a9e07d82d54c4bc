"""The expression functions users call: one thin builder per op of the table, plus composites
(subtraction, means, dot products) written over primitives. Shapes in docstrings are per example.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .graph import (Affine, AffineLoss, Expression, Pointwise, Row, SettingError, Slice,
                    _pointwise1, apply, arith, current_graph, matmul, pick, unary)
from . import graph as _graph
from .inplace import dropout_ranges, dropout_row
from .ops import TABLE
from .params import LookupParameter, Parameter, lookup

_PICK_NEG_LOG_SOFTMAX = TABLE["pick_neg_log_softmax"]
_TANH, _LOGISTIC = TABLE["tanh"], TABLE["logistic"]

__all__ = [
    "inputs", "scalar", "zeros", "ones", "parameter", "lookup", "neg", "exp", "log", "sqrt",
    "square", "cube", "absolute", "sin", "cos", "tanh", "logistic", "sigmoid", "log_sigmoid",
    "softplus", "rectify", "relu", "elu", "selu", "cmult", "cdiv", "power", "maximum",
    "minimum", "bmax", "bmin", "matmul", "affine_transform", "transpose", "dot_product", "outer",
    "sum_elems", "mean_elems", "sum_dim", "mean_dim", "max_dim", "min_dim", "logsumexp", "esum",
    "average", "l2_norm", "squared_norm", "concatenate", "concatenate_cols",
    "concatenate_ranges", "reshape", "pick",
    "pick_range", "select_rows", "select_cols", "nobackprop", "flip_gradient", "softmax",
    "log_softmax", "pick_neg_log_softmax", "hinge", "binary_log_loss", "squared_distance",
    "huber_distance", "dropout", "noise",
]


# -- leaves ---------------------------------------------------------------------------------------
def inputs(value: Any) -> Expression:
    """A constant from an array-like, in the current graph's dtype."""
    return current_graph().leaf(np.asarray(value))


def scalar(value: float) -> Expression:
    return current_graph().leaf(np.asarray(float(value)))


def zeros(shape: Any) -> Expression:
    g = current_graph()
    return g.leaf(np.zeros(shape, g.dtype))


def ones(shape: Any) -> Expression:
    g = current_graph()
    return g.leaf(np.ones(shape, g.dtype))


def parameter(p: Parameter) -> Expression:
    """The expression of a parameter in the current graph (DyNet's `parameter(p)`)."""
    try:  # the usual case, once per parameter and graph: one lookup
        e = _graph._current._param_exprs.get(p)  # (an ended graph has none left)
    except (AttributeError, TypeError):  # (no graph yet; p not hashable: no parameter, which
        e = None                         # `to_expression` says)
    return p.to_expression() if e is None else e


# -- elementwise ----------------------------------------------------------------------------------
def neg(x: Any) -> Expression:
    return unary("neg", x)


def exp(x: Any) -> Expression:
    return unary("exp", x)


def log(x: Any) -> Expression:
    return unary("log", x)


def sqrt(x: Any) -> Expression:
    return unary("sqrt", x)


def square(x: Any) -> Expression:
    return unary("square", x)


def cube(x: Any) -> Expression:
    return unary("cube", x)


def absolute(x: Any) -> Expression:
    return unary("abs", x)


def sin(x: Any) -> Expression:
    return unary("sin", x)


def cos(x: Any) -> Expression:
    return unary("cos", x)


def tanh(x: Any) -> Expression:
    kind = type(x)
    if kind is Affine:  # (`tanh(W @ x + b)`: one node, `unary`'s first case)
        return x.close("tanh")
    if kind is Pointwise:  # (`tanh(c)` of an elementwise expression: `unary`'s, the short way)
        g = x.g
        if g.fuse is True and g.alive:
            return _pointwise1(g, _TANH, x, x.out_shape)
    return unary("tanh", x)


def logistic(x: Any) -> Expression:
    """1 / (1 + exp(-x))"""
    kind = type(x)
    if kind is Affine:
        return x.close("logistic")
    if kind is Pointwise:
        g = x.g
        if g.fuse is True and g.alive:
            return _pointwise1(g, _LOGISTIC, x, x.out_shape)
    return unary("logistic", x)


sigmoid = logistic


def log_sigmoid(x: Any) -> Expression:
    return unary("log_sigmoid", x)


def softplus(x: Any) -> Expression:
    return unary("softplus", x)


def rectify(x: Any) -> Expression:
    if type(x) is Affine:
        return x.close("rectify")
    return unary("rectify", x)


relu = rectify


def elu(x: Any, alpha: float = 1.0) -> Expression:
    return apply("elu", x, attrs=(("alpha", float(alpha)),))


def selu(x: Any) -> Expression:
    return unary("selu", x)


def cmult(x: Any, y: Any) -> Expression:
    """Elementwise product. Broadcasting, for `*`, `+`, `-`, `/` too, follows DyNet: the
    lower-rank shape is padded with trailing 1s, so a vector (d,) against a matrix (d, n) is
    a column added to every column (numpy pads leading 1s: (n,) against (d, n) is a row)."""
    return arith("mul", x, y)


def cdiv(x: Any, y: Any) -> Expression:
    return arith("div", x, y)


def power(x: Any, c: float) -> Expression:
    """x ** c for a constant c."""
    return apply("pow_const", x, attrs=(("c", float(c)),))


def maximum(x: Any, y: Any) -> Expression:
    return apply("maximum", x, y)


def minimum(x: Any, y: Any) -> Expression:
    return apply("minimum", x, y)


bmax = maximum
bmin = minimum


# -- linear algebra -------------------------------------------------------------------------------
def affine_transform(xs: Sequence[Any], activation: str | None = None) -> Expression:
    """[b, W1, x1, W2, x2, ...] -> b + W1 @ x1 + W2 @ x2 + ... in one node; `activation`
    ("tanh", "rectify", "logistic") is applied in the same node."""
    if activation is None:
        return apply("affine_transform", *xs)
    return apply("affine_transform", *xs, attrs=(("activation", activation),))


def transpose(x: Any) -> Expression:
    """(m, n) -> (n, m); a vector (n,) becomes a row (1, n)."""
    return unary("transpose", x)


def dot_product(x: Any, y: Any) -> Expression:
    """sum(x * y) -> ()"""
    return sum_elems(cmult(x, y))


def outer(x: Any, y: Any) -> Expression:
    """(m,), (n,) -> (m, n)"""
    return apply("outer", x, y)


# -- reductions -----------------------------------------------------------------------------------
def sum_elems(x: Any) -> Expression:
    """Sum of all elements -> ()"""
    return unary("sum_elems", x)


def mean_elems(x: Any) -> Expression:
    return sum_elems(x) * (1.0 / max(1, int(np.prod(x.shape))))


def _axes(name: str, x: Any, axis: Any) -> list[int]:
    """One axis or a sequence of them (DyNet's `sum_dim(x, [0])`), each in range, highest
    first so that summing one leaves the numbers of the others unchanged."""
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    rank = len(x.shape)
    if not axes or any(not isinstance(a, (int, np.integer)) or not -rank <= a < max(rank, 1)
                       for a in axes):
        raise ValueError(f"{name}: axis {axis!r} is not an axis (or a list of axes) of shape "
                         f"{tuple(x.shape)}")
    return sorted({int(a) % max(rank, 1) for a in axes}, reverse=True)


def sum_dim(x: Any, axis: int | Sequence[int]) -> Expression:
    """Sum along `axis`, or along each axis of a list: (2, 3) with axis 1 -> (2,)."""
    for a in _axes("sum_dim", x, axis):
        x = apply("sum_dim", x, attrs=(("axis", a),))
    return x


def mean_dim(x: Any, axis: int | Sequence[int]) -> Expression:
    """Mean along `axis`, or along each axis of a list."""
    axes = _axes("mean_dim", x, axis)
    count = int(np.prod([x.shape[a] for a in axes]))
    return sum_dim(x, axes) * (1.0 / count)


def max_dim(x: Any, axis: int = 0) -> Expression:
    return apply("max_dim", x, attrs=(("axis", int(axis)),))


def min_dim(x: Any, axis: int = 0) -> Expression:
    return apply("min_dim", x, attrs=(("axis", int(axis)),))


def logsumexp(x: Any, axis: int = 0) -> Expression:
    """log sum exp of a vector (along `axis` of a matrix), or elementwise over a list."""
    if isinstance(x, (list, tuple)):
        stacked = concatenate([reshape(e, (1,) + e.shape) for e in x])
        return apply("logsumexp", stacked, attrs=(("axis", 0),))
    return apply("logsumexp", x, attrs=(("axis", int(axis)),))


def esum(xs: Sequence[Any]) -> Expression:
    """Sum of a list of expressions of one shape, in one node. Deferred terms that know how to
    sum themselves in one node (`fuse_sum`: the losses of one MLP) do so."""
    if not isinstance(xs, (list, tuple)):
        xs = list(xs)
    if not xs:
        raise ValueError("esum: the list is empty")
    fuse = getattr(type(xs[0]), "fuse_sum", None)
    if fuse is not None:
        total = fuse(xs)
        if total is not None:
            return total
    return apply("esum", *xs)


def average(xs: Sequence[Any]) -> Expression:
    return esum(xs) * (1.0 / len(xs))


def l2_norm(x: Any) -> Expression:
    return unary("l2_norm", x)


def squared_norm(x: Any) -> Expression:
    return unary("squared_norm", x)


# -- structure ------------------------------------------------------------------------------------
def concatenate(xs: Sequence[Any]) -> Expression:
    """Rows: (d1,), (d2,) -> (d1 + d2,); matrices along their first axis."""
    if len(xs) == 1 and isinstance(xs[0], Expression):
        return xs[0]
    if type(xs[0]) is Slice:
        joined = Slice.concatenation(xs)
        if joined is not None:
            return joined
    return apply("concatenate", *xs)


def concatenate_ranges(xs: Sequence[Any], start: int, end: int) -> Expression:
    """x1[start:end], x2[start:end], ... concatenated, in one node."""
    return apply("concatenate_ranges", *xs, attrs=(("start", int(start)), ("end", int(end))))


def concatenate_cols(xs: Sequence[Any]) -> Expression:
    """Vectors (d,) as columns -> (d, k); matrices (d, k_i) side by side."""
    return apply("concatenate_cols", *xs)


def reshape(x: Any, shape: Any) -> Expression:
    """The same numbers in another shape, read and written in row-major order (numpy's C
    order: [[0, 1, 2], [3, 4, 5]] -> (3, 2) is [[0, 1], [2, 3], [4, 5]]); DyNet reads in
    column-major order, so a port from DyNet that reshapes matrices may need a transpose."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    return _graph.reshaped(x, shape)


def pick_range(x: Any, start: int, end: int, dim: int = 0) -> Expression:
    """x[start:end] along dim."""
    return apply("pick_range", x, attrs=(("start", int(start)), ("end", int(end)),
                                         ("dim", int(dim))))


def _indices(name: str, idx: Sequence[int], size: int) -> tuple[int, ...]:
    idx = tuple(int(i) for i in idx)
    if not idx or any(not 0 <= i < size for i in idx):
        raise IndexError(f"{name}: indices {list(idx)} out of range 0..{size - 1}")
    return idx


def select_rows(x: Expression, rows: Sequence[int]) -> Expression:
    rows = _indices("select_rows", rows, x.shape[0])
    return apply("select_rows", x, attrs=(("count", len(rows)),), battrs=(rows,))


def select_cols(x: Expression, cols: Sequence[int]) -> Expression:
    cols = _indices("select_cols", cols, x.shape[1] if len(x.shape) > 1 else 0)
    return apply("select_cols", x, attrs=(("count", len(cols)),), battrs=(cols,))


def nobackprop(x: Any) -> Expression:
    """Identity whose gradient is cut (stop gradient)."""
    return unary("nobackprop", x)


def flip_gradient(x: Any) -> Expression:
    """Identity whose gradient is negated (adversarial training)."""
    return unary("flip_gradient", x)


# -- probabilities and losses ---------------------------------------------------------------------
def _along(name: str, x: Any, axis: int) -> Expression:
    rank = len(x.shape)
    if rank <= 1 and axis in (0, -1):
        return unary(name, x)
    if rank == 2 and axis in (0, -2):
        return unary(name, x)
    if rank == 2 and axis in (1, -1):  # each row: the columns of the transpose
        return unary("transpose", unary(name, unary("transpose", x)))
    raise ValueError(f"{name}: axis {axis} of shape {tuple(x.shape)}: a vector has axis 0, a "
                     "matrix axes 0 (each column) and 1 (each row)")


def softmax(x: Any, axis: int = 0) -> Expression:
    """Softmax along `axis`: a vector's, or each column (axis 0, DyNet's way) or each row
    (axis 1) of a matrix."""
    return _along("softmax", x, axis)


def log_softmax(x: Any, axis: int = 0) -> Expression:
    """log softmax along `axis`, as `softmax`."""
    return _along("log_softmax", x, axis)


def _label(name: str, x: Expression, index: int) -> int:
    index = int(index)
    shape = x.shape
    if len(shape) != 1 or not 0 <= index < shape[0]:
        raise IndexError(f"{name}: label {index} out of range for scores of shape {shape}")
    return index


def pick_neg_log_softmax(x: Expression, index: int) -> Expression:
    """-log softmax(x)[index] -> (); the cross-entropy of one label."""
    if type(x) is Affine:  # (`_label`'s checks, the short way)
        label = int(index)
        shape = x.out_shape
        if len(shape) == 1 and 0 <= label < shape[0]:
            loss = AffineLoss.of(x, label)
            if loss is not None:
                return loss
    label = _label("pick_neg_log_softmax", x, index)
    if type(x) is Expression:
        g = x._live()
        return g.add(_PICK_NEG_LOG_SOFTMAX, (x.i,), (), g.single(label))
    return apply("pick_neg_log_softmax", x, battrs=(label,))


def hinge(x: Expression, index: int, margin: float = 1.0) -> Expression:
    return apply("hinge", x, attrs=(("margin", float(margin)),),
                 battrs=(_label("hinge", x, index),))


def binary_log_loss(x: Any, y: Any) -> Expression:
    """-sum(y log x + (1 - y) log(1 - x)) for probabilities x, targets y."""
    return apply("binary_log_loss", x, y)


def squared_distance(x: Any, y: Any) -> Expression:
    return apply("squared_distance", x, y)


def huber_distance(x: Any, y: Any, c: float = 1.345) -> Expression:
    return apply("huber_distance", x, y, attrs=(("c", float(c)),))


# -- noise ----------------------------------------------------------------------------------------
def dropout(x: Expression, p: float) -> Expression:
    """Inverted dropout with rate p; the mask is drawn now from the graph's seeded generator.
    The identity in a graph with training=False, or for p = 0. An embedding row (`dn.lookup`)
    or a deferred slice of states (a Tree-LSTM's `h()`, a BiLSTM's output) that is not a node
    yet is read in place: one node, not a lookup or a slice and a dropout. Such an x has no
    gradient of its own (`x.gradient()` raises); pass `x.plain()` to keep one."""
    g = x._live()
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise SettingError(f"dropout: rate {p!r} is not a number") from None
    if not 0.0 <= p < 1.0:  # (NaN fails too)
        raise SettingError(f"dropout: rate {p} not in [0, 1)")
    if not g.training or p == 0.0:
        return x
    kind = type(x)
    if kind is Row and x._node < 0:  # read the table row in place: no lookup node
        x._fused = True
        return g.add(dropout_row(p), (x.table,), (), (x.index, g.uniform(x.shape)))
    if kind is Slice and x._node < 0:  # read the state ranges in place: no pick_range node
        x._fused = True
        start, end = x.windows[0]
        return g.add(dropout_ranges(len(x.sources), start, end, p), x.sources, (),
                     (g.uniform((x.width,)),))
    return apply("dropout", x, attrs=(("rate", p),), battrs=(g.uniform(x.shape),))


def noise(x: Expression, stddev: float) -> Expression:
    """x plus Gaussian noise (identity when not training)."""
    g = x._live()
    if not g.training or stddev <= 0.0:
        return x
    return apply("noise", x, battrs=(g.rng.normal(0.0, stddev, x.shape).astype(g.dtype),))


__all__ += ["Expression", "LookupParameter"]
