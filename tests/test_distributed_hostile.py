"""Data-parallel training attacked (dynlp/distributed.py and its use by dynlp/train.py and the
`dynlp` command), under `mpiexec` on localhost (skipped without mpi4py): the library's calls
made wrongly on one rank of three (other parameters, dtypes, roots or calls: one clear error
on every rank, never a hang or a wrong sum); 3 ranks against one process with minibatches
smaller than the ranks and a last minibatch of one example, for every recipe; a run resumed
on 3, 1 and 2 ranks after a rank was killed; a rank that raises; run folders that a second
command must leave alone. Every launch has a timeout, so that a hang fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynlp import train

from test_distributed import DATA, FILES, ROOT, SMALL, _log, _mpiexec, _parameters, needs_mpi

WORKER = Path(__file__).resolve().parent / "distributed_hostile_worker.py"
TIMEOUT = 120  # seconds for any one launch: a hang is a failure, not a stuck test run


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for variable in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        env.pop(variable, None)
    return env


def _launch(ranks: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)


def _train_args(recipe: str, out: Path, *more: str) -> list[str]:
    suffix = FILES[recipe]
    return ["-m", "dynlp", "train", recipe, "--train", str(DATA / f"tiny-train.{suffix}"),
            "--dev", str(DATA / f"tiny-dev.{suffix}"), "--out", str(out),
            "--learning-rate", "0.01", *SMALL[recipe], *more]


def _train(recipe: str, ranks: int, out: Path, *more: str) -> subprocess.CompletedProcess:
    done = _launch(ranks, *_train_args(recipe, out, *more))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _same_numbers(one: Path, many: Path) -> None:
    for a, b in zip(_log(one), _log(many), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["dev"] == a["dev"]
    expected = _parameters(one)
    for name, value in _parameters(many).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.name not in (*train.RUN_FILES, "report.html"))


# -- the library's calls, made wrongly -------------------------------------------------------------
@needs_mpi
def test_calls_made_wrongly_on_one_rank_give_every_rank_one_clear_error(tmp_path):
    """The last of 3 ranks holds other parameters, dtypes or roots, or makes another call:
    every rank raises the same DistributedError (no hang, no wrong sum, no abort) and the
    ranks still make their next calls together; calls made rightly with empty shares, tables
    touched on some ranks only and parameters added on every rank sum correctly."""
    done = _launch(3, str(WORKER), "misuse", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [[json.loads(line) for line in (tmp_path / f"rank-{r}.jsonl").read_text().splitlines()]
            for r in range(3)]
    assert seen[0] == seen[1] == seen[2]  # every rank got the same result, or the same error
    got = {case.pop("case"): case for case in seen[0]}
    differ = "the ranks hold different parameters"
    expected_errors = {
        "extra_parameter": [differ, "rank 2 alone holds dense 'V' (4,)"],
        "other_order": [differ, "parameter 1 is dense 'a' (2,) float32 on rank 0, dense 'b'"],
        "other_dtype": [differ, "'W' (4,) float32 on rank 0, dense 'W' (4,) float64 on rank 2"],
        "other_width": [differ, "table 'E' (5, 2) float32 on rank 0, table 'E' (5, 3)"],
        "table_elsewhere": [differ, "rank 0 alone holds table 'E'"],
        "added_on_one_rank": [differ, "rank 2 alone holds dense 'V' (3,)"],
        "mixed_dtypes": ["several dtypes (float32, float64)"],
        "sum_against_allgather": ["rank 2 called allgather where rank 0 called sum_gradients"],
        "barrier_against_broadcast": ["rank 2 called broadcast where rank 0 called barrier"],
        "broadcast_other_order": ["broadcast_parameters: " + differ],
        "broadcast_other_root": ["broadcast_parameters: rank 2 asked for root 1"],
        "value_other_root": ["broadcast: rank 2 asked for root 1"],
    }
    for case, parts in expected_errors.items():
        assert set(got[case]) == {"error"}, (case, got[case])
        for part in parts:
            assert part in got[case]["error"], (case, got[case]["error"])
    assert got["added_on_every_rank"] == {"W": [3, 3], "V": [6, 6, 6], "loss": 1.5}
    assert got["sparse_dense_and_untouched"] == {
        "E": [[0, 0], [2, 2], [1, 1], [0, 0]], "F": [[0, 0]] * 3, "W": [2, 4], "loss": 2.0}
    assert got["agree_by_name"] == {"agree": False}  # the same values under other names
    assert got["still_in_step"] == {"W": [3, 3], "loss": 3.0, "agree": True,
                                    "gathered": [0, 1, 2]}


@needs_mpi
def test_ctrl_c_while_rank_0_writes_the_checkpoint_ends_the_run_when_it_is_written(tmp_path):
    """Ctrl-C reaches every rank (mpiexec forwards it) while rank 0 writes a checkpoint: the
    other ranks must not end the run before rank 0 has written it, and rank 0 alone says
    where it is; no temporary file is left behind."""
    done = _launch(2, str(WORKER), "interrupt", str(tmp_path))
    assert done.returncode == 130, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("dynlp:")]
    assert said == [f"dynlp: interrupted during epoch 3: the checkpoint after epoch 2 is "
                    f"{tmp_path / train.CHECKPOINT_FILE}; run the same command with --resume "
                    "to continue"], done.stderr[-3000:]
    header, _ = train.read_checkpoint(tmp_path / train.CHECKPOINT_FILE)
    assert header["state"]["__dict__"]["epoch"] == 2
    assert [r["epoch"] for r in _log(tmp_path)] == [1, 2]
    assert _leftovers(tmp_path) == []
