"""Where the time of one training step goes: CPU milliseconds of graph building, forward
(scheduling and gathers vs the ops' numpy, counting the forwards a model makes while it builds,
as the parser's decisions), backward (the ops' numpy vs bookkeeping) and the Adam update, for a
workload of `bench_autobatch.py`, and the numpy time of each op.

    python scripts/profile_step.py [--workload tagger-paper] [--strategy late] [--batch 64]
        [--steps 20] [--data DIR] [--model-code]

Medians over `--steps` minibatches after two warm-up steps, measured with `time.process_time`
around each phase; the per-op split wraps every op's forward and VJP in the same run.

`--model-code` (treenn-user) also times the workload's model code over stub ops, each op a
call that returns a bare object: what the model's own Python costs per minibatch, which no graph
engine can take away; building the graph costs that plus the engine's recording.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import defaultdict
from types import SimpleNamespace
from pathlib import Path
from typing import Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as the benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import bench_autobatch as bench  # noqa: E402
import dynlp as dn  # noqa: E402
from dynlp.ops import TABLE  # noqa: E402

PHASES = ("build", "forward: scheduling", "forward: numpy", "backward: numpy",
          "backward: other", "graph exit", "update")


def _timed(times: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name] += time.process_time() - start
    return wrapper


def profile(workload: bench.Workload, strategy: bool | str, batches: list[list],
            per_op: bool = True) -> tuple:
    """Per-phase medians (ms) and per-op numpy totals (ms per step) over the batches (none
    without `per_op`: then no op is wrapped, and the phases' numpy time is the ops' own)."""
    model = workload.dynlp
    model.step(batches[0], strategy)
    model.step(batches[1], strategy)
    op_times: dict[str, float] = defaultdict(float)
    # the table's ops, and the ops made of them that the model's graphs hold (composed and
    # fused ops, whose steps' rules they call directly), each timed as a whole
    wrapped = list(TABLE.values()) if per_op else []
    if per_op:
        with dn.Graph(autobatch=strategy) as g:
            model.batch_loss(batches[0])
            wrapped += [op for op in dict.fromkeys(g.ops) if TABLE.get(op.name) is not op]
    originals = {}
    for op in wrapped:
        originals[id(op)] = (op.forward, op.vjp)
        op.forward = _timed(op_times, f"{op.name} forward", op.forward)
        op.vjp = _timed(op_times, f"{op.name} vjp", op.vjp)
    rows = []
    clock = time.process_time
    try:
        for batch in batches[2:]:
            t0 = clock()
            with dn.Graph(autobatch=strategy) as g:
                total = model.batch_loss(batch)
                t1 = clock()
                early = g.stats()  # forwards made while building (a parser's decisions)
                total.forward()
                t2 = clock()
                total.backward()
                t3 = clock()
                stats = g.stats()
            t4 = clock()
            model.trainer.update()
            t5 = clock()
            during_build = early["seconds_scheduling"] + early["seconds_forward_numpy"]
            numpy_forward = stats["seconds_forward_numpy"]
            schedule = stats["seconds_scheduling"]
            numpy_backward = stats["seconds_backward_numpy"]
            rows.append([t1 - t0 - during_build, schedule, numpy_forward, numpy_backward,
                         t3 - t2 - numpy_backward, t4 - t3, t5 - t4])
    finally:
        for op in wrapped:
            op.forward, op.vjp = originals[id(op)]
    steps = len(batches) - 2
    medians = np.median(np.array(rows), axis=0) * 1000
    per_op = {name: seconds / steps * 1000 for name, seconds in op_times.items()}
    return medians, per_op, stats


class _Stub:
    """A stand-in expression: every operator makes another one, holding its operands."""

    __slots__ = ("a", "b")

    def __init__(self, a: object = None, b: object = None) -> None:
        self.a, self.b = a, b

    def __add__(self, other: object) -> "_Stub":
        return _Stub(self, other)

    __mul__ = __matmul__ = __getitem__ = __add__


class _Recorded:
    """A stand-in expression of the least a graph-recording library does per op: one object
    with its graph and node number, and the op and its operands appended to the graph's list."""

    __slots__ = ("tape", "i")

    def _record(self, op: str, *operands: object) -> "_Recorded":
        tape = self.tape
        out = _new(_Recorded)
        out.tape = tape
        out.i = len(tape)
        tape.append((op, operands))
        return out

    def __add__(self, other: object) -> "_Recorded":
        return self._record("add", self, other)

    def __mul__(self, other: object) -> "_Recorded":
        return self._record("mul", self, other)

    def __matmul__(self, other: object) -> "_Recorded":
        return self._record("matmul", self, other)

    def __getitem__(self, row: object) -> "_Recorded":
        return self._record("lookup", self, row)


_new = object.__new__


def _recorded(tape: list) -> _Recorded:
    leaf = _new(_Recorded)
    leaf.tape, leaf.i = tape, len(tape)
    tape.append(("parameter", ()))
    return leaf


def _first(name: str):
    """An op of the recorder over a list of expressions or one expression and more operands."""
    def op(x: object, *more: object) -> _Recorded:
        head = x[0] if isinstance(x, list) else x
        return head._record(name, x, *more)
    return op


