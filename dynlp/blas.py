"""The thread count of the OpenBLAS that numpy calls, read and set while the process runs (the
`OPENBLAS_NUM_THREADS` variable counts only before numpy is loaded). Finds the OpenBLAS
libraries the process has loaded (Linux; numpy's, and others such as scipy's, which would
otherwise keep their own count), or the one in the folder of numpy's bundled libraries, and
calls their own setter through ctypes; with another BLAS (Accelerate, MKL), or no ctypes, both
functions do nothing and say so. Imports nothing from dynlp.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Iterable

# Dynamic graphs multiply many small matrices: BLAS threads cost more than they save there, and
# spin-waiting threads collapse throughput on a loaded machine. So dynlp uses one thread unless
# OPENBLAS_NUM_THREADS says otherwise: through the variable when numpy is not loaded yet (this
# module is the first that dynlp imports), else through OpenBLAS's setter (`use_default_threads`,
# called at the end of dynlp's import). An empty variable counts as unset, as OpenBLAS reads it.
_EXPLICIT = bool(os.environ.get("OPENBLAS_NUM_THREADS", "").strip())
_NUMPY_FIRST = "numpy" in sys.modules and not _EXPLICIT
if not _EXPLICIT:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

# the symbol names of numpy's bundled OpenBLAS (64-bit ints, prefixed) and of a system one
_PAIRS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads"))

_found: list | None = None  # (setter, getter) of each library found, numpy's first


def _numpy_libs() -> list[str]:
    import numpy
    folder = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    return sorted(glob.glob(os.path.join(folder, "*openblas*")))


def _openblas_paths(maps: Iterable[str]) -> list[str]:
    """The paths named like OpenBLAS in the lines of a /proc/<pid>/maps file (address, perms,
    offset, device, inode, then the path, which may hold spaces), each once."""
    paths: list[str] = []
    for line in maps:
        fields = line.rstrip("\n").split(None, 5)
        if len(fields) < 6:
            continue
        path = fields[5].removesuffix(" (deleted)")
        if "openblas" in os.path.basename(path).lower() and path not in paths:
            paths.append(path)
    return paths


def _loaded() -> list[str]:
    """The paths of the loaded libraries named like OpenBLAS (Linux; elsewhere none)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return _openblas_paths(maps)
    except OSError:
        return []


def _openblas() -> list:
    global _found
    if _found is None:
        _found = []
        try:
            import ctypes
        except ImportError:
            return _found
        bundled = _numpy_libs()
        # numpy's own first, so that `blas_threads` reads its count
        paths = bundled + [p for p in _loaded() if p not in bundled]
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in _PAIRS:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    _found.append((setter, getter))
                    break
    return _found


def blas_threads() -> int | None:
    """The threads numpy's OpenBLAS uses now, or None when no OpenBLAS was found."""
    found = _openblas()
    return int(found[0][1]()) if found else None


def set_blas_threads(count: int) -> bool:
    """Make OpenBLAS (every OpenBLAS loaded: numpy's, scipy's) use `count` threads from now on;
    False when there is no OpenBLAS to set.

    dynlp sets 1 when it is imported (unless OPENBLAS_NUM_THREADS is set): its graphs multiply
    many small matrices, where threads cost more than they save, and spinning threads collapse
    on a loaded machine. Large models on an idle machine may gain from more."""
    if int(count) < 1:
        raise ValueError(f"set_blas_threads: count must be at least 1, got {count}")
    found = _openblas()
    for setter, _ in found:
        setter(int(count))
    return bool(found)


def use_default_threads() -> None:
    """One thread, when numpy was loaded before dynlp and nothing asked for another count.
    Never fails: without a usable OpenBLAS, numpy keeps its count."""
    if _NUMPY_FIRST:
        try:
            set_blas_threads(1)
        except Exception:  # a foreign library that ctypes cannot call as expected
            pass
