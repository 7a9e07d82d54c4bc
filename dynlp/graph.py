"""Graphs and expressions: lazy, append-only per-example computation graphs.

A `Graph` records nodes in creation order (already a topological order) in flat lists; each node
gets its shape (checked here, errors name the op and the shapes) and batching signature
when it is built. Evaluation is delegated to the graph's engine.
Must not import autobatch or params.
"""

from __future__ import annotations

import gc
import math
from itertools import chain
from operator import itemgetter
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .fusion import _POINTWISE, pointwise_op
from .ops import SHARED, TABLE, Op
from .ops.core import broadcast_shape
from .ops.linalg import ACTIVATIONS
from .ops.structure import dropout_mask
from .seeding import generator

_INPUT = TABLE["input"]
_PARAMETER = TABLE["parameter"]
_MATMUL = TABLE["matmul"]
_BATCHED_MATMUL = TABLE["batched_matmul"]
_PICK_RANGE = TABLE["pick_range"]
_LOOKUP = TABLE["lookup"]
_CONCATENATE_RANGES = TABLE["concatenate_ranges"]
_AFFINE = TABLE["affine_transform"]
_MLP_LOSS = TABLE["mlp_pick_neg_log_softmax"]
_ADD = TABLE["add"]
_NEG = TABLE["neg"]
_RESHAPE = TABLE["reshape"]
_CLOSING = frozenset(ACTIVATIONS) - {None}  # activations an affine_transform node applies
# elementwise ops that fusion while building composes (`Pointwise`), with their arities
_ARITY = {TABLE[name]: 1 for name in (
    "neg", "exp", "log", "sqrt", "square", "cube", "abs", "sin", "cos", "tanh", "logistic",
    "log_sigmoid", "softplus", "rectify", "add_const", "mul_const", "pow_const", "reshape")}
_ARITY.update({TABLE[name]: 2 for name in ("add", "mul", "div")})
_BINARY = {name: TABLE[name] for name in ("add", "mul", "div")}
_PAIR_TOKENS = {op: (None, None, op) for op in _BINARY.values()}  # (op over two nodes)
_NO_KIDS = (None, None)
_MUL = TABLE["mul"]
_LEAF = (None,)
_LOSS = "a fused loss"  # (the reader of an Affine that a fused loss read in place)
# The short ways make Affine, Pointwise and Expression objects as `_new(cls)` and then set
# every field that `__init__` sets: a call of the class costs its call of `__init__` and a
# frame for it, about half of what these small objects cost to make.
_new = object.__new__
MAX_POINTWISE_TOKENS = 48  # a longer elementwise expression is split (its operand a node)
_ACTIVATIONS = ACTIVATIONS
_ACTIVATION_ATTRS = {a: (("activation", a),) for a in _CLOSING}


class ShapeError(ValueError):
    """An op was given arguments whose shapes it cannot take."""


class GraphError(RuntimeError):
    """An expression was used outside the graph it belongs to, or after that graph ended."""


class SettingError(ValueError):
    """A setting (a dtype, a rate, a learning rate) outside what it can take."""


_current: "Graph | None" = None
_ENDED = ("this graph has ended (renew_cg was called or its `with` block closed); build a new "
          "graph for new expressions")
FUSED_LOSS_MAX_SCORES = 512  # softmax losses over more scores stay an affine and a loss node
_UNIFORM_BLOCK = 8192  # uniform numbers drawn at once for dropout masks (`Graph.uniform`)
_NO_UNIFORMS = np.empty(0)


def current_graph() -> "Graph":
    """The graph new leaves go into; one is created (as by `renew_cg`) when there is none."""
    return _current if _current is not None and _current.alive else renew_cg()


def renew_cg(**options: Any) -> "Graph":
    """End the current graph and start a new one (DyNet's `renew_cg`); returns it."""
    global _current
    if _current is not None:
        _current.close()
    _current = Graph(**options)
    return _current


