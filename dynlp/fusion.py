"""Fused ops, whose rules are composed from the op table's (no derivative is written per
pattern): `pointwise_op` for the elementwise expressions that graphs fuse while they are built
(graph.Pointwise), and the region pass of `fuse="regions"` (`Fuser`): before a forward pass,
regions of a graph's fresh nodes whose intermediate results only the region reads become one
node each.

A region grows from a root (the newest node not yet placed) through the arguments whose every
consumer is in the region. The root keeps its node index and takes the fused op, over the
region's outside arguments; the absorbed nodes keep their own op and arguments, so their values
(`value()`, read from the fused node's intermediate results) and gradients (`gradient()`,
kept by its backward rule) stay readable, and a node built later on an absorbed one recomputes
it. Equal regions (same ops, attributes and wiring, same argument shapes and shared arguments)
get the same fused op and signature, so they batch across examples like primitives.
Knows no op by name; must not import params or trainers.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain
from operator import itemgetter
from typing import Any, Callable

import numpy as np

from .ops import SHARED, STACK, Op, Parts
from .ops.core import pad_elementwise

ABSORBED = -3          # `loc` of a node that a fused node computes
MAX_REGION = 48        # nodes per fused region at most
MAX_FUSED_OPS = 1024   # fused ops remembered across graphs at most (then forgotten, remade)
_FUSED: dict[tuple, Op] = {}  # structure -> fused op, shared by all graphs


def fusible(op: Op) -> bool:
    """Batchable ops with a fixed number of arguments take part in fusion."""
    return op.batch is not None and op.ragged is None


class Program:
    """The fused op's rules: the positions (op, static attrs, argument references, names of
    its batched attributes) in topological order, the root last. A reference k >= 0 is outside
    argument k, a reference -1 - p is position p's value."""

    __slots__ = ("steps", "nargs", "masks", "plan", "_pads")

    def __init__(self, steps: list[tuple], nargs: int, masks: tuple[str, ...]) -> None:
        self.steps = steps
        self.nargs = nargs
        self.masks = masks
        # per position, looked up once: (the op's forward, its VJP, whether it keeps a
        # residual, its static attributes as a dict or None when it has none, batched attribute
        # names, where each input's cotangent goes, and a getter of its inputs from the list
        # of the outside arguments followed by the positions' values)
        self.plan = [(op.forward, op.vjp, op.residual, dict(static) if static else None, bnames,
                      tuple([(-1 - r, -1) if r < 0 else (r, masks[r] == SHARED) for r in refs]),
                      _getter([r if r >= 0 else nargs - 1 - r for r in refs]))
                     for op, static, refs, bnames in steps]
        self._pads: dict[tuple, list | None] = {}  # argument shapes -> refills (`_refills`)

    def _refills(self, xs: tuple) -> list:
        """Per step, the inputs it refills in a padded batch over arguments xs (`_pad_plan`)."""
        key = tuple([x.shape[1:] if m != SHARED else x.shape for x, m in zip(xs, self.masks)])
        refills = self._pads.get(key)
        if refills is None:
            if len(self._pads) >= MAX_FUSED_OPS:  # (one entry per length: bounded in practice)
                self._pads.clear()
            plan = _pad_plan(self.steps, key)
            refills = self._pads[key] = [] if plan is None else plan[1]
        return refills

    def forward(self, *xs: np.ndarray, lengths: Any = None,
                **attrs: Any) -> tuple[np.ndarray, list]:
        if lengths is not None:
            refills = self._refills(xs)
            if any(refills):
                return self._padded_forward(xs, lengths, refills, attrs)
        env = list(xs)  # (then each position's value)
        residuals: list[Any] = []
        push_value, push_residual = env.append, residuals.append
        for forward, _, keeps, static, bnames, _, get in self.plan:
            if bnames:
                a = {} if static is None else dict(static)
                for name, key in bnames:
                    a[name] = attrs[key]
                out = forward(*get(env), **a)
            elif static is None:
                out = forward(*get(env))
            else:
                out = forward(*get(env), **static)  # (the call makes its own dict of them)
            if keeps:
                out, res = out
                push_residual(res)
            else:
                push_residual(None)
            push_value(out)
        # the residual also receives the positions' cotangents in backward (`gradient()`)
        return out, [env[self.nargs:], residuals, None, None]

    def _padded_forward(self, xs: tuple, lengths: Any, refills: list,
                        attrs: dict) -> tuple[np.ndarray, list]:
        """`forward` in a padded batch: the inputs a step reads refilled as its rule asks."""
        env = list(xs)
        residuals: list[Any] = []
        refilled: dict[tuple, np.ndarray] = {}
        for p, (forward, _, keeps, static, bnames, _, get) in enumerate(self.plan):
            ins = list(get(env))
            for slot, axis, fill in refills[p]:
                ins[slot] = refilled[p, slot] = _refill(ins[slot], lengths, axis, fill)
            a = {} if static is None else dict(static)
            for name, key in bnames:
                a[name] = attrs[key]
            out = forward(*ins, **a)
            if keeps:
                out, res = out
                residuals.append(res)
            else:
                residuals.append(None)
            env.append(out)
        return out, [env[self.nargs:], residuals, None, refilled]

    def vjp(self, g: np.ndarray, out: np.ndarray, *xs: np.ndarray, residual: list,
            lengths: Any = None, **attrs: Any) -> list:
        values, residuals, refilled = residual[0], residual[1], residual[3]
        env = list(xs)
        env.extend(values)
        plan = self.plan
        refills = None if refilled is None else self._refills(xs)
        cts: list[Any] = [None] * len(plan)
        cts[-1] = g
        outside: list[Any] = [None] * self.nargs
        for p in range(len(plan) - 1, -1, -1):
            c = cts[p]
            if c is None:
                continue
            _, vjp, keeps, static, bnames, targets, get = plan[p]
            ins = get(env)
            if refills and refills[p]:
                ins = list(ins)
                for slot, _, _ in refills[p]:
                    ins[slot] = refilled[p, slot]
            if static is None and not bnames:
                if keeps:
                    parts = vjp(c, values[p], *ins, residual=residuals[p])
                else:
                    parts = vjp(c, values[p], *ins)
            else:
                a = {} if static is None else dict(static)
                for name, key in bnames:
                    a[name] = attrs[key]
                if keeps:
                    a["residual"] = residuals[p]
                parts = vjp(c, values[p], *ins, **a)
            if refills and refills[p]:
                parts = list(parts)
                for slot, axis, _ in refills[p]:  # (the padding's cotangent is dropped)
                    if parts[slot] is not None:
                        ct = parts[slot]
                        parts[slot] = ct * inside(lengths, ct.shape[axis + 1], axis, ct.ndim)
            # (targets: per input, (a position's index in cts, -1) or (an outside argument,
            # whether it is shared))
            for (q, shared), ct in zip(targets, parts):
                if ct is None:
                    continue
                if shared < 0:
                    have = cts[q]
                    cts[q] = ct if have is None else have + ct
                else:
                    have = outside[q]
                    if have is None:
                        outside[q] = ct
                    elif shared:
                        outside[q] = Parts(*_parts(have), *_parts(ct))
                    else:
                        outside[q] = have + ct
        residual[2] = cts
        return outside

    def jvp(self, ts: list, out: np.ndarray, *xs: np.ndarray, residual: list,
            lengths: Any = None, **attrs: Any) -> np.ndarray:
        values, residuals = residual[0], residual[1]
        tans: list[Any] = []
        for p, (op, static, refs, bnames) in enumerate(self.steps):
            ins = [xs[r] if r >= 0 else values[-1 - r] for r in refs]
            tin = [ts[r] if r >= 0 else tans[-1 - r] for r in refs]
            if all(t is None for t in tin):
                tans.append(None)
                continue
            a = dict(static)
            for name, key in bnames:
                a[name] = attrs[key]
            if op.residual:
                a["residual"] = residuals[p]
            tans.append(op.jvp(tin, values[p], *ins, **a))
        t = tans[-1]
        return np.zeros_like(out) if t is None else t


