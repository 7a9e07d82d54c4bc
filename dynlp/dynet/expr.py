"""DyNet's expressions and graph functions over dynlp's graphs.

A DyNet expression with a batch of B elements is B dynlp expressions, one per element: DyNet's
explicit batch rides on the engine's leading batch axis, where autobatching stacks the elements
of every op. Shapes are DyNet's (a scalar is (1,)); `*` between expressions is a matrix product
and `reshape` is column-major. Imports dynlp's graph and functions, not the rest of this package.
"""

from __future__ import annotations

import builtins
from typing import Any, Callable, Sequence

import numpy as np

from .. import functions as F
from .. import graph as G
from ..ops import TABLE

_INPUT = TABLE["input"]
_PARAMETER = TABLE["parameter"]


class _State:
    """The random generator behind initializers, random inputs and graph seeds
    (`--dynet-seed`), the graph options, and the values of inputs set after building
    (`vecInput(...).set`) per live graph."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng()
        self.autobatch: bool | str = True
        self.weight_decay = 0.0   # for every collection (`--dynet-weight-decay`)
        self.version = 0
        self.dirty = False        # an input changed since the last forward: recompute
        self.inputs: dict[int, Any] = {}   # node -> its settable input (current graph)

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed if seed else None)


STATE = _State()


# -- graphs ---------------------------------------------------------------------------------------
def renew_cg(immediate_compute: bool = False, check_validity: bool = False,
             autobatching: Any = None) -> "ComputationGraph":
    """End the current graph and start a new one; its dropout and noise draw from the seeded
    generator (`--dynet-seed`). immediate_compute and check_validity are accepted and ignored."""
    autobatch = STATE.autobatch if autobatching is None else bool(autobatching)
    G.renew_cg(autobatch=autobatch, seed=int(STATE.rng.integers(2 ** 31)))
    STATE.version += 1
    STATE.dirty = False
    STATE.inputs = {}
    return _CG


def _graph() -> G.Graph:
    """The current graph, started by `renew_cg` if there is none (DyNet has one always)."""
    g = G._current
    if g is None or not g.alive:
        renew_cg()
        g = G._current
    return g


def _refresh(g: G.Graph) -> None:
    """Forget every computed value of g so that the next forward recomputes from its leaves:
    parameters as they are now, settable inputs as last set (DyNet's `invalidate`)."""
    old = g.engine
    values = {}
    for n, op in enumerate(g.ops):
        if op is _INPUT:
            source = STATE.inputs.get(n) if g is G._current else None
            values[n] = old.value(n) if source is None else source.array(g.dtype)
        elif op is _PARAMETER:
            values[n] = g.node_params[n].value.astype(g.dtype, copy=False)
    g.loc[:] = [-1] * len(g.loc)
    g.engine = type(old)(g, old.strategy or False)
    for n, value in values.items():
        g.engine.leaf(n, value)
    if g is G._current:
        STATE.dirty = False


def _ready(g: G.Graph) -> None:
    if not g.alive:
        raise RuntimeError("this expression's graph has ended (renew_cg was called); "
                           "build the expression again in the new graph")
    if STATE.dirty and g is G._current:
        _refresh(g)


class ComputationGraph:
    """DyNet's `cg()`: the current graph's controls."""

    def renew(self, immediate_compute: bool = False, check_validity: bool = False,
              autobatching: Any = None) -> "ComputationGraph":
        return renew_cg(immediate_compute, check_validity, autobatching)

    def version(self) -> int:
        return STATE.version

    def invalidate(self) -> None:
        STATE.dirty = True

    def forward(self, expr: "Expression", recalculate: bool = True) -> None:
        expr.forward(recalculate)

    def inc_forward(self, expr: "Expression") -> None:
        expr.forward()

    def backward(self, expr: "Expression", full: bool = False) -> None:
        expr.backward(full)

    def checkpoint(self) -> None:
        """Nodes added after a checkpoint are simply never computed once reverted: the graph
        is append-only and computes only what is asked for."""

    def revert(self) -> None:
        pass

    def print_graphviz(self, **unused: Any) -> None:
        pass


_CG = ComputationGraph()


def cg() -> ComputationGraph:
    return _CG


def cg_version() -> int:
    return STATE.version


def cg_checkpoint() -> None:
    _CG.checkpoint()


def cg_revert() -> None:
    _CG.revert()


def forward(exprs: Sequence["Expression"]) -> None:
    """Evaluate several expressions in one pass."""
    nodes = [e for x in exprs for e in x.es]
    if nodes:
        g = nodes[0].g
        _ready(g)
        g.forward(nodes)


# -- expressions ----------------------------------------------------------------------------------
class Expression:
    """A DyNet expression: `es` holds one dynlp expression per batch element."""

    __slots__ = ("es",)
    __array_priority__ = 1000

    def __init__(self, es: Sequence[G.Expression]) -> None:
        self.es = tuple(es)

    # -- dimensions ------------------------------------------------------------------------------
    def dim(self) -> tuple[tuple[int, ...], int]:
        """((rows, cols, ...), batch size)"""
        return _dshape(self.es[0].shape), len(self.es)

    def __repr__(self) -> str:
        return f"expression {self.dim()}"

    def cg(self) -> ComputationGraph:
        return _CG

    def cg_version(self) -> int:
        return STATE.version

    # -- values ----------------------------------------------------------------------------------
    def forward(self, recalculate: bool = False) -> None:
        g = self.es[0].g
        if recalculate:
            STATE.dirty = True
        _ready(g)
        g.forward(self.es)

    def npvalue(self, recalculate: bool = False) -> np.ndarray:
        """The value; with a batch, the batch is the last axis."""
        self.forward(recalculate)
        values = [e.npvalue().reshape(_dshape(e.shape)) for e in self.es]
        if len(values) == 1:
            return values[0]
        return np.stack(values, axis=-1)

    def tensor_value(self, recalculate: bool = False) -> np.ndarray:
        return self.npvalue(recalculate)

    def vec_value(self, recalculate: bool = False) -> list[float]:
        """Every value as a flat list, column-major, batch elements one after another."""
        return [float(v) for v in self.npvalue(recalculate).ravel(order="F")]

    def scalar_value(self, recalculate: bool = False) -> float:
        return float(self.npvalue(recalculate).ravel(order="F")[0])

    def value(self, recalculate: bool = False) -> Any:
        """A float for one number, a list for a vector (or a batch of them), else an array."""
        v = self.npvalue(recalculate)
        if v.size == 1 and len(self.es) == 1:
            return float(v.ravel()[0])
        if len(self.dim()[0]) == 1:
            return [float(a) for a in v.ravel(order="F")]
        return v

    def backward(self, full: bool = False) -> None:
        """Gradients of the sum over the batch of this scalar expression."""
        g = self.es[0].g
        _ready(g)
        if int(np.prod(self.es[0].shape)) != 1:
            raise ValueError(f"backward: the expression has dimension {self.dim()}, not a "
                             "scalar per batch element")
        parts = [e if e.shape == () else F.sum_elems(e) for e in self.es]
        total = parts[0] if len(parts) == 1 else F.esum(parts)
        total.backward()

    def gradient(self) -> np.ndarray:
        """d loss / d this expression, after `backward()`; the batch last, as `npvalue`."""
        try:
            values = [e.gradient().reshape(_dshape(e.shape)) for e in self.es]
        except G.GraphError as err:
            raise RuntimeError(str(err)) from None
        return values[0] if len(values) == 1 else np.stack(values, axis=-1)

    # -- operators -------------------------------------------------------------------------------
    def __add__(self, other):
        return _arith(_add, self, other)

    def __radd__(self, other):
        return _arith(_add, other, self)

    def __sub__(self, other):
        return _arith(_sub, self, other)

    def __rsub__(self, other):
        return _arith(_sub, other, self)

    def __mul__(self, other):
        if _is_number(other):
            return _map(lambda x: x * float(other), self)
        return _map2(_matmul, self, other)

    def __rmul__(self, other):
        if _is_number(other):
            return _map(lambda x: float(other) * x, self)
        return _map2(_matmul, other, self)

    def __truediv__(self, other):
        if _is_number(other):
            return _map(lambda x: x * (1.0 / float(other)), self)
        return cdiv(self, other)

    def __rtruediv__(self, other):
        if _is_number(other):
            return _map(lambda x: float(other) * x ** -1.0, self)
        return cdiv(other, self)

    def __neg__(self):
        return _map(lambda x: -x, self)

    def __pow__(self, other):
        return pow(self, other)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return pick(self, int(index))
        if isinstance(index, slice):
            index = (index,)
        if isinstance(index, tuple):
            return _slice(self, index)
        raise TypeError(f"cannot index an expression with {type(index).__name__}")

    __hash__ = object.__hash__


def _dshape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if shape else (1,)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _as_expr(x: Any) -> Expression:
    if isinstance(x, Expression):
        return x
    to_expr = getattr(x, "expr", None)  # Parameters
    if to_expr is not None:
        return to_expr()
    if isinstance(x, G.Expression):
        return Expression([x])
    raise TypeError(f"expected an Expression, got {type(x).__name__}")


def _batches(*xs: Expression) -> int:
    sizes = {len(x.es) for x in xs} - {1}
    if len(sizes) > 1:
        raise ValueError(f"batch sizes {sorted(sizes)} do not match")
    return sizes.pop() if sizes else 1


def _elems(x: Expression, b: int) -> Sequence[G.Expression]:
    return x.es if len(x.es) == b else x.es * b


def _map(fn: Callable, x: Any) -> Expression:
    es = (x if type(x) is Expression else _as_expr(x)).es
    if len(es) == 1:
        return Expression((fn(es[0]),))
    return Expression([fn(e) for e in es])


def _map2(fn: Callable, x: Any, y: Any) -> Expression:
    x = x if type(x) is Expression else _as_expr(x)
    y = y if type(y) is Expression else _as_expr(y)
    if len(x.es) == 1 and len(y.es) == 1:
        return Expression((fn(x.es[0], y.es[0]),))
    b = _batches(x, y)
    return Expression([fn(a, c) for a, c in zip(_elems(x, b), _elems(y, b))])


def _mapn(fn: Callable, xs: Sequence[Any]) -> Expression:
    xs = [x if type(x) is Expression else _as_expr(x) for x in xs]
    if all(len(x.es) == 1 for x in xs):
        return Expression((fn([x.es[0] for x in xs]),))
    b = _batches(*xs)
    cols = [_elems(x, b) for x in xs]
    return Expression([fn(list(parts)) for parts in zip(*cols)])


def _scalar(e: G.Expression) -> G.Expression:
    """A dynlp scalar () as DyNet's (1,)."""
    return F.reshape(e, (1,)) if e.shape == () else e


def _vec(e: G.Expression) -> G.Expression:
    """A column (n, 1) as the vector (n,): DyNet takes either where a vector is needed."""
    return F.reshape(e, e.shape[:1]) if len(e.shape) == 2 and e.shape[1] == 1 else e


def _add(x, y):
    return x + y


def _sub(x, y):
    return x - y


def _arith(fn: Callable, x: Any, y: Any) -> Expression:
    if _is_number(x):
        return _map(lambda e: fn(float(x), e), y)
    if _is_number(y):
        return _map(lambda e: fn(e, float(y)), x)
    return _map2(lambda a, c: _broadcast(fn, a, c), x, y)


def _broadcast(fn: Callable, a: G.Expression, c: G.Expression) -> G.Expression:
    """fn over two elements, DyNet's broadcasting: a (1,) scalar against anything."""
    sa, sc = a.shape, c.shape
    if sa == (1,) and sc != (1,) and len(sc) > 1:
        a = F.reshape(a, (1,) * len(sc))
    elif sc == (1,) and sa != (1,) and len(sa) > 1:
        c = F.reshape(c, (1,) * len(sa))
    return fn(a, c)


def _matmul(a: G.Expression, b: G.Expression) -> G.Expression:
    """DyNet's product: a vector is a column (n, 1)."""
    if len(a.shape) == 1:
        if b.shape == (1,):
            return a * b
        a = F.reshape(a, (a.shape[0], 1))
    if len(a.shape) != 2 or len(b.shape) > 2:
        raise ValueError(f"matrix product of {a.shape} and {b.shape}")
    return G.matmul(a, b)


# -- inputs ---------------------------------------------------------------------------------------
def _leaf(value: np.ndarray) -> G.Expression:
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        value = value.reshape(1)
    return _graph().leaf(value)


def inputTensor(arr: Any = None, batched: bool = False, device: str = "") -> Expression:
    """An input from an array (or a list of arrays, one per batch element); batched=True makes
    the last axis the batch."""
    if arr is None:
        raise TypeError("inputTensor() needs an array")
    if isinstance(arr, (list, tuple)) and arr and all(isinstance(a, np.ndarray) for a in arr):
        return Expression([_leaf(a) for a in arr])  # one array per batch element
    value = np.asarray(arr, dtype=np.float64)
    if batched:
        if value.ndim == 0:
            raise ValueError("a batched input needs at least one axis")
        return Expression([_leaf(value[..., b]) for b in range(value.shape[-1])])
    return Expression([_leaf(value)])


def sparse_inputTensor(idxs: Sequence[Sequence[int]], values: Sequence[float],
                       shape: Sequence[int], batched: bool = False,
                       defval: float = 0.0, device: str = "") -> Expression:
    """An input of `shape` holding defval but at the given coordinates (one list per axis)."""
    full = np.full(tuple(shape), float(defval))
    full[tuple(np.asarray(i, dtype=int) for i in idxs)] = values
    return inputTensor(full, batched=batched)


class _Settable(Expression):
    """An input whose value can be set again after the graph is built (`vecInput`,
    `scalarInput`, `matInput`); setting it makes the next forward recompute the graph."""

    __slots__ = ("shape", "values")

    def __init__(self, shape: tuple[int, ...], values: np.ndarray) -> None:
        self.shape = shape
        self.values = values
        node = _leaf(self.array(np.float64))
        super().__init__([node])
        STATE.inputs[node.i] = self

    def array(self, dtype: Any) -> np.ndarray:
        return np.asarray(self.values, dtype=dtype).reshape(self.shape, order="F")

    def set(self, values: Any) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size != int(np.prod(self.shape)):
            raise ValueError(f"set: {values.size} values for an input of shape {self.shape}")
        self.values = values
        STATE.dirty = True

    def set_value(self, values: Any) -> None:
        self.set(values)


def scalarInput(value: float, device: str = "") -> Expression:
    return _Settable((1,), np.array([float(value)]))


def vecInput(dim: int, device: str = "") -> Expression:
    return _Settable((int(dim),), np.zeros(int(dim)))


def inputVector(v: Sequence[float], device: str = "") -> Expression:
    v = np.asarray(v, dtype=np.float64).ravel()
    return _Settable(v.shape, v)


def matInput(d1: int, d2: int) -> Expression:
    return _Settable((int(d1), int(d2)), np.zeros(int(d1) * int(d2)))


def inputMatrix(v: Sequence[float], d: Sequence[int]) -> Expression:
    """A matrix of shape d from values in column-major order."""
    return _Settable(tuple(int(n) for n in d), np.asarray(v, dtype=np.float64).ravel())


def _dims(d: Any) -> tuple[int, ...]:
    return (int(d),) if isinstance(d, (int, np.integer)) else tuple(int(n) for n in d)


def _batch_of(values: Callable[[], np.ndarray], batch_size: int) -> Expression:
    return Expression([_leaf(values()) for _ in range(int(batch_size))])


def zeros(dim: Any, batch_size: int = 1) -> Expression:
    return _batch_of(lambda: np.zeros(_dims(dim)), batch_size)


zeroes = zeros


def ones(dim: Any, batch_size: int = 1) -> Expression:
    return _batch_of(lambda: np.ones(_dims(dim)), batch_size)


def constant(dim: Any, val: float, batch_size: int = 1) -> Expression:
    return _batch_of(lambda: np.full(_dims(dim), float(val)), batch_size)


def random_normal(dim: Any, mean: float = 0.0, stddev: float = 1.0,
                  batch_size: int = 1) -> Expression:
    return _batch_of(lambda: STATE.rng.normal(mean, stddev, _dims(dim)), batch_size)


def random_uniform(dim: Any, left: float, right: float, batch_size: int = 1) -> Expression:
    return _batch_of(lambda: STATE.rng.uniform(left, right, _dims(dim)), batch_size)


def random_bernoulli(dim: Any, p: float, scale: float = 1.0, batch_size: int = 1) -> Expression:
    return _batch_of(lambda: (STATE.rng.random(_dims(dim)) < p) * float(scale), batch_size)


def random_gumbel(dim: Any, mu: float = 0.0, beta: float = 1.0,
                  batch_size: int = 1) -> Expression:
    return _batch_of(lambda: STATE.rng.gumbel(mu, beta, _dims(dim)), batch_size)


# -- elementwise ----------------------------------------------------------------------------------
def _unary(fn: Callable) -> Callable[[Any], Expression]:
    def op(x: Any) -> Expression:
        return _map(fn, x)
    op.__name__ = getattr(fn, "__name__", "op")
    return op


tanh = _unary(F.tanh)
exp = _unary(F.exp)
log = _unary(F.log)
sqrt = _unary(F.sqrt)
square = _unary(F.square)
cube = _unary(F.cube)
abs = _unary(F.absolute)
sin = _unary(F.sin)
cos = _unary(F.cos)
logistic = _unary(F.logistic)
sigmoid = logistic
rectify = _unary(F.rectify)
relu = rectify
selu = _unary(F.selu)
log_sigmoid = _unary(F.log_sigmoid)
softplus = _unary(F.softplus)
negative = _unary(F.neg)
nobackprop = _unary(F.nobackprop)
flip_gradient = _unary(F.flip_gradient)
tan = _unary(lambda x: F.sin(x) / F.cos(x))
sinh = _unary(lambda x: (F.exp(x) - F.exp(-x)) * 0.5)
cosh = _unary(lambda x: (F.exp(x) + F.exp(-x)) * 0.5)
asinh = _unary(lambda x: F.log(x + F.sqrt(F.square(x) + 1.0)))
acosh = _unary(lambda x: F.log(x + F.sqrt(F.square(x) - 1.0)))
atanh = _unary(lambda x: F.log((1.0 + x) / (1.0 - x)) * 0.5)
softsign = _unary(lambda x: x / (F.absolute(x) + 1.0))


asin = _unary(lambda x: G.unary("asin", x))
acos = _unary(lambda x: G.unary("acos", x))
atan = _unary(lambda x: G.unary("atan", x))
erf = _unary(lambda x: G.unary("erf", x))


def _constant_like(x: Any, values: Callable[[np.ndarray], np.ndarray],
                   gradient_mode: str) -> Expression:
    """A function of x's value computed now, as a constant: zero_gradient, or
    straight_through_gradient (the gradient of x passes unchanged)."""
    x = _as_expr(x)
    out = []
    for e in x.es:
        const = e.g.leaf(values(e.npvalue()))
        out.append(const + e - F.nobackprop(e) if gradient_mode == "straight_through_gradient"
                   else const)
    return Expression(out)


def round(x: Any, gradient_mode: str = "zero_gradient") -> Expression:  # noqa: A001
    return _constant_like(x, np.round, gradient_mode)


def ceil(x: Any, gradient_mode: str = "zero_gradient") -> Expression:
    return _constant_like(x, np.ceil, gradient_mode)


def floor(x: Any, gradient_mode: str = "zero_gradient") -> Expression:
    return _constant_like(x, np.floor, gradient_mode)


def argmax(x: Any, gradient_mode: str = "zero_gradient") -> Expression:
    """The one-hot vector of x's largest entry."""
    def one_hot(v):
        out = np.zeros_like(v)
        out.flat[int(np.argmax(v))] = 1.0
        return out
    return _constant_like(x, one_hot, gradient_mode)


def elu(x: Any, alpha: float = 1.0) -> Expression:
    return _map(lambda e: F.elu(e, alpha), x)


def silu(x: Any, beta: float = 1.0) -> Expression:
    return _map(lambda e: e * F.logistic(e * float(beta)), x)


swish = silu


def scale_gradient(x: Any, lambd: float = 1.0) -> Expression:
    """The identity forward; the gradient is multiplied by lambd."""
    lambd = float(lambd)
    return _map(lambda e: e * lambd + F.nobackprop(e) * (1.0 - lambd), x)


def cmult(x: Any, y: Any) -> Expression:
    return _arith(F.cmult, x, y)


def cdiv(x: Any, y: Any) -> Expression:
    return _arith(F.cdiv, x, y)


def cadd(x: Any, y: Any) -> Expression:
    return _arith(_add, x, y)


def colwise_add(x: Any, bias: Any) -> Expression:
    """x (d, n) plus bias (d,) on every column."""
    return _arith(_add, x, bias)


def bmax(x: Any, y: Any) -> Expression:
    return _arith(F.maximum, x, y)


def bmin(x: Any, y: Any) -> Expression:
    return _arith(F.minimum, x, y)


def pow(x: Any, y: Any) -> Expression:
    """x ** y elementwise; y an expression (a scalar broadcasts) or a number."""
    if _is_number(y):
        return _map(lambda e: F.power(e, float(y)), x)
    return _arith(lambda a, b: F.exp(b * F.log(a)), x, y)


# -- linear algebra -------------------------------------------------------------------------------
def dot_product(x: Any, y: Any) -> Expression:
    return _map2(lambda a, b: _scalar(F.dot_product(a, b)), x, y)


def transpose(x: Any, dims: Sequence[int] = (1, 0)) -> Expression:
    """Swap rows and columns (a vector becomes a row (1, n)); `dims` permutes any axes."""
    dims = tuple(int(d) for d in dims)

    def one(e: G.Expression) -> G.Expression:
        shape = e.shape
        if dims == (1, 0) and len(shape) <= 2:
            return F.transpose(e)
        rank = builtins.max(len(shape), len(dims))
        if len(shape) < rank:
            e = F.reshape(e, shape + (1,) * (rank - len(shape)))
        axes = dims + tuple(range(len(dims), rank))
        return G.apply("permute", e, attrs=(("axes", axes),))
    return _map(one, x)


def affine_transform(exprs: Sequence[Any]) -> Expression:
    """b + W1 * x1 + W2 * x2 + ..."""
    exprs = list(exprs)
    if len(exprs) == 1:
        return _as_expr(exprs[0])

    def one(parts: list) -> G.Expression:
        b, rest = parts[0], parts[1:]
        if len(b.shape) == 1 and all(len(x.shape) == 1 for x in rest[1::2]) \
                and all(len(w.shape) == 2 for w in rest[0::2]):
            return F.affine_transform([b] + rest)
        out = b
        for w, x in zip(rest[0::2], rest[1::2]):
            out = _broadcast(_add, out, _matmul(w, x))
        return out
    return _mapn(one, exprs)


def inverse(x: Any) -> Expression:
    return _map(lambda e: G.unary("inverse", e), x)


def logdet(x: Any) -> Expression:
    return _map(lambda e: _scalar(G.unary("logdet", e)), x)


def trace_of_product(x: Any, y: Any) -> Expression:
    """tr(x y^T), the sum of the elementwise product."""
    return dot_product(x, y)


def contract3d_1d(x: Any, y: Any) -> Expression:
    """x (i, j, k), y (k,) -> (i, j): sum over k of x_ijk y_k."""
    def one(a, b):
        i, j, k = a.shape
        return F.reshape(G.matmul(F.reshape(a, (i * j, k)), b), (i, j))
    return _map2(one, x, y)


def contract3d_1d_bias(x: Any, y: Any, b: Any) -> Expression:
    return contract3d_1d(x, y) + b


def contract3d_1d_1d(x: Any, y: Any, z: Any) -> Expression:
    """x (i, j, k), y (j,), z (k,) -> (i,): sum over j, k of x_ijk y_j z_k."""
    return contract3d_1d(x, z) * y


def contract3d_1d_1d_bias(x: Any, y: Any, z: Any, b: Any) -> Expression:
    return contract3d_1d_1d(x, y, z) + b


def cumsum(x: Any, d: int = 0) -> Expression:
    """Cumulative sums along axis d of a vector or matrix."""
    def one(e):
        n = e.shape[int(d)]
        lower = e.g.leaf(np.tril(np.ones((n, n))))
        if int(d) == 0:
            return G.matmul(lower, e)
        return F.transpose(G.matmul(lower, F.transpose(e)))
    return _map(one, x)


# -- reductions -----------------------------------------------------------------------------------


def sum_elems(x: Any) -> Expression:
    return _map(lambda e: _scalar(F.sum_elems(e)), x)


def mean_elems(x: Any) -> Expression:
    return _map(lambda e: _scalar(F.sum_elems(e) * (1.0 / int(np.prod(e.shape)))), x)


def moment_elems(x: Any, r: int) -> Expression:
    return _map(lambda e: _scalar(F.sum_elems(F.power(e, float(r)))
                                  * (1.0 / int(np.prod(e.shape)))), x)


def std_elems(x: Any) -> Expression:
    def one(e):
        n = int(np.prod(e.shape))
        centered = e - F.sum_elems(e) * (1.0 / n)
        return _scalar(F.sqrt(F.sum_elems(F.square(centered)) * (1.0 / n)))
    return _map(one, x)


def _sum_axes(e: G.Expression, axes: Sequence[int]) -> G.Expression:
    for a in sorted(set(int(a) for a in axes), reverse=True):
        if a < len(e.shape):
            e = F.sum_dim(e, a) if len(e.shape) > 1 else F.sum_elems(e)
    return _scalar(e)


def sum_dim(x: Any, d: Sequence[int], b: bool = False) -> Expression:
    """Sum over the axes d (and over the batch when b)."""
    d = [d] if isinstance(d, (int, np.integer)) else list(d)
    out = _map(lambda e: _sum_axes(e, d), x)
    return sum_batches(out) if b else out


def mean_dim(x: Any, d: Sequence[int], b: bool = False, n: int = 0) -> Expression:
    d = [d] if isinstance(d, (int, np.integer)) else list(d)
    x = _as_expr(x)
    shape = x.es[0].shape
    count = int(np.prod([shape[a] for a in d if a < len(shape)]))
    if b:
        count *= len(x.es)
    return sum_dim(x, d, b) * (1.0 / builtins.max(count, 1))


def std_dim(x: Any, d: Sequence[int], b: bool = False, n: int = 0) -> Expression:
    return sqrt(moment_dim(x, d, 2, b, n, centered=True))


def moment_dim(x: Any, d: Sequence[int], r: int, b: bool = False, n: int = 0,
               centered: bool = False) -> Expression:
    d = [d] if isinstance(d, (int, np.integer)) else list(d)
    x = _as_expr(x)
    if centered:
        mean = mean_dim(x, d, b)
        shape = x.es[0].shape
        keep = tuple(1 if a in d else s for a, s in enumerate(shape))
        x = x - _map(lambda e: F.reshape(e, keep), mean)
    return mean_dim(_map(lambda e: F.power(e, float(r)) if r != 2 else F.square(e), x), d, b)


def _reduce_dim(fn: Callable) -> Callable:
    def op(x: Any, d: int = 0) -> Expression:
        def one(e):
            if len(e.shape) == 1:
                return _scalar(fn(e, 0))
            return fn(e, int(d))
        return _map(one, x)
    return op


max_dim = _reduce_dim(F.max_dim)
min_dim = _reduce_dim(F.min_dim)
logsumexp_dim = _reduce_dim(F.logsumexp)


def logsumexp(xs: Sequence[Any]) -> Expression:
    """log sum exp over a list of expressions, elementwise."""
    xs = [_as_expr(x) for x in xs]

    def one(parts):
        if len(parts) == 1:
            return parts[0]
        if parts[0].shape == (1,):
            return _scalar(F.logsumexp(F.concatenate(parts)))
        return F.logsumexp(parts)
    return _mapn(one, xs)


def esum(xs: Sequence[Any]) -> Expression:
    xs = [_as_expr(x) for x in xs]
    if not xs:
        raise ValueError("esum: the list is empty")
    return _mapn(lambda parts: parts[0] if len(parts) == 1 else F.esum(parts), xs)


def average(xs: Sequence[Any]) -> Expression:
    xs = list(xs)
    return esum(xs) * (1.0 / len(xs))


def squared_norm(x: Any) -> Expression:
    return _map(lambda e: _scalar(F.squared_norm(e)), x)


def l2_norm(x: Any) -> Expression:
    return _map(lambda e: _scalar(F.l2_norm(e)), x)


# -- batches --------------------------------------------------------------------------------------
def sum_batches(x: Any) -> Expression:
    x = _as_expr(x)
    return Expression([x.es[0] if len(x.es) == 1 else F.esum(list(x.es))])


def mean_batches(x: Any) -> Expression:
    x = _as_expr(x)
    return sum_batches(x) * (1.0 / len(x.es))


def moment_batches(x: Any, r: int) -> Expression:
    x = _as_expr(x)
    return mean_batches(_map(lambda e: F.power(e, float(r)), x))


def std_batches(x: Any) -> Expression:
    x = _as_expr(x)
    centered = x - mean_batches(x)
    return sqrt(mean_batches(_map(F.square, centered)))


def pick_batch_elem(x: Any, i: int) -> Expression:
    return Expression([_as_expr(x).es[int(i)]])


def pick_batch_elems(x: Any, indices: Sequence[int]) -> Expression:
    x = _as_expr(x)
    return Expression([x.es[int(i)] for i in indices])


def concatenate_to_batch(xs: Sequence[Any]) -> Expression:
    return Expression([e for x in xs for e in _as_expr(x).es])


# -- structure ------------------------------------------------------------------------------------
def reshape(x: Any, d: Any, batch_size: int = 1) -> Expression:
    """Column-major reshape to d; batch_size may fold the batch into the values or back."""
    x = _as_expr(x)
    d = _dims(d)
    b = len(x.es)
    if batch_size == b:
        return _map(lambda e: _colmajor(e, d), x)
    size = int(np.prod(_dshape(x.es[0].shape)))
    if b == 1:  # (..) -> batch_size elements, each a column-major chunk
        cols = _colmajor(x.es[0], (size // int(batch_size), int(batch_size)))
        return Expression([_colmajor(F.pick_range(cols, k, k + 1, 1), d)
                           for k in range(int(batch_size))])
    if batch_size == 1:
        cols = F.concatenate_cols([_colmajor(e, (size,)) for e in x.es])
        return Expression([_colmajor(cols, d)])
    raise ValueError(f"reshape: cannot change the batch size from {b} to {batch_size}")


def _colmajor(e: G.Expression, d: tuple[int, ...]) -> G.Expression:
    if _dshape(e.shape) == d:
        return e
    if sum(n > 1 for n in e.shape) <= 1 and sum(n > 1 for n in d) <= 1:
        return F.reshape(e, d)  # the same in either order
    return G.apply("reshape_colmajor", e, attrs=(("shape", d),))


def concatenate(xs: Sequence[Any], d: int = 0) -> Expression:
    """Along axis d (rows by default)."""
    xs = [_as_expr(x) for x in xs]
    if len(xs) == 1:
        return xs[0]
    d = int(d)

    def one(parts):
        rank = builtins.max(len(p.shape) for p in parts)
        rank = builtins.max(rank, d + 1)
        parts = [F.reshape(p, p.shape + (1,) * (rank - len(p.shape)))
                 if len(p.shape) < rank else p for p in parts]
        if d == 0:
            return F.concatenate(parts)
        if d == 1 and rank == 2:
            return F.concatenate_cols(parts)
        axes = (d,) + tuple(a for a in range(rank) if a != d)
        back = tuple(int(a) for a in np.argsort(axes))
        moved = [G.apply("permute", p, attrs=(("axes", axes),)) for p in parts]
        return G.apply("permute", F.concatenate(moved), attrs=(("axes", back),))
    return _mapn(one, xs)


def concatenate_cols(xs: Sequence[Any]) -> Expression:
    xs = [_as_expr(x) for x in xs]
    return _mapn(lambda parts: F.concatenate_cols(parts), xs)


def _slice(x: Expression, index: tuple) -> Expression:
    """x[a:b:c, ...]; a slice past the last axis slices the batch."""
    shape = _dshape(x.es[0].shape)
    if len(index) > len(shape):
        x = Expression(x.es[index[len(shape)]])
        index = index[:len(shape)]
    box = []
    for axis, s in enumerate(index):
        if not isinstance(s, slice):
            raise TypeError("index expressions with slices, or with an int for pick")
        box.append(tuple(int(v) for v in s.indices(shape[axis])))
    box = tuple(box)
    return _map(lambda e: G.apply("strided_slice", e, attrs=(("box", box),)), x)


def pick(x: Any, index: Any, dim: int = 0) -> Expression:
    """Entry `index` along dim (a vector gives a scalar); a list of indices picks one per
    batch element."""
    if isinstance(index, (list, tuple, np.ndarray)):
        return pick_batch(x, index, dim)
    return _map(lambda e: _scalar(G.pick(e, int(index), int(dim))), x)


def pick_batch(x: Any, indices: Sequence[int], dim: int = 0) -> Expression:
    x = _as_expr(x)
    b = builtins.max(len(x.es), len(indices))
    es = _elems(x, b)
    if len(indices) != b:
        raise ValueError(f"pick_batch: {len(indices)} indices for a batch of {b}")
    return Expression([_scalar(G.pick(e, int(i), int(dim))) for e, i in zip(es, indices)])


def pickrange(x: Any, s: int, e: int, d: int = 0) -> Expression:
    return _map(lambda v: F.pick_range(v, int(s), int(e), int(d)), x)


pick_range = pickrange


def select_rows(x: Any, rs: Sequence[int]) -> Expression:
    rs = [int(r) for r in rs]
    return _map(lambda e: F.select_rows(e, rs), x)


def select_cols(x: Any, cs: Sequence[int]) -> Expression:
    cs = [int(c) for c in cs]
    return _map(lambda e: F.select_cols(e if len(e.shape) > 1 else F.reshape(e, e.shape + (1,)),
                                        cs), x)


def strided_select(x: Any, strides: Sequence[int], range_from: Sequence[int] = (),
                   range_to: Sequence[int] = ()) -> Expression:
    x = _as_expr(x)
    shape = _dshape(x.es[0].shape)
    index = tuple(slice(range_from[a] if a < len(range_from) else 0,
                        range_to[a] if a < len(range_to) else n,
                        strides[a] if a < len(strides) else 1) for a, n in enumerate(shape))
    return _slice(x, index)


# -- probabilities and losses ---------------------------------------------------------------------
def softmax(x: Any, d: int = 0) -> Expression:
    if int(d) == 0:
        return _map(F.softmax, x)
    return _map(lambda e: F.transpose(F.softmax(F.transpose(e))), x)


def log_softmax(x: Any, restrict: Sequence[int] | None = None) -> Expression:
    """log softmax; with `restrict`, over those entries only (the others are -inf)."""
    if restrict is None:
        return _map(F.log_softmax, x)
    restrict = [int(r) for r in restrict]

    def one(e):
        mask = np.full(e.shape, -np.inf)
        mask[restrict] = 0.0
        return F.log_softmax(e + e.g.leaf(mask))
    return _map(one, x)


def pickneglogsoftmax(x: Any, v: Any) -> Expression:
    """-log softmax(x)[v]; a list v gives one label per batch element."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return pickneglogsoftmax_batch(x, v)
    return _map(lambda e: _scalar(F.pick_neg_log_softmax(_vec(e), int(v))), x)


def pickneglogsoftmax_batch(x: Any, vs: Sequence[int]) -> Expression:
    x = _as_expr(x)
    b = builtins.max(len(x.es), len(vs))
    if len(vs) != b:
        raise ValueError(f"pickneglogsoftmax_batch: {len(vs)} labels for a batch of {b}")
    return Expression([_scalar(F.pick_neg_log_softmax(_vec(e), int(i)))
                       for e, i in zip(_elems(x, b), vs)])


def hinge(x: Any, index: Any, m: float = 1.0) -> Expression:
    """sum over j != index of max(0, m - x[index] + x[j])."""
    if isinstance(index, (list, tuple, np.ndarray)):
        return hinge_batch(x, index, m)
    return _map(lambda e: _scalar(F.hinge(_vec(e), int(index), m)), x)


def hinge_batch(x: Any, indices: Sequence[int], m: float = 1.0) -> Expression:
    x = _as_expr(x)
    b = builtins.max(len(x.es), len(indices))
    return Expression([_scalar(F.hinge(_vec(e), int(i), m)) for e, i in zip(_elems(x, b), indices)])


def pairwise_rank_loss(x: Any, y: Any, m: float = 1.0) -> Expression:
    """max(0, m - x + y), per batch element."""
    return _arith(lambda a, b: F.rectify(float(m) - a + b), x, y)


def binary_log_loss(x: Any, y: Any) -> Expression:
    return _map2(lambda a, b: _scalar(F.binary_log_loss(a, b)), x, y)


def squared_distance(x: Any, y: Any) -> Expression:
    return _map2(lambda a, b: _scalar(F.squared_distance(a, b)), x, y)


def l1_distance(x: Any, y: Any) -> Expression:
    return _map2(lambda a, b: _scalar(F.sum_elems(F.absolute(a - b))), x, y)


def huber_distance(x: Any, y: Any, c: float = 1.345) -> Expression:
    return _map2(lambda a, b: _scalar(F.huber_distance(a, b, c)), x, y)


def poisson_loss(x: Any, y: int) -> Expression:
    """-log Poisson(y; lambda = exp(x))"""
    from math import lgamma
    return _map(lambda e: _scalar(F.exp(e) - e * float(y) + lgamma(int(y) + 1.0)), x)


# -- normalisation --------------------------------------------------------------------------------
def layer_norm(x: Any, g: Any, b: Any) -> Expression:
    """g * (x - mean(x)) / (std(x) + 1e-8) + b, over all the entries of each element."""
    def one(parts):
        e, gain, bias = parts
        n = int(np.prod(e.shape))
        centered = e - F.sum_elems(e) * (1.0 / n)
        std = F.sqrt(F.sum_elems(F.square(centered)) * (1.0 / n))
        return gain * (centered / (std + 1e-8)) + bias
    return _mapn(one, [x, g, b])


def weight_norm(w: Any, g: Any) -> Expression:
    """w * g / ||w||"""
    return _map2(lambda a, s: a * (s / F.l2_norm(a)), w, g)


# -- noise ----------------------------------------------------------------------------------------
def dropout(x: Any, p: float) -> Expression:
    """Zero each entry with probability p, scale the rest by 1 / (1 - p)."""
    return _map(lambda e: F.dropout(e, float(p)), x)


def _masked(x: Expression, shape_of: Callable, p: float) -> Expression:
    if p <= 0.0:
        return x
    keep = 1.0 / (1.0 - p)
    out = []
    for e in x.es:
        mask = (STATE.rng.random(shape_of(e.shape)) >= p) * keep
        out.append(e * e.g.leaf(mask))
    return Expression(out)


def dropout_dim(x: Any, d: int, p: float) -> Expression:
    """Dropout of whole slices: one draw shared along axis d."""
    def shape_of(shape):
        return tuple(1 if a == int(d) else n for a, n in enumerate(shape))
    return _masked(_as_expr(x), shape_of, float(p))


def dropout_batch(x: Any, p: float) -> Expression:
    """Dropout of whole batch elements."""
    return _masked(_as_expr(x), lambda shape: (1,) * len(shape), float(p))


def block_dropout(x: Any, p: float) -> Expression:
    """The whole expression zeroed with probability p (one draw for all batch elements)."""
    x = _as_expr(x)
    if p <= 0.0:
        return x
    scale = 0.0 if STATE.rng.random() < p else 1.0 / (1.0 - float(p))
    return x * scale


def noise(x: Any, stddev: float) -> Expression:
    return _map(lambda e: F.noise(e, float(stddev)), x)


# -- convolution ----------------------------------------------------------------------------------
def conv2d(x: Any, f: Any, stride: Sequence[int], is_valid: bool = True) -> Expression:
    """x (h, w, c) correlated with f (fh, fw, c, out) -> (h', w', out)."""
    attrs = (("stride", tuple(int(s) for s in stride)), ("valid", bool(is_valid)))
    return _map2(lambda a, w: G.apply("conv2d", _image(a), w, attrs=attrs), x, f)


def _image(e: G.Expression) -> G.Expression:
    """An image (h, w) as (h, w, 1): one channel."""
    return F.reshape(e, e.shape + (1,)) if len(e.shape) == 2 else e


def conv2d_bias(x: Any, f: Any, b: Any, stride: Sequence[int],
                is_valid: bool = True) -> Expression:
    out = conv2d(x, f, stride, is_valid)
    return _map2(lambda e, bias: e + F.reshape(bias, (1, 1, bias.shape[0])), out, b)


def maxpooling2d(x: Any, ksize: Sequence[int], stride: Sequence[int],
                 is_valid: bool = True) -> Expression:
    attrs = (("ksize", tuple(int(k) for k in ksize)),
             ("stride", tuple(int(s) for s in stride)), ("valid", bool(is_valid)))
    return _map(lambda e: G.apply("maxpooling2d", _image(e), attrs=attrs), x)


def kmax_pooling(x: Any, k: int, d: int = 1) -> Expression:
    """The k largest entries of each row (d=1) or column (d=0), in their order."""
    def one(e):
        if len(e.shape) == 1:
            e = F.reshape(e, (e.shape[0], 1))
        return G.apply("kmax_pooling", e, attrs=(("k", int(k)), ("dim", int(d))))
    return _map(one, x)


def filter1d_narrow(x: Any, f: Any) -> Expression:
    """x (d, n), f (d, w) -> (d, n - w + 1): each row of x correlated with that row of f."""
    def one(a, w):
        width = w.shape[1] if len(w.shape) > 1 else 1
        n = a.shape[1] - width + 1
        terms = [F.pick_range(a, k, k + n, 1) * F.reshape(G.pick(w, k, 1), (w.shape[0], 1))
                 for k in range(width)]
        return terms[0] if len(terms) == 1 else F.esum(terms)
    return _map2(one, x, f)


def fold_rows(x: Any, nrows: int = 2) -> Expression:
    """Sum each group of nrows consecutive rows: (d, n) -> (d / nrows, n)."""
    nrows = int(nrows)

    def one(e):
        groups = e.shape[0] // nrows
        terms = [F.select_rows(e, [i * nrows + k for i in range(groups)]) for k in range(nrows)]
        return terms[0] if len(terms) == 1 else F.esum(terms)
    return _map(one, x)


def sum_cols(x: Any) -> Expression:
    return _map(lambda e: F.sum_dim(e, 1) if len(e.shape) > 1 else e, x)


def sum_rows(x: Any) -> Expression:
    return _map(lambda e: _scalar(F.sum_dim(e, 0) if len(e.shape) > 1 else F.sum_elems(e)), x)