class Graph:
    """A computation graph for one minibatch.

    autobatch: True (the default strategy), False (one node at a time), or a strategy name
    ("agenda", "depth", "late"). dtype: float32 by default. seed: for dropout and noise masks,
    drawn when their nodes are built (None: from the global seed, `dn.seed`, when set).
    training: False makes dropout and noise the identity.
    fuse: True (the default) fuses while building: `W @ x` sums with a bias stay pending
    until an activation closes them into one node, and elementwise expressions are one node
    each when read (`Pointwise`); "regions" keeps the sums pending but leaves elementwise ops
    to a pass that fuses, before each forward pass, regions of nodes whose intermediate results
    nothing else reads into single nodes (values and gradients of every node stay readable);
    False builds every op as its node (a builder's nodes, and `dn.dropout` of a row or of a
    state's slice, stay as they are made: one node each, whatever the setting).
    pad: True (the default) batches nodes whose shapes differ only in a length, padded to the
    longest (attention over sentences of different lengths; `Op.pad`); False batches only
    equal shapes. (`fuse="regions"` batches only equal shapes.)

    cache: a dict for a model's memo of expressions of this graph (an encoding per word form,
    say), emptied when the graph ends. Expressions refer to their graph: a memo kept in the
    model would keep the ended graph, with every node's record, alive until the next graph
    replaces it, and the cyclic garbage collector would look through all of it meanwhile.
    """

    engine_class: Any = None  # set by dynlp/__init__.py: the autobatching engine

    # (slots: each op reads several of these, and a graph's many fields would otherwise live
    # in a dict that attribute reads search)
    __slots__ = (
        "dtype", "fuse", "pad", "training", "rng", "_uniforms", "_uniforms_used", "_own_rng",
        "_streams", "alive", "ops", "args", "attrs", "battrs", "shapes", "sigs", "loc",
        "param_nodes", "node_params", "_param_exprs", "_memo", "_templates", "pinned",
        "bypassed", "pointwise", "inlined", "_inside", "folded", "_zeros", "_depths", "_info",
        "_broadcasts", "_over", "_gates", "_padded_keys", "mixed_ops", "_singles", "_sig_ids",
        "_previous", "engine", "_collecting", "_final_stats", "cache", "before",
        "__weakref__")

    def __init__(self, autobatch: bool | str = True, dtype: Any = np.float32,
                 seed: int | None = None, training: bool = True,
                 fuse: bool | str = True, pad: bool = True) -> None:
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise SettingError(f"Graph: dtype {dtype!r} is not a numpy dtype") from None
        if self.dtype not in (np.float32, np.float64):
            raise SettingError(f"Graph: dtype must be float32 or float64, not {self.dtype}")
        if fuse not in (True, False, "regions"):
            raise SettingError(f"Graph: fuse must be True, False or 'regions', not {fuse!r}")
        self.fuse = fuse
        if pad not in (True, False):
            raise SettingError(f"Graph: pad must be True or False, not {pad!r}")
        self.pad = bool(pad) and fuse != "regions"
        self.training = training
        self.rng = generator(seed)  # without a seed: the global one's (dn.seed), if set
        self._uniforms = _NO_UNIFORMS  # drawn ahead from rng for masks (see `uniform`)
        self._uniforms_used = 0
        self._own_rng = self.rng
        self._streams: dict[int, tuple] = {}  # id(generator) -> (generator, uniforms, used)
        self.alive = True
        self.ops: list[Op] = []
        self.args: list[tuple[int, ...]] = []
        self.attrs: list[tuple] = []
        self.battrs: list[tuple | None] = []
        self.shapes: list[tuple[int, ...]] = []
        self.sigs: list[int] = []
        # engine state: where the node's value is, (batch << 32) | row; -1 pending
        self.loc: list[int] = []
        self.param_nodes: dict[int, int] = {}   # id(parameter) -> node
        self.node_params: dict[int, Any] = {}   # node -> parameter
        # parameter -> its expression (keyed by the object, hashed by identity: no id() made
        # per `dn.parameter` call)
        self._param_exprs: dict[Any, Expression] = {}
        # id(builder) -> (builder, its parameters' nodes); (id(builder), key) -> (builder, node)
        self._memo: dict[Any, tuple] = {}  # per builder or fused function: its nodes, ...
        self._templates: dict[tuple, tuple[Any, int]] = {}
        self.pinned: set[int] = set()  # nodes whose op and arguments fusion must not change
        self.bypassed: dict[int, bool] = {}  # nodes a fused loss reads through (no gradient)
        self.pointwise: dict[int, Any] = {}  # fused elementwise node -> its Pointwise
        # node of a Pointwise whose program others took in -> it: an Expression of that node
        # answers gradient() with the Pointwise's, which adds what flowed through those others
        self.inlined: dict[int, Any] = {}
        # (len(pointwise), id(Pointwise) -> [(fused node, position)]): where each elementwise
        # expression is computed inside fused nodes, for gradient() (ids: no cycle)
        self._inside: tuple | None = None
        self.folded = 0  # ops that fusion while building kept out of the graph (`stats()`)
        self._zeros: dict[tuple, int] = {}
        self._depths: dict[int, int] = {}   # memo of depth_of
        self._info: dict[tuple, tuple] = {}
        # memo of `_broadcast_in` and of `reshaped`'s shapes
        self._broadcasts: dict[tuple, tuple | None] = {}
        self._over: dict[tuple, tuple] = {}  # memo of `add_over`
        # memo of `Affine.close`'s usual case: (W, b, shape of x, activation) -> (shape,
        # signature, attributes) of its affine_transform node
        self._gates: dict[tuple, tuple] = {}
        self._padded_keys: dict[tuple, tuple] = {}  # padded signature key -> a key it stands for
        self.mixed_ops: set = set()  # ops with a padded signature over several shapes
        self._singles: dict[int, tuple[int]] = {}
        self._sig_ids: dict[Any, int] = {}
        self._previous: Graph | None = None
        # the models' and builders' own memo for this graph (an encoding per word form, the
        # zero state of an RNN), emptied when the graph ends: a memo kept here instead of in
        # the model keeps no ended graph alive
        self.cache: dict[Any, Any] = {}
        self.before: list[Callable[[], Any]] = []  # `before_evaluation`'s, not yet called
        self.engine = self.engine_class(self, autobatch)

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> "Graph":
        """Make this the current graph; the cyclic garbage collector pauses inside the block
        (graphs make many small objects and no cycles), as it was before on exit."""
        global _current
        if _current is not None and _current.before:  # (a graph opened inside another: its
            _current._run_before()                     # values must be the updated ones too)
        self._previous = _current
        self._collecting = gc.isenabled()
        gc.disable()
        _current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current
        self.close()
        _current = self._previous
        if self._collecting:
            gc.enable()

    def close(self) -> None:
        """End the graph: its expressions can no longer be built on or evaluated, and its
        values and gradients are freed (`stats()` still answers)."""
        if self.alive:
            self.alive = False
            self._final_stats = self.engine.stats()
            self.engine = None
            # The structure stays readable (`to_dot` after the block) and takes no new node
            # (`add_node` and its kin check `alive`). (The arguments, a tuple of ints per node,
            # cost the cyclic collector one look: its first pass untracks tuples that hold only
            # ints.)
            self._memo, self._templates, self._info, self._padded_keys = {}, {}, {}, {}
            self._broadcasts, self._over, self._gates = {}, {}, {}
            self._param_exprs = {}  # (its expressions refer to the graph: no cycle left)
            self.cache = {}
            self.before = []  # (not called: the graph evaluated nothing)
            self.pointwise, self.inlined, self._inside = {}, {}, None

    def __len__(self) -> int:
        return len(self.ops)

    # -- building --------------------------------------------------------------------------------
    def add(self, op: Op, args: tuple[int, ...], attrs: tuple = (),
            battrs: tuple | None = None) -> "Expression":
        """Append a node; `attrs` is a tuple of (name, value) pairs, `battrs` per-example values."""
        out = _new(Expression)  # (as `Expression(self, node)`)
        out.g = self
        out.i = self.add_node(op, args, attrs, battrs)
        return out

    def add_node(self, op: Op, args: tuple[int, ...], attrs: tuple = (),
                 battrs: tuple | None = None) -> int:
        """`add`, returning the new node's index."""
        if not self.alive:
            raise GraphError(_ENDED)
        shapes = self.shapes
        count = len(args)
        if count == 3:
            a, b, c = args
            key = (op, (shapes[a], shapes[b], shapes[c]), attrs)
        elif count == 2:
            a, b = args
            key = (op, (shapes[a], shapes[b]), attrs)
        elif count == 1:
            key = (op, (shapes[args[0]],), attrs)
        elif count == 4:
            a, b, c, d = args
            key = (op, (shapes[a], shapes[b], shapes[c], shapes[d]), attrs)
        elif count:  # (an itemgetter of several items gives their tuple)
            key = (op, itemgetter(*args)(shapes), attrs)
        else:
            key = (op, (), attrs)
        info = self._info.get(key)
        if info is None:
            info = self._describe(key)
        shape, shared, sig = info
        if shared is not None:
            if len(shared) == 2:
                skey = (sig, args[shared[0]], args[shared[1]])
            elif len(shared) == 1:
                skey = (sig, args[shared[0]])
            else:
                skey = (sig,) + tuple([args[p] for p in shared])
            shared_sig = self._sig_ids.get(skey)
            if shared_sig is None:
                shared_sig = self._sig_ids[skey] = len(self._sig_ids)
            sig = shared_sig
        node = len(shapes)
        self.ops.append(op)
        self.args.append(args)
        self.attrs.append(attrs)
        self.battrs.append(battrs)
        shapes.append(shape)
        self.sigs.append(sig)
        self.loc.append(-1)
        return node

    def add_over(self, op: Op, weights: tuple[int, ...], x: int | None, attrs: tuple = (),
                 battrs: tuple | None = None) -> int:
        """`add_node(op, weights + (x,), attrs, battrs)` (without x when None) for weights that
        are the same nodes call after call (a layer's parameters in `W @ x + b`, a lookup
        table): the shape check and the signature are looked up at once, once per op, weights,
        shape of x, attributes and graph."""
        if not self.alive:
            raise GraphError(_ENDED)
        shapes = self.shapes
        if x is None:
            args, key = weights, (op, weights, None, attrs)
        else:
            args, key = weights + (x,), (op, weights, shapes[x], attrs)
        known = self._over.get(key)
        if known is None:
            node = self.add_node(op, args, attrs, battrs)
            self._over[key] = (shapes[node], self.sigs[node])
            return node
        node = len(shapes)
        self.ops.append(op)
        self.args.append(args)
        self.attrs.append(attrs)
        self.battrs.append(battrs)
        shapes.append(known[0])
        self.sigs.append(known[1])
        self.loc.append(-1)
        return node

    def add_chain(self, op: Op, shared: tuple[int, ...], xs: Sequence[int] | None, state: int,
                  battrs: Sequence[tuple] | None = None) -> list[int]:
        """Nodes op(*shared, x, previous) for each x of xs in turn, `previous` starting at
        `state` and then the node before: a recurrent sequence in one call. With xs None, nodes
        op(*shared, previous) with batched attributes battrs[k] (a sequence over rows of a
        table). The nodes are those `add` makes one by one; when the nodes' argument shapes
        repeat (the usual case), the shape check and signature are looked up once."""
        out: list[int] = []
        count = len(battrs) if xs is None else len(xs)
        if not count:
            return out
        if not self.alive:
            raise GraphError(_ENDED)
        add, shapes = self.add_node, self.shapes

        def step(k: int, previous: int) -> int:
            args = shared + (previous,) if xs is None else shared + (xs[k], previous)
            return add(op, args, (), None if battrs is None else battrs[k])

        first = step(0, state)
        out.append(first)
        shape, sig = shapes[first], self.sigs[first]
        if shape != shapes[state]:  # the state changes shape: no repeating pattern
            for k in range(1, count):
                out.append(step(k, out[-1]))
            return out
        push_op, push_args, push_attrs = self.ops.append, self.args.append, self.attrs.append
        push_battrs, push_shape = self.battrs.append, shapes.append
        push_sig, push_loc = self.sigs.append, self.loc.append
        node = first
        x_shape = None if xs is None else shapes[xs[0]]
        repeating = True
        for k in range(1, count):
            if xs is None:
                args = shared + (node,)
            else:
                x = xs[k]
                repeating = repeating and shapes[x] == x_shape
                if not repeating:  # another input shape: this and the rest the long way
                    node = step(k, node)
                    out.append(node)
                    continue
                args = shared + (x, node)
            push_op(op)
            push_args(args)
            push_attrs(())
            push_battrs(None if battrs is None else battrs[k])
            push_shape(shape)
            push_sig(sig)
            push_loc(-1)
            node = len(shapes) - 1
            out.append(node)
        return out

    def _describe(self, key: tuple) -> tuple:
        op, shapes, attrs = key
        try:
            shape = tuple(op.shape(*shapes, **dict(attrs)))
        except (ValueError, TypeError, IndexError) as err:
            args = ", ".join(str(s) for s in shapes)
            extra = "".join(f", {k}={v!r}" for k, v in attrs)
            raise ShapeError(f"{op.name}({args}{extra}): {err}") from None
        mask = op.mask(len(shapes))
        if mask is None:
            # unbatchable: never cached, so that every node gets a signature of its own
            return (shape, None, self._intern(("unbatchable", len(self._sig_ids))))
        shared = tuple(k for k, m in enumerate(mask) if m == SHARED) or None
        # a ragged op batches nodes of any number of arguments: its signature leaves out how
        # many; an op that pads leaves out the lengths along its padded axes
        if op.ragged:
            sig = self._intern((op, "ragged", shapes[:op.ragged_shared + 1], attrs))
        elif op.pad is not None and self.pad:
            padded = _padded_key(key, shape)
            sig = self._intern(padded)
            if self._padded_keys.setdefault(padded, key) != key:
                self.mixed_ops.add(op)  # (its batches may need padding)
        else:
            sig = self._intern(key)
        info = self._info[key] = (shape, shared, sig)
        return info

    def single(self, value: int) -> tuple[int]:
        """`(value,)`, the batched attributes of a node with one integer (a lookup's row, a
        loss's label), one tuple per value and graph: tuples made per node are what the garbage
        collector walks after each graph, at about the cost of building the node."""
        one = self._singles.get(value)
        if one is None:
            one = self._singles[value] = (value,)
        return one

    def _intern(self, key: Any) -> int:
        sig = self._sig_ids.get(key)
        if sig is None:
            sig = self._sig_ids[key] = len(self._sig_ids)
        return sig

    def leaf(self, value: np.ndarray) -> "Expression":
        """A constant node holding `value` (cast to the graph's dtype)."""
        self._check_alive()
        value = np.asarray(value, dtype=self.dtype)
        return self._leaf(_INPUT, value)

    def _leaf(self, op: Op, value: np.ndarray) -> "Expression":
        i = len(self.ops)
        self.ops.append(op)
        self.args.append(())
        self.attrs.append(())
        self.battrs.append(None)
        self.shapes.append(value.shape)
        self.sigs.append(self._intern(("leaf", i)))
        self.loc.append(-1)
        self.engine.leaf(i, value)
        return Expression(self, i)

    def parameter(self, param: Any) -> "Expression":
        """The node standing for a parameter in this graph (one per parameter and graph, and
        one Expression for it: expressions are immutable)."""
        e = self._param_exprs.get(param)
        if e is not None:
            return e
        self._check_alive()
        value = param.value
        if value.dtype != self.dtype:
            value = value.astype(self.dtype)
        e = self._leaf(_PARAMETER, value)
        self.param_nodes[id(param)] = e.i
        self.node_params[e.i] = param
        self._param_exprs[param] = e
        return e

    def param_node(self, param: Any) -> int:
        """The node index of `parameter(param)`, for builders that call `add` directly."""
        node = self.param_nodes.get(id(param))
        return self.parameter(param).i if node is None else node

    def param_nodes_of(self, owner: Any, params: Sequence[Any]) -> tuple[int, ...]:
        """The node indices of `params`, a sequence that is fixed for `owner` (a builder),
        looked up once per graph."""
        memo = self._memo.get(id(owner))
        if memo is None or memo[0] is not owner:  # (an id outlives its object: check both)
            memo = self._memo[id(owner)] = (owner, tuple([self.param_node(p) for p in params]))
        return memo[1]

    def template(self, owner: Any, key: tuple) -> int | None:
        """The node that `owner` (a builder) filed under `key` in this graph with
        `set_template`, or None: a node to make the next ones like (`add_as`)."""
        entry = self._templates.get((id(owner),) + key)
        return entry[1] if entry is not None and entry[0] is owner else None

    def set_template(self, owner: Any, key: tuple, node: int) -> None:
        self._templates[(id(owner),) + key] = (owner, node)
        self.pinned.add(node)  # fusion keeps its op and arguments, which `add_as` copies

    def add_as(self, like: int, args: tuple[int, ...], battrs: tuple | None = None
               ) -> "Expression":
        """A node with the op, attributes, shape and signature of node `like`, over `args`: for
        a builder that made `like` over arguments of the same shapes and the same shared
        arguments (it answers for that), so that the shape check and the signature lookup of
        `add` are done once per kind of node and graph."""
        return Expression(self, self.add_like(like, args, battrs))

    def add_like(self, like: int, args: tuple[int, ...], battrs: tuple | None = None) -> int:
        """`add_as`, returning the new node's index."""
        if not self.alive:
            raise GraphError(_ENDED)
        node = len(self.shapes)
        self.ops.append(self.ops[like])
        self.args.append(args)
        self.attrs.append(self.attrs[like])
        self.battrs.append(battrs)
        self.shapes.append(self.shapes[like])
        self.sigs.append(self.sigs[like])
        self.loc.append(-1)
        return node

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next numbers of the graph's generator, uniform in [0, 1), as an array of `shape`
        (a read-only view). They are drawn a block at a time, which gives the numbers that a
        draw per call would give, in the same order, for a fraction of the cost per call. A
        graph that also draws from `rng` itself (noise) gets other numbers than a draw per call
        would give, for its noise and for the masks drawn after it: still independent, and the
        same for the same seed."""
        size = 1
        for n in shape:
            size *= n
        start = self._uniforms_used
        pool = self._uniforms
        if start + size > len(pool):
            pool = self._uniforms = np.concatenate(
                [pool[start:], self.rng.random(max(_UNIFORM_BLOCK, size))])
            pool.flags.writeable = False
            start = 0
        self._uniforms_used = start + size
        return pool[start:start + size].reshape(shape)

    def zero_bias(self, shape: tuple[int, ...]) -> int:
        """A zero constant of `shape`, one per shape and graph (the bias of a sum of products
        that has none)."""
        node = self._zeros.get(shape)
        if node is None:
            node = self._zeros[shape] = self.leaf(np.zeros(shape)).i
        return node

    def depth_of(self, node: int, memo: dict[int, int] | None = None) -> int:
        """The longest path to node from a computed node (0 for a computed node), remembered
        in memo (the graph's own by default, cleared by each forward pass)."""
        if memo is None:
            memo = self._depths
        known = memo.get(node)
        if known is not None:
            return known
        loc, args = self.loc, self.args
        stack = [node]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            d = 0
            for a in args[n]:
                if loc[a] >= 0:
                    continue
                da = memo.get(a)
                if da is None:
                    stack.append(a)
                    d = -1
                    break
                if da >= d:
                    d = da + 1
            if d >= 0:
                memo[n] = d if args[n] else 0
                stack.pop()
        return memo[node]

    def use_generator(self, rng: np.random.Generator | None) -> None:
        """Draw the masks and noise of the nodes built from now on from rng (None: the graph's
        own generator), each generator with its own numbers drawn ahead. An example built with
        a generator of its own gets the same masks whatever else the graph holds (data-parallel
        training gives each example its generator, wherever it is computed)."""
        rng = self._own_rng if rng is None else rng
        if rng is self.rng:
            return
        self._streams[id(self.rng)] = (self.rng, self._uniforms, self._uniforms_used)
        self.rng, self._uniforms, self._uniforms_used = self._streams.get(
            id(rng), (rng, _NO_UNIFORMS, 0))

    def random_mask(self, shape: tuple[int, ...], p: float) -> np.ndarray:
        """An inverted-dropout mask: 0 with probability p, else 1 / (1 - p)."""
        return dropout_mask(self.uniform(shape), p, self.dtype)

    def _check_alive(self) -> None:
        if not self.alive:
            raise GraphError(_ENDED)

    # -- evaluation ------------------------------------------------------------------------------
    def before_evaluation(self, fn: Callable[[], Any]) -> None:
        """Call fn() once, before this graph first evaluates anything (its first forward,
        value, gradient or backward), so that work the evaluation needs but the building does
        not runs while the graph is built: a data-parallel run's gradient exchange and update
        of the step before (`dynlp.distributed.Communicator.start_sum_gradients`). Building
        reads no parameter's value (a parameter's node refers to its array, which trainers
        update in place), so an update that fn makes is what the whole graph computes with. A
        graph opened inside this one (to decide something while building) calls fn first too;
        code that reads a parameter's `value` array directly while building must call fn
        itself."""
        self._check_alive()
        self.before.append(fn)

    def _run_before(self) -> None:
        """The functions given to `before_evaluation`, in order; then the parameters that this
        graph holds as copies (another dtype than theirs) are copied again."""
        while self.before:
            self.before.pop(0)()
        for node, param in self.node_params.items():
            if param.value.dtype != self.dtype:
                self.engine.value(node)[...] = param.value  # (a leaf's value: its own array)

    def forward(self, exprs: Iterable["Expression"]) -> None:
        """Evaluate the given expressions together (one batched pass over what they need)."""
        self._check_alive()
        self.engine.forward([self.node(e) for e in exprs])

    def node(self, e: "Expression") -> int:
        if not isinstance(e, Expression):
            raise TypeError(f"expected an Expression, got {type(e).__name__}")
        if e.g is not self:
            raise GraphError("the expression belongs to another graph")
        return e.i

    def stats(self) -> dict:
        """Nodes, batches run forward and backward, mean batch size, scheduling and numpy time."""
        return self.engine.stats() if self.alive else self._final_stats


def _padded_key(key: tuple, shape: tuple[int, ...]) -> tuple:
    """The signature key of a node of an op that pads (`Op.pad`): the shapes with -1 along the
    padded axes, so that nodes that differ only in those lengths batch together."""
    op, shapes, attrs = key
    rule = op.pad(shapes, shape)
    if rule is None:
        return key
    axes, out_axis, _ = rule
    shapes = tuple(s if a is None else s[:a] + (-1,) + s[a + 1:] for s, a in zip(shapes, axes))
    if out_axis is not None:
        shape = shape[:out_axis] + (-1,) + shape[out_axis + 1:]
    return (op, shapes, attrs, shape, "padded")


class Expression:
    """A node of a graph. Operators follow numpy: `@` is a matrix product, `*` elementwise."""

    __slots__ = ("g", "i")
    __array_priority__ = 1000  # numpy defers to our operators for `array * expr`

    def __init__(self, g: Graph, i: int) -> None:
        self.g = g
        self.i = i

    @property
    def shape(self) -> tuple[int, ...]:
        return self.g.shapes[self.i]

    def dim(self) -> tuple[int, ...]:
        return self.g.shapes[self.i]

    def __repr__(self) -> str:
        return f"Expression({self.g.ops[self.i].name}, shape={self.shape}, node={self.i})"

    def _live(self) -> Graph:
        g = self.g
        if not g.alive:
            g._check_alive()
        return g

    def forward(self) -> None:
        g = self._live()
        g.engine.forward([self.i])

    def npvalue(self) -> np.ndarray:
        """The value as a new numpy array."""
        g = self._live()
        return np.array(g.engine.value(self.i))

    def value(self) -> float | np.ndarray:
        """A float for a scalar expression, else a numpy array."""
        v = self.npvalue()
        return float(v) if v.ndim == 0 else v

    def scalar_value(self) -> float:
        if self.shape != ():
            raise ShapeError(f"scalar_value: the expression has shape {self.shape}, not ()")
        return float(self.npvalue())

    def backward(self) -> None:
        """Reverse sweep from this scalar: gradients reach parameters and `gradient()`."""
        g = self._live()
        if self.shape != ():
            raise ShapeError(f"backward: the loss must be a scalar, got shape {self.shape}")
        g.engine.backward(self.i)

    def gradient(self) -> np.ndarray:
        """d loss / d this expression, after `backward()`."""
        g = self._live()
        inlined = g.inlined.get(self.i)
        if inlined is not None and inlined is not self:  # (`plain()` of a Pointwise)
            return inlined.gradient()
        return np.array(g.engine.gradient(self.i))

    def plain(self) -> "Expression":
        """This expression, kept as a node of its own: a fused softmax loss built on it
        (`pick_neg_log_softmax(O @ h.plain(), y)`) reads its value rather than reading
        through it to its inputs, so that `gradient()` answers for it."""
        self._live().pinned.add(self.i)
        return self

    # -- operators -------------------------------------------------------------------------------
    # (a Python float constant goes straight to its op: `arith` would make the same node)
    def __add__(self, other):
        kind = type(other)
        if kind is Expression or kind is Pointwise:  # (`arith`'s usual case, the short way)
            mine = type(self)
            g = self.g
            if (mine is Expression or mine is Pointwise) and other.g is g and g.fuse is True \
                    and g.alive:
                shape = self.out_shape if mine is Pointwise else g.shapes[self.i]
                if shape == (other.out_shape if kind is Pointwise else g.shapes[other.i]):
                    return _pointwise2(g, _ADD, self, other, shape)
        elif kind is float:
            return _const_op("add_const", self, other)
        return arith("add", self, other)

    def __radd__(self, other):
        if type(other) is float:
            return _const_op("add_const", self, other)
        return arith("add", other, self)

    def __sub__(self, other):
        return arith("sub", self, other)

    def __rsub__(self, other):
        return arith("sub", other, self)

    def __mul__(self, other):
        kind = type(other)
        if kind is Expression or kind is Pointwise:  # (as `__add__`)
            mine = type(self)
            g = self.g
            if (mine is Expression or mine is Pointwise) and other.g is g and g.fuse is True \
                    and g.alive:
                shape = self.out_shape if mine is Pointwise else g.shapes[self.i]
                if shape == (other.out_shape if kind is Pointwise else g.shapes[other.i]):
                    return _pointwise2(g, _MUL, self, other, shape)
        elif kind is float:
            return _const_op("mul_const", self, other)
        return arith("mul", self, other)

    def __rmul__(self, other):
        if type(other) is float:
            return _const_op("mul_const", self, other)
        return arith("mul", other, self)

    def __truediv__(self, other):
        return arith("div", self, other)

    def __rtruediv__(self, other):
        return arith("div", other, self)

    def __matmul__(self, other):  # (replaced by `matmul` itself once it is defined)
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __neg__(self):
        return unary("neg", self)

    def __pow__(self, c):
        if not isinstance(c, (int, float)):
            raise TypeError("only a constant exponent is supported: x ** c")
        return self._live().add(TABLE["pow_const"], (self.i,), (("c", float(c)),))

    def __getitem__(self, index):
        """numpy-style indexing along the first two axes: `x[i]`, `x[a:b]`, `x[[i, j]]`,
        `M[i, j]`, `M[:, j]`, `M[a:b, c:d]`, `M[[i, j], :]` (slices take step 1)."""
        if isinstance(index, slice):
            return _index_axis(self, 0, index)
        if isinstance(index, tuple) or _is_index_list(index):
            return index_expression(self, index)
        return pick(self, index)

    def __iter__(self):
        raise TypeError("an Expression is not iterable; index it with x[i]")

    __hash__ = object.__hash__


class Deferred(Expression):
    """An expression whose node is added to the graph only when something reads it as a node
    (`.i`: an op built on it the usual way, `value()`), once. Consumers that know the kind can
    read what it stands for in place and never make the node: each node costs graph building,
    scheduling and backward work, and tuples the garbage collector walks."""

    __slots__ = ("_node", "_fused")  # _fused: read in place by a fused node at least once

    @property
    def i(self) -> int:  # type: ignore[override]
        node = self._node
        if node < 0:
            node = self._node = self._materialize()
        return node

    def _materialize(self) -> int:
        raise NotImplementedError

    def plain(self) -> Expression:
        """The same value as an ordinary Expression (adding the node if it is not there); build
        on it to keep a node of its own, with its own gradient (a fused loss over it reads its
        value, not through it: `Expression.plain`)."""
        return Expression(self._live(), self.i).plain()

    def gradient(self) -> np.ndarray:
        """d loss / d this expression, after `backward()`; an error if a fused node read it in
        place (its gradient flowed through that node and was never formed)."""
        if self._fused:
            raise GraphError(
                f"{type(self).__name__}.gradient(): a fused node read this expression in place "
                f"({self._what()}), so it has no gradient of its own; to keep one, build on "
                "x.plain() instead of x")
        return super().gradient()

    def _own_gradient(self, shape: tuple[int, ...]) -> tuple["Graph", np.ndarray]:
        """(its graph, the gradient that reached this expression's own node, zeros when it has
        none), after `backward()`: what a subclass adds its in-place readers' shares to."""
        g = self._live()
        if g.engine.grads is None:
            raise GraphError("gradient() needs backward() first")
        total = np.zeros(shape, g.dtype)
        if self._node >= 0:
            total = total + g.engine.gradient(self._node)
        return g, total

    def dim(self) -> tuple[int, ...]:
        return self.shape  # (subclasses know their shape without a node)

    def __repr__(self) -> str:
        node = "" if self._node < 0 else f", node={self._node}"
        return f"{type(self).__name__}({self._what()}, shape={self.shape}{node})"

    def _what(self) -> str:
        raise NotImplementedError


class Slice(Deferred):
    """x[start:end] of a vector node x (a `pick_range` node when made), or the concatenation
    [x1[start:end]; x2[start:end]] of two (a `concatenate_ranges` node): `sources` and one
    `windows` entry (start, end) per source. `MLP` and its fused loss read the windows in place:
    the h half of a Tree-LSTM state, or the h halves of a BiLSTM's two directions, that only
    the classifier reads."""

    __slots__ = ("sources", "windows", "width", "readers", "counted")

    def __init__(self, g: Graph, sources: tuple[int, ...], start: int, end: int,
                 windows: tuple | None = None) -> None:
        """`windows`, if given, is `((start, end),) * len(sources)` made once by the caller (a
        builder that makes many slices alike), which lets consumers compare it by identity."""
        self.g = g
        self.sources = sources
        self.windows = windows or ((start, end),) * len(sources)
        self.width = (end - start) * len(sources)
        self._node = -1
        self._fused = False
        # (concatenation, position) that read this in place (the concatenation holds no
        # reference back: no cycle for the collector)
        self.readers: list | None = None
        self.counted = False  # stands in `g.folded` for a node that fuse=False would make

    @staticmethod
    def concatenation(xs: Sequence[Any]) -> "Slice | None":
        """[x1; x2; ...] of single-source Slices over one window, with no node of their own
        yet, as one Slice (a `concatenate_ranges` node when made, read in place by the
        consumers that know Slices), else None. `dn.concatenate([f.output(), b.output()])`
        of two LSTM states is then one node, not three."""
        first = xs[0]
        g = first.g
        if not g.fuse or len(xs) < 2:
            return None
        window = first.windows[0]
        sources = []
        for x in xs:
            if type(x) is not Slice or x._node >= 0 or x.g is not g or len(x.sources) != 1 \
                    or x.windows[0] != window:
                return None
            sources.append(x.sources[0])
        g._check_alive()
        out = Slice(g, tuple(sources), window[0], window[1])
        out.counted = True  # (the concatenate node)
        g.folded += 1
        for k, x in enumerate(xs):
            if not x.counted:  # (the pick_range node it would be)
                x.counted = True
                g.folded += 1
            if x.readers is None:
                x.readers = [(out, k)]
            else:
                x.readers.append((out, k))
        return out

    def gradient(self) -> np.ndarray:
        """d loss / d this slice, after `backward()`: from its own node if it has one, and from
        the concatenations that read it in place (their share of their gradient)."""
        if self._fused:
            return super().gradient()  # (raises: a fused node read it in place)
        _, total = self._own_gradient(self.shape)
        for reader, k in self.readers or ():
            total = total + reader.gradient()[k * self.width:(k + 1) * self.width]
        return total

    def _materialize(self) -> int:
        if self.counted:
            self.g.folded -= 1
        start, end = self.windows[0]
        if len(self.sources) == 1:
            return self._live().add_node(_PICK_RANGE, self.sources,
                                         (("start", start), ("end", end), ("dim", 0)))
        return self._live().add_node(_CONCATENATE_RANGES, self.sources,
                                     (("start", start), ("end", end)))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.width,)

    def _what(self) -> str:
        return " ++ ".join(f"node {n}[{a}:{b}]" for n, (a, b) in zip(self.sources, self.windows))


