"""Data-parallel training speed: examples per second of each recipe trained by 1 process and by
N ranks (`mpiexec -n N dynlp train ...`) at the same global batch and seed, side by side, with
the dev score each reaches after the same epochs, and the load average around each run (the
1-minute figure, before or after, whichever is higher: above 1 for one process or 2 for two
ranks, other work shared the cores and the speeds are low). The last column is the speed-up in
examples per CPU second of the busiest rank (`cpu_seconds` of the log), what ranks with a core
each would approach (it leaves out the time a rank waits for the other). A second table splits
each rank's step: its share's compute (graph, forward, backward), the wait in sum_gradients
for the other ranks' shares, the exchange itself, and the trainer's update (the log's
`phase_seconds`; the loop's own work is the rest of the step), and the seconds of the dev
evaluations during training (split across the ranks). With --rounds K, each recipe is trained
K times each way, alternating (1 process then N ranks, then N ranks then 1 process, ...), and
the speed-up is the median of the K rounds' ratios, with their range: the machine's speed
drifts by more than a round's two runs differ. Needs the optional MPI support
(pip install -e '.[mpi]'); reads the recipes' datasets from a mirror or the cache, or the files
given by --train and --dev.

    python scripts/bench_distributed.py --mirror ../shared/data              # 1 epoch, all data
    python scripts/bench_distributed.py --mirror ../shared/data --limit 2000 --recipes tagger
    python scripts/bench_distributed.py --mirror ../shared/data --limit 3000 --dev-limit 300 \
        --rounds 3                                                           # medians of 3
    python scripts/bench_distributed.py --mirror ../shared/data --limit 3000 --dev-limit 300 \
        --rounds 5 --batch-scale 2            # global batches twice the recipes' own
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

RECIPES = ("tagger", "treelstm", "parser")
PHASES = ("compute", "waiting", "exchange", "update")
MAIN_METRIC = {"tagger": "upos_accuracy", "treelstm": "root_fine", "parser": "las"}


def mpiexec() -> str:
    """The mpiexec beside this Python (the `mpich` wheel's), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_distributed: no mpiexec; install MPI support with "
                 "pip install -e '.[mpi]'")
    return found


