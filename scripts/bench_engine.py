"""Engine overhead per node: build, forward and backward a long chain of small ops, beside the
smallest Python engine over the same op table (the floor) and the bare numpy calls that do the
same arithmetic, all measured in the same run (CPU time). The engine rows build with fusion off
(one node per op); the "dynlp fused" row fuses while building (the chain's elementwise ops
become a few fused nodes) and is given per op written, like the others.

The floor records each op as one tuple in a list, runs forward by calling the op's forward
rule from the op table over (1, dim) arrays, and backward by its VJP rule, accumulating the
cotangents into a list of gradients: no shape check, no signature, no scheduling, no batching.
It computes the same float32 values as dynlp (checked here: the loss and the input's gradient).

    python scripts/bench_engine.py [--nodes 20000] [--dim 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

import dynlp as dn
from dynlp.ops import TABLE

clock = time.process_time


def chain(n: int, dim: int, autobatch, fuse: bool = False, check: dict | None = None) -> dict:
    """x -> tanh(x) * c + x ... : n small ops in one dependent chain (nothing to batch).
    `check`, if given, receives the loss and the gradient of x."""
    x0 = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    t0 = clock()
    with dn.Graph(autobatch=autobatch, fuse=fuse) as g:
        x = dn.inputs(x0)
        h = x
        for i in range(n // 3):
            h = dn.tanh(h) * 0.5 + x
        loss = dn.sum_elems(h)
        t1 = clock()
        loss.forward()
        t2 = clock()
        loss.backward()
        t3 = clock()
        nodes = g.stats()["nodes_before_fusion"]
        if check is not None:
            check["loss"] = loss.npvalue()
            check["grad"] = x.gradient()
    return {"nodes": nodes, "build": t1 - t0, "forward": t2 - t1, "backward": t3 - t2}


_TANH, _MUL_CONST, _ADD, _SUM = (TABLE[name] for name in ("tanh", "mul_const", "add",
                                                           "sum_elems"))
_NONE: dict = {}


def floor(n: int, dim: int, check: dict | None = None) -> dict:
    """The same chain through the smallest engine over the op table: a node is a tuple
    (forward rule, VJP rule, argument nodes, attributes) appended to a list."""
    x0 = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    t0 = clock()
    tape: list[tuple] = []
    record = tape.append

    def node(op, args, attrs=_NONE):
        record((op.forward, op.vjp, args, attrs))
        return len(tape) - 1

    record((None, None, (), x0[None]))  # a leaf: its value in place of the attributes
    x = 0
    h = x
    half = {"c": 0.5}
    for i in range(n // 3):
        h = node(_ADD, (node(_MUL_CONST, (node(_TANH, (h,)),), half), x))
    loss = node(_SUM, (h,))
    t1 = clock()
    values: list = []
    keep = values.append
    for forward, _, args, attrs in tape:
        if forward is None:
            keep(attrs)
        elif len(args) == 1:
            keep(forward(values[args[0]], **attrs))
        else:
            keep(forward(*[values[a] for a in args], **attrs))
    t2 = clock()
    grads: list = [None] * len(tape)
    grads[loss] = np.ones_like(values[loss])
    for i in range(len(tape) - 1, -1, -1):
        g = grads[i]
        forward, vjp, args, attrs = tape[i]
        if g is None or forward is None:
            continue
        cts = vjp(g, values[i], *[values[a] for a in args], **attrs)
        for a, ct in zip(args, cts):
            if ct is not None:
                grads[a] = ct if grads[a] is None else grads[a] + ct
    t3 = clock()
    if check is not None:
        check["loss"] = values[loss][0]
        check["grad"] = grads[x][0]
    return {"nodes": len(tape), "build": t1 - t0, "forward": t2 - t1, "backward": t3 - t2}


def bare_numpy(n: int, dim: int) -> dict:
    """The same arithmetic with plain numpy calls on (1, dim) arrays, forward and backward."""
    x = np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32)
    t1 = clock()
    h, outs = x, []
    for i in range(n // 3):
        t = np.tanh(h)
        m = t * 0.5
        h = m + x
        outs.append(t)
    s = h.sum()
    t2 = clock()
    g = np.ones_like(h)
    gx = np.zeros_like(h)
    for t in reversed(outs):
        gx = gx + g
        gm = g * 0.5
        g = gm * (1.0 - t * t)
    t3 = clock()
    del s
    return {"forward": t2 - t1, "backward": t3 - t2}


def check_floor(nodes: int, dim: int) -> None:
    """The floor computes what dynlp computes: the same loss and gradient of x, bit for bit."""
    ours, theirs = {}, {}
    chain(nodes, dim, False, check=ours)
    floor(nodes, dim, check=theirs)
    for key in ("loss", "grad"):
        if ours[key].dtype != np.float32 or not np.array_equal(ours[key], theirs[key]):
            raise AssertionError(f"the floor's {key} differs from dynlp's: {theirs[key]!r} "
                                 f"against {ours[key]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    check_floor(args.nodes, args.dim)
    gc.disable()
    variants = (("dynlp autobatch", lambda: chain(args.nodes, args.dim, True)),
                ("dynlp no batching", lambda: chain(args.nodes, args.dim, False)),
                ("dynlp fused, off", lambda: chain(args.nodes, args.dim, False, True)),
                ("floor (Python)", lambda: floor(args.nodes, args.dim)),
                ("bare numpy", lambda: bare_numpy(args.nodes, args.dim)))
    runs: dict[str, list] = {label: [] for label, _ in variants}
    try:
        for _ in range(args.repeats):  # (interleaved: each round runs every variant once)
            for label, fn in variants:
                runs[label].append(fn())
    finally:
        gc.enable()
    rows = {label: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            for label, rs in runs.items()}
    nodes = int(rows["dynlp autobatch"]["nodes"])  # the median of equal counts is a float
    assert int(rows["floor (Python)"]["nodes"]) == nodes
    print(f"chain of {nodes} nodes, dim {args.dim}, median of {args.repeats} runs "
          "(CPU microseconds per node; the floor's gradient checked equal to dynlp's)")
    print(f"{'':20} {'build':>8} {'forward':>8} {'backward':>9} {'total':>8} {'/floor':>7} "
          f"{'fwd/numpy':>10} {'bwd/numpy':>10}")
    base, least = rows["bare numpy"], rows["floor (Python)"]
    least_total = least["build"] + least["forward"] + least["backward"]
    for label, r in rows.items():
        us = {k: 1e6 * v / nodes for k, v in r.items() if k != "nodes"}
        total = r.get("build", 0.0) + r["forward"] + r["backward"]
        print(f"{label:20} {us.get('build', 0.0):8.2f} {us['forward']:8.2f} "
              f"{us['backward']:9.2f} {1e6 * total / nodes:8.2f} {total / least_total:7.2f} "
              f"{r['forward'] / base['forward']:10.2f} {r['backward'] / base['backward']:10.2f}")


if __name__ == "__main__":
    main()
