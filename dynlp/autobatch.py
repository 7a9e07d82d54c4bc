"""The autobatching engine: schedules a graph's pending nodes into batches of equal signature and
runs each batch as one call of its op's own rules, forward and (in reverse) backward.

Knows no op by name: it reads the batching mask, batched attributes, ragged rules and cost of
the op table.
After Neubig, Goldberg and Dyer (2017), "On-the-fly Operation Batching in Dynamic Computation
Graphs". Must not import params or trainers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from itertools import repeat
from operator import is_not
from typing import Any, Iterable

import numpy as np

from .fusion import ABSORBED, Fuser, inside as _inside
from .graph import GraphError
from .ops import SHARED, STACK, OuterProduct, Parts, SparseRows

STRATEGIES = ("agenda", "depth", "late")
DEFAULT_STRATEGY = "late"
# A computed node's place is one int, (batch << _SHIFT) | row: -1 pending, -2 being scheduled.
_SHIFT = 32
_ROW = (1 << _SHIFT) - 1
_NO_ATTRS: dict = {}  # the attributes of a batch that has none (shared; never written)
# nodes of one length that run as a batch of their own rather than padded with other lengths
# (a padded batch copies its arguments node by node; a batch of one shape gathers them at once)
PAD_ALONE = 16
# padded arguments kept for reuse (`Engine._pad_group`): enough for the few buckets of a step
PADDED_ARGS_KEPT = 16
# masks of padded buckets kept for reuse (`Engine._inside`): a step's buckets, a few per step
MASKS_KEPT = 256
# rows up to which `_scatter_add` checks for repeated rows in a set, not by sorting
SCATTER_SET_ROWS = 64
# what the late scheduler reads of an op (`Engine._kind`)
_CHEAP, _COSTLY, _UNBATCHABLE = 0, 1, 2


def _scatter_add(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """target[rows] += values, rows possibly repeated (checked here, in C, only in backward:
    a sort, several times faster than np.unique at these sizes). Repeated rows (a parser's
    root vector in many sentences' features) are summed first, by sort and reduce, which is
    about twice as fast as np.add.at. A few rows are checked in a set instead (a list and a
    set of up to SCATTER_SET_ROWS cost about a third of the sort and compare)."""
    if len(rows) <= SCATTER_SET_ROWS and len(set(rows.tolist())) == len(rows):
        _add_rows(target, rows, values)
        return
    ordered = np.sort(rows)
    repeated = ordered[1:] == ordered[:-1]
    if not repeated.any():  # (past SCATTER_SET_ROWS: no row repeated)
        _add_rows(target, rows, values)
        return
    order = np.argsort(rows, kind="stable")
    starts = np.flatnonzero(np.concatenate(([True], ~repeated)))
    target[ordered[starts]] += np.add.reduceat(values[order], starts, axis=0)


def _add_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """target[rows] += values, rows distinct: what that statement does (read the rows, add,
    write them back), the rows read by take (faster than a fancy index)."""
    x = target.take(rows, axis=0)
    x += values
    target[rows] = x


def _stacked(chunks: list, side: str) -> np.ndarray:
    """The `side` operands of OuterProduct chunks stacked along their batch axis, (sum of B,
    k). Cells hand over transposed views of gate-major (k, B) arrays: those are joined along
    their rows, each piece copied row by row (contiguous runs of B), and the result is the
    transpose of that join; a row-by-row join of the views would read each piece by column.
    (Parts that are all C contiguous, rows of one node (1, k) among them, are joined as rows:
    np.concatenate lays them out in C order, and the product's bits follow the layout.)"""
    parts = [getattr(c, side) for c in chunks]
    if all(part.T.flags.c_contiguous for part in parts) and not all(
            part.flags.c_contiguous for part in parts):
        return np.concatenate([part.T for part in parts], axis=1).T
    return np.concatenate(parts)


def _first_pending(loc: list[int], low: int, size: int) -> int:
    """The first pending node (-1) from `low` on, else size: found by list.index, in C (a loop
    in Python costs about 0.1 us a node). (Between forward passes no node is being scheduled,
    -2: those that `_pending` marks run, or are marked pending again on an error.)"""
    try:
        return loc.index(-1, low, size)
    except ValueError:
        return size


class Batch:
    """One executed group: the op, its nodes, gathered inputs and how they were gathered."""

    __slots__ = ("op", "nodes", "xs", "plans", "attrs", "mask", "vjp")

    def __init__(self, op, nodes, xs, plans, attrs, mask, vjp) -> None:
        self.op = op
        self.nodes = nodes
        self.xs = xs
        self.plans = plans
        self.attrs = attrs  # static and batched attributes, and the residual if the op keeps one
        self.mask = mask
        self.vjp = vjp  # vjp(g, out, *xs, **attrs) -> one cotangent per entry of xs


class PaddedBatch(Batch):
    """A batch of nodes whose shapes differ along the op's padded axes (`Op.pad`): each node's
    value is its own entry of `bufs`, a view of the padded output cut back to its shape. `out`
    is the padded output, `lengths[i]` node i's length along `axis`, `first` the first entry;
    every entry of `batches` it made holds it (its backward runs at the last)."""

    __slots__ = ("out", "lengths", "first", "axis", "edge", "grad")

    def __init__(self, op, nodes, xs, plans, attrs, mask, vjp, out, lengths, first, axis,
                 edge) -> None:
        super().__init__(op, nodes, xs, plans, attrs, mask, vjp)
        self.out = out
        self.lengths = lengths
        self.first = first
        self.axis = axis  # the padded axis of out (after the batch axis)
        self.edge = edge  # out's padding repeats each node's last entry (as "edge" padding)
        self.grad = None  # the last backward's gradient of out, zero in the padding

    def part(self, i: int) -> tuple:
        """The index of node i's part of `out`."""
        return (i,) + (slice(None),) * self.axis + (slice(0, self.lengths[i]),)


class Engine:
    """Evaluates one graph. strategy: True (the default), False (one node per call) or a name."""

    def __init__(self, graph: Any, strategy: bool | str = True) -> None:
        if strategy is True:
            strategy = DEFAULT_STRATEGY
        if strategy is not False and strategy not in STRATEGIES:
            raise ValueError(f"autobatch must be True, False or one of {STRATEGIES}, "
                             f"not {strategy!r}")
        self.g = graph
        self.strategy = strategy or None
        self.fuser = Fuser(graph) if getattr(graph, "fuse", False) == "regions" else None
        self.bufs: list[np.ndarray] = []        # one output array per batch (leaves too)
        self.batches: list[Batch | None] = []   # None for a leaf
        self.grads: list[np.ndarray | None] | None = None
        self.hit: set[int] = set()  # the batches the last backward reached
        self.gathered: set[int] = set()  # the batches that multi-source gathers read
        self.padded: dict[int, range] = {}  # a padded batch's last entry -> its entries
        # the last padded copies of arguments: (places, fill, axis, width) -> (the array (read
        # only), place -> its row), the oldest forgotten past PADDED_ARGS_KEPT
        self._padded_args: dict[tuple, tuple] = {}
        # (lengths, width, axis, ndim) -> `fusion.inside`'s mask (`_inside`), the oldest
        # forgotten past MASKS_KEPT
        self._masks: dict[tuple, np.ndarray] = {}
        self._rules: dict[tuple, tuple] = {}  # (op, number of arguments) -> `_rule`
        self._kinds: dict[Any, int] = {}  # op -> `_kind`
        self._by_op: dict[Any, tuple] = {}  # op -> (number of arguments,) + its last `_rule`
        self.low = 0    # no node below this one is pending
        self.built = 0  # nodes in the graph at the last forward
        self.counts = {"forward_batches": 0, "forward_nodes": 0, "backward_batches": 0}
        self.times = {"schedule": 0.0, "forward_numpy": 0.0, "backward_total": 0.0,
                      "backward_numpy": 0.0, "forward_total": 0.0}

    # -- leaves ----------------------------------------------------------------------------------
    def leaf(self, node: int, value: np.ndarray) -> None:
        self.g.loc[node] = len(self.bufs) << _SHIFT
        self.bufs.append(value[None])
        self.batches.append(None)

    def value(self, node: int) -> np.ndarray:
        if self.g.before:
            self.g._run_before()
        loc = self.g.loc
        if loc[node] == ABSORBED:
            root, p = self.fuser.absorbed[node]
            self.value(root)
            here = loc[root]
            return self.batches[here >> _SHIFT].attrs["residual"][0][p][here & _ROW]
        if loc[node] < 0:
            self.forward([node])
        return self.bufs[loc[node] >> _SHIFT][loc[node] & _ROW]

    # -- scheduling ------------------------------------------------------------------------------
    def _pending(self, targets: list[int]) -> list[int]:
        """The uncomputed ancestors of targets (and targets), in creation order; they are marked
        -2 (being scheduled) until they run."""
        loc, args = self.g.loc, self.g.args
        stack = []
        for t in targets:
            if loc[t] == -1:
                loc[t] = -2
                stack.append(t)
        out = []
        pop, push, emit = stack.pop, stack.append, out.append
        while stack:
            n = pop()
            emit(n)
            for a in args[n]:
                la = loc[a]
                if la == -1 or la == ABSORBED:  # (an absorbed node is computed again)
                    loc[a] = -2
                    push(a)
        out.sort()
        return out

    def ancestors(self, target: int) -> list[int]:
        """All ancestors of target (and itself), in creation order."""
        args = self.g.args
        stack, seen = [target], {target}
        while stack:
            for a in args[stack.pop()]:
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
        return sorted(seen)

    def forward(self, targets: list[int], search: bool = False) -> None:
        """Compute targets and what they need; `search`: find that by walking the graph."""
        if self.g.before:
            self.g._run_before()
        start = time.perf_counter()
        numpy_before = self.times["forward_numpy"]
        loc = self.g.loc
        self.g._depths.clear()
        if self.fuser is not None:
            search = self.fuser.run(targets) or search
            absorbed = self.fuser.absorbed
            targets = [absorbed[t][0] if loc[t] == ABSORBED else t for t in targets]
        size = len(loc)
        low = self.low = _first_pending(loc, self.low, size)
        fresh, self.built = size - self.built, size
        computed = all(loc[t] >= 0 for t in targets)  # (backward's forward of its loss)
        if computed:
            pending = []
        elif (self.strategy == "late" and targets and not search
                and max(targets) - low <= 2 * fresh):
            # most of what might be pending was built since the last forward (one forward of
            # a whole minibatch): sweep that range instead of searching the graph
            self._late(range(max(targets), low - 1, -1), targets)
            pending = []
        else:
            pending = self._pending(targets)
        try:
            if computed:
                pass
            elif self.strategy is None:
                self._run_each(pending)
            elif self.strategy == "late":
                self._late(reversed(pending), targets)
            elif self.strategy == "depth":
                self._by_depth(pending)
            elif pending:
                self._agenda(pending)
        except BaseException:
            loc = self.g.loc
            for n in pending:
                if loc[n] == -2:
                    loc[n] = -1
            raise
        total = time.perf_counter() - start
        self.times["forward_total"] += total
        self.times["schedule"] += total - (self.times["forward_numpy"] - numpy_before)

    def revive(self, node: int) -> None:
        """Compute an absorbed node by its own op (backward from it needs its own batch)."""
        loc = self.g.loc
        if loc[node] == ABSORBED:
            loc[node] = -1
            self.forward([node], search=True)

    def _late(self, candidates: Iterable[int], targets: list[int]) -> None:
        """Run each node as late as its consumers allow, and at once the nodes ready now (inputs
        to the first steps) and the early ones (`_early`: cheap ops, and side chains that batch
        better by depth, over what is computed or early itself): group by (level, signature)
        and run the levels in order.

        One pass over the candidates, newest first (a range that holds every pending ancestor
        of the targets, or those ancestors), gives each needed node its height (1 + the longest
        path to a target); its level is -height, or the first level when all its inputs are
        computed already. Early nodes get their depth among early nodes, in levels before all
        others. Nodes of one level never depend on each other.
        """
        g = self.g
        loc, args, sigs = g.loc, g.args, g.sigs
        height = [0] * (max(targets) + 1 if targets else 0)  # 0: not needed now
        for t in targets:
            if loc[t] < 0:
                height[t] = 1
        groups: defaultdict[int, list[int]] = defaultdict(list)  # level << 32 | sig -> nodes
        first = -(1 << 30) << _SHIFT
        needed = []  # newest first
        for n in candidates:
            h = height[n]
            if not h or loc[n] >= 0:  # (computed: its inputs are not needed through it)
                continue
            up = h + 1
            for a in args[n]:  # (computed inputs too: cheaper than reading where each is)
                if height[a] < up:
                    height[a] = up
            needed.append(n)
        could, refused = self._early(needed, height)
        # Early nodes run first, level by level from what is computed; the others as late as
        # their consumers allow. A costly node whose inputs are all computed (depth 0 among
        # what could run early) runs first too. (Oldest first: each group comes out sorted.)
        # A node is early when it could be, is cheap or of a chosen signature, and its pending
        # inputs are early: its depth among early nodes is then its depth among those that
        # could be (the same inputs all the way up).
        # (`_early` tells what of the op matters here: a costly signature not chosen is
        # refused, and a node that could not run early is -2 when its op is costly and
        # unbatchable. A node that could run early at depth 0 has no pending input, so no
        # late one; one of a chosen signature is batchable.)
        late = bytearray(len(height))  # 1: needed and not early (inputs are needed or computed)
        for n in reversed(needed):
            s = sigs[n]
            d = could[n]
            if d >= 0:
                if s not in refused:  # (cheap, or of a chosen signature)
                    for a in args[n]:
                        if late[a]:
                            break
                    else:
                        groups[first + (d << _SHIFT) + s].append(n)
                        continue
                elif d == 0:  # (costly, its inputs all computed)
                    late[n] = 1
                    groups[first + s].append(n)
                    continue
            elif d == -2 and all(loc[a] >= 0 for a in args[n]):
                late[n] = 1
                groups[first + s].append(n)
                continue
            late[n] = 1
            groups[(-height[n] << _SHIFT) + s].append(n)
        self._run_groups([groups[key] for key in sorted(groups)])

    def _run_groups(self, groups: list[list[int]]) -> None:
        """Run the groups in order; groups of one node in a row run in one `_run_each` call."""
        run, each = self._run, self._run_each
        alone: list[int] = []
        for nodes in groups:
            if len(nodes) == 1:
                alone.append(nodes[0])
                continue
            if alone:
                each(alone)
                alone = []
            run(nodes)
        if alone:
            each(alone)

    def _kind(self, op: Any) -> int:
        """_COSTLY (op cost above 1) | _UNBATCHABLE (no batching mask), or _CHEAP (0)."""
        kind = self._kinds[op] = (_COSTLY if op.cost != 1 else _CHEAP) | (
            _UNBATCHABLE if op.batch is None else 0)
        return kind

    def _early(self, needed: list[int], height: list[int]) -> tuple[list, set]:
        """Of the needed nodes (newest first), those that could run before the late levels (all
        that are batchable, with inputs computed or that could run early themselves), with their
        depth among them (else -1, or -2 for a costly op without batching), and the costly
        signatures that could but are not chosen to run early (refused). Those that do (`_late`)
        are nodes whose inputs are computed or early themselves, of cheap ops (op cost 1:
        concatenations, masks, sums) and of the costly signatures whose nodes could all run early
        and take at most 4/5 as many levels by depth as by height (so they batch in fewer, larger
        batches early than late). A parser's word and tag embeddings concatenated are one batch,
        not one per LSTM step; a tagger's character LSTMs, whose words sit at every height of the
        sentence's BiLSTM, run aligned by character; the first level of a stacked BiLSTM, whose
        steps feed the second level's two directions at heights that differ by sentence length,
        runs aligned by position."""
        g = self.g
        args, sigs, ops = g.args, g.sigs, g.ops
        kinds = self._kinds
        # what could run early: depths by signature, against heights, for costly signatures
        # -1: not; None: not needed (so computed, when it is an input of a needed node)
        could: list = [None] * len(height)
        depths: dict[int, set] = {}
        heights: dict[int, set] = {}
        barred = set()  # costly signatures with a node that cannot run early
        for n in reversed(needed):
            d = 0
            for a in args[n]:
                da = could[a]
                if da is not None:
                    if da < 0:
                        d = -1
                        break
                    if da >= d:
                        d = da + 1
            op = ops[n]
            kind = kinds.get(op)
            if kind is None:
                kind = self._kind(op)
            if d >= 0 and kind < _UNBATCHABLE:
                could[n] = d
                if kind == _CHEAP:
                    continue
                s = sigs[n]
                if s in depths:
                    depths[s].add(d)
                    heights[s].add(height[n])
                else:
                    depths[s], heights[s] = {d}, {height[n]}
            else:
                could[n] = -2 if kind == _COSTLY | _UNBATCHABLE else -1
                if kind & _COSTLY:
                    barred.add(sigs[n])
        refused = {s for s, ds in depths.items()
                   if s in barred or 5 * len(ds) > 4 * len(heights[s])}
        return could, refused

    def _depths(self, pending: list[int]) -> dict[int, int]:
        """Each pending node's depth: the longest path to it from a computed node."""
        args = self.g.args
        depth: dict[int, int] = {}
        get = depth.get
        for n in pending:
            d = 0
            for a in args[n]:
                da = get(a, 0)
                if da > d:
                    d = da
            depth[n] = d + 1
        return depth

    def _by_depth(self, pending: list[int]) -> None:
        depth, sigs = self._depths(pending), self.g.sigs
        groups: dict[tuple[int, int], list[int]] = {}
        for n in pending:
            key = (depth[n], sigs[n])
            group = groups.get(key)
            if group is None:
                groups[key] = [n]
            else:
                group.append(n)
        self._run_groups([groups[key] for key in sorted(groups)])

    def _agenda(self, pending: list[int]) -> None:
        """DyNet's agenda: run the ready signature group of lowest mean depth, until nothing is
        pending; unbatchable nodes first, and cheap groups (op cost 1) before costly ones (matrix
        products), so that these wait and grow."""
        g = self.g
        loc, args, sigs, ops = g.loc, g.args, g.sigs, g.ops
        deps: dict[int, int] = {}
        consumers: dict[int, list[int]] = {}
        roots = []
        for n in pending:
            count = 0
            for a in args[n]:
                if loc[a] < 0:
                    count += 1
                    c = consumers.get(a)
                    if c is None:
                        consumers[a] = [n]
                    else:
                        c.append(n)
            if count:
                deps[n] = count
            else:
                roots.append(n)
        prio = self._depths(pending)
        ready: dict[int, list[int]] = {}
        total: dict[int, float] = {}

        def make_ready(n: int) -> None:
            s = sigs[n]
            group = ready.get(s)
            op = ops[n]
            p = -1e9 if op.batch is None else prio[n] + (1e6 if op.cost > 1 else 0.0)
            if group is None:
                ready[s] = [n]
                total[s] = p
            else:
                group.append(n)
                total[s] += p

        for n in roots:
            make_ready(n)
        run = self._run
        while ready:
            best = min(ready, key=lambda s: total[s] / len(ready[s]))
            nodes = ready.pop(best)
            del total[best]
            run(nodes)
            for n in nodes:
                for c in consumers.get(n, ()):
                    left = deps[c] - 1
                    deps[c] = left
                    if not left:
                        make_ready(c)

    # -- execution -------------------------------------------------------------------------------
    def _gather(self, places: list[int]) -> tuple[np.ndarray, tuple]:
        """Stack the values of nodes, given by their places, along a new leading axis, without
        copying when possible."""
        bufs = self.bufs
        count = len(places)
        if count == 1:
            here = places[0]
            r = here & _ROW
            return bufs[here >> _SHIFT][r:r + 1], here
        lo, hi = min(places), max(places)
        b0 = lo >> _SHIFT
        if hi >> _SHIFT == b0:
            buf = bufs[b0]
            r0 = lo & _ROW
            if hi - lo == count - 1 and places[0] == lo and places == list(range(lo, hi + 1)):
                return buf[r0:r0 + count], lo
            if lo == hi:
                return np.broadcast_to(buf[r0], (count,) + buf.shape[1:]), ("same", b0, r0)
            idx = np.array(places, dtype=np.int64) - (b0 << _SHIFT)
            return buf.take(idx, axis=0), ("rows", b0, idx)  # (take: buf[idx], faster)
        # several source batches: up to a few hundred rows, or a few rows of large batches (a
        # parser's features), the rows one by one (about 0.2 us a row) or, when there are many
        # a source, by source; else one copy of the batches, then one take of the rows
        where = np.array(places, dtype=np.int64)
        sources = sorted({p >> _SHIFT for p in places})
        plan = ("multi", sources, where)
        self.gathered.update(sources)
        if count <= 128 or count * 4 < sum([len(bufs[b]) for b in sources]):
            first = bufs[sources[0]]
            out = np.empty((count,) + first.shape[1:], first.dtype)
            if count < 20 * len(sources):
                # (each row copied into place: cheaper than np.array of a list of rows, which
                # reads each row as a sequence)
                for i, p in enumerate(places):
                    out[i] = bufs[p >> _SHIFT][p & _ROW]
                return out, plan
            # (20 rows a source or more: one fancy index a source, not a view a row)
            batch_of, rows = where >> _SHIFT, where & _ROW
            for b in sources:
                chosen = batch_of == b
                out[chosen] = bufs[b].take(rows[chosen], axis=0)
            return out, plan
        batch_of = where >> _SHIFT
        found = np.array(sources, dtype=np.int64)
        offsets = np.zeros(len(sources), dtype=np.int64)
        np.cumsum([len(bufs[b]) for b in sources[:-1]], out=offsets[1:])
        idx = offsets[np.searchsorted(found, batch_of)] + (where & _ROW)
        return np.concatenate([bufs[b] for b in sources]).take(idx, axis=0), plan

    def _run(self, nodes: list[int]) -> None:
        g = self.g
        n0 = nodes[0]
        op = g.ops[n0]
        if op.ragged is not None:
            self._run_ragged(op, nodes)
            return
        if len(nodes) == 1:
            self._run_each(nodes)
            return
        if op in g.mixed_ops and self._lengths_differ(op, nodes):
            self._run_padded(op, nodes)
            return
        node_args = g.args[n0]
        mask = self._mask(op, len(node_args))
        loc, bufs = g.loc, self.bufs
        xs = []
        plans = []
        place = loc.__getitem__
        # the nodes' arguments, position by position (one transposition, not a lookup of each
        # node's arguments per position)
        columns = zip(*map(g.args.__getitem__, nodes))
        for m, a, column in zip(mask, node_args, columns):
            if m == SHARED:
                xs.append(bufs[loc[a] >> _SHIFT][loc[a] & _ROW])
                plans.append(a)
            else:
                x, plan = self._gather(list(map(place, column)))
                xs.append(x)
                plans.append(plan)
        out, attrs = self._call(op, nodes, xs)
        self._store(out, Batch(op, nodes, xs, plans, attrs, mask, op.vjp))

    def _lengths_differ(self, op: Any, nodes: list[int]) -> bool:
        """Whether nodes of one signature of an op that pads differ in length."""
        shapes, k = self.g.shapes, op.pad_probe
        if k is None:
            first = shapes[nodes[0]]
            return any(shapes[n] != first for n in nodes)
        args = self.g.args
        first = shapes[args[nodes[0]][k]]
        return any(shapes[args[n][k]] != first for n in nodes)

    def _run_padded(self, op: Any, nodes: list[int]) -> None:
        """Nodes of an op that pads whose lengths differ: the nodes of a length that has
        PAD_ALONE of them or more run as a batch of their own; of the others, those whose
        lengths fall in one power-of-two range (1, 2-3, 4-7, ...) run as one batch padded to
        the longest (so that padding is at most half of it)."""
        g = self.g
        shapes, all_args = g.shapes, g.args
        n0 = nodes[0]
        rule = op.pad(tuple(shapes[a] for a in all_args[n0]), shapes[n0])
        k = op.pad_probe
        axis = rule[1] if k is None else rule[0][k]
        by_length: defaultdict[int, list[int]] = defaultdict(list)
        if k is None:
            for n in nodes:
                by_length[shapes[n][axis]].append(n)
        else:
            for n in nodes:
                by_length[shapes[all_args[n][k]][axis]].append(n)
        buckets: defaultdict[int, list[int]] = defaultdict(list)
        for length, members in sorted(by_length.items()):
            if len(members) >= PAD_ALONE:
                self._run(members)
            else:
                buckets[length.bit_length()].extend(members)
        for _, members in sorted(buckets.items()):
            if len(members) == 1:
                self._run_each(members)
            elif self._lengths_differ(op, members):
                self._pad_group(op, members, rule)
            else:
                self._run(members)

    def _pad_group(self, op: Any, nodes: list[int], rule: tuple) -> None:
        """One padded batch: each padded argument brought to the longest length (copied node
        by node, or read from the padded batch whose nodes it is), one forward call, and each
        node's entry cut back from the padded output (or, when the op contracts the lengths,
        one row per node as in any batch)."""
        g = self.g
        shapes, all_args, loc, bufs = g.shapes, g.args, g.loc, self.bufs
        axes, out_axis, fills = rule
        n0 = nodes[0]
        mask = self._mask(op, len(all_args[n0]))
        count = len(nodes)
        xs: list = []
        plans: list = []
        # the nodes' arguments, position by position (one transposition)
        columns = zip(*map(all_args.__getitem__, nodes))
        for m, axis, fill, column in zip(mask, axes, fills, columns):
            if m == SHARED:
                here = loc[column[0]]
                xs.append(bufs[here >> _SHIFT][here & _ROW])
                plans.append(column[0])
                continue
            places = [loc[a] for a in column]
            if axis is None:
                x, plan = self._gather(places)
                xs.append(x)
                plans.append(plan)
                continue
            lengths = [shapes[a][axis] for a in column]
            width = max(lengths)
            row = list(shapes[column[0]])
            row[axis] = width
            lead = (slice(None),) * axis
            source, rows = self._padded_source(places, axis)
            # (with what `_padded_source` found, for backward: batches never change)
            plans.append(("padded", places, lengths, axis, source, rows))
            if source is not None and (fill != "edge" or source.edge):
                # nodes of one padded batch: its padded output's rows (all of them, in order:
                # the output itself), cut to this width, refilled if need be
                x = source.out if rows is None else source.out[rows]
                if x.shape[axis + 1] != width:
                    x = x[(slice(None),) + lead + (slice(0, width),)]
                if fill != "edge":
                    x = np.where(self._inside(lengths, width, axis, len(row) + 1), x,
                                 0.0 if fill == "zero" else -np.inf)
                xs.append(x)
                continue
            # (the same nodes padded alike again, an encoder's states read at every decoder
            # step: the copy made last time, which nothing writes to)
            key = (tuple(places), fill, axis, width)
            kept = self._padded_args.get(key)
            if kept is not None:
                x = kept[0]
            else:
                if fill == "edge":
                    x = np.empty((count, *row), g.dtype)
                else:
                    x = np.full((count, *row), 0.0 if fill == "zero" else -np.inf, g.dtype)
                # (the rows that a kept copy holds taken from it, the others copied one by one)
                for i in self._padded_rows(x, places, fill, axis, width):
                    here, length = places[i], lengths[i]
                    value = bufs[here >> _SHIFT][here & _ROW]
                    x[(i,) + lead + (slice(0, length),)] = value
                    if fill == "edge" and length < width:  # (the last entry, repeated)
                        x[(i,) + lead + (slice(length, None),)] = \
                            value[lead + (slice(length - 1, length),)]
            if kept is None:
                if len(self._padded_args) >= PADDED_ARGS_KEPT:
                    del self._padded_args[next(iter(self._padded_args))]
                self._padded_args[key] = (x, dict(zip(places, range(count))))
            xs.append(x)
        if op.takes_lengths:  # (each node's length, along the axis the op pads)
            k = op.pad_probe
            lengths = ([shapes[n][out_axis] for n in nodes] if k is None else
                       [shapes[all_args[n][k]][axes[k]] for n in nodes])
            out, attrs = self._call(op, nodes, xs, np.array(lengths))
        else:
            out, attrs = self._call(op, nodes, xs)
        if out_axis is None:  # (the lengths were contracted: one output shape)
            self._store(out, Batch(op, nodes, xs, plans, attrs, mask, op.vjp))
            return
        first = len(bufs)
        lengths = [shapes[n][out_axis] for n in nodes]
        if out_axis == out.ndim - 2:  # (the last axis)
            views = [out[i:i + 1, ..., :length] for i, length in enumerate(lengths)]
        elif out_axis == 0:  # (the first: an index written out, not built)
            views = [out[i:i + 1, :length] for i, length in enumerate(lengths)]
        else:
            lead = (slice(None),) * out_axis
            views = [out[(slice(i, i + 1),) + lead + (slice(0, length),)]
                     for i, length in enumerate(lengths)]
        here, step = first << _SHIFT, 1 << _SHIFT
        for n in nodes:
            loc[n] = here
            here += step
        bufs.extend(views)
        edge = all(f is None or f == "edge" for f in fills)  # (its columns: independent)
        batch = PaddedBatch(op, nodes, xs, plans, attrs, mask, op.vjp, out, lengths, first,
                            out_axis, edge)
        self.batches.extend([batch] * count)
        self.padded[len(bufs) - 1] = range(first, len(bufs))
        self.counts["forward_batches"] += 1
        self.counts["forward_nodes"] += count

    def _inside(self, lengths: list[int], width: int, axis: int, ndim: int) -> np.ndarray:
        """`fusion.inside`, kept for reuse (read only): the nodes of one padded bucket pass
        the same lengths to each op of a chain, forward and backward."""
        key = (tuple(lengths), width, axis, ndim)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= MASKS_KEPT:
                del self._masks[next(iter(self._masks))]
            mask = self._masks[key] = _inside(lengths, width, axis, ndim)
            mask.flags.writeable = False
        return mask

    def _padded_rows(self, x: np.ndarray, places: list[int], fill: str, axis: int, width: int
                     ) -> Iterable[int]:
        """Fill x's rows with the nodes at `places` that the newest kept copy padded alike
        (fill, axis, width) holds, in one take (at a decoder's next step, the sentences of the
        step before and maybe one more: not a copy a node); the rows left to copy. (The same
        rows: the same numbers, padding included.)"""
        for (_, f, a, w), (kept, index) in reversed(self._padded_args.items()):
            if f == fill and a == axis and w == width:
                rows = list(map(index.get, places))
                if rows.count(None) == len(rows):
                    continue
                if None not in rows:
                    kept.take(rows, axis=0, out=x)
                    return ()
                found = [i for i, r in enumerate(rows) if r is not None]
                x[found] = kept.take([rows[i] for i in found], axis=0)
                return [i for i, r in enumerate(rows) if r is None]
        return range(len(places))

    def _padded_source(self, places: list[int], axis: int) -> tuple:
        """(the padded batch, padded along `axis`, whose nodes are at `places`, their rows in
        its output or None when they are all its nodes in order), or (None, None) when they
        are not all nodes of one padded batch."""
        b = places[0] >> _SHIFT
        source = self.batches[b]
        if type(source) is not PaddedBatch or source.axis != axis:
            return None, None
        first, count = source.first, len(source.nodes)
        step = 1 << _SHIFT
        if b == first and len(places) == count and \
                places == list(range(places[0], places[0] + count * step, step)):
            return source, None
        rows = (np.array(places) >> _SHIFT) - first
        if rows.min() < 0 or rows.max() >= count:
            return None, None
        return source, rows

    def _call(self, op: Any, nodes: list[int], xs: list, lengths: Any = None
              ) -> tuple[np.ndarray, dict]:
        """The op's forward over a batch's gathered arguments: (output, the attributes, static
        and batched, with the residual if the op keeps one, and the nodes' lengths if given)."""
        g = self.g
        static = g.attrs[nodes[0]]
        attrs = dict(static) if static else {}
        if lengths is not None:
            attrs["lengths"] = lengths
        if op.batched_attrs:
            battrs = g.battrs
            for j, name in enumerate(op.batched_attrs):
                attrs[name] = np.array([battrs[n][j] for n in nodes])
        start = time.perf_counter()
        out = op.forward(*xs, **attrs)
        if op.residual:
            out, attrs["residual"] = out
        self.times["forward_numpy"] += time.perf_counter() - start
        return out, attrs

    def _run_each(self, pending: list[int]) -> None:
        """Each node on its own (autobatching off, or batches of one node): an argument is read
        as it is stored, the whole array when it holds one row (always, without autobatching),
        else a view of its row; no gather. A stacked argument's plan is its place (an int)."""
        g = self.g
        ops, all_args, attrs_of, battrs_of = g.ops, g.args, g.attrs, g.battrs
        loc, bufs, batches = g.loc, self.bufs, self.batches
        by_op = self._by_op
        push_buf, push_batch = bufs.append, batches.append
        clock = time.perf_counter
        numpy_time = 0.0
        ragged = 0
        for n in pending:
            op = ops[n]
            args = all_args[n]
            nargs = len(args)
            rule = by_op.get(op)
            if rule is None or rule[0] != nargs:
                rule = by_op[op] = (nargs,) + (self._rules.get((op, nargs))
                                               or self._rule(op, nargs))
            _, mask, shared, forward, vjp = rule
            if forward is None:  # ragged (`_store` counts it)
                self._run_ragged(op, [n])
                ragged += 1
                continue
            if shared:
                xs = []
                plans = []
                for a, m in zip(args, mask):
                    here = loc[a]
                    buf = bufs[here >> _SHIFT]
                    if m == SHARED:
                        xs.append(buf[here & _ROW])
                        plans.append(a)
                    elif len(buf) == 1:
                        xs.append(buf)
                        plans.append(here)
                    else:
                        r = here & _ROW
                        xs.append(buf[r:r + 1])
                        plans.append(here)
            elif nargs == 1:  # (every argument stacked: the plans are the places)
                here = loc[args[0]]
                plans = (here,)
                buf = bufs[here >> _SHIFT]
                if len(buf) != 1:
                    r = here & _ROW
                    buf = buf[r:r + 1]
                xs = (buf,)
            else:
                plans = [loc[a] for a in args]
                xs = []
                for here in plans:
                    buf = bufs[here >> _SHIFT]
                    if len(buf) == 1:
                        xs.append(buf)
                    else:
                        r = here & _ROW
                        xs.append(buf[r:r + 1])
            static = attrs_of[n]
            if op.batched_attrs:
                attrs = dict(static) if static else {}
                for j, name in enumerate(op.batched_attrs):
                    attrs[name] = np.array([battrs_of[n][j]])
            elif static or op.residual:
                # (a dict of its own per node: attributes equal as tuples may still differ,
                # -0.0 against 0.0, 1 against 1.0)
                attrs = dict(static)
            else:
                attrs = _NO_ATTRS
            start = clock()
            out = forward(*xs, **attrs)
            numpy_time += clock() - start
            if op.residual:
                out, attrs["residual"] = out
            loc[n] = len(bufs) << _SHIFT
            push_buf(out)
            push_batch(Batch(op, (n,), xs, plans, attrs, mask, vjp))
        self.counts["forward_batches"] += len(pending) - ragged
        self.counts["forward_nodes"] += len(pending) - ragged
        self.times["forward_numpy"] += numpy_time

    def _mask(self, op: Any, nargs: int) -> tuple[str, ...]:
        """The batching mask of op with nargs arguments (`_rule`'s)."""
        rule = self._rules.get((op, nargs))
        return (rule or self._rule(op, nargs))[0]

    def _rule(self, op: Any, nargs: int) -> tuple:
        """(mask, whether any argument is shared, forward, vjp) of op with nargs arguments, the
        rules None for a ragged op; cached per engine."""
        mask = op.mask(nargs) or (STACK,) * nargs
        rule = (mask, SHARED in mask, None if op.ragged is not None else op.forward, op.vjp)
        self._rules[(op, nargs)] = rule
        return rule

    def _store(self, out: np.ndarray, batch: Batch) -> None:
        """Keep a batch and its output; its nodes' values are the output's rows, in order."""
        loc, here = self.g.loc, len(self.bufs) << _SHIFT
        self.bufs.append(out)
        self.batches.append(batch)
        for n in batch.nodes:
            loc[n] = here
            here += 1
        self.counts["forward_batches"] += 1
        self.counts["forward_nodes"] += len(batch.nodes)

    def _run_ragged(self, op: Any, nodes: list[int]) -> None:
        """All the stacked arguments of all the nodes in one gather, and one call of the ragged
        rules (with the shared leading arguments, if the op has any, and the batched
        attributes flat)."""
        g = self.g
        all_args = g.args
        loc, bufs = g.loc, self.bufs
        k = op.ragged_shared
        x, plan = self._gather([loc[a] for n in nodes for a in all_args[n][k:]])
        attrs = dict(g.attrs[nodes[0]])
        attrs["counts"] = np.array([len(all_args[n]) - k for n in nodes])
        if op.batched_attrs:
            battrs = g.battrs
            for j, name in enumerate(op.batched_attrs):
                attrs[name] = np.array([v for n in nodes for v in battrs[n][j]])
        forward, vjp, _ = op.ragged
        shared = all_args[nodes[0]][:k]
        ws = [bufs[loc[a] >> _SHIFT][loc[a] & _ROW] for a in shared]
        start = time.perf_counter()
        out = forward(x, *ws, **attrs)
        self.times["forward_numpy"] += time.perf_counter() - start
        if k:
            self._store(out, Batch(op, nodes, [x] + ws, [plan] + list(shared), attrs,
                                   (STACK,) + (SHARED,) * k, vjp))
        else:
            self._store(out, Batch(op, nodes, [x], [plan], attrs, (STACK,),
                                   lambda g, out, x, **a: (vjp(g, out, x, **a),)))

    # -- reverse mode ----------------------------------------------------------------------------
    def backward(self, loss: int) -> None:
        """Reverse sweep over the executed batches, newest first; deliver parameter gradients."""
        self.revive(loss)
        self.forward([loss])
        start = time.perf_counter()
        g = self.g
        loc, bufs, batches = g.loc, self.bufs, self.batches
        grads: list[np.ndarray | None] = [None] * len(bufs)
        last = loc[loss] >> _SHIFT
        sparse: dict[int, list[SparseRows]] = {}
        # (node, first row, first column, shape of the block) -> products
        products: dict[tuple, list[OuterProduct]] = {}
        numpy_time = 0.0
        # The batches that multi-source gathers read get their gradients as views into one
        # zeroed array per row shape (an arena), so that such a gather's cotangent is one
        # scatter into the arena. `hit`: the batches that received a gradient.
        arenas, offsets, hit = self._arenas(grads, last)
        # batches whose gradient is a cotangent as a rule returned it (the first to reach the
        # whole batch): it may be another batch's gradient, a view or read-only, so it is
        # copied before anything is added to it in place (`grad_of`)
        borrowed: set[int] = set()

        def grad_of(b: int) -> np.ndarray:
            t = grads[b]
            if t is None:
                buf = bufs[b]
                t = grads[b] = np.zeros(buf.shape, buf.dtype)
            elif b in borrowed:
                borrowed.discard(b)
                t = grads[b] = t.astype(bufs[b].dtype)
            hit.add(b)
            return t

        grad_of(last)[loc[loss] & _ROW] = 1.0

        def to_shared(plan: int, ct: Any) -> None:
            """Deliver the cotangent of a shared argument, node `plan`."""
            pb, pr = loc[plan] >> _SHIFT, loc[plan] & _ROW
            if type(ct) is OuterProduct:
                if batches[pb] is None:  # a leaf: multiply once, at the end
                    key = (plan, ct.row, ct.start, ct.left.shape[1], ct.right.shape[1])
                    chunks = products.get(key)
                    if chunks is None:
                        products[key] = [ct]
                    else:
                        chunks.append(ct)
                else:
                    block = ct.left.T @ ct.right
                    grad_of(pb)[pr][ct.row:ct.row + block.shape[0],
                                    ct.start:ct.start + block.shape[1]] += block
            elif isinstance(ct, SparseRows):
                if plan in g.node_params:
                    sparse.setdefault(plan, []).append(ct)
                else:
                    np.add.at(grad_of(pb)[pr], ct.indices, ct.values)
            else:
                grad_of(pb)[pr] += ct

        clock = time.perf_counter
        count = 0
        padded = self.padded
        # padded gradients that padded batches deliver to the padded batch whose nodes, all
        # of them in order, they read: last entry of that batch -> sum
        accumulated: dict[int, np.ndarray] = {}
        for b in padded:
            batches[b].grad = None
        for b in range(last, -1, -1):
            batch = batches[b]
            if batch is None:
                continue
            if padded and b in padded:  # (a padded batch's last entry: its backward)
                grad = self._padded_grad(batch, grads, accumulated.pop(b, None))
                if grad is None:
                    continue
                out = batch.out
            elif b not in hit or type(batch) is PaddedBatch:
                continue
            else:
                grad, out = grads[b], bufs[b]
            t0 = clock()
            cts = batch.vjp(grad, out, *batch.xs, **batch.attrs)
            numpy_time += clock() - t0
            count += 1
            for ct, plan, m in zip(cts, batch.plans, batch.mask):
                if ct is None:
                    continue
                if m == SHARED:
                    # (a loop here, not recursion in to_shared: a closure that calls itself is
                    # a reference cycle, which would keep every gradient alive until the GC)
                    for part in ct.parts if type(ct) is Parts else (ct,):
                        to_shared(plan, part)
                    continue
                if type(plan) is int:  # rows r, r + 1, ... of batch sb, in order
                    sb, r = plan >> _SHIFT, plan & _ROW
                    t = grads[sb]
                    if t is None and r == 0 and type(ct) is np.ndarray:
                        buf = bufs[sb]
                        if ct.shape == buf.shape:
                            # the whole of a source batch, not reached before: the cotangent
                            # is its gradient (no zeros to add it to), borrowed as it is
                            if ct.dtype is buf.dtype:
                                grads[sb] = ct
                                borrowed.add(sb)
                            else:
                                grads[sb] = ct.astype(buf.dtype)
                            hit.add(sb)
                        else:
                            grad_of(sb)[:len(ct)] += ct
                    elif t is None:
                        grad_of(sb)[r:r + len(ct)] += ct
                    else:
                        if sb in borrowed:
                            if r == 0 and type(ct) is np.ndarray and ct.shape == t.shape and \
                                    ct.dtype is t.dtype:
                                grads[sb] = t + ct  # (the sum, a new array: its own)
                                borrowed.discard(sb)
                                continue
                            t = grad_of(sb)
                        if r == 0 and len(ct) == len(t):
                            t += ct
                        else:
                            t[r:r + len(ct)] += ct
                        hit.add(sb)  # (t may be an arena's view, given before any was hit)
                    continue
                kind = plan[0]
                if kind == "padded":
                    _, places, lengths, axis, source, rows = plan
                    if source is not None:
                        # (to the padded batch it read: summed padded, cut there)
                        key = source.first + len(source.nodes) - 1
                        total = accumulated.get(key)
                        if total is None:
                            if rows is None:
                                accumulated[key] = ct.astype(source.out.dtype)
                                continue
                            total = accumulated[key] = np.zeros_like(source.out)
                        if ct.shape[axis + 1] != total.shape[axis + 1]:
                            total = total[(slice(None),) * (axis + 1)
                                          + (slice(0, ct.shape[axis + 1]),)]
                        if rows is None:
                            total += ct
                        else:
                            _scatter_add(total, rows, ct)
                        continue
                    # each node's part, cut back (grad_of inlined: a node's cost)
                    last_axis = axis == ct.ndim - 2
                    lead = (slice(None),) * axis
                    for i, here, length in zip(range(len(places)), places, lengths):
                        sb = here >> _SHIFT
                        t = grads[sb]
                        if t is None or sb in borrowed:
                            t = grad_of(sb)
                        else:
                            hit.add(sb)
                        if last_axis:
                            t[here & _ROW] += ct[i, ..., :length]
                        else:
                            t[here & _ROW] += ct[(i,) + lead + (slice(0, length),)]
                elif kind == "same":
                    grad_of(plan[1])[plan[2]] += ct.sum(axis=0)
                elif kind == "rows":
                    _scatter_add(grad_of(plan[1]), plan[2], ct)
                else:
                    _, sources, where = plan
                    arena, starts = arenas[offsets[sources[0]][0]]
                    _scatter_add(arena, starts[where >> _SHIFT] + (where & _ROW), ct)
                    hit.update(sources)
        self.counts["backward_batches"] += count
        t0 = time.perf_counter()
        for (node, row, col, height, width), chunks in products.items():
            if len(chunks) == 1:
                dense = chunks[0].left.T @ chunks[0].right
            else:
                dense = _stacked(chunks, "left").T @ _stacked(chunks, "right")
            gw = grad_of(loc[node] >> _SHIFT)[loc[node] & _ROW]
            if dense.shape == gw.shape:
                gw += dense
            else:
                gw[row:row + height, col:col + width] += dense
        numpy_time += time.perf_counter() - t0
        self.grads, self.hit = grads, hit
        for node, param in g.node_params.items():
            dense = grads[loc[node] >> _SHIFT]
            if dense is not None:
                param.accumulate_grad(dense[0])
            chunks = sparse.get(node)
            if chunks:
                idx = np.concatenate([c.indices.reshape(-1) for c in chunks])
                vals = np.concatenate([c.values.reshape((-1,) + c.values.shape[-1:])
                                       for c in chunks])
                param.accumulate_sparse(idx, vals)
        self.times["backward_total"] += time.perf_counter() - start
        self.times["backward_numpy"] += numpy_time

    def _padded_grad(self, batch: PaddedBatch, grads: list, summed: np.ndarray | None
                     ) -> np.ndarray | None:
        """A padded batch's gradient, padded: what padded batches delivered to it whole
        (`summed`) and to its nodes one by one, zero in the padding (None when nothing
        reached it). Kept as `batch.grad`."""
        shape = batch.out.shape
        out = None if summed is None else np.where(
            self._inside(batch.lengths, shape[batch.axis + 1], batch.axis, len(shape)), summed,
            0.0)
        own = grads[batch.first:batch.first + len(batch.nodes)]
        if not any(map(is_not, own, repeat(None))):  # (none reached a node alone: C loops)
            batch.grad = out
            return out
        for i, t in enumerate(own):
            if t is not None:
                if out is None:
                    out = np.zeros(shape, batch.out.dtype)
                out[batch.part(i)] += t[0]
        batch.grad = out
        return out

    def _arenas(self, grads: list, last: int) -> tuple[list, dict, set]:
        """Arenas for the sources of multi-source gathers up to batch `last`: a list of
        (array, row offset of each batch by batch index), the arena and offset of each such
        batch, and an empty set (for the batches hit). Fills `grads` with the views."""
        bufs = self.bufs
        sources = [b for b in self.gathered if b <= last]
        kinds: dict[tuple, list[int]] = {}
        for b in sorted(sources):
            buf = bufs[b]
            kinds.setdefault((buf.shape[1:], buf.dtype.str), []).append(b)
        arenas, offsets = [], {}
        for (shape, dtype), members in kinds.items():
            starts = np.zeros(len(bufs), dtype=np.int64)
            total = 0
            for b in members:
                starts[b] = total
                offsets[b] = (len(arenas), total)
                total += len(bufs[b])
            arena = np.zeros((total,) + shape, dtype)
            for b in members:
                start = offsets[b][1]
                grads[b] = arena[start:start + len(bufs[b])]
            arenas.append((arena, starts))
        return arenas, offsets, set()

    def gradient(self, node: int) -> np.ndarray:
        if self.grads is None:
            raise GraphError("gradient() needs backward() first")
        if node in self.g.bypassed:
            raise GraphError(
                f"gradient(): a fused softmax loss read through node {node} "
                f"({self.g.ops[node].name}) to its input, so it has no gradient of its own; "
                "to keep one, build the loss on x.plain() instead of x")
        loc = self.g.loc
        here = loc[node]
        b = here >> _SHIFT
        t = self.grads[b] if 0 <= b < len(self.grads) else None
        batch = self.batches[b] if 0 <= b < len(self.batches) else None
        if type(batch) is PaddedBatch:  # (its padded gradient holds all that reached it)
            t = None if batch.grad is None else batch.grad[batch.part(b - batch.first)][None]
        total = np.zeros(self.g.shapes[node], self.g.dtype) if t is None else t[here & _ROW]
        absorbed = self.fuser.absorbed.get(node) if self.fuser is not None else None
        if absorbed is not None:  # the part that flowed through the fused node
            root, p = absorbed
            there = loc[root]
            if there >= 0 and (there >> _SHIFT) in self.hit:  # (reached by the last backward)
                cts = self.batches[there >> _SHIFT].attrs["residual"][2]
                if cts is not None and cts[p] is not None:
                    total = total + cts[p][there & _ROW]
        return total

    def inner_gradient(self, node: int, p: int) -> np.ndarray | None:
        """The cotangent that the last backward formed at position p of the program of fused
        node `node` (None when none flowed there)."""
        here = self.g.loc[node]
        if here < 0:
            return None
        b, row = here >> _SHIFT, here & _ROW
        batch = self.batches[b]
        if type(batch) is PaddedBatch:  # (its padded row: the caller cuts it back)
            row = b - batch.first
            if batch.grad is None:
                return None
        elif b not in self.hit:
            return None
        cts = batch.attrs["residual"][2]
        if cts is None or cts[p] is None:
            return None
        return cts[p][row]

    def stats(self) -> dict:
        c, t = self.counts, self.times
        batches = c["forward_batches"]
        return {
            "nodes": len(self.g.ops),
            "forward_batches": batches,
            "backward_batches": c["backward_batches"],
            "mean_batch_size": c["forward_nodes"] / batches if batches else 0.0,
            "seconds_scheduling": t["schedule"],
            "seconds_forward_numpy": t["forward_numpy"],
            "seconds_backward_numpy": t["backward_numpy"],
            "seconds_backward_other": t["backward_total"] - t["backward_numpy"],
            "strategy": self.strategy or "off",
            "nodes_before_fusion": len(self.g.ops) + self.g.folded,
            "nodes_after_fusion": len(self.g.ops) - (
                len(self.fuser.absorbed) if self.fuser is not None else 0),
        }
