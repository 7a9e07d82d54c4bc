"""A rank that ends the run ends its own process at once, even when MPI_Abort returns (MPICH's
can, on a loaded machine, before the launcher kills the process): no exit handlers run, so
no exit handshake reaches the ranks still waiting in a collective call."""

import subprocess
import sys
import textwrap

from test_distributed import ROOT


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_returning_mpi_abort_still_ends_the_process_without_exit_handlers():
    done = _run("""
        import atexit
        from dynlp import distributed
        distributed.ABORT_GRACE_SECONDS = 0
        class ReturningComm:
            def Abort(self, status):
                print("abort", status, flush=True)
        atexit.register(print, "an exit handler ran")
        distributed._abort(ReturningComm(), 3)
        print("after the abort")
    """)
    assert done.returncode == 3, done.stderr
    assert done.stdout.split("\n") == ["abort 3", ""], done.stdout


def test_a_communicator_abort_prints_then_ends_the_process_when_mpi_abort_returns():
    done = _run("""
        import atexit
        from dynlp import distributed
        distributed.ABORT_GRACE_SECONDS = 0
        class ReturningComm:
            def Get_rank(self):
                return 0
            def Get_size(self):
                return 2
            def Abort(self, status):
                pass
        atexit.register(print, "an exit handler ran")
        distributed.Communicator(ReturningComm()).abort("dynlp: error: it stops", 4)
        print("after the abort")
    """)
    assert done.returncode == 4, done.stderr
    assert done.stderr == "dynlp: error: it stops\n" and done.stdout == "", (done.stdout,
                                                                             done.stderr)
