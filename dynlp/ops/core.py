"""The op table's machinery: the `Op` record, registration, derivative shortcuts and helpers.

Every primitive is one `Op`: forward, VJP, JVP, a per-argument batching mask and test cases.
Rules receive stacked arguments with a leading batch axis and shared arguments without one.
Imports nothing from dynlp.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

STACK = "stack"
SHARED = "shared"

TABLE: dict[str, "Op"] = {}


class SparseRows:
    """A cotangent for a table that touches only some rows: `table_grad[indices] += values`."""

    __slots__ = ("indices", "values")

    def __init__(self, indices: np.ndarray, values: np.ndarray) -> None:
        self.indices = indices
        self.values = values

    def dense(self, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=self.values.dtype)
        np.add.at(out, self.indices, self.values)
        return out


class OuterProduct:
    """A cotangent for a shared matrix given as left.T @ right, (B, m) and (B, n) -> (m, n).

    `row` and `start` place the product in rows [row, row + m) and columns [start, start + n)
    of a larger matrix (zero elsewhere): a rule that reads only part of a weight says so
    without building the rest. The engine gathers these for each weight and block over the
    whole backward pass and multiplies once: one large product instead of one per batch.
    """

    __slots__ = ("left", "right", "start", "row")

    def __init__(self, left: np.ndarray, right: np.ndarray, start: int = 0, row: int = 0) -> None:
        self.left = left
        self.right = right
        self.start = start
        self.row = row

    def dense(self, shape: tuple[int, ...] | None = None) -> np.ndarray:
        product = self.left.T @ self.right
        if shape is None or product.shape == tuple(shape):
            return product
        full = np.zeros(shape, product.dtype)
        full[self.row:self.row + product.shape[0],
             self.start:self.start + product.shape[1]] = product
        return full


class Parts:
    """A cotangent that is the sum of several (OuterProduct blocks of one weight, say)."""

    __slots__ = ("parts",)

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def dense(self, shape: tuple[int, ...]) -> np.ndarray:
        return sum(part.dense(shape) for part in self.parts)


class Case:
    """One gradient-check configuration: per-example argument shapes, static and batched attrs.

    `batched` maps a batched attribute to a function `rng -> value` for one example.
    """

    __slots__ = ("shapes", "attrs", "batched")

    def __init__(self, shapes: Sequence[tuple[int, ...]], attrs: dict | None = None,
                 batched: dict[str, Callable] | None = None) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.attrs = attrs or {}
        self.batched = batched or {}


class Op:
    """One primitive.

    shape(*shapes, **attrs) -> per-example output shape (raise ValueError to reject).
    forward(*xs, **attrs) -> out; vjp(g, out, *xs, **attrs) -> one cotangent or None per input;
    jvp(ts, out, *xs, **attrs) -> tangent of out (ts holds None for zero tangents).
    batch: a tuple of STACK/SHARED per argument, STACK or SHARED for all arguments,
    a callable nargs -> tuple, or None for an unbatchable op.
    batched_attrs: attributes that differ per example and are stacked, not part of the signature.
    domain: where test inputs are drawn: real, positive, nonzero, unit (0.1..0.9).
    grad_scale: the factor between the rules and the numerical derivative (stop or flip gradient).
    cost: the rough price of a call, 1 for elementwise and structural ops, more for matrix
    products; the agenda strategy runs cheap groups first so that costly ones wait and grow.
    residual: forward returns (out, residual), and vjp and jvp receive `residual=` keyword: what
    forward computed on the way (gates, concatenated inputs) that the derivatives reuse.
    ragged: set by `ragged()`: (forward, vjp, jvp) over all arguments of a batch as one flat
    array, so that nodes of any number of arguments batch together.
    pad: pad(argument shapes, output shape) -> (axis per argument, output axis,
    fill per argument) or None: the axes along which nodes whose shapes differ only there (a
    length) still batch, their arguments padded to the longest with the fill ("edge": the last
    entry repeated, "zero", or "-inf"), and the output (None: it has no such axis) cut back
    per node. The rules must compute each node's entries from its own, unpadded ones (columns
    computed independently, a contraction over zero padding, a softmax over -inf padding).
    pad_probe: the argument whose shape tells nodes of one batch apart (None: the output).
    takes_lengths: in a padded batch, forward and vjp also receive `lengths=`, each node's
    length along the padded axis (a fused program refills the padding between its steps).
    """

    def __init__(self, name: str, *, shape: Callable, forward: Callable, vjp: Callable,
                 jvp: Callable, batch: Any = STACK, batched_attrs: Sequence[str] = (),
                 domain: str = "real", cases: Sequence[Case] = (), grad_scale: float = 1.0,
                 cost: int = 1, residual: bool = False, doc: str = "",
                 pad: Callable | None = None, pad_probe: int | None = None) -> None:
        self.name = name
        self.shape = shape
        self.forward = forward
        self.vjp = vjp
        self.jvp = jvp
        self.batch = batch
        self.batched_attrs = tuple(batched_attrs)
        self.domain = domain
        self.cases = list(cases)
        self.grad_scale = grad_scale
        self.cost = cost
        self.residual = residual
        self.doc = doc
        self.ragged: tuple[Callable, Callable, Callable] | None = None
        self.ragged_shared = 0  # leading shared arguments of a ragged op
        self._masks: dict[int, tuple[str, ...] | None] = {}
        self.pad = pad
        self.pad_probe = pad_probe
        self.takes_lengths = False

    def mask(self, nargs: int) -> tuple[str, ...] | None:
        """The batching mask for a node with `nargs` arguments (None: unbatchable)."""
        m = self._masks.get(nargs, 0)
        if m != 0:
            return m
        b = self.batch
        if b is None:
            m = None
        elif isinstance(b, str):
            m = (b,) * nargs
        elif callable(b):
            m = tuple(b(nargs))
        else:
            m = tuple(b)
        self._masks[nargs] = m
        return m

    def __repr__(self) -> str:
        return f"Op({self.name})"


def define(name: str, **kw: Any) -> Op:
    if name in TABLE:
        raise ValueError(f"op {name!r} is defined twice")
    op = Op(name, **kw)
    TABLE[name] = op
    return op


# ---------------------------------------------------------------------------------------------
# Shape helpers


def same_shape(x, **attrs):
    return x


def broadcast_shape(*shapes):
    """DyNet-style broadcasting: lower-rank shapes are padded with trailing 1s, then numpy rules."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*(tuple(s) + (1,) * (rank - len(s)) for s in shapes)):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise ValueError("shapes do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def pad_to(x: np.ndarray, rank: int) -> np.ndarray:
    """View a batched array (B, *s) as (B, *s, 1, ...) with `rank` per-example axes."""
    extra = rank - (x.ndim - 1)
    if extra <= 0:
        return x
    return x.reshape(x.shape + (1,) * extra)


