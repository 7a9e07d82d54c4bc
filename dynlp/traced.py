"""`dn.fused`: a function of expressions (a cell) made one node per call.

The function runs once per kind of call (its arguments' shapes and whatever else it is given)
on stand-in arguments in a graph of its own; the nodes it builds there become the steps of one
fused op (`fusion.Program`: forward, VJP and JVP composed from the op table's rules), and each
call adds one node of that op to the caller's graph. Calls of one kind over the same
parameters batch across examples like any node. A call costs a few microseconds of Python
however many ops the function holds: a Tree-LSTM cell written op by op, about twenty ops and
eight nodes when fused while building, is one node.

Arguments are read in place where they can be: an output of another fused call (a `Window`
of its node), a builder's slice of a state (an LSTM's `output()`), and a lookup table's row
(`cell(E[word])`: the table is an argument of the node and the row index its per-call data),
so that a tree of cells is one node per cell. Traces over arguments of other lengths that
come out as the same program share one op, which pads (`fusion.traced_op`): calls over
sequences of different lengths batch together.

The function must be a function of its expression arguments: what it computes may depend on
their shapes and on its other arguments (ints, strings, objects, keyword arguments: part of
the kind of call), never on their values. Constants it makes are kept from its first run; it
cannot draw random numbers (dropout) or take per-call data of its own (`lookup` or `pick`
with an index, a loss with a label): do those outside and pass the result in. A method has
its traces per instance (they go with it). Parameters are those of the first run: a function
that should read others after its parameters were rebound is `clear()`ed.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

import numpy as np

from .fusion import traced_op
from .graph import Expression, Graph, GraphError, Row, Slice, Window, _graph_of
from .ops import SHARED, TABLE, Op

_PARAMETER = TABLE["parameter"]
_PICK_RANGE = TABLE["pick_range"]
_LOOKUP = TABLE["lookup"]


def _identity_vjp(g: np.ndarray, out: np.ndarray, x: np.ndarray) -> tuple:
    return (g,)


# the stand-in of an argument while a function is traced: a leaf that is neither a parameter
# nor a constant, so that `W @ x` over it is a per-example product, as over any node
_ARGUMENT = Op("argument", shape=lambda s: s, forward=lambda x: x, vjp=_identity_vjp,
               jvp=lambda ts, out, x: ts[0], doc="an argument of a fused function, traced")


MAX_TRACES = 256  # kinds of call remembered per function at most (then forgotten, remade)
_WINDOW = "window"  # (the kind of a Window argument starts with it; a node's is its shape)
_ROW = "row"  # (and a table row's: ("row", the table's shape))
_NONE: list = []  # (no rows: never appended to)
_new = object.__new__
# static arguments of these types are told apart by value; any other object by identity (two
# layers equal by their sizes are still two layers)
_VALUES = frozenset((int, float, complex, str, bytes, bool, type(None)))


def _static(value: Any, function: Any) -> Any:
    """A static argument's part of the kind of call: plain values (and tuples of them) by
    value, other objects by identity; mutable containers are refused (they could change
    between calls that reuse one trace)."""
    kind = type(value)
    if kind in _VALUES:
        return (kind, value)
    if isinstance(value, np.generic):  # (a numpy scalar, as its Python value)
        return (float, value.item()) if isinstance(value, np.floating) else (kind, value.item())
    if kind is tuple and _plain(value):
        return (kind, value)
    if isinstance(value, (list, dict, set, bytearray, np.ndarray)):
        raise GraphError(f"{function!r}: its arguments other than expressions must be "
                         f"hashable values or objects, not a {kind.__name__} (a kind of call "
                         "is told by them, and a container could change between calls)")
    return _Same(value)


def _plain(value: tuple) -> bool:
    """A tuple of plain values (nested tuples of them too)."""
    return all(type(v) in _VALUES or type(v) is tuple and _plain(v) for v in value)


class _Same:
    """A static argument in a kind of call, by identity (and kept alive with the trace)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: Any) -> bool:
        return type(other) is _Same and other.obj is self.obj


