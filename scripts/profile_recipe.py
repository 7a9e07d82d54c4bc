"""Where the time of a recipe's training step goes: CPU milliseconds of graph building (the
recipe's own model code, dropout masks included), forward, backward, graph exit and the update,
per minibatch of the recipe's default settings, and the node count of a step by op.

    python scripts/profile_recipe.py tagger [--steps 15] [--data DIR] [--dropout R]
        [--fuse on|off|both] [--rounds N]

The training examples are the first 3000 of the recipe's default corpus in the data mirror
(`--train F` for another file). Steps are the same minibatches as `dynlp train` would see in its
first epoch with `--seed 1` (the same shuffling and per-step seeds), after one warm-up step.
`--dropout R` sets every dropout rate of the recipe except word dropout (0 measures the
recipe without dropout). To compare two commits, run this script from each in turn, alternating,
on a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads (see PERFORMANCE.md)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import dynlp as dn  # noqa: E402
from dynlp.data import batches  # noqa: E402
from dynlp.train import COMMON_DEFAULTS, step_rng  # noqa: E402
from dynlp.trainers import make_trainer  # noqa: E402

RECIPES = ("tagger", "parser", "treelstm")
CORPUS = {"tagger": "ud_english_ewt/en_ewt-ud-train.conllu",
          "parser": "ud_english_ewt/en_ewt-ud-train.conllu",
          "treelstm": "sst/train.txt"}
PHASES = ("build", "forward", "backward", "graph exit", "update")


def profile(name: str, train: Path, steps: int, dropout: float | None = None,
            limit: int = 3000, fuse: bool = True) -> tuple[dict[str, float], Counter, int]:
    """Median CPU ms per phase over `steps` steps, the ops of the last step's graph, and the
    minibatch size."""
    recipe = importlib.import_module(f"recipes.{name}")
    examples = recipe.read_examples(train)[:limit]
    config = {**COMMON_DEFAULTS, **recipe.DEFAULTS}
    if dropout is not None:
        for key in config:
            if "dropout" in key and key != "word_dropout":
                config[key] = dropout
    pc = dn.ParameterCollection(seed=int(config["seed"]))
    model = recipe.Model(pc, config, recipe.Model.build_vocabs(examples, config))
    trainer = make_trainer(config["optimizer"], pc, learning_rate=float(config["learning_rate"]))
    size, seed = int(config["batch_size"]), int(config["seed"])
    clock = time.process_time
    rows, ops = [], Counter()
    for step, batch in enumerate(batches(examples, size, shuffle=True, seed=seed, epoch=1)):
        if step > steps:
            break
        rng = step_rng(seed, 1, step)
        t0 = clock()
        with dn.Graph(seed=int(rng.integers(2**63 - 1)), fuse=fuse) as g:
            if hasattr(model, "batch_loss"):
                total = model.batch_loss(batch, rng)
            else:
                total = dn.esum([model.loss(example, rng) for example in batch])
            t1 = clock()
            total.scalar_value()
            t2 = clock()
            total.backward()
            t3 = clock()
            ops = Counter(op.name for op in g.ops)
        t4 = clock()
        trainer.update()
        t5 = clock()
        if step > 0:  # the first step warms up
            rows.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4])
    if not rows:
        raise SystemExit(f"{train}: fewer than two minibatches of {size}")
    medians = np.median(np.array(rows), axis=0) * 1000
    return dict(zip(PHASES, medians)), ops, size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "DYNLP_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data")),
        help="the data mirror (default ../shared/data or DYNLP_DATA_MIRROR)")
    parser.add_argument("--train", type=Path, default=None,
                        help="the training file (default: the recipe's corpus in the mirror)")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--fuse", choices=("on", "off", "both"), default="on",
                        help="fusion on, off, or both in alternating rounds (--rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    train = args.train or args.data / CORPUS[args.recipe]
    if not train.exists():
        parser.error(f"no training file at {train}; give --data or --train")
    if args.fuse == "both":
        totals: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for fuse in (False, True):
                phases, ops, size = profile(args.recipe, train, args.steps, args.dropout,
                                            fuse=fuse)
                totals[fuse].append(sum(phases.values()))
                print(f"  fuse {'on ' if fuse else 'off'}: {sum(phases.values()):7.2f} ms, "
                      f"{sum(ops.values())} nodes: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        on, off = np.median(totals[True]), np.median(totals[False])
        print(f"{args.recipe}: median CPU ms per step, fusion on {on:.2f}, off {off:.2f}: "
              f"on is {off / on:.2f}x the speed of off ({args.rounds} alternating rounds)")
        return 0
    phases, ops, size = profile(args.recipe, train, args.steps, args.dropout,
                                fuse=args.fuse == "on")
    total = sum(phases.values())
    print(f"{args.recipe}: batch {size}, median of {args.steps} steps (CPU ms), "
          f"{sum(ops.values())} nodes")
    for name, ms in phases.items():
        print(f"  {name:12s} {ms:7.2f}  {100 * ms / total:5.1f}%")
    print(f"  {'total':12s} {total:7.2f}  -> {size / total * 1000:.0f} examples per CPU second")
    print("nodes by op: " + ", ".join(f"{name} {n}" for name, n in ops.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