class Window(Slice):
    """Output k of a `dn.fused` call (dynlp/traced.py): rows [start, end) of the call's node.
    Another fused call reads it in place, and so does a fused softmax loss over `W @ it`;
    anything else reading it as a node makes a `pick_range` node. `value()` and `gradient()`
    are those of the same code unfused: the window of the call's node, and the cotangent
    where its program computed it."""

    __slots__ = ("kind", "position")

    def __init__(self, g: Graph, node: int, windows: tuple, kind: tuple, position: int) -> None:
        start, end = windows[0]
        super().__init__(g, (node,), start, end, windows)
        self.kind = kind        # ("window", the node's shape, (start, end)): a kind of argument
        self.counted = True  # (its pick_range node, if made, is one that fuse=False lacks)
        self.position = position  # where the program computes it

    def npvalue(self) -> np.ndarray:
        if self._node >= 0:
            return super().npvalue()
        start, end = self.windows[0]
        return np.array(self._live().engine.value(self.sources[0])[start:end])

    def gradient(self) -> np.ndarray:
        g = self._live()
        if g.engine.grads is None:
            raise GraphError("gradient() needs backward() first")
        # the cotangent where the program computed it: what reached this output from outside
        # and what flowed back to it inside (the cell's h reads its c)
        ct = g.engine.inner_gradient(self.sources[0], self.position)
        return np.zeros(self.shape, g.dtype) if ct is None else np.array(ct)


