"""Engine overhead per node: build, forward and backward a long chain of small ops, beside the
bare numpy calls that do the same arithmetic, measured in the same run. The engine rows build
with fusion off (one node per op); the last dynlp row fuses while building (the chain's
elementwise ops become a few fused nodes) and is given per op written, like the others.

    python scripts/bench_engine.py [--nodes 20000] [--dim 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

import dynlp as dn


def chain(n: int, dim: int, autobatch, fuse: bool = False) -> dict:
    """x -> tanh(x) * c + x ... : n small ops in one dependent chain (nothing to batch)."""
    x0 = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    t0 = time.perf_counter()
    with dn.Graph(autobatch=autobatch, fuse=fuse) as g:
        x = dn.inputs(x0)
        h = x
        for i in range(n // 3):
            h = dn.tanh(h) * 0.5 + x
        loss = dn.sum_elems(h)
        t1 = time.perf_counter()
        loss.forward()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        nodes = g.stats()["nodes_before_fusion"]
    return {"nodes": nodes, "build": t1 - t0, "forward": t2 - t1, "backward": t3 - t2}


def bare_numpy(n: int, dim: int) -> dict:
    """The same arithmetic with plain numpy calls on (1, dim) arrays, forward and backward."""
    x = np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32)
    t1 = time.perf_counter()
    h, outs = x, []
    for i in range(n // 3):
        t = np.tanh(h)
        m = t * 0.5
        h = m + x
        outs.append(t)
    s = h.sum()
    t2 = time.perf_counter()
    g = np.ones_like(h)
    gx = np.zeros_like(h)
    for t in reversed(outs):
        gx = gx + g
        gm = g * 0.5
        g = gm * (1.0 - t * t)
    t3 = time.perf_counter()
    del s
    return {"forward": t2 - t1, "backward": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gc.disable()
    rows = {}
    for label, fn in (("dynlp autobatch", lambda: chain(args.nodes, args.dim, True)),
                      ("dynlp no batching", lambda: chain(args.nodes, args.dim, False)),
                      ("dynlp fused, off", lambda: chain(args.nodes, args.dim, False, True)),
                      ("bare numpy", lambda: bare_numpy(args.nodes, args.dim))):
        runs = [fn() for _ in range(args.repeats)]
        rows[label] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    nodes = int(rows["dynlp autobatch"]["nodes"])  # the median of equal counts is a float
    print(f"chain of {nodes} nodes, dim {args.dim}, median of {args.repeats} runs "
          "(microseconds per node)")
    print(f"{'':20} {'build':>8} {'forward':>8} {'backward':>9} {'fwd/numpy':>10} "
          f"{'bwd/numpy':>10}")
    base = rows["bare numpy"]
    for label, r in rows.items():
        us = {k: 1e6 * v / nodes for k, v in r.items() if k != "nodes"}
        ratio_f = r["forward"] / base["forward"]
        ratio_b = r["backward"] / base["backward"]
        print(f"{label:20} {us.get('build', 0.0):8.2f} {us['forward']:8.2f} {us['backward']:9.2f} "
              f"{ratio_f:10.2f} {ratio_b:10.2f}")


if __name__ == "__main__":
    main()
