"""Data-parallel training over MPI processes (ranks): each rank computes its share of every
minibatch, gradients are summed across ranks (dense parameters in one flat allreduce, lookup
tables' touched rows gathered and summed, never densified) and every rank applies the same
update. Reaches MPI through mpi4py, the optional extra `dynlp[mpi]`; without it, and outside
`mpiexec`, `setup()` gives a one-process communicator whose operations do nothing. Imports
nothing from dynlp but the parameter classes' interface (duck-typed) and never recipes.

In one's own training loop (run with `mpiexec -n N python train.py`):

    comm = dn.distributed.setup()
    comm.broadcast_parameters(pc)                      # the same start on every rank
    with dn.distributed.ending_run_on_error():         # one rank's error ends all ranks
        for step, batch in enumerate(batches):
            mine = comm.shard_batch(batch)             # this rank's positions in the batch
            value = 0.0                                # (none when the batch has fewer
            if mine:                                   # examples than there are ranks)
                with dn.Graph() as g:
                    total = dn.esum([model.loss(batch[i]) for i in mine])
                    value = total.scalar_value()
                    total.backward()
            value = comm.sum_gradients(pc, value)      # the whole batch's gradients and loss
            trainer.update()                           # identical on every rank
            if comm.is_root:
                print(step, value)
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import operator
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

INSTALL_HINT = ("install the optional MPI support with pip install -e '.[mpi]' in a source "
                "checkout of dynlp (or pip install 'dynlp[mpi]'): it brings mpi4py and MPICH, "
                "whose mpiexec then starts the ranks")
# variables that MPI launchers set in the processes they start: (rank, size)
_LAUNCHER_VARIABLES = (("PMI_RANK", "PMI_SIZE"),                              # MPICH, Intel MPI
                       ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))      # Open MPI
_POLL_SECONDS = 0.0002  # sleep between tests of a pending exchange (frees the core it waits on)
# how long a wait tests without sleeping before it starts to sleep between tests: MPI moves a
# large message in rounds, each only while both ranks test, so an exchange whose ranks are all
# there goes several times faster tested without pause (the Tree-LSTM recipe's step, 1.2 MB of
# dense gradients and its rows, between 2 ranks: 1.2 ms against 5.2 ms with sleeps)
_SPIN_SECONDS = 0.001
# ... and once every rank has come to the exchange (past it, on a busy machine, a rank that
# lost its core is waited for sleeping)
_SPIN_ALL_THERE_SECONDS = 0.01


class DistributedError(RuntimeError):
    """MPI is asked for but missing, or the ranks of a run disagree."""


def launched_size() -> int:
    """The number of ranks an MPI launcher (mpiexec, srun) started this process among; 1 when
    none did."""
    for _, size in _LAUNCHER_VARIABLES:
        value = os.environ.get(size, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank among those an MPI launcher started; 0 when none did."""
    for rank, _ in _LAUNCHER_VARIABLES:
        value = os.environ.get(rank, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def setup(required: bool = False) -> "Communicator":
    """The communicator of this process: all the ranks of COMM_WORLD when an MPI launcher
    started more than one (or `required`), else a one-process communicator (no MPI needed).
    Raises DistributedError, saying how to install MPI support, when mpi4py is missing."""
    if launched_size() <= 1 and not required:
        return Communicator(None)
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise DistributedError(f"this run needs MPI, but mpi4py cannot be imported ({err}); "
                               f"{INSTALL_HINT}") from None
    comm = Communicator(MPI.COMM_WORLD)
    global _LEAVING_CHECKED
    if comm.size > 1 and not _LEAVING_CHECKED:
        _LEAVING_CHECKED = True
        atexit.register(_leave, Communicator(MPI.COMM_WORLD))
    return comm


_LEAVING_CHECKED = False  # whether this process checks, at exit, that the other ranks leave too


def _leave(comm: "Communicator") -> None:
    """At the exit of a rank's process (before MPI's finalization): one more handshake, so
    that a rank that leaves its script while the others still make calls (it returned early,
    or raised outside `ending_run_on_error`) makes them raise DistributedError and ends the
    run, instead of leaving them waiting for it for ever."""
    if not running_ranks():
        return
    try:
        comm._handshake("exit")
    except DistributedError as err:
        comm.abort(f"dynlp: error: rank {comm.rank} of {comm.size} is leaving: {err}; "
                   "the run stops")


def running_ranks() -> bool:
    """Whether this process is one of several that an MPI launcher started, with MPI running
    (initialized, not finalized)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return (mpi is not None and launched_size() > 1 and mpi.Is_initialized()
            and not mpi.Is_finalized())


def abort_launched(status: int) -> None:
    """End every rank of the run now (MPI_Abort) when this process is one of several that an
    MPI launcher started and MPI is running; else do nothing. A rank that leaves after an error
    must: left to exit, it would wait in MPI's finalization for ranks that wait for it."""
    if not running_ranks():
        return
    _abort(sys.modules["mpi4py.MPI"].COMM_WORLD, status)


def _abort(comm: Any, status: int) -> None:
    """MPI_Abort on comm, then the end of this process. MPICH's MPI_Abort can return before
    the launcher has ended the process (seen on a loaded machine, about once in three runs):
    left to exit normally, the process would make its exit handshake (`_leave`) with ranks
    still waiting in a collective call, which then report a wrong error of their own."""
    _flush_before_abort()
    try:
        comm.Abort(status)
    finally:
        os._exit(status)  # (no exit handlers, no MPI finalization: the run is over)


# how long a rank that ends the run lets the launcher forward what it printed: MPI_Abort kills
# the ranks at once, and MPICH's launcher then drops output it has not forwarded yet (seen: the
# one line that said why the run ended, about once in ten runs)
ABORT_GRACE_SECONDS = 0.25


def _flush_before_abort() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_SECONDS)