class Row(Deferred):
    """Row `index` of a lookup table (node `table`), a `lookup` node when made. The Tree-LSTM
    leaf and the LSTM's first layer read the table row themselves, in one node with the cell."""

    __slots__ = ("table", "index", "counted")

    def __init__(self, g: Graph, table: int, index: int) -> None:
        self.g = g
        self.table = table
        self.index = index
        self._node = -1
        self._fused = False
        self.counted = False  # stands in `g.folded` for its lookup node (a dn.fused call read it)

    def _materialize(self) -> int:
        g = self._live()
        if self.counted:
            g.folded -= 1
        return g.add_over(_LOOKUP, (self.table,), None, (), g.single(self.index))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.g.shapes[self.table][1:]

    def _what(self) -> str:
        return f"row {self.index} of node {self.table}"


class Affine(Deferred):
    """W1 @ x1 + W2 @ x2 + ... + b, kept as its terms while the user builds: `W @ x` with a
    weight (a parameter or a constant) and `+` of such sums and of a bias (a parameter of the
    result's shape) make no node. An activation (tanh, logistic, rectify) over
    it makes one `affine_transform` node; anything else reading it makes that node without
    the activation (or a `matmul` node for a lone product). `dn.Graph(fuse=False)` keeps
    products and sums as nodes of their own.

    Terms whose inputs are ready long before the others' (by depth: the longest path from a
    computed node) are not joined with them: an RNN's input products then batch over all its
    steps at once instead of one step at a time.
    """

    __slots__ = ("terms", "biases", "out_shape", "readers", "windowed")

    def __init__(self, g: Graph, terms: tuple, biases: tuple, shape: tuple[int, ...]) -> None:
        self.g = g
        self.terms = terms      # ((W node, x node), ...); x a Window when `windowed`
        self.windowed = False   # (a fused loss reads a Window in place; anything else, its node)
        self.biases = biases    # (bias node, ...): shared across the batch
        self.out_shape = shape
        self._node = -1
        self._fused = False
        # what read this sum: None, one reader or a list of several; a reader is a larger
        # sum (an Affine), (node, activation, its sum node or None) of an activation's node, or
        # _LOSS (a fused loss read it in place)
        self.readers: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.out_shape

    def _what(self) -> str:
        terms = " + ".join(f"node {w} @ node {x}" for w, x in self.terms)
        return terms + "".join(f" + node {b}" for b in self.biases)

    def _read_by(self, reader: Any) -> None:
        readers = self.readers
        if readers is None:  # (the usual case: one reader, kept without a list)
            self.readers = reader
        elif type(readers) is list:
            readers.append(reader)
        else:
            self.readers = [readers, reader]

    def __add__(self, other: Any) -> Expression:
        """A larger sum when other is a bias or a sum (`plus`, the usual case, without the
        dispatch of `arith`), else the sum as any expression's."""
        if type(other) is Expression:  # (the usual case, `W @ x + b`: `plus` the short way)
            g = self.g
            node = other.i
            if other.g is g and g.ops[node] is _PARAMETER and g.shapes[node] == self.out_shape:
                out = _new(Affine)  # (as `Affine(...)`)
                out.g = g
                out.terms = self.terms
                out.windowed = self.windowed
                out.biases = self.biases + (node,)
                out.out_shape = self.out_shape
                out._node = -1
                out._fused = False
                out.readers = None
                if self.readers is None:
                    self.readers = out
                else:
                    self._read_by(out)
                g.folded += 1
                return out
        total = self.plus(other)
        return arith("add", self, other) if total is None else total

    def plus(self, other: Any) -> "Affine | None":
        """self + other as a new Affine, or None when other is neither an Affine of the same
        graph and shape nor a bias."""
        g = self.g
        kind = type(other)
        if kind is Affine:
            if other.g is not g or other.out_shape != self.out_shape:
                return None
            out = Affine(g, self.terms + other.terms, self.biases + other.biases,
                         self.out_shape)
            out.windowed = self.windowed or other.windowed
            self._read_by(out)
            other._read_by(out)
            g.folded += 1
            return out
        if kind is Expression or isinstance(other, Expression):
            if other.g is not g or kind is not Expression and isinstance(other, Deferred) and \
                    other._node < 0:
                return None  # (a pending expression is no parameter: left pending)
            node = other.i
            if g.ops[node] is not _PARAMETER or g.shapes[node] != self.out_shape:
                return None  # (a constant may be one per example: added by its own node, it
                # batches; as the shared bias of affine_transform, it would not)
        else:
            node = g.param_nodes.get(id(other))
            if node is None and hasattr(other, "to_expression"):
                node = other.to_expression(g).i
            if node is None or g.shapes[node] != self.out_shape:
                return None
        out = Affine(g, self.terms, self.biases + (node,), self.out_shape)
        out.windowed = self.windowed
        self._read_by(out)
        g.folded += 1
        return out

    def _parts(self) -> tuple[tuple, tuple]:
        """Arguments of affine_transform (bias first) over the terms that are ready as late as
        the latest, and the terms that could run now when some are not (else ())."""
        g = self.g
        terms = self.terms
        if len(terms) > 1:
            depths = [g.depth_of(x) for _, x in terms]
            latest = max(depths)
            early = [d < latest - 1 for d in depths]
            if any(early):
                late = tuple(t for t, e in zip(terms, early) if not e)
                now = tuple(t for t, e in zip(terms, early) if e)
                return late, now
        return terms, ()

    def _bias(self) -> int:
        g = self.g
        if len(self.biases) == 1:
            return self.biases[0]
        if not self.biases:
            return g.zero_bias(self.out_shape[:1])
        return apply("esum", *[Expression(g, b) for b in self.biases]).i

    def close(self, activation: str | None) -> Expression:
        """The node f(self) for an activation f (or None)."""
        g = self.g
        terms = self.terms
        biases = self.biases
        if len(terms) == 1 and activation is not None and len(biases) <= 1 and \
                self._node < 0 and not self.windowed and g.alive:
            # the usual case, one product and its bias, if any, under an activation: the
            # short way (`add_over`'s cache, keyed without its tuples: a bias, of the sum's
            # shape, and W tell the shape of x, which a product checked against W)
            (w, x), = terms
            shapes = g.shapes
            if biases:
                bias = biases[0]
                key = (w, bias, activation)
            else:
                bias = self._bias()
                key = (w, bias, shapes[x], activation)
            known = g._gates.get(key)
            if known is None:
                node = g.add_over(_AFFINE, (bias, w), x, _ACTIVATION_ATTRS[activation])
                g._gates[key] = (shapes[node], g.sigs[node], _ACTIVATION_ATTRS[activation])
            else:
                node = len(shapes)
                g.ops.append(_AFFINE)
                g.args.append((bias, w, x))
                g.attrs.append(known[2])
                g.battrs.append(None)
                shapes.append(known[0])
                g.sigs.append(known[1])
                g.loc.append(-1)
            self._fused = True
            if self.readers is None:
                self.readers = (node, activation, None)
            else:
                self._read_by((node, activation, None))
            out = _new(Expression)
            out.g = g
            out.i = node
            return out
        if not g.alive:
            g._check_alive()
        if self.windowed:  # (the Windows' nodes, now that a node reads them)
            self.terms = tuple([(w, x if type(x) is int else x.i) for w, x in self.terms])
            self.windowed = False
        biases = self.biases
        if len(self.terms) == 1 and len(biases) <= 1 and self._node < 0 and activation:
            # the usual case, one product and its bias, if any, under an activation: the
            # short way
            (w, x), = self.terms
            bias = biases[0] if biases else self._bias()
            node = g.add_over(_AFFINE, (bias, w), x, _ACTIVATION_ATTRS[activation])
            self._fused = True
            self._read_by((node, activation, None))
            return Expression(g, node)
        if self._node >= 0:  # a node already (its value was read): build on it
            return Expression(g, self._node) if activation is None else \
                g.add(TABLE[activation], (self._node,))
        late, now = self._parts()
        if now:
            early = Affine(g, now, self.biases, self.out_shape)
            rest = Affine(g, late, (), self.out_shape)
            total = g.add(_ADD, (rest.close(None).i, early.close(None).i))
            g.folded -= 1  # (the add node stands for one of the sum's adds)
            if activation is None:
                return total  # (this sum's own node: `gradient()` reads it as such)
            self._fused = True
            out = g.add(TABLE[activation], (total.i,))
            self._read_by((out.i, activation, total.i))
            return out
        if activation is None:
            g.folded -= 1  # the node stands for the sum's last product or add
        if len(late) == 1 and not self.biases and activation is None:
            w, x = late[0]
            return Expression(g, g.add_over(_MATMUL, (w,), x))
        args = (self._bias(),) + tuple(chain.from_iterable(late))
        attrs = () if activation is None else _ACTIVATION_ATTRS[activation]
        out = g.add(_AFFINE, args, attrs)
        if activation is not None:
            self._fused = True
            self._read_by((out.i, activation, None))
        return out

    def _materialize(self) -> int:
        return self.close(None).i

    def gradient(self) -> np.ndarray:
        """d loss / d this sum, after `backward()`: from its own node if it has one, and from
        the nodes that read it (an activation's input, a larger sum)."""
        g, total = self._own_gradient(self.out_shape)
        readers = self.readers
        for reader in () if readers is None else readers if type(readers) is list else \
                (readers,):
            if reader is _LOSS:
                raise GraphError(
                    f"Affine.gradient(): a fused loss read this sum in place ({self._what()}), "
                    "so it has no gradient of its own; to keep one, build the loss on "
                    "x.plain() instead of x")
            if type(reader) is Affine:
                total = total + reader.gradient()
                continue
            node, activation, pre = reader
            if pre is not None:  # the activation reads a sum node: its gradient
                total = total + g.engine.gradient(pre)
            else:
                derivative = _ACTIVATIONS[activation][1]
                total = total + g.engine.gradient(node) * derivative(g.engine.value(node))
        return total