def run(recipe: str, ranks: int, out: Path, args: argparse.Namespace) -> dict:
    """Train with `ranks` processes; the last epoch's log record and the wall time."""
    command = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "dynlp", "train", recipe,
               "--out", str(out), "--epochs", str(args.epochs), "--seed", str(args.seed)]
    if args.mirror:
        command += ["--mirror", args.mirror]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.dev_limit:
        command += ["--dev-limit", str(args.dev_limit)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    elif args.batch_scale != 1:
        command += ["--batch-size", str(args.batch_scale * default_batch(recipe))]
    if args.train:
        command += ["--train", args.train, "--dev", args.dev]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    load = max(load, os.getloadavg()[0])
    if done.returncode != 0:
        sys.exit(f"bench_distributed: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    seconds = sum(r["seconds"] for r in records)
    examples = sum(r["examples_per_second"] * r["seconds"] for r in records)
    cpu = sum(r["cpu_seconds"] for r in records)
    steps = sum(r.get("steps", 0) for r in records)  # (logs of older versions lack them)
    phases = {k: [1000 * sum(r["phase_seconds"][k][rank] for r in records) / steps
                  for rank in range(ranks)] for k in records[0].get("phase_seconds", ())}
    return {"examples_per_second": examples / seconds, "train_seconds": seconds,
            "examples_per_cpu_second": examples / cpu,
            "step_ms": 1000 * seconds / steps if steps else None,
            "phase_ms": phases, "dev_seconds": sum(r.get("dev_seconds") or 0 for r in records),
            "dev": records[-1]["dev"][MAIN_METRIC[recipe]], "loss": records[-1]["train_loss"],
            "wall_seconds": wall, "load": load}


def default_batch(recipe: str) -> int:
    """The recipe's own minibatch size (its DEFAULTS)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import importlib
    return int(importlib.import_module(f"recipes.{recipe}").DEFAULTS["batch_size"])


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--ranks", type=int, choices=range(2, 65), default=2, metavar="2..64",
                        help="ranks to compare with 1 process")
    parser.add_argument("--mirror", default=os.environ.get("DYNLP_DATA_MIRROR"),
                        help="dataset mirror folder (default $DYNLP_DATA_MIRROR)")
    parser.add_argument("--train", metavar="FILE", help="training file instead of the dataset "
                        "(with --dev; one recipe)")
    parser.add_argument("--dev", metavar="FILE", help="development file (with --train)")
    parser.add_argument("--limit", type=int, help="train on the first N examples")
    parser.add_argument("--dev-limit", type=int, help="score on the first N dev examples")
    parser.add_argument("--epochs", type=positive, default=1)
    parser.add_argument("--batch-size", type=positive,
                        help="global batch (default: the recipe's)")
    parser.add_argument("--batch-scale", type=positive, default=1, metavar="K",
                        help="global batch K times each recipe's own, for 1 process and N "
                             "ranks alike (K = N: each rank computes as many examples a step "
                             "as one process does at the recipe's batch)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=positive, default=1,
                        help="train each recipe this many times each way, alternating, and "
                             "give the median speed-up (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if (args.train is None) != (args.dev is None):
        parser.error("--train and --dev go together")
    if args.train and len(args.recipes) != 1:
        parser.error("--train needs exactly one recipe in --recipes")
    if args.batch_size and args.batch_scale != 1:
        parser.error("--batch-size and --batch-scale exclude each other")

    n = str(args.ranks)
    results = {}
    print(f"{'recipe':<10} {'1 rank ex/s':>12} {f'{n} ranks ex/s':>13} {'speed-up':>9} "
          f"{'dev 1':>7} {f'dev {n}':>7} {'loss 1':>9} {f'loss {n}':>9} "
          f"{'load':>9} {'CPU-bound':>9}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as scratch:
        for recipe in args.recipes:
            rounds = []
            for k in range(args.rounds):
                order = ("1", n) if k % 2 == 0 else (n, "1")
                runs = {ranks: run(recipe, int(ranks), Path(scratch) / f"{recipe}-{ranks}-{k}",
                                   args) for ranks in order}
                one, many = runs["1"], runs[n]
                rounds.append({"1": one, n: many,
                               "speedup": many["examples_per_second"]
                               / one["examples_per_second"],
                               "cpu_speedup": many["examples_per_cpu_second"]
                               / one["examples_per_cpu_second"]})
                label = recipe if args.rounds == 1 else f"{recipe} {k + 1}"
                print(f"{label:<10} {one['examples_per_second']:>12.1f} "
                      f"{many['examples_per_second']:>13.1f} {rounds[-1]['speedup']:>8.2f}x "
                      f"{one['dev']:>7.2f} {many['dev']:>7.2f} {one['loss']:>9.4f} "
                      f"{many['loss']:>9.4f} {one['load']:>4.1f} {many['load']:>4.1f} "
                      f"{rounds[-1]['cpu_speedup']:>8.2f}x", flush=True)
            # the round of the median speed-up (the lower middle one for an even count) stands
            # for the recipe in the step table
            ranked = sorted(rounds, key=lambda r: r["speedup"])
            middle = ranked[(len(ranked) - 1) // 2]
            speedups = [r["speedup"] for r in rounds]
            cpu_speedups = [r["cpu_speedup"] for r in rounds]
            results[recipe] = {**middle, "rounds": rounds,
                               "speedup": statistics.median(speedups),
                               "cpu_speedup": statistics.median(cpu_speedups)}
            if args.rounds > 1:
                print(f"{recipe:<10} median of {args.rounds} rounds: speed-up "
                      f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}-"
                      f"{max(speedups):.2f}), CPU-bound {statistics.median(cpu_speedups):.2f}x "
                      f"({min(cpu_speedups):.2f}-{max(cpu_speedups):.2f})", flush=True)
    print("\nwhere a step's time goes (wall ms per step, each rank; `phase_seconds` of the log"
          + ("" if args.rounds == 1 else "; the round of the median speed-up") + "):"
          f"\n{'recipe':<10} {'ranks':>5} {'step':>7}  "
          + " ".join(f"{k:>15}" for k in PHASES) + f" {'dev s':>7}", flush=True)
    for recipe, result in results.items():
        for ranks in ("1", n):
            run_ = result[ranks]
            if not run_["phase_ms"]:
                continue
            cells = " ".join(f"{'/'.join(f'{ms:.1f}' for ms in run_['phase_ms'][k]):>15}"
                             for k in PHASES)
            print(f"{recipe:<10} {ranks:>5} {run_['step_ms']:>7.1f}  {cells} "
                  f"{run_['dev_seconds']:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
