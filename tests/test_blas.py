"""dynlp makes numpy's OpenBLAS use one thread whether numpy was imported before it or not,
unless OPENBLAS_NUM_THREADS says otherwise; `dn.set_blas_threads` changes it at run time."""

import os
import subprocess
import sys

import pytest

import dynlp as dn

pytestmark = pytest.mark.skipif(dn.blas_threads() is None,
                                reason="numpy's BLAS is not an OpenBLAS found by dynlp.blas")


def _threads(code: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code + "; print(dn.blas_threads())"],
                         capture_output=True, text=True, env=environ, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS uses one thread on one core")
def test_one_thread_whichever_is_imported_first_and_an_explicit_setting_wins():
    assert _threads("import dynlp as dn") == 1
    assert _threads("import numpy; import dynlp as dn") == 1
    assert _threads("import numpy; import dynlp as dn", OPENBLAS_NUM_THREADS="2") == 2
    assert _threads("import numpy; import dynlp as dn; dn.set_blas_threads(2)") == 2


def test_set_blas_threads_checks_its_count():
    with pytest.raises(ValueError, match="at least 1"):
        dn.set_blas_threads(0)
    assert dn.set_blas_threads(1) and dn.blas_threads() == 1


def test_an_empty_variable_counts_as_unset():
    assert _threads("import numpy; import dynlp as dn", OPENBLAS_NUM_THREADS="") == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS uses one thread on one core")
def test_every_loaded_openblas_is_set_numpy_s_read_first():
    pytest.importorskip("scipy.linalg")
    code = ("import scipy.linalg; import dynlp as dn; from dynlp import blas; "
            "assert all(get() == 1 for _, get in blas._openblas()); dn.set_blas_threads(2); "
            "assert all(get() == 2 for _, get in blas._openblas())")
    assert _threads(code) == 2


def test_library_paths_are_read_whole_from_the_maps_lines():
    from dynlp.blas import _openblas_paths
    lines = ["7f0-7f1 r-xp 00000000 08:01 42   /opt/my env/numpy.libs/libscipy_openblas64_-a.so\n",
             "7f1-7f2 r--p 00001000 08:01 42   /opt/my env/numpy.libs/libscipy_openblas64_-a.so\n",
             "7f2-7f3 r-xp 00000000 08:01 43   /tmp/libopenblas.so.0 (deleted)\n",
             "7f3-7f4 rw-p 00000000 00:00 0 \n",
             "7f4-7f5 r-xp 00000000 08:01 44   /usr/lib/libm.so.6\n"]
    assert _openblas_paths(lines) == ["/opt/my env/numpy.libs/libscipy_openblas64_-a.so",
                                      "/tmp/libopenblas.so.0"]


def test_dynlp_imports_without_ctypes():
    code = ("import sys; sys.modules['_ctypes'] = None; import numpy; import dynlp as dn; "
            "print(dn.blas_threads(), dn.set_blas_threads(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["None", "False"]