class Pointwise(Deferred):
    """An elementwise expression over nodes (`+`, `*`, `/`, `-` with DyNet-style broadcasting,
    tanh, logistic, rectify, exp, ... and arithmetic with constants), kept as a postfix program
    while the user builds: the node it makes when read is one fused node whose rules compose
    the op table's (`fusion.pointwise_op`), so that a cell written op by op (an LSTM's or
    Tree-LSTM's `c = i * u + f * c1`, `h = o * tanh(c)`) is two nodes, not seven, and batches
    across examples as one. A lone op makes its own primitive node. The first expression built
    on a Pointwise takes its program in (and computes it again if its own node is made too:
    cheap elementwise work); any later one reads its node: so `c`, read by `tanh(c)` in its
    own cell and by the parent's cell, is not recomputed inside the parent's, whose program
    then does not depend on the shape of the tree below.

    `value()` and `gradient()` answer as for a plain node: the gradient of an expression read
    inside fused nodes sums what flowed through each of them."""

    __slots__ = ("tokens", "leaves", "kids", "out_shape", "taken")

    def __init__(self, g: Graph, tokens: tuple, leaves: tuple, kids: tuple,
                 shape: tuple[int, ...]) -> None:
        self.g = g
        self.taken = False      # an expression built on it has taken its program in
        self.tokens = tokens    # postfix: None for the next leaf, else an op or (op, attrs)
        self.leaves = leaves    # argument nodes, in the order the tokens read them
        self.kids = kids        # the Pointwise operands composed in (None for a leaf)
        self.out_shape = shape
        self._node = -1
        self._fused = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.out_shape

    def _what(self) -> str:
        names = [t.name if type(t) is Op else t[0].name for t in self.tokens if t is not None]
        return " ".join(names) + f" over nodes {list(self.leaves)}"

    def _materialize(self) -> int:
        g = self.g
        if not g.alive:
            g._check_alive()
        tokens, leaves = self.tokens, self.leaves
        g.folded -= 1  # (the node stands for one of the ops)
        if len(tokens) == len(leaves) + 1:  # one op: its own primitive
            last = tokens[-1]
            if type(last) is Op:
                node = g.add_node(last, leaves)
            else:
                node = g.add_node(last[0], leaves, last[1])
        else:
            op = _POINTWISE.get(tokens)  # (`pointwise_op`'s first look, without its call)
            node = g.add_node(pointwise_op(tokens, _ARITY) if op is None else op, leaves)
            g.pointwise[node] = self
        if self.taken:  # (other nodes compute it too: an Expression of this node sums theirs)
            g.inlined[node] = self
        return node

    def _index(self, node: int, base: int, table: dict) -> None:
        """Record, for this expression and each one composed into it, where its result is
        formed in fused node `node`'s program (whose positions of this subprogram start at
        `base`): table[id(expression)] lists (node, position)."""
        position = base + len(self.tokens) - len(self.leaves) - 1  # (this root's position)
        places = table.get(id(self))
        if places is None:
            table[id(self)] = [(node, position)]
        else:
            places.append((node, position))
        for kid in self.kids:
            if kid is not None:
                kid._index(node, base, table)
                base += len(kid.tokens) - len(kid.leaves)

    def gradient(self) -> np.ndarray:
        """d loss / d this expression, after `backward()`: from its own node if it has one,
        and from the fused nodes that computed it inside."""
        g, total = self._own_gradient(self.out_shape)
        engine = g.engine
        index = g._inside
        if index is None or index[0] != len(g.pointwise):  # (made once per set of nodes)
            table: dict[int, list] = {}
            for node, root in g.pointwise.items():
                root._index(node, 0, table)
            index = g._inside = (len(g.pointwise), table)
        for node, p in index[1].get(id(self), ()):
            if node != self._node:
                ct = engine.inner_gradient(node, p)
                if ct is not None:
                    if ct.shape != self.out_shape:  # (a padded batch's row: cut back)
                        ct = ct[tuple(slice(0, n) for n in self.out_shape)]
                    total = total + ct
        return total