def _unchanged(name: str) -> GraphError:
    return GraphError(f"dn.fused: {name} returns one of its arguments or a parameter unchanged; "
                      "a fused function must compute what it returns")


def _no_values(*args: Any, **kw: Any) -> None:
    raise GraphError("dn.fused: a fused function runs once per kind of call, on stand-ins for "
                     "its arguments, so it cannot read values (value(), forward()); compute "
                     "what depends on values outside it")


class _Trace:
    """One kind of call: the fused op, its outside arguments and its outputs."""

    __slots__ = ("op", "layout", "params", "constants", "outputs", "unfused", "touched")

    def __init__(self, op: Op, layout: tuple, params: tuple, constants: tuple,
                 outputs: tuple | None, unfused: int, touched: tuple) -> None:
        self.op = op
        self.touched = touched      # every parameter the function asked for
        self.unfused = unfused      # the nodes a call makes under fuse=False (`stats()`)
        self.layout = layout        # per outside argument: k >= 0 call argument k, else -1 - j
        self.params = params        # shared j < len(params): parameter objects
        self.constants = constants  # then constant arrays
        self.outputs = outputs      # per output (windows, width, kind, position), or None

    def shared_nodes(self, g: Graph) -> tuple[int, ...]:
        """The parameters' and constants' nodes in graph g (and those of the parameters the
        function asked for and did not use, as it would unfused)."""
        for p in self.touched:
            g.param_node(p)
        return tuple([g.param_node(p) for p in self.params] +
                     [g.leaf(c).i for c in self.constants])


def _windows(g: Graph, node: int, outputs: tuple) -> tuple:
    """The Windows of a call's outputs over its node, made without the constructors' calls (a
    call's cost is mostly the objects it makes): `Window(g, node, windows, kind, position)`."""
    sources = (node,)
    out = []
    for windows, width, kind, position in outputs:
        w = _new(Window)
        w.g = g
        w.sources = sources
        w.windows = windows
        w.width = width
        w._node = -1
        w._fused = False
        w.readers = None
        w.counted = True
        w.kind = kind
        w.position = position
        out.append(w)
    return tuple(out)