def inside(lengths: Any, width: int, axis: int, ndim: int) -> np.ndarray:
    """True where a padded batch's array (batch axis first, `ndim` axes in all, padded along
    per-example `axis` to `width`) holds a node's entries, not padding; broadcastable to it."""
    inside = np.arange(width) < np.asarray(lengths)[:, None]
    return inside.reshape((len(inside),) + (1,) * axis + (width,) + (1,) * (ndim - axis - 2))


def _refill(x: np.ndarray, lengths: Any, axis: int, fill: str) -> np.ndarray:
    """x with its padding along per-example `axis` set as a step's pad rule asks: zeros,
    -inf, or each node's last entry repeated ("edge")."""
    real = inside(lengths, x.shape[axis + 1], axis, x.ndim)
    if fill == "edge":
        last = np.minimum(np.arange(x.shape[axis + 1]), np.asarray(lengths)[:, None] - 1)
        return np.take_along_axis(x, last.reshape(real.shape), axis=axis + 1)
    return np.where(real, x, 0.0 if fill == "zero" else -np.inf).astype(x.dtype, copy=False)


def _pad_plan(steps: list[tuple], shapes: tuple) -> tuple | None:
    """How a program over outside arguments of per-example `shapes` (a shared one's whole)
    batches nodes of different lengths, by its steps' `Op.pad` rules chained: ((axis per
    argument, output axis, fill per argument), the engine's rule, and per step the inputs it
    refills, [(slot, axis, fill)]: a value computed inside whose padding is not what the step's
    rule asks, a -inf or zero fill, or the edge after a step that left other numbers there, and
    an argument that an earlier step read with another fill), or None when a step cannot pad
    what it reads or two steps read an argument along different axes."""
    nargs = len(shapes)
    axes: list[Any] = [None] * nargs
    fills: list[Any] = [None] * nargs
    read = [False] * nargs
    vshapes: list[tuple] = []
    vaxes: list[Any] = []
    vedge: list[bool] = []  # (each value's padding: entries computed from edge padding)
    refills: list[list] = []
    for op, static, refs, _ in steps:
        ins = tuple(shapes[r] if r >= 0 else vshapes[-1 - r] for r in refs)
        out = tuple(op.shape(*ins, **dict(static)))
        rule = None if op.pad is None else op.pad(ins, out)
        if rule is not None and not any(r < 0 and vaxes[-1 - r] is not None for r in refs) \
                and any(r < 0 and a is not None for r, a in zip(refs, rule[0])):
            # (a step over values of no length, after a contraction, whose rule would pad them
            # by their sizes alone, an elementwise op over vectors: no length here either)
            rule = None
        mine: list[tuple] = []
        if rule is None:  # (fine over inputs of no length)
            for r in refs:
                if r >= 0:
                    if axes[r] is not None:
                        return None
                    read[r] = True
                elif vaxes[-1 - r] is not None:
                    return None
            vshapes.append(out)
            vaxes.append(None)
            vedge.append(True)
            refills.append(mine)
            continue
        step_axes, out_axis, step_fills = rule
        edge = True
        for slot, r in enumerate(refs):
            axis, fill = step_axes[slot], step_fills[slot]
            if r >= 0:
                if not read[r]:  # (the engine pads it as the first step to read it asks)
                    axes[r], fills[r], read[r] = axis, fill, True
                elif axes[r] != axis:
                    return None
                elif fill != fills[r]:  # (read again with another fill: refilled here)
                    mine.append((slot, axis, fill))
            else:
                v = -1 - r
                if vaxes[v] != axis:
                    return None
                if axis is None:
                    continue
                if fill != "edge" or not vedge[v]:
                    mine.append((slot, axis, fill))
            if axis is not None and fill != "edge":
                edge = False
        vshapes.append(out)
        vaxes.append(out_axis)
        vedge.append(edge)
        refills.append(mine)
    if all(a is None for a in axes):
        return None
    return (tuple(axes), vaxes[-1], tuple(fills)), refills