def _pointwise1(g: Graph, token: Any, x: Any, shape: tuple[int, ...]) -> "Pointwise":
    """token (an op, or (op, attrs)) over x, as a Pointwise. An operand is taken in as its
    program when it is a Pointwise no expression has taken in yet, else as its node, a leaf."""
    if type(x) is Pointwise and x._node < 0 and not x.taken and \
            len(x.tokens) < MAX_POINTWISE_TOKENS:
        x.taken = True
        tokens, leaves, kids = x.tokens + (token,), x.leaves, (x,)
    else:
        tokens, leaves, kids = (None, token), (x.i,), (None,)
    g.folded += 1
    out = _new(Pointwise)  # (as `Pointwise(...)`, without its calls)
    out.g = g
    out.taken = False
    out.tokens = tokens
    out.leaves = leaves
    out.kids = kids
    out.out_shape = shape
    out._node = -1
    out._fused = False
    return out


def _pointwise2(g: Graph, token: Any, x: Any, y: Any, shape: tuple[int, ...]) -> "Pointwise":
    """token (a binary op) over x and y of one shape, as a Pointwise (operands as for
    `_pointwise1`)."""
    if type(x) is Expression and type(y) is Expression:  # (two nodes: the short way)
        g.folded += 1
        out = _new(Pointwise)  # (as `Pointwise(...)`)
        out.g = g
        out.taken = False
        out.tokens = _PAIR_TOKENS[token]
        out.leaves = (x.i, y.i)
        out.kids = _NO_KIDS
        out.out_shape = shape
        out._node = -1
        out._fused = False
        return out
    if type(x) is Pointwise:  # (its node, if it is read as one: `x.i` without the property)
        node = x._node
        if node < 0 and not x.taken:
            tx, lx, kx = x.tokens, x.leaves, x
        else:
            if node < 0:
                node = x._node = x._materialize()
            tx, lx, kx = _LEAF, (node,), None
    else:
        tx, lx, kx = _LEAF, (x.i,), None
    if type(y) is Pointwise:
        node = y._node
        if node < 0 and not y.taken:
            ty, ly, ky = y.tokens, y.leaves, y
        else:
            if node < 0:
                node = y._node = y._materialize()
            ty, ly, ky = _LEAF, (node,), None
    else:
        ty, ly, ky = _LEAF, (y.i,), None
    if len(tx) + len(ty) >= MAX_POINTWISE_TOKENS:  # the longer operand becomes a node
        if len(tx) >= len(ty):
            tx, lx, kx = _LEAF, (x.i,), None
        else:
            ty, ly, ky = _LEAF, (y.i,), None
        if len(tx) + len(ty) >= MAX_POINTWISE_TOKENS:
            tx, lx, kx = _LEAF, (x.i,), None
            ty, ly, ky = _LEAF, (y.i,), None
    if kx is not None:
        kx.taken = True
    if ky is not None:
        ky.taken = True
    g.folded += 1
    out = _new(Pointwise)  # (as `Pointwise(...)`)
    out.g = g
    out.taken = False
    out.tokens = tx + ty + (token,)
    out.leaves = lx + ly
    out.kids = (kx, ky)
    out.out_shape = shape
    out._node = -1
    out._fused = False
    return out


