"""How well a minibatch splits across ranks, timed in one process: for each minibatch of a
recipe's training examples, the CPU time of the whole minibatch's step (build, forward,
backward) and of each rank's share as `Communicator.shard_batch` deals them for each step
cost asked for, one after the other on one core. The ratio whole / costliest share is what N
ranks with a core each could reach before they exchange gradients and update; the shares are
timed back to back, so the machine's load moves them less than it moves two runs.

    python scripts/bench_shards.py --mirror ../shared/data --recipe tagger --step-costs 0,2
    python scripts/bench_shards.py --mirror ../shared/data --recipe tagger --step-costs 2 \
        --repeat-shares 6 --steps 4 --beside copy
    python scripts/bench_shards.py --train data/tiny-train.conllu --recipe tagger --steps 2
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dynlp as dn  # noqa: E402
from dynlp import distributed, train  # noqa: E402
from dynlp.data import batches, fetch  # noqa: E402


class _Ranks:
    """The two methods of an mpi4py communicator that shard_batch reads."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's name)
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=("tagger", "treelstm", "parser"), default="tagger")
    parser.add_argument("--mirror", default=os.environ.get("DYNLP_DATA_MIRROR"),
                        help="dataset mirror folder (default $DYNLP_DATA_MIRROR)")
    parser.add_argument("--train", help="a training file instead of the recipe's dataset")
    parser.add_argument("--limit", type=int, default=3000, help="the first N examples")
    parser.add_argument("--steps", type=int, default=16, help="minibatches to time")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--step-costs", default="0,2",
                        help="comma-separated step costs of shard_batch to compare")
    parser.add_argument("--repeat-shares", type=int, default=0, metavar="K",
                        help="also time each share of the first step cost K times in a row: how "
                             "much one share's time moves, against how much the shares differ")
    parser.add_argument("--beside", choices=("nothing", "loop", "copy"), default="nothing",
                        help="run beside another process: a pure-Python loop, or one copying "
                             "64 MB arrays over and over (how much memory traffic slows a share)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.ranks < 2 or args.limit < 1 or args.repeat_shares < 0 or \
            args.repeat_shares == 1:
        parser.error("--steps and --limit must be >= 1, --ranks >= 2, --repeat-shares 0 or >= 2")
    try:
        costs = [int(c) for c in args.step_costs.split(",")]
    except ValueError:
        parser.error(f"--step-costs must be whole numbers, not {args.step_costs!r}")
    other = None
    if args.beside != "nothing":
        other = subprocess.Popen([sys.executable, "-c", _BESIDE[args.beside]])
    try:
        _measure(args, costs)
    finally:
        if other is not None:
            other.kill()
            other.wait()


# what --beside runs in a process of its own until it is killed
_BESIDE = {
    "loop": "s = 0\nwhile True:\n    s = (s + 1) % 1000003",
    "copy": "import numpy as np\na = np.ones(2**24, np.float32)\nb = np.empty_like(a)\n"
            "while True:\n    np.copyto(b, a)",
}


def _measure(args: argparse.Namespace, costs: list[int]) -> None:
    recipe = importlib.import_module(f"recipes.{args.recipe}")
    path = args.train or fetch(recipe.DEFAULT_DATASET, mirror=args.mirror)["train"]
    examples = recipe.read_examples(path)[:args.limit]
    config = dict(recipe.DEFAULTS)
    pc = dn.ParameterCollection(seed=1)
    model = recipe.Model(pc, config, recipe.Model.build_vocabs(examples, config))

    def seconds(batch: list, positions: list[int], step: int) -> float:
        start = time.process_time()
        train._share_loss(model, batch, positions, 1, 0, step, "late")
        return time.process_time() - start

    ratios: dict[int, list[float]] = {c: [] for c in costs}
    spreads: list[float] = []  # (max - min) / median of one share's repeated times
    gaps: list[float] = []  # costliest over cheapest share's median time, minus 1
    print(f"{args.recipe}: {len(examples)} examples, minibatches of {config['batch_size']}, "
          f"{args.ranks} ranks, beside {args.beside}; CPU ms of the whole step, then the "
          f"costliest share per step cost {costs}")
    for step, batch in enumerate(batches(examples, config["batch_size"], shuffle=True, seed=1,
                                         epoch=0)):
        if step >= args.steps + 1:
            break
        whole = seconds(batch, list(range(len(batch))), step)
        costliest = [max(seconds(batch, distributed.Communicator(_Ranks(r, args.ranks))
                                 .shard_batch(batch, step_cost=c), step)
                         for r in range(args.ranks)) for c in costs]
        if step == 0:
            continue  # (the first step warms caches and traces)
        print(f"  step {step:3d}: {1e3 * whole:7.1f}  " +
              "  ".join(f"{1e3 * t:7.1f}" for t in costliest))
        for c, t in zip(costs, costliest):
            ratios[c].append(whole / t)
        if args.repeat_shares:
            medians, repeated = [], []
            for r in range(args.ranks):
                positions = distributed.Communicator(_Ranks(r, args.ranks)).shard_batch(
                    batch, step_cost=costs[0])
                times = [seconds(batch, positions, step) for _ in range(args.repeat_shares)]
                repeated.append(times)
                medians.append(statistics.median(times))
                spreads.append((max(times) - min(times)) / medians[-1])
            gaps.append(max(medians) / min(medians) - 1)
            print(f"  step {step:3d}: each share's times: " + "; ".join(
                " ".join(f"{1e3 * t:.1f}" for t in times) for times in repeated))
    for c in costs:
        r = ratios[c]
        print(f"step cost {c}: whole / costliest share, median {statistics.median(r):.2f}x "
              f"(range {min(r):.2f}-{max(r):.2f}x over {len(r)} minibatches)")
    if spreads:
        print(f"step cost {costs[0]}, each share timed {args.repeat_shares} times: its times "
              f"spread by {100 * statistics.median(spreads):.0f}% of their median (median; up to "
              f"{100 * max(spreads):.0f}%); the costliest share's median exceeds the cheapest's "
              f"by {100 * statistics.median(gaps):.0f}% (median; up to {100 * max(gaps):.0f}%)")


if __name__ == "__main__":
    main()