def _program_pad(steps: list[tuple]) -> Callable:
    """`Op.pad` of a program (`_pad_plan`)."""
    def pad(shapes: tuple, out: tuple) -> tuple | None:
        plan = _pad_plan(steps, tuple(shapes))
        return None if plan is None else plan[0]
    return pad


def _getter(indices: list[int]) -> Callable:
    """A function of a list giving its items at `indices`, as a tuple."""
    if len(indices) == 1:
        k = indices[0]
        return lambda env: (env[k],)
    return itemgetter(*indices)


def _parts(ct: Any) -> tuple:
    return ct.parts if type(ct) is Parts else (ct,)


def fused_op(key: tuple, steps: list[tuple], masks: tuple[str, ...], battr_names: tuple,
             shape: tuple[int, ...]) -> Op:
    """The fused op for a region's structure `key`, made once."""
    op = _FUSED.get(key)
    if op is not None:
        return op
    if len(_FUSED) >= MAX_FUSED_OPS:
        # (the structure holds static attributes: a constant that changes with every graph,
        # `x * (1 / temperature)`, would otherwise make a new op per graph, kept for good)
        _FUSED.clear()
    name = "fused(" + ",".join(step[0].name for step in steps) + ")"
    op = _FUSED[key] = program_op(name, steps, masks, battr_names, shape,
                                  doc="a region of nodes fused by the engine")
    return op


