"""The thread count of the OpenBLAS that numpy calls, read and set while the process runs (the
`OPENBLAS_NUM_THREADS` variable counts only before numpy is loaded). Finds the library among
those the process has loaded (Linux), or in the folder of numpy's bundled libraries, and calls
its own setter through ctypes; with another BLAS (Accelerate, MKL) both functions do nothing
and say so. Imports nothing from dynlp.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

# Dynamic graphs multiply many small matrices: BLAS threads cost more than they save there, and
# spin-waiting threads collapse throughput on a loaded machine. So dynlp uses one thread unless
# OPENBLAS_NUM_THREADS says otherwise: through the variable when numpy is not loaded yet (this
# module is the first that dynlp imports), else through OpenBLAS's setter (`use_default_threads`,
# called at the end of dynlp's import).
_NUMPY_FIRST = "numpy" in sys.modules and "OPENBLAS_NUM_THREADS" not in os.environ
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# the symbol names of numpy's bundled OpenBLAS (64-bit ints, prefixed) and of a system one
_PAIRS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads"))

_found: Any = None  # (setter, getter), or False when there is no OpenBLAS


def _candidates() -> list[str]:
    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    if not paths:
        import numpy
        folder = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
        paths = sorted(glob.glob(os.path.join(folder, "*openblas*")))
    return paths


def _openblas() -> Any:
    global _found
    if _found is None:
        _found = False
        for path in _candidates():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in _PAIRS:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    _found = (setter, getter)
                    return _found
    return _found


def blas_threads() -> int | None:
    """The threads OpenBLAS uses now, or None when numpy's BLAS is not an OpenBLAS found here."""
    found = _openblas()
    return int(found[1]()) if found else None


def set_blas_threads(count: int) -> bool:
    """Make OpenBLAS use `count` threads from now on; False when there is no OpenBLAS to set.

    dynlp sets 1 when it is imported (unless OPENBLAS_NUM_THREADS is set): its graphs multiply
    many small matrices, where threads cost more than they save, and spinning threads collapse
    on a loaded machine. Large models on an idle machine may gain from more."""
    if int(count) < 1:
        raise ValueError(f"set_blas_threads: count must be at least 1, got {count}")
    found = _openblas()
    if not found:
        return False
    found[0](int(count))
    return True


def use_default_threads() -> None:
    """One thread, when numpy was loaded before dynlp and nothing asked for another count."""
    if _NUMPY_FIRST:
        set_blas_threads(1)
