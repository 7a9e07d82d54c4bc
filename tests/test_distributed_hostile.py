"""Data-parallel training attacked (dynlp/distributed.py and its use by dynlp/train.py and the
`dynlp` command), under `mpiexec` on localhost (skipped without mpi4py): the library's calls
made wrongly on one rank of three (other parameters, dtypes, roots, minibatches or calls: one
clear error on every rank, never a hang or a wrong sum); a rank that leaves its script early;
the documented loop, and `dynlp train` for every recipe, on 3 ranks as in one process with
minibatches smaller than the ranks and a last minibatch of one example; a run resumed on 3
then 1 ranks after a rank was killed; a rank that raises; Ctrl-C while rank 0 writes a
checkpoint; run folders that a second command must leave alone. Every launch has a timeout,
so that a hang fails the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dynlp import cli, train

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


def test_an_interrupted_rank_other_than_0_waits_for_rank_0_then_speaks_for_itself(
        monkeypatch, capsys):
    """Ctrl-C on a rank other than 0 (whose rank 0 never ends the run): silent for the grace
    period, then one line that names the rank; rank 0, or one process, says it at once."""
    slept = []
    monkeypatch.setattr(cli, "running_ranks", lambda: True)
    monkeypatch.setattr(cli.time, "sleep", slept.append)
    monkeypatch.setenv("PMI_SIZE", "3")
    monkeypatch.setenv("PMI_RANK", "2")
    assert cli._stopped("dynlp: interrupted", 130) == 130
    assert slept == [cli.RANK_0_GRACE_SECONDS]
    assert capsys.readouterr().err == ("dynlp: interrupted (rank 2 of 3; rank 0 did not end the "
                                       "run)\n")
    monkeypatch.setenv("PMI_RANK", "0")
    assert cli._stopped("dynlp: terminated (SIGTERM)", 143) == 143
    assert slept == [cli.RANK_0_GRACE_SECONDS]
    assert capsys.readouterr().err == "dynlp: terminated (SIGTERM)\n"


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
        "other_step_cost": ["sum_gradients: rank 2 dealt another minibatch than rank 0"],
        "other_minibatch": ["sum_gradients: rank 2 dealt another minibatch than rank 0"],
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
    assert got["same_minibatch"] == {"W": [133.0], "loss": 0.0}
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


@needs_mpi
def test_a_rank_that_raises_ends_the_run_saying_so_and_the_run_resumes(tmp_path):
    """The last of 3 ranks raises in epoch 2: every rank ends, with that rank's one error
    line; the checkpoint of epoch 1 loads, and resuming on 2 ranks finishes the run and
    leaves no temporary file behind."""
    done = _launch(3, str(WORKER), "fail", str(tmp_path))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("dynlp: error:")]
    assert errors == ["dynlp: error: rank 2 of 3: a bug in the last rank's model; the run stops "
                      "(mpiexec ends the other ranks)"], (done.returncode, done.stdout[-3000:],
                                                          done.stderr[-3000:])
    header, _ = train.read_checkpoint(tmp_path / train.CHECKPOINT_FILE)
    assert header["state"]["__dict__"]["epoch"] == 1
    assert [r["epoch"] for r in _log(tmp_path)] == [1]
    assert not (tmp_path / train.METRICS_FILE).exists()
    done = _launch(2, str(WORKER), "resume", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(r["epoch"], r["ranks"]) for r in _log(tmp_path)] == [(1, 3), (2, 2), (3, 2)]
    assert _leftovers(tmp_path) == []


@needs_mpi
@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_rank_that_leaves_its_script_early_ends_the_run(how, tmp_path):
    """The last of 3 ranks ends its script (returns, or raises outside ending_run_on_error)
    while the others call sum_gradients: the run ends, saying so, instead of hanging."""
    done = subprocess.run([_mpiexec(), "-n", "3", sys.executable, str(WORKER), how,
                           str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=30, check=False)  # a hang fails the test here
    assert done.returncode != 0
    assert "rank 2 called exit where rank 0 called sum_gradients" in done.stderr, done.stderr
    if how == "raise":
        assert "a bug in the last rank's loop" in done.stderr


@needs_mpi
def test_the_documented_training_loop_runs_on_three_ranks_as_in_one_process(tmp_path):
    """docs/DISTRIBUTED.md's own loop, as written, on 9 examples (a minibatch of 9 a step) on
    1 and 3 ranks: the same losses and scores, printed once, the model saved once."""
    printed = []
    for ranks in (1, 3):
        out = tmp_path / str(ranks)
        out.mkdir()
        done = _launch(ranks, str(WORKER), "documented", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stdout.splitlines()
        assert len(lines) == 10 and (out / "model.npz").exists(), done.stdout
        printed.append([line.split(" ", 2) for line in lines])
    for (epoch, value, scores), (epoch_3, value_3, scores_3) in zip(*printed, strict=True):
        assert epoch == epoch_3 and scores == scores_3
        assert float(value_3) == pytest.approx(float(value), rel=1e-5)


# -- training on 3 ranks as in one process -----------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("recipe", ["tagger", "treelstm", "parser"])
def test_three_ranks_train_as_one_process_on_minibatches_smaller_than_the_ranks(recipe, tmp_path):
    """13 examples in minibatches of 2 on 3 ranks: every step leaves a rank without a share,
    the last minibatch holds 1 example, and the dev examples during training (2) are fewer
    than the ranks; the numbers are those of one process, and rank 0 alone prints."""
    one, three = tmp_path / "one", tmp_path / "three"
    settings = ("--epochs", "2", "--batch-size", "2", "--limit", "13", "--dev-limit", "2")
    _train(recipe, 1, one, *settings)
    done = _train(recipe, 3, three, *settings)
    _same_numbers(one, three)
    assert [(r["ranks"], r["steps"]) for r in _log(three)] == [(3, 7), (3, 7)]
    assert json.loads((three / train.METRICS_FILE).read_text())["dev"] == json.loads(
        (one / train.METRICS_FILE).read_text())["dev"]
    assert done.stdout.count('"best_epoch"') == 1  # the final scores, printed once
    assert done.stderr.count("epoch 2: loss") == done.stderr.count("dynlp: report") == 1
    assert _leftovers(three) == []


def _rank_processes(launcher: int) -> dict[int, int]:
    """rank -> process id of the ranks that the mpiexec process `launcher` started."""
    parents, ranks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for variable in environ:
            if variable.startswith(b"PMI_RANK="):
                ranks[int(entry.name)] = int(variable[len(b"PMI_RANK="):])
    found = {}
    for pid, rank in ranks.items():
        ancestor = pid
        while ancestor in parents and ancestor not in (0, 1, launcher):
            ancestor = parents[ancestor]
        if ancestor == launcher:
            found[rank] = pid
    return found


@needs_mpi
def test_a_run_whose_rank_is_killed_resumes_on_three_ranks_then_one(tmp_path):
    """kill -9 of rank 1 of 2 in the middle of an epoch: the run ends, the checkpoint of the
    last finished epoch loads, and resuming on 3 ranks, then on 1, gives the numbers of a run
    that was never interrupted."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    settings = ("--batch-size", "3", "--limit", "30", "--dev-limit", "6", "--patience", "1000")
    launcher = subprocess.Popen([_mpiexec(), "-n", "2", sys.executable,
                                 *_train_args("tagger", killed, "--epochs", "1000", *settings)],
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (killed / train.CHECKPOINT_FILE).exists():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        ranks = _rank_processes(launcher.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        out, err = launcher.communicate(timeout=TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0
    assert "BAD TERMINATION" in out + err
    header, _ = train.read_checkpoint(killed / train.CHECKPOINT_FILE)
    epoch = header["state"]["__dict__"]["epoch"]
    logged = [r["epoch"] for r in _log(killed)]  # (a kill between the checkpoint's write and
    assert logged in (list(range(1, epoch + 1)), list(range(1, epoch)))  # the log's: one less)
    assert not (killed / train.METRICS_FILE).exists()
    _train("tagger", 3, killed, "--epochs", str(epoch + 1), "--resume", *settings)
    _train("tagger", 1, killed, "--epochs", str(epoch + 2), "--resume", *settings)
    assert [r["ranks"] for r in _log(killed)] == [2] * epoch + [3, 1]
    _train("tagger", 2, straight, "--epochs", str(epoch + 2), *settings)
    _same_numbers(straight, killed)
    assert _leftovers(killed) == []


@needs_mpi
def test_ranks_given_other_settings_refuse_to_train(tmp_path):
    """Ranks started with other settings (mpiexec's `-n 1 A : -n 1 B`), here another dropout,
    which neither the parameters nor the minibatches show: rank 0's one error line, status 2,
    no run folder."""
    out = tmp_path / "run"
    args = [sys.executable, *_train_args("tagger", out, "--epochs", "1", "--limit", "8")]
    done = subprocess.run([_mpiexec(), "-n", "1", *args, ":", "-n", "1", *args, "--dropout", "0"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("dynlp:")]
    assert errors == ["dynlp: error: rank 1 was given other settings than rank 0: dropout: "
                      "0.33 -> 0.0"], done.stderr[-3000:]
    assert not out.exists()


# -- a second command leaves an earlier run alone ------------------------------------------------
def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


@needs_mpi
def test_commands_refused_on_three_ranks_leave_the_earlier_run_alone(tmp_path):
    """On 3 ranks: resuming a folder without a checkpoint, with another batch size, or with
    another recipe, and a run whose output folder is a file, are refused with rank 0's one
    error line and status 2 (no abort); an --overwrite whose first epoch fails leaves the
    earlier run whole."""
    out, empty, a_file = tmp_path / "run", tmp_path / "empty", tmp_path / "file"
    _train("tagger", 3, out, "--epochs", "1", "--batch-size", "4", "--limit", "12")
    empty.mkdir()
    a_file.write_text("not a folder\n")
    before = _stamps(out)
    for recipe, folder, more, said in [
            ("tagger", empty, ["--resume"], "no checkpoint to resume from"),
            ("tagger", out, ["--resume", "--batch-size", "5", "--limit", "12"],
             "batch_size: 4 -> 5"),
            ("parser", out, ["--resume", "--batch-size", "4", "--limit", "12"],
             "the settings differ from the checkpoint's"),
            ("tagger", a_file, [], "the output folder is a file")]:
        done = _launch(3, *_train_args(recipe, folder, "--epochs", "2", *more))
        assert done.returncode == 2, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("dynlp:")]
        assert len(errors) == 1 and said in errors[0], done.stderr[-3000:]
        assert "rank" not in errors[0] and "Abort" not in done.stderr + done.stdout
    assert _stamps(out) == before and list(empty.iterdir()) == []
    assert a_file.read_text() == "not a folder\n"
    done = _launch(3, str(WORKER), "overwrite", str(out))  # fails in its first epoch
    assert done.returncode != 0 and "a bug in the last rank's model" in done.stderr
    assert _stamps(out) == before
