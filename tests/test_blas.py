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
