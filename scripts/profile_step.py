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


def profile(workload: bench.Workload, strategy: bool | str, batches: list[list]) -> tuple:
    """Per-phase medians (ms) and per-op numpy totals (ms per step) over the batches."""
    model = workload.dynlp
    model.step(batches[0], strategy)
    model.step(batches[1], strategy)
    op_times: dict[str, float] = defaultdict(float)
    originals = {}
    for op in TABLE.values():
        originals[op.name] = (op.forward, op.vjp)
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
        for op in TABLE.values():
            op.forward, op.vjp = originals[op.name]
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


def model_code_ms(workload: bench.Workload, batches: list[list]) -> float:
    """Median CPU ms of the treenn-user model code per minibatch with every op a stub call."""
    model = workload.dynlp
    saved = dict(vars(model)), bench.dn
    stub = SimpleNamespace(parameter=lambda p: p, logistic=_Stub, tanh=_Stub,
                           concatenate=_Stub, pick_neg_log_softmax=_Stub, esum=_Stub)
    for name in ("WS", "US", "UFS", "BS"):
        setattr(model, name, [_Stub() for _ in getattr(model, name)])
    model.E, model.W_ = _Stub(), _Stub()
    bench.dn = stub
    try:
        times = []
        for batch in batches:
            start = time.process_time()
            for example in batch:
                model.loss(example)
            times.append(time.process_time() - start)
    finally:
        vars(model).update(saved[0])
        bench.dn = saved[1]
    return float(np.median(times)) * 1000


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
    args = parser.parse_args(argv)
    if args.model_code and args.workload != "treenn-user":
        parser.error("--model-code: only the treenn-user workload has stub ops")
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
    print("numpy time per op (CPU ms per step, mean):")
    for name, ms in sorted(per_op.items(), key=lambda item: -item[1]):
        if ms >= 0.05:
            print(f"  {name:38s} {ms:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
