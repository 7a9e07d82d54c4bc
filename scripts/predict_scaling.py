"""What data-parallel training should reach on N ranks, on paper (docs/DISTRIBUTED.md): for each
recipe, the bytes one step sends (dense gradients in one allreduce, touched lookup rows in one
allgather) against the compute of one step, and the predicted throughput for 8, 64 and 512
ranks on 10 and 100 Gb/s networks. Parameter counts and touched rows are measured on the data
(the recipes' default models, a share of `--per-rank` examples); the compute of a step comes
from a measured single-process speed. A formula, not a simulator:

    t(N) = t_compute + t_dense(N) + t_rows(N)
    t_dense(N) = 2 log2(N) a + 2 (N - 1) / N * 4 P / B        (allreduce of P float32)
    t_rows(N)  = log2(N) a + (N - 1) * R / B                  (allgather: every rank receives
                                                               the R bytes of every other)
    examples/s(N) = N * b / t(N)

with a the latency of one message, B the bandwidth per rank, b examples per rank and step, and
R = sum over tables of rows * (8 + 4 d) bytes that one rank's share touches.

    python scripts/predict_scaling.py --mirror ../shared/data
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dynlp as dn  # noqa: E402
from dynlp.data import fetch  # noqa: E402
from recipes import parser as parser_recipe  # noqa: E402
from recipes import tagger, treelstm  # noqa: E402

RECIPES = {"tagger": tagger, "treelstm": treelstm, "parser": parser_recipe}
# one process, examples per second while training with dropout (docs/RESULTS.md, this machine)
MEASURED = {"tagger": 260.0, "treelstm": 900.0, "parser": 250.0}
NETWORKS = {"10 Gb/s": (10e9 / 8, 30e-6), "100 Gb/s": (100e9 / 8, 3e-6)}  # bytes/s, latency s
RANKS = (8, 64, 512)


def measure(name: str, mirror: str | None, per_rank: int, steps: int) -> dict:
    """Dense parameters, and the bytes of touched rows of one rank's share (mean over steps)."""
    recipe = RECIPES[name]
    files = fetch(recipe.DEFAULT_DATASET, mirror=mirror, progress=False)
    examples = recipe.read_examples(files["train"])
    config = {**recipe.DEFAULTS}
    pc = dn.ParameterCollection(seed=1)
    model = recipe.Model(pc, config, recipe.Model.build_vocabs(examples, config))
    dense = sum(p.value.size for p in pc.parameters() if not getattr(p, "is_lookup", False))
    tables = [p for p in pc.parameters() if getattr(p, "is_lookup", False)]
    rng = np.random.default_rng(0)
    row_bytes = []
    for _ in range(steps):
        share = [examples[i] for i in rng.choice(len(examples), per_rank, replace=False)]
        with dn.Graph(seed=1) as g:
            total = dn.esum([model.loss(x, rng) for x in share])
            total.backward()
        row_bytes.append(sum(len(t.sparse_grad()[0]) * (8 + 4 * t.shape[1]) for t in tables))
        pc.clear_grads()
        del g
    return {"dense": dense, "tables": [t.shape for t in tables], "rows": float(np.mean(row_bytes))}


def step_seconds(compute: float, dense: int, rows: float, ranks: int, bandwidth: float,
                 latency: float) -> float:
    hops = math.log2(ranks)
    t_dense = 2 * hops * latency + 2 * (ranks - 1) / ranks * 4 * dense / bandwidth
    t_rows = hops * latency + (ranks - 1) * rows / bandwidth
    return compute + t_dense + t_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", help="dataset mirror folder")
    parser.add_argument("--per-rank", type=int, default=32, help="examples per rank and step")
    parser.add_argument("--steps", type=int, default=5, help="shares to average rows over")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = parser.parse_args()
    b = args.per_rank
    for name in args.recipes:
        m = measure(name, args.mirror, b, args.steps)
        compute = b / MEASURED[name]
        print(f"{name}: {m['dense']:,} dense parameters ({4 * m['dense'] / 1e6:.2f} MB a "
              f"step), tables {m['tables']}, touched rows of {b} examples "
              f"{m['rows'] / 1e3:.0f} kB; compute {1e3 * compute:.0f} ms a step "
              f"({MEASURED[name]:.0f} examples/s on one core)")
        for network, (bandwidth, latency) in NETWORKS.items():
            cells = []
            for ranks in RANKS:
                t = step_seconds(compute, m["dense"], m["rows"], ranks, bandwidth, latency)
                cells.append(f"{ranks} ranks {ranks * b / t:>8,.0f} ex/s "
                             f"({100 * compute / t:.0f}%)")
            print(f"  {network:>8}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
