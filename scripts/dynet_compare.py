"""Run DyNet programs unchanged under DyNet and under dynlp (through `python -m dynlp.dynet`)
and compare what they print, number by number, and how long they take.

    python scripts/dynet_compare.py [--dynet-path DIR] [--rtol 1e-4] [--record PATH]
        [PROGRAM.py ...] [-- ARGS...]

Programs default to tests/dynet_programs/*.py, which set their parameters from a seeded numpy
generator so that both libraries start from the same numbers. DyNet must be importable (or
found under --dynet-path, e.g. a `pip install --target` of the dyNET38 wheel, see
docs/DYNET_PEER.md). Lines DyNet prints about deprecated calls are left out. Exits non-zero
when a line differs beyond --rtol. --record writes DyNet's outputs as the tests read them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "tests" / "dynet_programs"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def run(command: list[str], env: dict) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-2000:]}")
    lines = [line for line in out.stdout.splitlines()
             if line.strip() and "DEPRECATED" not in line and not line.startswith(" ")]
    return lines, seconds


def same(a: str, b: str, rtol: float) -> bool:
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if abs(float(x) - float(y)) > rtol * max(1.0, abs(float(y))):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*")
    parser.add_argument("--dynet-path", default="")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--record", default="")
    args = parser.parse_args(argv)
    programs = [Path(p) for p in args.programs] or sorted(
        p for p in PROGRAMS.glob("*.py") if p.name != "common.py")
    base = dict(os.environ)
    dynet_env = dict(base, PYTHONPATH=os.pathsep.join(
        p for p in (args.dynet_path, str(PROGRAMS), base.get("PYTHONPATH", "")) if p))
    dynlp_env = dict(base, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p))
    failed = 0
    recorded = {}
    print(f"{'program':<12} {'lines':>5} {'same':>5} {'DyNet s':>8} {'dynlp s':>8}")
    for program in programs:
        theirs, t_dynet = run([sys.executable, str(program), *extra], dynet_env)
        ours, t_dynlp = run([sys.executable, "-m", "dynlp.dynet", str(program), *extra],
                            dynlp_env)
        ok = len(theirs) == len(ours) and all(same(a, b, args.rtol) for a, b in zip(ours, theirs))
        failed += not ok
        recorded[program.stem] = theirs
        print(f"{program.stem:<12} {len(theirs):>5} {'yes' if ok else 'NO':>5} "
              f"{t_dynet:>8.2f} {t_dynlp:>8.2f}")
        if not ok:
            for a, b in zip(theirs, ours):
                print(f"    DyNet: {a}\n    dynlp: {b}")
    if args.record:
        version = run([sys.executable, "-c", "import dynet; print(dynet.__version__)"],
                      dynet_env)[0][-1]
        Path(args.record).write_text(json.dumps(
            {"recorded_with": f"DyNet {version}: python PROGRAM.py {' '.join(extra)}".strip(),
             "outputs": recorded}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