def program_op(name: str, steps: list[tuple], masks: tuple[str, ...], battr_names: tuple,
               shape: tuple[int, ...] | Callable, doc: str, cls: type = Op, **pad: Any) -> Op:
    """An op of class `cls` whose rules are the `Program` of `steps` over arguments batched by
    `masks`: of output shape `shape` whatever its arguments' (they are fixed by whoever made
    it), or by the shape rule `shape`; `pad`, its `Op.pad` and `Op.pad_probe` if it pads."""
    program = Program(steps, len(masks), masks)
    op = cls(name, shape=shape if callable(shape) else _fixed_shape(shape),
             forward=program.forward, vjp=program.vjp, jvp=program.jvp, batch=masks,
             batched_attrs=battr_names, cost=max(step[0].cost for step in steps),
             residual=True, doc=doc, **pad)
    op.program = program
    return op


def _structure(steps: list[tuple]) -> tuple:
    """Steps as a key: two programs of equal keys compute alike."""
    return tuple([(op, tuple(sorted(dict(static).items())), tuple(refs), tuple(bnames))
                  for op, static, refs, bnames in steps])


_TRACED: dict[tuple, Op] = {}  # (name, steps, masks) -> a traced function's op


def traced_op(name: str, steps: list[tuple], masks: tuple[str, ...], battr_names: tuple,
              shapes: tuple, shape: tuple[int, ...], calls: tuple, doc: str) -> Op:
    """The op of a traced function's program (`dn.fused`), traced over arguments of `shapes`
    (a shared one's whole) to output `shape`; `calls` tells which arguments are the call's
    (not parameters or constants). Traces over other shapes that come out as the same program
    (a sequence of another length) share one op: its shape rule is the steps' composed, and
    it pads as they do (`_pad_plan`), refilling between steps, so that calls over different
    lengths batch together; each node's length is read from a call argument that this trace
    pads along an axis longer than 1. A program whose composed rule does not give `shape` (a
    step's attributes that depend on the shapes), or whose trace shows no such argument (all
    of length 1), is an op of this trace alone."""
    key = (name, _structure(steps), masks, battr_names)
    try:
        hash(key)
    except TypeError:  # (an attribute that cannot be told apart by value)
        return program_op(name, steps, masks, battr_names, shape, doc)
    op = _TRACED.get(key)
    rule = _program_shape(steps)
    try:
        same = tuple(rule(*shapes)) == tuple(shape)
    except (ValueError, TypeError, IndexError):
        same = False
    if not same:
        return program_op(name, steps, masks, battr_names, shape, doc)
    if op is not None:
        return op
    if len(_TRACED) >= MAX_FUSED_OPS:
        _TRACED.clear()
    plan = _pad_plan(steps, tuple(shapes))
    probe = None
    if plan is not None:
        # (the call argument whose length tells nodes apart: never a parameter or a constant,
        # the same for every call, and never one seen at length 1, which the rules may take
        # for a length where it only broadcasts)
        axes, out_axis, _ = plan[0]
        probes = [k for k, a in enumerate(axes) if a is not None and calls[k]
                  and shapes[k][a] > 1]
        if not probes:
            return program_op(name, steps, masks, battr_names, shape, doc)
        probe = None if out_axis is not None and shape[out_axis] > 1 else probes[0]
    op = _TRACED[key] = program_op(name, steps, masks, battr_names, rule, doc,
                                   pad=None if plan is None else _program_pad(steps),
                                   pad_probe=probe)
    op.takes_lengths = plan is not None
    return op