@contextlib.contextmanager
def ending_run_on_error() -> Iterator[None]:
    """Around the training loop of one's own script: an exception on any rank prints its
    traceback and ends every rank (instead of leaving the others waiting for it)."""
    try:
        yield
    except SystemExit as leaving:
        if leaving.code not in (0, None):
            abort_launched(leaving.code if isinstance(leaving.code, int) else 1)
        raise
    except BaseException:
        if launched_size() > 1:
            traceback.print_exc()
            abort_launched(1)
        raise


def example_cost(example: Any) -> int:
    """The work of an example, for balancing: its len(), else the number of its words()
    (trees), else 1."""
    if hasattr(example, "__len__"):
        return len(example)
    if hasattr(example, "words"):
        return len(example.words())
    return 1


# the cost of one more word in a share's longest example, in words of the share: that many
# more steps, each with a fixed cost. Fitted on the tagger's shares of its minibatches of 32
# (CPU ms: 11 + 0.18 a word + 0.38 a word of the longest sentence); the costlier of 2 shares
# cut with it ran 1.60x (tagger) and 1.76x (parser) as fast as the whole minibatch, against
# 1.51x and 1.61x with 0 (scripts/bench_shards.py, docs/PERFORMANCE.md)
STEP_COST = 2


def _whole(what: str, value: Any) -> int:
    """value as an int when it is a whole number >= 0 (an int, a numpy integer, an integral
    float), else a ValueError that names `what`."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a whole number >= 0, not {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        try:
            real = float(value)
        except (TypeError, ValueError):
            real = math.nan
        if not real.is_integer():
            raise ValueError(f"{what} must be a whole number >= 0, not {value!r}") from None
        number = int(real)
    if number < 0:
        raise ValueError(f"{what} must be a whole number >= 0, not {value!r}")
    return number


def _share_cost(costs: Sequence[int], start: int, end: int, step_cost: int) -> int:
    """The cost of the share costs[start:end] (sorted costliest first)."""
    return sum(costs[start:end]) + step_cost * costs[start] if end > start else 0


def _cut(costs: Sequence[int], parts: int, step_cost: int) -> list[int]:
    """Bounds 0 = b_0 <= b_1 <= ... <= b_parts = len(costs) cutting costs (sorted costliest
    first) into contiguous runs whose costliest run is as cheap as can be: the least bound T
    for which filling runs greedily (each as long as it stays within T) needs at most `parts`
    runs, found by bisection (a run's cost only grows as it gets longer)."""
    def fill(limit: int) -> list[int] | None:
        bounds, start = [0], 0
        while start < len(costs):
            if len(bounds) > parts:
                return None
            end = start + 1
            if _share_cost(costs, start, end, step_cost) > limit:
                return None
            total = costs[start] * (1 + step_cost)
            while end < len(costs) and total + costs[end] <= limit:
                total += costs[end]
                end += 1
            bounds.append(end)
            start = end
        return bounds + [len(costs)] * (parts + 1 - len(bounds))

    low = max((c * (1 + step_cost) for c in costs), default=0)
    high = _share_cost(costs, 0, len(costs), step_cost)
    while low < high:
        middle = (low + high) // 2
        if fill(middle) is None:
            low = middle + 1
        else:
            high = middle
    bounds = fill(low)
    assert bounds is not None
    return bounds


def _deal(order: list[int], costs: list[int], parts: int, step_cost: int) -> list[list[int]]:
    """The examples (positions, costliest first) dealt one by one to the share that adding it
    makes least costly (the first on a tie)."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in order:
        after = [load + costs[i] * (1 if share else 1 + step_cost)
                 for load, share in zip(loads, shares)]
        least = after.index(min(after))
        loads[least] = after[least]
        shares[least].append(i)
    return shares


def _dense_and_tables(params: list) -> tuple[list, list]:
    dense, tables = [], []
    for p in params:
        (tables if getattr(p, "is_lookup", False) else dense).append(p)
    return dense, tables


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} between ranks")


# the collective calls, by the number each rank sends ahead of their exchanges (`_handshake`)
_CALLS = ("sum_gradients", "broadcast_parameters", "allgather", "broadcast", "barrier",
          "parameters_agree", "exit")  # exit: the end of a rank's process (`_leave`)


def _layout(params: list) -> list:
    """What the ranks must agree on before they exchange parameters' values or gradients: each
    parameter's name, kind, shape, value dtype and gradient dtype, in order."""
    return [[p.name, "table" if getattr(p, "is_lookup", False) else "dense",
             [int(n) for n in p.value.shape], str(p.value.dtype), str(p.grad.dtype)]
            for p in params]


def _digest(value: Any) -> int:
    """A 64-bit digest (an int64) of a JSON-able value."""
    data = json.dumps(value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _describe(entry: list) -> str:
    name, kind, shape, dtype, grad = entry
    return (f"{kind} {name!r} {tuple(shape)} {dtype}"
            + (f" (gradient {grad})" if grad != dtype else ""))


def _layout_difference(first: list, other: list, rank: int) -> str:
    """How rank `rank`'s parameters (`other`) differ from rank 0's (`first`)."""
    for i, (a, b) in enumerate(zip(first, other)):
        if a != b:
            return f"parameter {i + 1} is {_describe(a)} on rank 0, {_describe(b)} on rank {rank}"
    longer, who = (first, 0) if len(first) > len(other) else (other, rank)
    shorter = min(len(first), len(other))
    return (f"rank 0 holds {len(first)}, rank {rank} {len(other)}: rank {who} alone holds "
            f"{_describe(longer[shorter])}")


class Communicator:
    """The ranks of one run (a wrapped mpi4py communicator, or None for a single process).

    rank: this process's number, 0..size-1; size: how many; is_root: rank 0, the one that
    writes files and prints. Every method is collective: all ranks call it, in the same order
    (each call opens with a handshake, `_handshake`, so that a rank that makes another call, or
    calls with other parameters or another root, raises DistributedError on every rank).
    """

    def __init__(self, comm: Any = None) -> None:
        self._comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.is_root = self.rank == 0
        self._flat = np.empty(0, dtype=np.float32)  # the dense gradients' buffer, reused
        self._layout_key: tuple | None = None  # the parameters last checked (`_layout`)
        self._dealt = 0  # a digest of what shard_batch dealt since the last sum_gradients
        self._pending: PendingSum | None = None  # a sum of gradients begun, not finished
        self._layout_seen: tuple[list, int] = ([], 0)
        # seconds spent in sum_gradients waiting for the other ranks to come to it (their
        # shares took longer), as against exchanging: a measure of imbalance
        self.waiting_seconds = 0.0

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    # -- sharing out work ------------------------------------------------------------------------
    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of a dataset: items rank, rank + size, rank + 2 * size, ..."""
        return list(items[self.rank::self.size])

    def shard_batch(self, batch: Sequence[Any], cost: Callable[[Any], int] = example_cost,
                    step_cost: int = STEP_COST) -> list[int]:
        """The positions in a (global) minibatch that this rank computes, in increasing order,
        the same answer on every rank.

        An autobatched share runs as many steps as its costliest example has words, and every
        step costs a fixed amount (its numpy calls, the set-up of its matrix products, the
        engine's work per batch) besides its rows. So a share costs the sum of its examples'
        costs plus `step_cost` times the largest, and the shares keep the costliest one cheap.
        Of two deals, the one whose costliest share costs less (the first on a tie): the
        examples sorted by cost (ties by position) cut into contiguous runs, rank 0 taking the
        costliest examples, fewer of them (`_cut`: the best such cut), which wins when long
        examples are few; and the examples dealt from the costliest, each to the rank whose
        share it makes least costly (the lower rank on a tie), which wins when lengths are
        even. With step_cost 0 the shares balance summed costs. Costs and step_cost are whole
        numbers >= 0 (a ValueError or TypeError says which is not). The next sum_gradients
        checks that every rank dealt the same costs with the same step_cost (a rank that dealt
        another minibatch would compute some examples twice and others never)."""
        step_cost = _whole("step_cost", step_cost)
        if self.size == 1:
            return list(range(len(batch)))
        costs = [_whole("an example's cost", cost(example)) for example in batch]
        self._dealt = _digest([costs, step_cost])  # checked by the next sum_gradients
        order = sorted(range(len(batch)), key=lambda i: (-costs[i], i))
        ordered = [costs[i] for i in order]
        cuts = _cut(ordered, self.size, step_cost)
        runs = [order[cuts[r]:cuts[r + 1]] for r in range(self.size)]
        dealt = _deal(order, costs, self.size, step_cost)
        price = [max(sum(costs[i] for i in share)
                     + step_cost * max((costs[i] for i in share), default=0) for share in deal)
                 for deal in (runs, dealt)]
        return sorted((runs if price[0] <= price[1] else dealt)[self.rank])

    # -- gradients and parameters ----------------------------------------------------------------
    def sum_gradients(self, pc: Any, loss: float = 0.0) -> float:
        """Replace every rank's gradients in pc by their sum over all ranks and return the
        summed `loss`. Dense parameters travel in one flat allreduce (their `grad` arrays become
        views of one buffer, summed in place); each lookup table sends only its touched rows
        (indices and values, gathered by every rank and summed in rank order, so that all ranks
        hold the same bits). Call it between backward() and the trainer's update(). Every
        rank's pc must hold the same parameters (names, kinds, shapes, dtypes, in order), the
        dense ones' gradients of one dtype and the tables' of one: else a DistributedError on
        every rank says what differs. (`start_sum_gradients` does the same while this rank
        builds its next graph.)"""
        return self.start_sum_gradients(pc, loss).finish()

    def start_sum_gradients(self, pc: Any, loss: float = 0.0,
                            then: Callable[[float], Any] | None = None) -> "PendingSum":
        """`sum_gradients`, begun: the exchange goes on while this rank does work that neither
        reads nor writes pc's gradients or values, such as building the next step's graph, and
        `finish()` on the returned PendingSum completes it: it waits for the other ranks, sums
        the tables' rows, calls `then(summed loss)` (the trainer's update) and returns the
        summed loss. So the wait for a slower rank and the exchange overlap this rank's
        building instead of adding to its step:

            pending = comm.start_sum_gradients(pc, value, then=lambda loss: trainer.update())
            with dn.Graph() as g:
                g.before_evaluation(pending.finish)   # the update, before any value is read
                losses = []
                for i in comm.shard_batch(batch):
                    losses.append(model.loss(batch[i]))
                    pending.progress()                # lets the exchange move meanwhile
                ...

        On one process the sum is complete at once: `then` runs before this returns. Any other
        call of this communicator first finishes a pending sum (the ranks' exchanges must come in
        the same order)."""
        self._finish_pending()
        pending = PendingSum(self, pc, loss, then)
        if not pending.done:
            self._pending = pending
        return pending

    def _finish_pending(self) -> None:
        pending = self._pending
        if pending is not None:
            pending.finish()

    def _handshake(self, call: str, check: int = 0, own: int = 0,
                   spin: float = _SPIN_SECONDS) -> np.ndarray:
        """Every rank's (call, check, own), rank by rank, from one small allgather that opens
        every collective call: a rank that makes another call than rank 0 raises
        DistributedError on every rank together, instead of exchanges that do not match
        (which hang, or sum the wrong numbers). The caller compares the `check`s."""
        self._finish_pending()
        request, calls = self._post_handshake(call, check, own)
        self._wait([request], spin)
        self._check_calls(calls)
        return calls

    def _post_handshake(self, call: str, check: int, own: int) -> tuple[Any, np.ndarray]:
        mine = np.array([_CALLS.index(call), check, own], dtype=np.int64)
        calls = np.empty((self.size, 3), dtype=np.int64)
        return self._comm.Iallgather(mine, calls), calls

    @staticmethod
    def _check_calls(calls: np.ndarray) -> None:
        for r in range(len(calls)):
            if calls[r, 0] != calls[0, 0]:
                raise DistributedError(
                    f"rank {r} called {_CALLS[calls[r, 0]]} where rank 0 called "
                    f"{_CALLS[calls[0, 0]]}: every rank must make the same calls of "
                    "dynlp.distributed, in the same order")

    def _layout(self, params: list) -> tuple[list, int]:
        """The parameters' `_layout` and its digest (kept while the parameters stay the same:
        a step's sum then checks them in microseconds)."""
        key = tuple((p.name, getattr(p, "is_lookup", False), p.value.shape, p.value.dtype,
                     p.grad.dtype) for p in params)
        if key != self._layout_key:
            layout = _layout(params)
            self._layout_key, self._layout_seen = key, (layout, _digest(layout))
        return self._layout_seen

    def _layouts_differ(self, call: str, layout: list) -> DistributedError:
        """The error of a call whose ranks hold different parameters (every rank makes this
        call together, once the handshake has shown their layouts differ)."""
        layouts = self._gather(layout, call)
        rank = next(r for r, other in enumerate(layouts) if other != layouts[0])
        difference = _layout_difference(layouts[0], layouts[rank], rank)
        return DistributedError(
            f"{call}: the ranks hold different parameters ({difference}): every rank must make "
            "the same parameters, in the same order, and add any new one on every rank together")

    def _gradient_buffer(self, dense: list) -> np.ndarray:
        """One flat array under the dense parameters' gradients: their `grad`s become views
        of it (on the first call, or when parameters change), so it is summed in place."""
        flat = self._flat
        if all(p.grad.base is flat for p in dense) and sum(p.grad.size for p in dense) == flat.size:
            return flat
        flat = np.empty(sum(p.grad.size for p in dense), dtype=dense[0].grad.dtype)
        offset = 0
        for p in dense:
            view = flat[offset:offset + p.grad.size].reshape(p.grad.shape)
            view[...] = p.grad
            p.grad = view
            offset += p.grad.size
        self._flat = flat
        return flat

    def broadcast_parameters(self, pc: Any, root: int = 0) -> None:
        """Give every rank the parameter values of rank `root` (one flat broadcast)."""
        if self._comm is None:
            return
        params = list(pc.parameters())
        layout, digest = self._layout(params)
        calls = self._handshake("broadcast_parameters", digest, operator.index(root))
        self._same_root("broadcast_parameters", calls[:, 2])
        if (calls[:, 1] != calls[0, 1]).any():
            raise self._layouts_differ("broadcast_parameters", layout)
        if not params:
            return
        flat = np.concatenate([p.value.ravel() for p in params])
        self._wait([self._comm.Ibcast(flat, root=root)])
        offset = 0
        for p in params:
            p.value[...] = flat[offset:offset + p.value.size].reshape(p.value.shape)
            offset += p.value.size

    def parameters_agree(self, pc: Any) -> bool:
        """Whether every rank holds the same parameters as rank 0 (names, shapes, dtypes) with
        the same values, bit for bit (a digest of each rank's is compared)."""
        params = list(pc.parameters())
        digest = hashlib.blake2b(json.dumps(_layout(params)).encode("utf-8"), digest_size=16)
        for p in params:
            digest.update(np.ascontiguousarray(p.value).tobytes())
        return len(set(self._gather(digest.hexdigest(), "parameters_agree"))) == 1

    # -- values ----------------------------------------------------------------------------------
    def allgather(self, value: Any) -> list[Any]:
        """Every rank's value (anything JSON can carry; numpy numbers and arrays become Python
        numbers and lists), in rank order, on every rank. JSON, not pickle, crosses the wire."""
        if self._comm is None:
            return [json.loads(json.dumps(value, default=_json_default))]
        return self._gather(value, "allgather")

    def broadcast(self, value: Any, root: int = 0) -> Any:
        """Rank `root`'s value on every rank (JSON, as for allgather)."""
        if self._comm is None:
            return value
        return self._gather(value, "broadcast", operator.index(root))[root]

    def _gather(self, value: Any, call: str, root: int = 0) -> list[Any]:
        data = np.frombuffer(json.dumps(value, default=_json_default).encode("utf-8"),
                             dtype=np.uint8)
        calls = self._handshake(call, root, data.size)
        self._same_root(call, calls[:, 1])
        counts = calls[:, 2]
        gathered = np.empty(int(counts.sum()), dtype=np.uint8)
        self._wait([self._comm.Iallgatherv(data, [gathered, counts])])
        starts = np.r_[0, np.cumsum(counts)]
        return [json.loads(gathered[starts[r]:starts[r + 1]].tobytes().decode("utf-8"))
                for r in range(self.size)]

    def _same_root(self, call: str, roots: np.ndarray) -> None:
        """DistributedError (on every rank) unless every rank named the same root, a rank."""
        for r in range(self.size):
            if roots[r] != roots[0]:
                raise DistributedError(f"{call}: rank {r} asked for root {roots[r]}, rank 0 "
                                       f"for root {roots[0]}: every rank must name the same root")
        if not 0 <= roots[0] < self.size:
            raise DistributedError(f"{call}: root {roots[0]} is not a rank (0..{self.size - 1})")

    def evaluate(self, model: Any, examples: list, batch_size: int = 64) -> dict:
        """model.evaluate(examples) with the work split across ranks: each rank computes
        `model.evaluation_outputs` of its share, every rank gathers them and scores them with
        `model.score`. A model without those two is evaluated by rank 0 alone. Every rank gets
        the metrics."""
        if self._comm is None:
            return model.evaluate(examples, batch_size=batch_size)
        if not (hasattr(model, "evaluation_outputs") and hasattr(model, "score")):
            metrics = model.evaluate(examples, batch_size=batch_size) if self.is_root else None
            return self.broadcast(metrics)
        share = model.evaluation_outputs(self.shard(examples), batch_size)
        outputs: list[Any] = [None] * len(examples)
        for r, part in enumerate(self.allgather(share)):
            outputs[r::self.size] = part
        return model.score(examples, outputs)

    # -- order -----------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self._comm is not None:
            self._handshake("barrier")

    @contextlib.contextmanager
    def root_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (say, fetching a dataset into a shared cache), then the
        others do."""
        if not self.is_root:
            self.barrier()
        yield
        if self.is_root:
            self.barrier()

    def abort(self, message: str, status: int = 1) -> None:
        """Print message on stderr and end every rank of the run now."""
        print(message, file=sys.stderr, flush=True)
        if self._comm is None:
            raise SystemExit(status)
        _abort(self._comm, status)

    def _wait(self, requests: list, spin: float = _SPIN_SECONDS) -> None:
        """Wait for nonblocking exchanges: testing without pause for `spin` seconds, then
        sleeping between tests, so that a rank that waits for a slower one leaves the core to
        others instead of spinning."""
        from mpi4py import MPI
        test = MPI.Request.Testall
        until = time.perf_counter() + spin
        while not test(requests):
            if time.perf_counter() > until:
                time.sleep(_POLL_SECONDS)
            else:  # (lets a process waiting for this core run: on a busy machine, the other rank)
                os.sched_yield()


class PendingSum:
    """A sum of gradients under way (`Communicator.start_sum_gradients`): `progress()` moves
    it on without waiting, `finish()` completes it. Its exchanges come one after the other,
    each posted once the one before has arrived: the handshake (which call, which
    parameters, which minibatch), then the dense gradients with every rank's loss and row
    counts, then the tables' touched rows, which are then summed.

    loss: the summed loss once finished (None before). seconds: where the time of its calls
    went, {"waiting": for the other ranks to come to the sum, "exchange": the rest of
    exchanging and summing, "update": in `then`}."""

    def __init__(self, comm: Communicator, pc: Any, loss: float,
                 then: Callable[[float], Any] | None) -> None:
        self._owner, self._then = comm, then
        self._own_loss = float(loss)
        self.loss: float | None = None
        self.seconds = {"waiting": 0.0, "exchange": 0.0, "update": 0.0}
        self._finished = False
        self._stage = _SUMMED
        if comm._comm is None:
            self.finish()
            return
        start = time.perf_counter()
        self._params = list(pc.parameters())
        self._layout, digest = comm._layout(self._params)
        dealt, comm._dealt = comm._dealt, 0
        self._prepare()
        request, self._calls = comm._post_handshake("sum_gradients", digest, dealt)
        self._requests = [request]
        self._stage = _HANDSHAKE
        self.seconds["exchange"] += time.perf_counter() - start

    def _prepare(self) -> None:
        """What this rank sends, made ready before the handshake: while a rank that came
        first waits for the others, so that once they are all there the exchanges are posted
        at once (a problem found here is raised after the handshake, by every rank together)."""
        comm = self._owner
        dense, tables = _dense_and_tables(self._params)
        self._problem = None
        for group in (dense, tables):
            dtypes = sorted({str(p.grad.dtype) for p in group})
            if len(dtypes) > 1:  # (the same on every rank when their layouts agree)
                self._problem = (
                    "sum_gradients: the gradients of the "
                    f"{'tables' if group is tables else 'dense parameters'} are of several "
                    f"dtypes ({', '.join(dtypes)}); they are summed in one buffer of one dtype")
                return
        self._flat = comm._gradient_buffer(dense) if dense else None
        self._tables = tables
        sparse = [table.sparse_grad() for table in tables]
        self._header = np.array([self._own_loss] + [len(rows) for rows, _ in sparse],
                                dtype=np.float64)
        if tables:
            dtype = tables[0].grad.dtype
            self._indices = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in sparse])
            self._values = np.concatenate([np.asarray(v, dtype=dtype).ravel()
                                           for _, v in sparse])

    @property
    def done(self) -> bool:
        """Whether finish() has completed (the sum, then `then`)."""
        return self._finished

    def progress(self) -> bool:
        """Move the exchange on as far as it can go without waiting for another rank; True
        once the gradients are summed (finish() then only calls `then`)."""
        if self._stage == _SUMMED:
            return True
        from mpi4py import MPI
        start = time.perf_counter()
        try:
            while self._stage != _SUMMED and MPI.Request.Testall(self._requests):
                self._advance()
        finally:
            self.seconds["exchange"] += time.perf_counter() - start
        return self._stage == _SUMMED

    def finish(self) -> float:
        """Wait for the other ranks and the exchange, sum the tables' rows, call then(summed
        loss) and return the summed loss; once done, return it again."""
        if self._finished:
            return self.loss  # type: ignore[return-value]
        comm = self._owner
        try:
            while self._stage != _SUMMED:
                start = time.perf_counter()
                waiting = self._stage == _HANDSHAKE
                comm._wait(self._requests, _SPIN_SECONDS if waiting else _SPIN_ALL_THERE_SECONDS)
                waited = time.perf_counter() - start
                self.seconds["waiting" if waiting else "exchange"] += waited
                if waiting:  # (the wait for the slowest rank sleeps between tests)
                    comm.waiting_seconds += waited
                start = time.perf_counter()
                self._advance()
                self.seconds["exchange"] += time.perf_counter() - start
        except BaseException:
            self._give_up()
            raise
        self._finished = True
        if comm._pending is self:
            comm._pending = None
        if self.loss is None:
            self.loss = self._own_loss
        if self._then is not None:
            start = time.perf_counter()
            try:
                self._then(self.loss)
            finally:
                self.seconds["update"] += time.perf_counter() - start
        return self.loss

    def _give_up(self) -> None:
        """After an error: this sum is over (a later call of the communicator must not wait
        for it again)."""
        self._finished = True
        self._stage = _SUMMED
        if self._owner._pending is self:
            self._owner._pending = None

    def _advance(self) -> None:
        """The current stage's exchanges have arrived: check or use them, post the next."""
        try:
            if self._stage == _HANDSHAKE:
                self._post_gradients()
            elif self._stage == _GRADIENTS:
                self._post_rows()
            elif self._stage == _ROWS:
                self._sum_rows()
        except BaseException:
            self._give_up()
            raise

    def _post_gradients(self) -> None:
        from mpi4py import MPI
        comm, calls = self._owner, self._calls
        comm._check_calls(calls)
        if (calls[:, 1] != calls[0, 1]).any():
            self._give_up()
            raise comm._layouts_differ("sum_gradients", self._layout)
        for r in range(comm.size):
            if calls[r, 2] != calls[0, 2]:
                raise DistributedError(
                    f"sum_gradients: rank {r} dealt another minibatch than rank 0 (shard_batch "
                    "since the last sum: other examples' costs, or another step_cost): every "
                    "rank must deal the same minibatch, in the same order, the same way")
        if self._problem is not None:
            raise DistributedError(self._problem)
        requests = []
        if self._flat is not None:
            requests.append(comm._comm.Iallreduce(MPI.IN_PLACE, self._flat, op=MPI.SUM))
        header = self._header
        self._headers = np.empty((comm.size, header.size), dtype=np.float64)
        requests.append(comm._comm.Iallgather(header, self._headers))
        self._requests = requests
        self._stage = _GRADIENTS

    def _post_rows(self) -> None:
        self.loss = float(self._headers[:, 0].sum())
        if not self._tables:
            self._stage = _SUMMED
            return
        comm, tables = self._owner, self._tables
        rows = self._rows = self._headers[:, 1:].astype(np.int64)  # [rank, table]
        widths = self._widths = np.array([int(np.prod(t.shape[1:])) for t in tables],
                                         dtype=np.int64)
        index_counts = self._index_counts = rows.sum(axis=1)
        value_counts = self._value_counts = (rows * widths).sum(axis=1)
        self._all_indices = np.empty(int(index_counts.sum()), dtype=np.int64)
        self._all_values = np.empty(int(value_counts.sum()), dtype=self._values.dtype)
        self._requests = [
            comm._comm.Iallgatherv(self._indices, [self._all_indices, index_counts]),
            comm._comm.Iallgatherv(self._values, [self._all_values, value_counts])]
        self._stage = _ROWS

    def _sum_rows(self) -> None:
        """Each table's gradient becomes every rank's rows, summed in rank order."""
        rows, widths = self._rows, self._widths
        index_start = np.r_[0, np.cumsum(self._index_counts)[:-1]]
        value_start = np.r_[0, np.cumsum(self._value_counts)[:-1]]
        for t, table in enumerate(self._tables):
            parts_i, parts_v = [], []
            for r in range(self._owner.size):
                i0 = index_start[r] + rows[r, :t].sum()
                v0 = value_start[r] + (rows[r, :t] * widths[:t]).sum()
                n = rows[r, t]
                parts_i.append(self._all_indices[i0:i0 + n])
                parts_v.append(self._all_values[v0:v0 + n * widths[t]]
                               .reshape((n,) + table.shape[1:]))
            table.clear_grad()
            if sum(len(part) for part in parts_i):
                table.accumulate_sparse(np.concatenate(parts_i), np.concatenate(parts_v))
        self._indices = self._values = None  # type: ignore[assignment]
        self._all_indices = self._all_values = None  # type: ignore[assignment]
        self._stage = _SUMMED


# the stages of a PendingSum: what its posted exchanges carry
_HANDSHAKE, _GRADIENTS, _ROWS, _SUMMED = range(4)