class AffineLoss(Deferred):
    """pick_neg_log_softmax(W @ h + b, label), deferred (the scores `W @ h + b` an Affine of one
    product): `dn.esum` of such losses over the same weights (a sentence's words, a tree's
    nodes) is one `mlp_loss_sum_L` node, and any other reading makes one
    `mlp_pick_neg_log_softmax` node. When h is an `affine_transform` node with an activation
    (`O @ tanh(H @ x)`), the layer is read from x as well: L = 2. The scores and such an h then
    have no gradient of their own (`gradient()` raises; build on `.plain()` to keep one)."""

    __slots__ = ("xs", "windows", "layers", "activation", "label", "key")

    def __init__(self, g: Graph, x: Any, layers: tuple, activation: str | None,
                 label: int) -> None:
        self.g = g
        # the input node, or a dn.fused call's node read through a Window
        self.xs, self.windows = ((x,), None) if type(x) is int else (x.sources, x.windows)
        self.layers = layers          # (W1, b1, W2, b2, ...) nodes, shared
        self.activation = activation  # of the hidden layer, if any
        self.label = label
        self.key = (layers, activation, g.shapes[self.xs[0]], self.windows)
        self._node = -1
        self._fused = False

    @staticmethod
    def of(scores: "Affine", label: int) -> "AffineLoss | None":
        """The deferred loss over an Affine of one product and at most one bias, else None. Not
        over more than FUSED_LOSS_MAX_SCORES scores: the fused loss recomputes its scores in
        backward, which costs more than the nodes it saves on a language model's vocabulary."""
        if len(scores.terms) != 1 or len(scores.biases) > 1 or scores._node >= 0 or \
                scores.out_shape[0] > FUSED_LOSS_MAX_SCORES:
            return None
        g = scores.g
        (w, h), = scores.terms
        window = type(h) is Window  # (read in place: the call's node through the window)
        if not window and len(g.shapes[h]) != 1:
            return None
        if scores.biases:
            b = scores.biases[0]
        else:
            b = g._zeros.get(scores.out_shape)
            if b is None:
                b = g.zero_bias(scores.out_shape)
        g.folded += 1  # the loss op, until a node stands for it
        scores._fused = True
        if scores.readers is None:  # (a loss read it in place: no gradient of its own)
            scores.readers = _LOSS
        else:
            scores._read_by(_LOSS)
        if window:
            return AffineLoss(g, h, (w, b), None, label)
        if g.ops[h] is _AFFINE:
            args, attrs = g.args[h], g.attrs[h]
            if len(args) == 3 and len(attrs) == 1 and h not in g.pinned:
                hb, hw, hx = args
                if len(g.shapes[hb]) == 1 and len(g.shapes[hx]) == 1:
                    g.bypassed[h] = True
                    return AffineLoss(g, hx, (hw, hb, w, b), attrs[0][1], label)
        out = _new(AffineLoss)  # (as `AffineLoss(g, h, (w, b), None, label)`)
        out.g = g
        out.xs = (h,)
        out.windows = None
        out.layers = layers = (w, b)
        out.activation = None
        out.label = label
        out.key = (layers, None, g.shapes[h], None)
        out._node = -1
        out._fused = False
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    def _what(self) -> str:
        return f"a softmax loss over {len(self.layers) // 2} affine layer(s), label {self.label}"

    def _attrs(self) -> tuple:
        attrs = () if self.activation is None else (("activation", self.activation),)
        return attrs if self.windows is None else attrs + (("windows", self.windows),)

    def _materialize(self) -> int:
        g = self._live()
        g.folded -= 1
        return g.add_node(_MLP_LOSS, self.xs + self.layers, self._attrs(), g.single(self.label))

    @staticmethod
    def fuse_sum(terms: Sequence[Any]) -> Expression | None:
        """One node for the sum of deferred losses over the same layers, else None."""
        first = terms[0]
        key, g = first.key, first.g
        for term in terms:
            if type(term) is not AffineLoss or term.key != key or term.g is not g or \
                    term._node >= 0:
                return None
        g._check_alive()
        for term in terms:
            term._fused = True
        op = TABLE.get(f"mlp_loss_sum_{len(first.layers) // 2}")
        xs = tuple([t.xs[0] for t in terms]) if first.windows is None or \
            len(first.xs) == 1 else tuple(chain.from_iterable([t.xs for t in terms]))
        return g.add(op, first.layers + xs, first._attrs(), (tuple([t.label for t in terms]),))


def _graph_of(items: Sequence[Any]) -> Graph:
    for x in items:
        if isinstance(x, Expression):
            return x._live()
    for x in items:
        if hasattr(x, "to_expression"):
            return current_graph()
    return current_graph()


def as_node(g: Graph, x: Any) -> int:
    """The node of an Expression or Parameter in graph g; arrays become constant leaves."""
    if isinstance(x, Expression):
        if x.g is not g:
            if not x.g.alive:
                x.g._check_alive()
            raise GraphError("expressions from different graphs were combined")
        return x.i
    to_expression = getattr(x, "to_expression", None)
    if to_expression is not None:
        return to_expression(g).i
    if isinstance(x, (int, float, np.ndarray, np.generic, list, tuple)):
        return g.leaf(np.asarray(x)).i
    raise TypeError(f"cannot use {type(x).__name__} as an expression")


def apply(name: str, *xs: Any, attrs: tuple = (), battrs: tuple | None = None) -> Expression:
    """Build a node of op `name` over expressions (or parameters, or constants) xs."""
    g = None
    for x in xs:
        if isinstance(x, Expression):
            g = x.g
            break
    if g is None:
        g = current_graph()
    elif not g.alive:
        g._check_alive()
    nodes = g.param_nodes
    ids = []
    for x in xs:
        if isinstance(x, Expression) and x.g is g:
            ids.append(x.i)
        else:
            n = nodes.get(id(x))
            ids.append(as_node(g, x) if n is None else n)
    return g.add(TABLE[name], tuple(ids), attrs, battrs)


def unary(name: str, x: Any) -> Expression:
    if type(x) is Affine and name in _CLOSING:
        return x.close(name)
    if isinstance(x, Expression):
        g = x.g
        if not g.alive:
            g._check_alive()
        op = TABLE[name]
        if g.fuse is True and op in _ARITY:
            return _pointwise1(g, op, x, x.shape)
        return g.add(op, (x.i,))
    return apply(name, x)


def _is_const(x: Any) -> bool:
    return isinstance(x, (int, float, np.generic)) and not isinstance(x, bool)


def arith(kind: str, x: Any, y: Any) -> Expression:
    """x + y, x - y, x * y, x / y with Python or numpy constants allowed on either side."""
    tx, ty = type(x), type(y)
    if (tx is Expression or tx is Pointwise) and (ty is Expression or ty is Pointwise) and \
            x.g is y.g:
        g = x.g
        if not g.alive:
            g._check_alive()
        if g.fuse is True:
            sx = x.out_shape if tx is Pointwise else g.shapes[x.i]
            sy = y.out_shape if ty is Pointwise else g.shapes[y.i]
            if sx == sy and kind != "sub":  # (the usual case, one shape, the short way)
                return _pointwise2(g, _BINARY[kind], x, y, sx)
            fused = _fused_arith(g, kind, x, y, sx, sy)
            if fused is not None:
                return fused
        if tx is Expression and ty is Expression and kind != "sub":
            return g.add(TABLE[kind], (x.i, y.i))
    if kind == "add":
        if type(x) is Affine:
            total = x.plus(y)
            if total is not None:
                return total
        elif type(y) is Affine:
            total = y.plus(x)
            if total is not None:
                return total
    if _is_const(y):
        c = float(y)
        if kind == "add":
            return _const_op("add_const", x, c)
        if kind == "sub":
            return _const_op("add_const", x, -c)
        if kind == "mul":
            return _const_op("mul_const", x, c)
        with np.errstate(divide="ignore"):
            return _const_op("mul_const", x, float(np.divide(1.0, c)))  # x / 0 -> inf, as numpy
    if _is_const(x):
        c = float(x)
        if kind == "add":
            return _const_op("add_const", y, c)
        if kind == "sub":
            return _const_op("add_const", unary("neg", y), c)
        if kind == "mul":
            return _const_op("mul_const", y, c)
        return _const_op("mul_const", _const_op("pow_const", y, -1.0), c)
    if isinstance(x, Expression) and isinstance(y, Expression) and x.g is y.g and \
            x.g.fuse is True:
        fused = _fused_arith(x._live(), kind, x, y, x.shape, y.shape)
        if fused is not None:
            return fused
    if kind == "sub":
        return apply("add", x, unary("neg", y))
    return apply(kind, x, y)