_COMPOSED: dict[tuple, Op] = {}  # steps -> composed op, shared by all graphs


class ComposedOp(Op):
    """An op of `composed`: equal to any other made of the same steps, so that nodes built
    from two copies of one structure (made again after the cache was cleared) still share a
    signature and batch together."""

    key: tuple = ()
    _hash = 0  # (the key's, worked out once: a node's signature key hashes its op)

    def __eq__(self, other: Any) -> bool:
        return self is other or type(other) is ComposedOp and other.key == self.key

    def __hash__(self) -> int:
        return self._hash


def composed(steps: list[tuple], masks: tuple[str, ...], battrs: tuple[str, ...] = (),
             doc: str = "") -> Op:
    """An op that runs ops of the table one after the other inside one node, each reading
    what the ones before it computed in place (a step over a table row looks the row up
    itself; a step over masked inputs multiplies them itself): `steps` as `Program`'s, each
    (op, static attributes as a dict, references, (its batched attribute, the composed op's
    batched attribute it reads) pairs), the last one's value the node's; `masks`, how its
    outside arguments batch; `battrs`, its batched attributes. Its shape rule, forward, VJP
    and JVP are the steps' rules composed, so the op table stays the one place where their
    maths lives. Made once per structure: nodes built alike share one op and batch."""
    key = (_structure(steps), masks, battrs)
    op = _COMPOSED.get(key)
    if op is not None:
        return op
    if len(_COMPOSED) >= MAX_FUSED_OPS:  # (a static attribute that changes with every graph)
        _COMPOSED.clear()
    steps = [(op, dict(static), tuple(refs), tuple(bnames)) for op, static, refs, bnames in steps]
    op = program_op("+".join(step[0].name for step in steps), steps, masks, battrs,
                    _program_shape(steps), doc or "ops of the table composed into one node",
                    cls=ComposedOp)
    op.key = key
    op._hash = hash(key)
    _COMPOSED[key] = op
    return op


_POINTWISE: dict[tuple, Op] = {}  # postfix program -> fused op, shared by all graphs


def _program_shape(steps: list[tuple]) -> Callable:
    """The output shape of a program from its arguments' shapes, by its ops' shape rules (the
    arithmetic ops broadcast)."""
    def shape(*shapes: tuple[int, ...], **attrs: Any) -> tuple[int, ...]:
        values: list[tuple[int, ...]] = []
        for op, static, refs, _ in steps:
            ins = [shapes[r] if r >= 0 else values[-1 - r] for r in refs]
            values.append(tuple(op.shape(*ins, **dict(static))))
        return values[-1]
    return shape


