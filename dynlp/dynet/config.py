"""DyNet's configuration: `dynet_config.set(...)` and the `--dynet-*` command-line flags.

The seed seeds initializers, random inputs and dropout; `autobatch` 0 runs node by node, any
other value (or none) with dynlp's autobatching; memory, GPU and profiling settings are
accepted and ignored. Bound to the name `dynet_config` by the runner.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from .expr import STATE

_SETTINGS: dict[str, Any] = {"mem": 512, "random_seed": 0, "autobatch": None, "profiling": 0,
                             "weight_decay": 0.0, "shared_parameters": 0,
                             "requested_gpus": 0, "gpu_mask": None}


def set(mem: Any = 512, random_seed: int = 0, autobatch: Any = None, profiling: int = 0,
        weight_decay: float = 0.0, shared_parameters: int = 0, requested_gpus: int = 0,
        gpu_mask: Any = None) -> None:  # noqa: A001 (DyNet's name)
    _SETTINGS.update(mem=mem, random_seed=random_seed, autobatch=autobatch, profiling=profiling,
                     weight_decay=weight_decay, shared_parameters=shared_parameters,
                     requested_gpus=requested_gpus, gpu_mask=gpu_mask)
    apply(_SETTINGS)


def set_gpu(flag: bool = True) -> None:
    """Accepted: dynlp runs on the CPU."""


def get() -> dict:
    return dict(_SETTINGS)


def apply(settings: dict) -> None:
    STATE.seed(int(settings.get("random_seed") or 0) or None)
    autobatch = settings.get("autobatch")
    STATE.autobatch = True if autobatch is None else bool(int(autobatch))
    STATE.weight_decay = float(settings.get("weight_decay") or 0.0)


def from_argv(argv: Sequence[str] | None = None) -> dict:
    """The `--dynet-*` flags of argv (`--dynet-seed 3` or `--dynet-seed=3`), as settings."""
    argv = list(sys.argv if argv is None else argv)
    names = {"--dynet-seed": "random_seed", "--dynet-autobatch": "autobatch",
             "--dynet-mem": "mem", "--dynet-weight-decay": "weight_decay",
             "--dynet-profiling": "profiling", "--dynet-gpus": "requested_gpus",
             "--dynet-devices": "gpu_mask"}
    found: dict[str, Any] = {}
    for k, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in names:
            if not eq:
                value = argv[k + 1] if k + 1 < len(argv) else ""
            found[names[flag]] = value
    return found


def init_from_argv(argv: Sequence[str] | None = None) -> None:
    found = from_argv(argv)
    if found:
        _SETTINGS.update(found)
        apply(_SETTINGS)