def unbroadcast(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum a batched cotangent g (B, *out) back to the batched shape of x (B, *s)."""
    if g.shape == x.shape:
        return g
    rank = g.ndim - 1
    xs = x.shape[1:] + (1,) * (rank - (x.ndim - 1))
    axes = tuple(i + 1 for i, (a, b) in enumerate(zip(xs, g.shape[1:])) if a == 1 and b != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(x.shape)


def zeros_like_tangents(ts, xs):
    return [np.zeros_like(x) if t is None else t for t, x in zip(ts, xs)]


def pad_elementwise(shapes: Sequence[tuple[int, ...]],
                    out: tuple[int, ...]) -> tuple | None:
    """`Op.pad` of an elementwise op or program: along the output's last axis, or along the
    rows of a column (L, 1) (a sequence's scores); the arguments that span that axis pad by
    repeating their last entry, the others broadcast along it (arguments align from the first
    axis, lower ranks taking trailing 1s). A reshape inside a program reads values of a size
    fixed by its target, so one whose length varies across a batch is never reshaped."""
    if not out:
        return None
    if len(out) == 2 and out[1] == 1:
        axis = 0
        axes = tuple(0 if s and s[0] == out[0] else None for s in shapes)
    else:
        axis = len(out) - 1
        axes = tuple(axis if len(s) == len(out) and s[-1] == out[-1] else None
                     for s in shapes)
    return axes, axis, tuple(None if a is None else "edge" for a in axes)


# ---------------------------------------------------------------------------------------------
# Derivative shortcuts


def elementwise(name: str, f: Callable, df: Callable, *, domain: str = "real",
                attrs: dict | None = None, shapes=((3,), (2, 3)), doc: str = "") -> Op:
    """A unary elementwise op from its function f(x, **a) and derivative df(x, out, **a)."""

    def vjp(g, out, x, **a):
        return (g * df(x, out, **a),)

    def jvp(ts, out, x, **a):
        return ts[0] * df(x, out, **a)

    cases = [Case([s], attrs) for s in shapes]
    return define(name, shape=same_shape, forward=f, vjp=vjp, jvp=jvp, batch=STACK,
                  domain=domain, cases=cases, doc=doc, pad=pad_elementwise)


def linear(name: str, *, shape: Callable, forward: Callable, vjp: Callable, **kw: Any) -> Op:
    """An op linear in its inputs jointly: the JVP is the forward applied to the tangents."""

    def jvp(ts, out, *xs, **a):
        return forward(*zeros_like_tangents(ts, xs), **a)

    return define(name, shape=shape, forward=forward, vjp=vjp, jvp=jvp, **kw)


def ragged(name: str, *, shape: Callable, forward: Callable, vjp: Callable, jvp: Callable,
           shared: int = 0, **kw: Any) -> Op:
    """An op over any number of arguments of one shape (a sum, a mean): its rules see the
    arguments of all the examples of a batch as one flat array x (total, ...), example after
    example, with `counts` (B,) arguments per example, so that the engine runs nodes of every
    arity in one call. forward(x, counts) -> (B, ...); vjp(g, out, x, counts) -> the cotangent
    of x (total, ...); jvp(t, out, x, counts) -> (B, ...) for a tangent t of x. The op's usual
    rules (a fixed number of arguments, each stacked) are made from these.

    `shared` leading arguments (weights) come before the stacked ones and are passed after x:
    forward(x, *ws, counts), vjp(g, out, x, *ws, counts) -> [cotangent of x, of each w],
    jvp(t, out, x, *ws, counts, tws) with tws the weights' tangents (None: 0). A batched
    attribute then holds one value per stacked argument group of a node (a tuple per node); the
    rules see them flat, in the order of x.
    """
    batched = tuple(kw.get("batched_attrs", ()))

    def flat(xs):
        x = np.stack(xs, axis=1)
        return x.reshape((-1,) + x.shape[2:]), np.full(len(x), len(xs))

    def flat_attrs(a):
        if batched:
            a = dict(a)
            for key in batched:  # (B, terms, ...) -> (B * terms, ...)
                value = np.asarray(a[key])
                a[key] = value.reshape((-1,) + value.shape[2:])
        return a

    def fixed_forward(*args, **a):
        x, counts = flat(args[shared:])
        return forward(x, *args[:shared], counts=counts, **flat_attrs(a))

    def fixed_vjp(g, out, *args, **a):
        xs = args[shared:]
        x, counts = flat(xs)
        cts = vjp(g, out, x, *args[:shared], counts=counts, **flat_attrs(a))
        ct, weights = (cts[0], list(cts[1:])) if shared else (cts, [])
        ct = ct.reshape((len(counts), len(xs)) + x.shape[1:])
        return tuple(weights) + tuple(ct[:, k] for k in range(len(xs)))

    def fixed_jvp(ts, out, *args, **a):
        xs = args[shared:]
        x, counts = flat(xs)
        t = flat(zeros_like_tangents(ts[shared:], xs))[0]
        extra = {"tws": list(ts[:shared])} if shared else {}
        return jvp(t, out, x, *args[:shared], counts=counts, **extra, **flat_attrs(a))

    mask = STACK if not shared else (lambda nargs: (SHARED,) * shared + (STACK,) * (nargs - shared))
    op = define(name, shape=shape, forward=fixed_forward, vjp=fixed_vjp, jvp=fixed_jvp,
                batch=mask, **kw)
    op.ragged = (forward, vjp, jvp)
    op.ragged_shared = shared
    return op


def bilinear(name: str, *, shape: Callable, forward: Callable, vjp: Callable, **kw: Any) -> Op:
    """An op linear in each of its two inputs: d f(x, y) = f(dx, y) + f(x, dy)."""

    def jvp(ts, out, x, y, **a):
        tx, ty = ts
        result = None
        if tx is not None:
            result = forward(tx, y, **a)
        if ty is not None:
            part = forward(x, ty, **a)
            result = part if result is None else result + part
        return result if result is not None else np.zeros_like(out)

    return define(name, shape=shape, forward=forward, vjp=vjp, jvp=jvp, **kw)