def pointwise_op(tokens: tuple, arity: dict) -> Op:
    """The fused op of an elementwise expression written in postfix: `tokens` holds None for
    an argument (the next one, in order) and, for an op, the op (or (op, static attrs)), which
    takes the `arity[op]` values before it. Its rules, shape rule included, are a `Program`
    over the ops' own; its arguments stack. Made once per program."""
    op = _POINTWISE.get(tokens)
    if op is not None:
        return op
    if len(_POINTWISE) >= MAX_FUSED_OPS:
        _POINTWISE.clear()
    steps: list[tuple] = []
    stack: list[int] = []
    nargs = 0
    for token in tokens:
        if token is None:
            stack.append(nargs)
            nargs += 1
            continue
        prim, static = (token, ()) if type(token) is Op else token
        n = arity[prim]
        refs = tuple(stack[-n:])
        del stack[-n:]
        steps.append((prim, static, refs, ()))
        stack.append(-len(steps))  # (the reference -1 - p of position p)
    masks = (STACK,) * nargs
    program = Program(steps, nargs, masks)
    op = Op("fused(" + ",".join(step[0].name for step in steps) + ")",
            shape=_program_shape(steps),
            forward=program.forward, vjp=program.vjp, jvp=program.jvp, batch=masks,
            cost=1, residual=True, pad=pad_elementwise,
            doc="an elementwise expression fused while building")
    op.program = program
    _POINTWISE[tokens] = op
    return op


def _fixed_shape(shape: tuple[int, ...]) -> Callable:
    return lambda *shapes, **attrs: shape


