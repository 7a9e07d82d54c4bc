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
    python scripts/bench_shards.py --mirror ../shared/data --recipe treelstm --twin --steps 30

With --twin, a second process trains the same model on the same minibatches, whole, over and
over, and every step is timed twice, that process paused (SIGSTOP) and running (SIGCONT), in
alternating order: how much a second core busy with the same work slows the first, measured
side by side. Two ranks can at best reach whole / costliest share divided by that slowdown,
before their exchange and update.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

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
    parser.add_argument("--step-costs",
                        help="comma-separated step costs of shard_batch to compare (default 0,2; "
                             "with --twin, the recipe's own, as dynlp train deals)")
    parser.add_argument("--repeat-shares", type=int, default=0, metavar="K",
                        help="also time each share of the first step cost K times in a row: how "
                             "much one share's time moves, against how much the shares differ")
    parser.add_argument("--beside", choices=("nothing", "loop", "copy"), default="nothing",
                        help="run beside another process: a pure-Python loop, or one copying "
                             "64 MB arrays over and over (how much memory traffic slows a share)")
    parser.add_argument("--twin", action="store_true",
                        help="time every step twice, beside the same training paused and running "
                             "in another process (POSIX only)")
    parser.add_argument("--as-twin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_twin:
        _twin(args)
        return
    if args.twin and (args.beside != "nothing" or args.repeat_shares):
        parser.error("--twin goes with neither --beside nor --repeat-shares")
    if args.steps < 1 or args.ranks < 2 or args.limit < 1 or args.repeat_shares < 0 or \
            args.repeat_shares == 1:
        parser.error("--steps and --limit must be >= 1, --ranks >= 2, --repeat-shares 0 or >= 2")
    try:
        costs = [int(c) for c in (args.step_costs or "0,2").split(",")]
    except ValueError:
        parser.error(f"--step-costs must be whole numbers, not {args.step_costs!r}")
    other = None
    if args.beside != "nothing":
        other = subprocess.Popen([sys.executable, "-c", _BESIDE[args.beside]])
    elif args.twin:
        other = subprocess.Popen([sys.executable, __file__, "--as-twin"] + list(
            argv if argv is not None else sys.argv[1:]), stdin=subprocess.DEVNULL)
        os.kill(other.pid, signal.SIGSTOP)
    try:
        _measure(args, costs, other if args.twin else None)
    finally:
        if other is not None:
            other.kill()
            other.wait()


# seconds the --twin process gets to load its data and model and start its steps
_TWIN_WARM_UP = 4.0

# what --beside runs in a process of its own until it is killed
_BESIDE = {
    "loop": "s = 0\nwhile True:\n    s = (s + 1) % 1000003",
    "copy": "import numpy as np\na = np.ones(2**24, np.float32)\nb = np.empty_like(a)\n"
            "while True:\n    np.copyto(b, a)",
}


def _setup(args: argparse.Namespace) -> tuple:
    """The recipe's examples, config, parameters and model."""
    recipe = importlib.import_module(f"recipes.{args.recipe}")
    path = args.train or fetch(recipe.DEFAULT_DATASET, mirror=args.mirror)["train"]
    examples = recipe.read_examples(path)[:args.limit]
    config = dict(recipe.DEFAULTS)
    pc = dn.ParameterCollection(seed=1)
    model = recipe.Model(pc, config, recipe.Model.build_vocabs(examples, config))
    return examples, config, pc, model


def _twin(args: argparse.Namespace) -> None:
    """The --twin process: the same whole minibatches' steps over and over, until killed."""
    examples, config, pc, model = _setup(args)
    while True:
        for step, batch in enumerate(batches(examples, config["batch_size"], shuffle=True,
                                             seed=1, epoch=0)):
            train._share_loss(model, batch, list(range(len(batch))), 1, 0, step, "late")
            pc.clear_grads()


def _measure(args: argparse.Namespace, costs: list[int],
             twin: subprocess.Popen | None = None) -> None:
    examples, config, pc, model = _setup(args)

    def seconds(batch: list, positions: list[int], step: int) -> float:
        start = time.process_time()
        train._share_loss(model, batch, positions, 1, 0, step, "late")
        elapsed = time.process_time() - start
        pc.clear_grads()  # (else the tables' gradient chunks pile up)
        return elapsed

    if twin is not None:
        own = getattr(model, "shard_step_cost", distributed.STEP_COST)
        _beside_twin(args, costs[0] if args.step_costs else own, examples, config, twin,
                     seconds)
        return

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


def _beside_twin(args: argparse.Namespace, cost: int, examples: list, config: dict,
                 twin: subprocess.Popen, seconds: Callable) -> None:
    """Each step's whole minibatch and costliest share, timed with the twin paused and
    running (which first alternates by step; the twin first loads its model and runs)."""
    os.kill(twin.pid, signal.SIGCONT)
    time.sleep(_TWIN_WARM_UP)
    alone: dict[str, list[float]] = {"whole": [], "share": []}
    beside: dict[str, list[float]] = {"whole": [], "share": []}
    print(f"{args.recipe}: {len(examples)} examples, minibatches of {config['batch_size']}, "
          f"{args.ranks} ranks, step cost {cost}; CPU ms of the whole step and the costliest "
          "share, the twin paused, then running")
    for step, batch in enumerate(batches(examples, config["batch_size"], shuffle=True, seed=1,
                                         epoch=0)):
        if step >= args.steps + 1:
            break
        shares = [distributed.Communicator(_Ranks(r, args.ranks)).shard_batch(
            batch, step_cost=cost) for r in range(args.ranks)]
        timed = {}
        for running in ((False, True) if step % 2 else (True, False)):
            os.kill(twin.pid, signal.SIGCONT if running else signal.SIGSTOP)
            timed[running] = (seconds(batch, list(range(len(batch))), step),
                              max(seconds(batch, share, step) for share in shares))
        os.kill(twin.pid, signal.SIGSTOP)
        if step == 0:
            continue
        print(f"  step {step:3d}: paused {1e3 * timed[False][0]:7.1f} {1e3 * timed[False][1]:7.1f}"
              f"   running {1e3 * timed[True][0]:7.1f} {1e3 * timed[True][1]:7.1f}")
        for running, into in ((False, alone), (True, beside)):
            into["whole"].append(timed[running][0])
            into["share"].append(timed[running][1])
    median = statistics.median
    ratio = median(w / s for w, s in zip(alone["whole"], alone["share"]))
    slow_whole = median(b / a for a, b in zip(alone["whole"], beside["whole"]))
    slow_share = median(b / a for a, b in zip(alone["share"], beside["share"]))
    print(f"whole / costliest share, the twin paused: median {ratio:.2f}x; beside the running "
          f"twin, the whole step takes {slow_whole:.2f}x and the costliest share {slow_share:.2f}x "
          f"as long (medians over {len(alone['whole'])} minibatches): {args.ranks} ranks can at "
          f"best reach {ratio / slow_share:.2f}x before they exchange and update")


if __name__ == "__main__":
    main()