def _fused_arith(g: Graph, kind: str, x: Any, y: Any, sx: tuple[int, ...],
                 sy: tuple[int, ...]) -> "Pointwise | None":
    """x kind y (add, sub, mul, div) over expressions of shapes sx and sy as a Pointwise, or
    None when the shapes do not broadcast (the op's own node then says why)."""
    shape = sx if sx == sy else _broadcast_in(g, sx, sy)
    if shape is None:
        return None
    if kind == "sub":
        return _pointwise2(g, _ADD, x, _pointwise1(g, _NEG, y, sy), shape)
    return _pointwise2(g, TABLE[kind], x, y, shape)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of an arithmetic op's result over shapes a and b (DyNet-style broadcasting),
    or None when they do not broadcast (the op's own node then says why)."""
    try:
        return broadcast_shape(a, b)
    except ValueError:
        return None


def _broadcast_in(g: Graph, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """`_broadcast(a, b)`, worked out once per pair of shapes and graph."""
    key = (a, b)
    known = g._broadcasts
    if key not in known:
        known[key] = _broadcast(a, b)
    return known[key]


def reshaped(x: Any, shape: tuple[int, ...]) -> Expression:
    """x in another shape (row-major); inside an elementwise expression when fusing (a
    reshape is a view: `w1 + reshape(w2, (d, 1))` is one fused node with what follows)."""
    attrs = (("shape", shape),)
    if isinstance(x, Expression) and x.g.fuse is True:
        g = x._live()
        source = x.shape
        key = (_RESHAPE, source, shape)  # (`_broadcast_in`'s memo, which keys pairs of shapes)
        known = g._broadcasts
        if key in known:
            out = known[key]
        else:
            try:
                out = tuple(_RESHAPE.shape(source, shape=shape))
            except (ValueError, TypeError):
                out = None  # (the node says why)
            known[key] = out
        if out is not None:
            return _pointwise1(g, (_RESHAPE, attrs), x, out)
    return apply("reshape", x, attrs=attrs)


def _const_op(name: str, x: Any, c: float) -> Expression:
    if c == 0.0 and math.copysign(1.0, c) < 0.0:
        # -0.0 equals 0.0 and hashes alike, so in a signature or a program it would stand for
        # 0.0: x * -0.0 is written -(x * 0.0), and x + -0.0, which is x exactly, x * 1.0
        if name == "mul_const":
            return unary("neg", _const_op(name, x, 0.0))
        if name == "add_const":
            return _const_op("mul_const", x, 1.0)
    if isinstance(x, Expression):
        g = x._live()
        if g.fuse is True:
            return _pointwise1(g, (TABLE[name], (("c", c),)), x, x.shape)
        return g.add(TABLE[name], (x.i,), (("c", c),))
    return apply(name, x, attrs=(("c", c),))


def _is_parameter_node(g: Graph, node: int) -> bool:
    return node in g.node_params


def matmul(a: Any, b: Any) -> Expression:
    """a @ b: (m, n) @ (n,) -> (m,), (m, n) @ (n, k) -> (m, k).

    A parameter (or any single left operand, such as a constant) is shared across the batch;
    a computed left operand batches as one matrix per example.
    """
    if type(a) is Expression:
        g = a.g
        kind = type(b)
        if (kind is Expression or kind is Pointwise or kind is Row or kind is Slice) and \
                b.g is g and g.alive:
            # the usual case, a product of two expressions of a live graph: the short way
            na = a.i
            if kind is Expression:
                nb = b.i
            else:  # (`b.i` without the property's call)
                nb = b._node
                if nb < 0:
                    nb = b._node = b._materialize()
            op = g.ops[na]
            if (op is _PARAMETER or op is _INPUT) and g.fuse:
                shapes = g.shapes
                shape, other = shapes[na], shapes[nb]
                if len(shape) == 2:
                    count = len(other)
                    if count == 1 and other[0] == shape[1]:  # (as `Affine(...)`, without its calls)
                        g.folded += 1
                        out = _new(Affine)
                        out.g = g
                        out.terms = ((na, nb),)
                        out.windowed = False
                        out.biases = ()
                        out.out_shape = shape[:1]
                        out._node = -1
                        out._fused = False
                        out.readers = None
                        return out
                    if count == 2 and other[0] == shape[1]:
                        g.folded += 1
                        return Affine(g, ((na, nb),), (), (shape[0], other[1]))
                return g.add(_MATMUL, (na, nb))
            return g.add(_MATMUL if op is _PARAMETER or op is _INPUT else _BATCHED_MATMUL,
                         (na, nb))
    else:
        g = None
    if type(b) is Window and b._node < 0 and g is b.g and g is not None and g.fuse is True \
            and g.alive:
        na = a.i
        shape = g.shapes[na]
        if g.ops[na] is _PARAMETER and len(shape) == 2 and shape[1] == b.width:
            g.folded += 1  # (a softmax loss over it reads the call's node: no node for b)
            out = Affine(g, ((na, b),), (), shape[:1])
            out.windowed = True
            return out
    if g is not None and isinstance(b, Expression) and b.g is g and g.alive:
        na, nb = a.i, b.i  # (the usual case: two expressions of a live graph)
    else:
        expression = isinstance(b, Expression)
        if expression:
            g = b.g
            if not g.alive:
                g._check_alive()
        else:
            g = _graph_of((a, b))
        if type(a) is Expression and a.g is g:
            na = a.i
        else:
            na = g.param_nodes.get(id(a))
            if na is None:
                na = as_node(g, a)
        nb = b.i if expression and b.g is g else as_node(g, b)
    op = g.ops[na]
    if op is _PARAMETER or op is _INPUT:
        if g.fuse:
            shape = g.shapes[na]
            other = g.shapes[nb]
            if len(shape) == 2 and len(other) in (1, 2) and other[0] == shape[1]:
                g.folded += 1
                return Affine(g, ((na, nb),), (), (shape[0],) + other[1:])
        return g.add(_MATMUL, (na, nb))
    return g.add(_BATCHED_MATMUL, (na, nb))


Expression.__matmul__ = matmul  # (`a @ b` calls it at once: a call less per product)


def pick(x: Expression, index: int, dim: int = 0) -> Expression:
    """x[index] along dim: a vector gives a scalar, a matrix a vector."""
    g = x._live()
    n = x.shape[dim] if dim < len(x.shape) else 0
    index = int(index)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"pick: index {index} out of range for shape {x.shape} along dim {dim}")
    return g.add(TABLE["pick"], (x.i,), (("dim", dim),), g.single(index))


def _is_index_list(index: Any) -> bool:
    return isinstance(index, (list, np.ndarray))


def _index_axis(x: Expression, axis: int, index: Any) -> Expression:
    """x indexed along one axis by an int, a slice or a list of ints."""
    n = x.shape[axis]
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        if step != 1:
            raise IndexError("slices of expressions take step 1")
        if (start, stop) == (0, n):
            return x
        return x._live().add(TABLE["pick_range"], (x.i,),
                             (("start", start), ("end", max(start, stop)), ("dim", axis)))
    if _is_index_list(index):
        rows = [int(i) + n if int(i) < 0 else int(i) for i in index]
        if not rows or any(not 0 <= i < n for i in rows):
            raise IndexError(f"indices {list(index)} out of range for axis {axis} of shape "
                             f"{x.shape}")
        name = "select_rows" if axis == 0 else "select_cols"
        return apply(name, x, attrs=(("count", len(rows)),), battrs=(tuple(rows),))
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return pick(x, index, dim=axis)
    raise IndexError(f"an expression is indexed by ints, slices and lists of ints, not "
                     f"{type(index).__name__}")


def index_expression(x: Expression, index: Any) -> Expression:
    """`x[index]` for a tuple of at most two indices or a list of ints (see `__getitem__`)."""
    parts = index if isinstance(index, tuple) else (index,)
    if len(parts) > len(x.shape) or len(parts) > 2:
        raise IndexError(f"too many indices {index!r} for an expression of shape {x.shape}")
    if len(parts) == 2 and _is_index_list(parts[0]) and _is_index_list(parts[1]):
        raise IndexError("index one axis with a list at a time (x[[0, 1], :][:, [2, 3]])")
    if len(parts) == 2:  # the second axis first, so that the first keeps its numbering
        x = _index_axis(x, 1, parts[1])
    return _index_axis(x, 0, parts[0])