class Fuser:
    """The fusion pass over one graph: each forward fuses the nodes built since the last."""

    def __init__(self, graph: Any) -> None:
        self.g = graph
        self.upto = 0          # nodes below this one have been through the pass
        self.absorbed: dict[int, tuple[int, int]] = {}  # node -> (fused node, position)
        # absorbed nodes that nodes built later read, not computed again yet: until they are,
        # each forward searches the graph for what it needs (which computes them again)
        self.read: set[int] = set()
        # region structure (member signatures and wiring) -> (fused op, signature,
        # positions with batched attributes), or None for a region left unfused
        self.kinds: dict[tuple, tuple | None] = {}

    def run(self, targets: list[int]) -> bool:
        """Fuse the pending nodes built since the last pass. Returns True when a node reads
        a node absorbed earlier that is not computed again yet (the full search does that)."""
        g = self.g
        lo, hi = self.upto, len(g.ops)
        self.upto = hi
        loc, args, ops, sigs = g.loc, g.args, g.ops, g.sigs
        if self.read:  # (those still absorbed: a forward that did not need their readers)
            self.read = {a for a in self.read if loc[a] == ABSORBED}
        if hi <= lo:
            return bool(self.read)
        uses = Counter(chain.from_iterable(args[lo:hi]))  # (counted in C)
        uses.update(targets)
        revived = bool(self.absorbed) and not uses.keys().isdisjoint(self.absorbed)
        if revived:
            self.read.update(set(chain.from_iterable(args[lo:hi])).intersection(self.absorbed))
        place = bytearray(hi - lo)    # 1: placed (a root, or in a region)
        pinned = g.pinned
        depths: dict[int, int] = {}
        depth_of = g.depth_of
        fuse = self._fuse
        for root in range(hi - 1, lo - 1, -1):
            if place[root - lo] or loc[root] != -1:
                continue
            place[root - lo] = 1
            op = ops[root]
            if op.batch is None or op.ragged is not None or root in pinned:
                continue
            region = [root]
            # A costly node (a product, a cell) joins only when no costly node lies between
            # it and the root, and only one of each costly signature: a region is one layer
            # of products and what follows them, never two steps of a recurrence or two levels
            # of a tree, so that regions repeat and batch.
            below = [op.cost != 1]   # per member: a costly node on its path to the root
            costly = {sigs[root]} if below[0] else set()
            seen: dict[int, int] = {}
            k = 0
            while k < len(region):
                n = region[k]
                under = below[k]
                k += 1
                op = ops[n]
                mask = None if op.batch == STACK else op.mask(len(args[n]))
                for slot, a in enumerate(args[n]):
                    i = a - lo
                    if i < 0 or place[i] or loc[a] != -1 or (
                            mask is not None and mask[slot] == SHARED):
                        continue
                    count = uses[a]
                    if count > 1:
                        count = seen[a] = seen.get(a, 0) + 1
                        if count < uses[a]:
                            continue
                    oa = ops[a]
                    if oa.batch is None or oa.ragged is not None:
                        continue
                    if oa.cost != 1:
                        if under or sigs[a] in costly:
                            continue
                        da = depths.get(a)
                        if da is None:
                            da = depth_of(a, depths)
                        dn = depths.get(n)
                        if dn is None:
                            dn = depth_of(n, depths)
                        if da + 1 != dn:
                            continue  # ready before its consumer: it batches better alone
                        costly.add(sigs[a])
                        below.append(True)
                    else:
                        below.append(under)
                    place[i] = 1
                    region.append(a)
                if len(region) >= MAX_REGION:
                    break
            if len(region) > 1:
                fuse(region)
        return revived or bool(self.read)

    def _fuse(self, region: list[int]) -> None:
        """Make the newest node of the region (its root) the region's fused node."""
        g = self.g
        args, sigs = g.args, g.sigs
        region.sort()
        # region nodes map to -1 - position, outside arguments to their index
        where = dict(zip(region, range(-1, -1 - len(region), -1)))
        outside: list[int] = []
        key: list[Any] = []
        for n in region:
            refs = []
            for a in args[n]:
                k = where.get(a)
                if k is None:
                    k = where[a] = len(outside)
                    outside.append(a)
                refs.append(k)
            key.append(sigs[n])
            key.append(tuple(refs))
        structure = tuple(key)
        kind = self.kinds.get(structure, 0)
        if kind == 0:
            kind = self.kinds[structure] = self._kind(region, outside, structure)
        if kind is None:
            return
        op, sig, with_battrs = kind
        root = region[-1]
        g.ops[root] = op
        args[root] = tuple(outside)
        g.attrs[root] = ()
        if with_battrs:
            battrs = g.battrs
            flat: list[Any] = []
            for p in with_battrs:
                flat.extend(battrs[region[p]])
            battrs[root] = tuple(flat)
        else:
            g.battrs[root] = None
        sigs[root] = sig
        loc, absorbed = g.loc, self.absorbed
        for p in range(len(region) - 1):
            n = region[p]
            loc[n] = ABSORBED
            absorbed[n] = (root, p)

    def _kind(self, region: list[int], outside: list[int], structure: tuple) -> tuple | None:
        """The fused op and signature of a region of this structure (once per graph)."""
        g = self.g
        ops, args, attrs, shapes = g.ops, g.args, g.attrs, g.shapes
        position = {n: p for p, n in enumerate(region)}
        where = {a: k for k, a in enumerate(outside)}
        masks: list[str | None] = [None] * len(outside)
        steps = []
        described = []
        battr_names: list[str] = []
        with_battrs = []
        for p, n in enumerate(region):
            op = ops[n]
            node_args = args[n]
            mask = op.mask(len(node_args))
            refs = []
            for slot, a in enumerate(node_args):
                q = position.get(a)
                if q is not None:
                    refs.append(-1 - q)
                    continue
                k = where[a]
                if masks[k] is None:
                    masks[k] = mask[slot]
                elif masks[k] != mask[slot]:
                    return None  # one argument both shared and stacked: left unfused
                refs.append(k)
            bnames = []
            if op.batched_attrs:
                with_battrs.append(p)
                for name in op.batched_attrs:
                    bkey = f"b{len(battr_names)}"
                    battr_names.append(bkey)
                    bnames.append((name, bkey))
            steps.append((op, dict(attrs[n]), tuple(refs), tuple(bnames)))
            described.append((op, attrs[n], tuple(refs)))
        key = (tuple(described), tuple(masks), tuple([shapes[a] for a in outside]))
        op = fused_op(key, steps, tuple(masks), tuple(battr_names), shapes[region[-1]])
        sig = g._intern(("fused", structure))
        return op, sig, tuple(with_battrs)


__all__ = ["ABSORBED", "Fuser", "fusible", "STACK"]