class FusedFunction:
    """A function of expressions whose calls are one node each (`fused`)."""

    def __init__(self, fn: Callable, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", "function")
        self.traces: dict[tuple, _Trace] = {}
        # a method's function per instance, each with its own traces (id -> (weak, bound))
        self._bound: dict[int, tuple] = {}
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        entry = self._bound.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        try:
            ref = weakref.ref(obj, lambda _, key=id(obj), bound=self._bound: bound.pop(key, None))
        except TypeError:  # (an object without weak references: `self` a static argument)
            return functools.partial(self.__call__, obj)
        fn = self.fn

        def method(*args: Any, **static: Any) -> Any:
            return fn(ref(), *args, **static)

        bound = FusedFunction(method, self.name)
        self._bound[id(obj)] = (ref, bound)
        return bound

    def clear(self) -> None:
        """Forget the traces (the function changed, or parameters it reads were rebound: a
        trace keeps the parameters of its first run)."""
        self.traces.clear()
        self._bound.clear()

    def __repr__(self) -> str:
        return f"fused({self.name!r})"

    def __call__(self, *args: Any, **static: Any) -> Any:
        g = args[0].g if args and isinstance(args[0], Expression) else None
        if g is None or not g.alive:  # (the usual case: an expression of a live graph first)
            g = _graph_of(args)
        if g.fuse is not True:  # (fuse=False or "regions": the function's ops, as written)
            return self.fn(*args, **static)
        # the kind of call: the graph's dtype and mode, then per argument a node's shape, a
        # window's kind, a table row's, or (type, value)
        kinds: list[Any] = [g.dtype.num, g.training]
        nodes: list[int] = []
        rows: list[int] | None = None  # (the indices of the table rows read in place, in order)
        tables: list[int] = _NONE  # (and their tables)
        read: list[Any] | None = None  # (the rows and slices read in place)
        shapes = g.shapes
        for a in args:
            kind = type(a)
            if kind is Window and a._node < 0:
                source = a.sources[0]
                if source in nodes:  # (another window of that node: one argument for both)
                    kinds.append((a.kind, nodes.index(source)))
                else:
                    kinds.append(a.kind)
                nodes.append(source)
            elif kind is Expression:
                node = a.i
                kinds.append(shapes[node])
                nodes.append(node)
            elif kind is Row and a._node < 0:
                if rows is None:
                    rows, tables = [], []
                kinds.append((_ROW, shapes[a.table]))
                nodes.append(a.table)
                rows.append(a.index)
                tables.append(a.table)
                if not a.counted:
                    read = [a] if read is None else read + [a]
            elif kind is Slice and a._node < 0 and len(a.sources) == 1:
                # (a builder's slice of a state, an LSTM's output: read in place as a window)
                source = a.sources[0]
                window = (_WINDOW, shapes[source], a.windows[0])
                kinds.append((window, nodes.index(source)) if source in nodes else window)
                nodes.append(source)
                read = [a] if read is None else read + [a]
            elif isinstance(a, Expression):
                node = a.i
                kinds.append(shapes[node])
                nodes.append(node)
            else:
                kinds.append(_static(a, self))
                nodes.append(-1)
                continue
            if a.g is not g:
                raise GraphError("expressions from different graphs were combined")
        key: tuple = tuple(kinds)
        if static:  # (keyword arguments are static: part of the kind of call)
            if any(isinstance(v, Expression) for v in static.values()):
                raise GraphError(f"{self!r}: pass expressions as positional arguments, not "
                                 "by keyword")
            key = (key, tuple(sorted([(name, _static(v, self)) for name, v in static.items()])))
        trace = self.traces.get(key)
        if trace is None:
            if len(self.traces) >= MAX_TRACES:
                self.traces.clear()  # (an argument that changes with every call: retraced)
            trace = self.traces[key] = self._trace(g, args, kinds[2:], static)
        # (nodes of one kind over other tables are of another signature: made apart)
        where = id(trace) if rows is None else (id(trace), *tables)
        memo = g._memo.get(where)
        battrs = None if rows is None else tuple(rows)
        if memo is not None and memo[0] is trace:  # (the usual case: made like the last one)
            _, base, fills, like = memo
            for p, k in fills:
                base[p] = nodes[k]
            node = g.add_like(like, tuple(base), battrs)
        else:
            shared = trace.shared_nodes(g)
            g.folded -= len(trace.constants)  # (made once per graph; unfused, once per call)
            base = [-1 if k >= 0 else shared[-1 - k] for k in trace.layout]
            fills = tuple([(p, k) for p, k in enumerate(trace.layout) if k >= 0])
            for p, k in fills:
                base[p] = nodes[k]
            node = g.add_node(trace.op, tuple(base), (), battrs)
            # (the argument list, its shared entries filled once per graph, and the first
            # node of this kind, which the next ones are made like)
            g._memo[where] = (trace, base, fills, node)
        g.folded += trace.unfused - 1
        if read is not None:
            for a in read:
                a._fused = True  # (read in place: no gradient of its own)
                if not a.counted:  # (its lookup or pick_range node, once, as unfused)
                    a.counted = True
                    g.folded += 1
        if trace.outputs is None:
            return Expression(g, node)
        return _windows(g, node, trace.outputs)

    def _trace(self, g: Graph, args: tuple, kinds: list, static: dict) -> _Trace:
        name = self.name
        dtype = g.dtype
        # (built unfused: each node it makes is one step of the program, and an output is
        # computed at one position, whose cotangent is its gradient)
        # (seeded: a trace leaves the global generator's stream alone)
        with Graph(autobatch=False, dtype=dtype, fuse=False, seed=0, training=g.training) as t:
            drawn = t.rng.bit_generator.state
            read = t.engine.value
            t.engine.forward = t.engine.value = _no_values  # type: ignore[method-assign]
            stand_ins: list[Any] = []
            arguments: dict[int, int] = {}  # stand-in leaf -> call argument
            leaves: dict[int, Expression] = {}  # call argument -> its stand-in leaf
            lookups: dict[int, int] = {}  # stand-in lookup node -> which row argument
            for k, (a, kind) in enumerate(zip(args, kinds)):
                if not isinstance(a, Expression):
                    stand_ins.append(a)
                    continue
                if len(kind) == 2 and kind[0] == _ROW:  # (a table row: the table, and the
                    # row as per-call data)
                    table = t._leaf(_ARGUMENT, np.zeros(kind[1], dtype))
                    arguments[table.i] = k
                    row = t.add(_LOOKUP, (table.i,), (), (0,))
                    lookups[row.i] = len(lookups)
                    stand_ins.append(row)
                    continue
                shared = len(kind) == 2 and type(kind[0]) is tuple  # (a window of the node
                if shared:                                            # of an earlier argument)
                    kind, first = kind
                    leaf = leaves[first]
                window = len(kind) == 3 and kind[0] == _WINDOW
                if not shared:
                    leaf = leaves[k] = t._leaf(_ARGUMENT,
                                               np.zeros(kind[1] if window else kind, dtype))
                    arguments[leaf.i] = k
                if window:  # (read in place: the source node, sliced in the op)
                    start, end = kind[2]
                    leaf = t.add(_PICK_RANGE, (leaf.i,), (("start", start), ("end", end),
                                                          ("dim", 0)))
                stand_ins.append(leaf)
            before = len(t)
            try:
                result = self.fn(*stand_ins, **static)
            except GraphError as err:
                if "different graphs" not in str(err):
                    raise
                raise GraphError(f"dn.fused: {name} combined an expression made outside it (in "
                                 "a closure, or inside an argument such as a list) with its "
                                 "arguments; pass each expression it reads as an argument of "
                                 "its own") from None
            if t.rng.bit_generator.state != drawn:
                raise GraphError(f"dn.fused: {name} drew random numbers (dropout, noise), "
                                 "which would be the same for every call; draw them outside "
                                 "the function and pass the result in")
            single = isinstance(result, Expression)
            outs = [result] if single else list(result) if isinstance(result, (tuple, list)) \
                else None
            if not outs or any(not isinstance(o, Expression) or o.g is not t for o in outs):
                raise GraphError(f"dn.fused: {name} must return an expression of its graph, or "
                                 "a tuple of them")
            out_nodes = [o.i for o in outs]
            # (the nodes a call makes unfused, its outputs' included, not its parameters')
            unfused = len(t) - before - len(t.param_nodes)
            windows: list | None = None
            if not single:
                windows = []
                if any(len(t.shapes[n]) != 1 for n in out_nodes):
                    raise GraphError(f"dn.fused: {name} returns several expressions, so each "
                                     "must be a vector (they are one node's value, stacked)")
                if any(not t.args[n] for n in out_nodes):
                    raise _unchanged(name)
                root = t.add(TABLE["concatenate"], tuple(out_nodes)).i
            else:
                root = out_nodes[0]
            op, layout, params, constants, position = _program(t, root, arguments, name, read,
                                                                lookups)
            if windows is not None:
                total = t.shapes[root][0]
                start = 0
                for n in out_nodes:
                    end = start + t.shapes[n][0]
                    windows.append((((start, end),), end - start,
                                    (_WINDOW, (total,), (start, end)), position[n]))
                    start = end
            touched = tuple([t.node_params[n] for n in t.param_nodes.values()])
        return _Trace(op, layout, params, constants, None if windows is None else tuple(windows),
                      unfused, touched)


def _program(t: Graph, root: int, arguments: dict[int, int], name: str,
             read: Callable, lookups: dict[int, int]) -> tuple:
    """The fused op computing node `root` of trace graph t from its leaves, and its outside
    arguments: (op, layout, parameters, constants, each node's position in the program);
    read(node) is a leaf's value; `lookups`: the lookup nodes of table rows passed in (their
    table an argument, their row the call's batched attribute "b<j>")."""
    if not t.args[root]:
        raise _unchanged(name)
    needed = {root}
    for n in range(root, -1, -1):
        if n in needed:
            needed.update(t.args[n])
    position: dict[int, int] = {}
    outside: dict[tuple[int, str], int] = {}  # (leaf, mask) -> outside argument
    masks: list[str] = []
    sources: list[tuple[str, Any]] = []  # per outside argument: ("argument", k), ...
    steps = []
    for n in sorted(needed):
        op = t.ops[n]
        if not t.args[n]:
            continue  # (a leaf: an outside argument where a step reads it)
        bnames: tuple = ()
        if n in lookups:
            bnames = (("index", f"b{lookups[n]}"),)
        elif op.batch is None or op.batched_attrs or t.battrs[n] is not None:
            raise GraphError(
                f"dn.fused: {name} uses {op.name}, which "
                + ("does not batch" if op.batch is None else
                   "takes per-call data (a row, a label, a random mask)")
                + "; do that outside the function and pass the result in")
        mask = op.mask(len(t.args[n]))
        refs = []
        for slot, a in enumerate(t.args[n]):
            p = position.get(a)
            if p is not None:
                if mask[slot] == SHARED:
                    raise GraphError(f"dn.fused: {name}: {op.name} reads a computed value "
                                     "where it takes a weight shared by all examples")
                refs.append(-1 - p)
                continue
            k = outside.get((a, mask[slot]))
            if k is None:
                k = outside[(a, mask[slot])] = len(masks)
                masks.append(mask[slot])
                kind = t.ops[a]
                if kind is _ARGUMENT:
                    if mask[slot] == SHARED and n not in lookups:
                        raise GraphError(
                            f"dn.fused: {name}: {op.name} reads argument {arguments[a]} where "
                            "it takes a weight shared by all examples; use the parameter "
                            "inside the function (dn.parameter) instead of passing it in")
                    sources.append(("argument", arguments[a]))
                elif kind is _PARAMETER:
                    sources.append(("parameter", t.node_params[a]))
                else:  # a constant, kept from this run
                    sources.append(("constant", np.array(read(a))))
            refs.append(k)
        position[n] = len(steps)
        steps.append((op, dict(t.attrs[n]), tuple(refs), bnames))
    params: list[Any] = []
    constants: list[np.ndarray] = []
    for kind, x in sources:
        if kind == "parameter":
            params.append(x)
        elif kind == "constant":
            constants.append(x)
    # the shared nodes of a call are the parameters', then the constants': -1 - j
    layout, p_seen, c_seen = [], 0, 0
    for kind, x in sources:
        if kind == "argument":
            layout.append(x)
        elif kind == "parameter":
            p_seen += 1
            layout.append(-p_seen)
        else:
            c_seen += 1
            layout.append(-len(params) - c_seen)
    # (the outside arguments' shapes in this trace: an argument's, a parameter's or a
    # constant's whole, each the shape of its leaf)
    leaves = {k: leaf for (leaf, _), k in outside.items()}
    op = traced_op(f"fused:{name}", steps, tuple(masks),
                   tuple([f"b{j}" for j in range(len(lookups))]),
                   tuple([t.shapes[leaves[k]] for k in range(len(masks))]), t.shapes[root],
                   tuple([kind == "argument" for kind, _ in sources]),
                   doc=f"the function {name}, fused by dn.fused")
    return op, tuple(layout), tuple(params), tuple(constants), position


def fused(fn: Callable) -> FusedFunction:
    """Decorator: each call of `fn` (a function of expressions, such as a cell) is one node,
    whose forward, VJP and JVP compose the op table's rules over the ops `fn` builds; calls of
    one kind batch across examples. `fn` may return an expression or a tuple of vectors
    (windows of the call's node, read in place by the next fused call). See the module
    docstring for what `fn` may do; under `dn.Graph(fuse=False)` it runs as written."""
    return FusedFunction(fn)


__all__ = ["fused", "FusedFunction", "Window"]