def model_code_ms(workload: bench.Workload, batches: list[list], record: bool = False) -> float:
    """Median CPU ms of the treenn-user model code per minibatch with every op a stub call
    (`record`: a minimal recording op, `_Recorded`)."""
    model = workload.dynlp
    saved = dict(vars(model)), bench.dn
    tape: list = []
    if record:
        ops = {name: _first(name) for name in ("logistic", "tanh", "concatenate",
                                               "pick_neg_log_softmax", "esum")}
        make = lambda: _recorded(tape)  # noqa: E731
    else:
        ops = {name: _Stub for name in ("logistic", "tanh", "concatenate",
                                        "pick_neg_log_softmax", "esum")}
        make = _Stub
    stub = SimpleNamespace(parameter=lambda p: p, **ops)
    for name in ("WS", "US", "UFS", "BS"):
        setattr(model, name, [make() for _ in getattr(model, name)])
    model.E, model.W_ = make(), make()
    bench.dn = stub
    try:
        times = []
        for batch in batches:
            del tape[len(model.WS) + len(model.US) + len(model.UFS) + len(model.BS) + 2:]
            collecting = gc.isenabled()
            gc.disable()  # (as a dynlp graph does while it lives)
            start = time.process_time()
            for example in batch:
                model.loss(example)
            times.append(time.process_time() - start)
            if collecting:
                gc.enable()
    finally:
        vars(model).update(saved[0])
        bench.dn = saved[1]
    return float(np.median(times)) * 1000


def floor(workload: bench.Workload, data: dict, strategy: bool | str, batches: list[list],
          dynet: bool, tiny: bool = False) -> None:
    """What no engine that records each op in Python can take away, against DyNet's whole step
    and dynlp's TreeLSTMBuilder (treelstm-paper) on the same minibatches (CPU ms, medians)."""
    stubbed = model_code_ms(workload, batches)
    recorded = model_code_ms(workload, batches, record=True)
    plain, _, _ = profile(workload, strategy, batches, per_op=False)
    arithmetic = plain[2] + plain[3]
    total = plain.sum()
    print(f"floor of treenn-user per minibatch (CPU ms, median of {len(batches) - 2} steps):")
    print(f"  model code over stub ops              {stubbed:7.2f}")
    print(f"  model code over a minimal recorder    {recorded:7.2f}  (one object and one list "
          f"append per op)")
    print(f"  the ops' numpy, forward and backward  {arithmetic:7.2f}")
    print(f"  floor: recorder + numpy               {recorded + arithmetic:7.2f}")
    print(f"  dynlp's whole step                    {total:7.2f}  (of which the engine's own: "
          f"{total - recorded - arithmetic:.2f})")
    builder = bench.make_workload("treelstm-paper", data, None, tiny=tiny)
    built, _, _ = profile(builder, strategy, batches, per_op=False)
    print(f"  TreeLSTMBuilder's whole step          {built.sum():7.2f}  (treelstm-paper: the same "
          f"model through dynlp's fused builder)")
    if dynet:
        import dynet_peers
        sizes = bench._sizes(tiny, **bench.USER_SIZES["treenn-user"])
        peer = dynet_peers.DynetPeer("treenn-user", 1, workload.dynlp.E.shape[0], 5,
                                     sizes=sizes, tiny=tiny)
        try:
            peer.timed_run(batches[:2])
            cpu = [peer.timed_run([batch])[1] for batch in batches[2:]]
        finally:
            peer.close()
        step = float(np.median(cpu)) * 1000
        print(f"  DyNet wheel's whole step              {step:7.2f}  -> at most "
              f"{step / (recorded + arithmetic):.2f}x DyNet with no engine cost beyond the "
              f"floor; dynlp now {step / total:.2f}x")


def _dynet_imports() -> bool:
    try:
        import dynet_peers
        return dynet_peers.dynet_imports()
    except Exception:  # noqa: BLE001 (no DyNet: the floor is printed without it)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="tagger-paper", choices=bench.WORKLOADS)
    parser.add_argument("--strategy", default="late",
                        help="off, depth, agenda or late (default late)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("DYNLP_DATA_MIRROR", bench.DEFAULT_DATA)),
                        help="the data mirror (default ../shared/data or DYNLP_DATA_MIRROR)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on generated data")
    parser.add_argument("--model-code", action="store_true",
                        help="also time the model code over stub ops (treenn-user only)")
    parser.add_argument("--floor", action="store_true",
                        help="the floor of a Python engine against DyNet's step (treenn-user "
                             "only; DyNet's step when the dynet module imports)")
    args = parser.parse_args(argv)
    if (args.model_code or args.floor) and args.workload != "treenn-user":
        parser.error("--model-code and --floor: only the treenn-user workload has stub ops")
    strategy: bool | str = False if args.strategy == "off" else args.strategy
    rng = np.random.default_rng(0)
    data_dir = args.data if args.data.exists() else None
    data = bench.load_data([args.workload], data_dir, rng, tiny=args.tiny)
    workload = bench.make_workload(args.workload, data, None, tiny=args.tiny)
    examples = workload.examples
    order = rng.permutation(len(examples))
    batches = [[examples[order[(k * args.batch + j) % len(examples)]] for j in range(args.batch)]
               for k in range(args.steps + 2)]
    medians, per_op, stats = profile(workload, strategy, batches)
    total = medians.sum()
    print(f"{args.workload}, {args.strategy}, batch {args.batch}: {stats['nodes']} nodes, "
          f"{stats['forward_batches']} batches, median of {args.steps} steps (CPU ms)")
    for name, ms in zip(PHASES, medians):
        print(f"  {name:22s} {ms:7.2f}  {100 * ms / total:5.1f}%")
    print(f"  {'total':22s} {total:7.2f}  -> {args.batch / total * 1000:.0f} examples per "
          f"CPU second")
    if args.model_code:
        ms = model_code_ms(workload, batches)
        print(f"  model code over stub ops {ms:5.2f} ms per minibatch (of the build's "
              f"{medians[0]:.2f})")
    if args.floor:
        floor(workload, data, strategy, batches, _dynet_imports(), args.tiny)
    print("numpy time per op (CPU ms per step, mean):")
    for name, ms in sorted(per_op.items(), key=lambda item: -item[1]):
        if ms >= 0.05:
            print(f"  {name:38s} {ms:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
