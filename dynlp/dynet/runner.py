"""Run a DyNet program unmodified: bind the module names `dynet`, `_dynet` and `dynet_config`
to dynlp.dynet, read the `--dynet-*` flags from the program's arguments, then run the program
as `__main__` with its own argv.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Sequence

USAGE = ("usage: python -m dynlp.dynet [--dynet-FLAG VALUE ...] SCRIPT [ARGS...]\n"
         "       (also: dynlp run-dynet ...); --dynet-* flags before SCRIPT configure dynlp\n"
         "       without reaching the program's own argument parser\n")


def bind() -> None:
    """Make `import dynet` and `import dynet_config` give dynlp.dynet."""
    from .. import dynet
    sys.modules["dynet"] = dynet
    sys.modules["_dynet"] = dynet
    sys.modules["dynet_config"] = dynet.dynet_config


def run(script: str, args: Sequence[str], flags: Sequence[str] = ()) -> None:
    from .config import init_from_argv
    bind()
    sys.argv = [script, *args]
    init_from_argv([*flags, *sys.argv])
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    flags = []
    while argv and argv[0].startswith("--dynet-"):
        flag = argv.pop(0)
        flags.append(flag)
        if "=" not in flag and argv:
            flags.append(argv.pop(0))
    if not argv or not os.path.isfile(argv[0]):
        sys.stderr.write(f"dynlp.dynet: error: {argv[0] if argv else 'no SCRIPT'}: "
                         "no such file\n")
        return 2
    try:
        run(argv[0], argv[1:], flags)
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        sys.stderr.write(f"{code}\n")
        return 1
    return 0
