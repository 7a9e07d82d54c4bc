"""Data-parallel training (dynlp/distributed.py and its use by the training loop). In one
process: sharding, per-example draws, and that the shares of a minibatch add up to its gradient
for every recipe. Under `mpiexec -n 2` on localhost (skipped without mpi4py): the exchanges,
`dynlp train` on 2 ranks against 1 process for the three recipes, resuming with another number
of ranks, a run folder that rank 0 refuses, and a rank that dies."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp import cli, distributed, train
from dynlp.data import read_trees
from tiny_recipes import parser_case, tagger_case, treelstm_case

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"


class FakeComm:
    """Just enough of an mpi4py communicator for the methods that do not communicate."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's name)
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.size


def test_outside_mpiexec_one_process_does_everything(monkeypatch):
    for variable in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    comm = distributed.setup()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    assert comm.shard_batch(["a", "b", "c"]) == [0, 1, 2]
    assert comm.sum_gradients(dn.ParameterCollection(), 2.5) == 2.5
    assert comm.allgather({"x": np.int64(3)}) == [{"x": 3}]
    comm.barrier()


def test_asking_for_mpi_without_mpi4py_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)  # nothing to abort in this process
    with pytest.raises(distributed.DistributedError, match=r"pip install -e '\.\[mpi\]'"):
        distributed.setup(required=True)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    status = cli.main(["train", "tagger", "--train", str(DATA / "tiny-train.conllu"),
                       "--dev", str(DATA / "tiny-dev.conllu"), "--out", str(tmp_path)])
    assert status == 2
    error = capsys.readouterr().err
    assert "rank 1 of 2" in error and "pip install -e '.[mpi]'" in error


def _share_costs(batch, shares, step_cost):
    return [sum(len(batch[i]) for i in share) + step_cost * max((len(batch[i]) for i in share),
                                                                default=0) for share in shares]


@pytest.mark.parametrize("step_cost", [0, 1, 8, 30])
@pytest.mark.parametrize("lengths", [(9, 1, 4, 4, 7, 2, 3, 8, 5), (3, 3, 3, 3, 3, 3, 3),
                                     (40, 2, 2, 3, 1, 2, 5, 2), (6, 5), (1, 1, 9, 1, 1, 1, 1)])
def test_batch_shares_cover_the_batch_and_cost_no_more_than_any_other_split(lengths, step_cost):
    """Every example in exactly one share, and the costliest share (its words, plus step_cost
    times its longest example's) as cheap as the best cut of the examples sorted by length into
    runs, and within 4/3 of the best of all ways to deal them to 3 ranks."""
    batch = ["x" * n for n in lengths]
    shares = [distributed.Communicator(FakeComm(r, 3)).shard_batch(batch, step_cost=step_cost)
              for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(len(batch)))
    assert all(share == sorted(share) for share in shares)
    got = max(_share_costs(batch, shares, step_cost))
    deals = [[[i for i, r in enumerate(deal) if r == k] for k in range(3)]
             for deal in itertools.product(range(3), repeat=len(batch))]
    best = min(max(_share_costs(batch, deal, step_cost)) for deal in deals)
    order = sorted(range(len(batch)), key=lambda i: -lengths[i])
    runs = min(max(_share_costs(batch, [order[:a], order[a:b], order[b:]], step_cost))
               for a in range(len(batch) + 1) for b in range(a, len(batch) + 1))
    assert got <= runs and 3 * got <= 4 * best


def test_batch_shares_give_the_longest_examples_to_a_smaller_share():
    batch = ["x" * n for n in (30, 28, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5)]
    shares = [distributed.Communicator(FakeComm(r, 2)).shard_batch(batch) for r in range(2)]
    assert shares[0] == [0, 1] and len(shares[1]) == 10
    even = [distributed.Communicator(FakeComm(r, 2)).shard_batch(batch, step_cost=0)
            for r in range(2)]
    loads = [sum(len(batch[i]) for i in share) for share in even]
    assert max(loads) - min(loads) <= 1
    more = [distributed.Communicator(FakeComm(r, 5)).shard_batch(batch[:3]) for r in range(5)]
    assert more[0] == [0] and sorted(sum(more, [])) == [0, 1, 2] and [] in more
    with pytest.raises(ValueError, match="step_cost"):
        distributed.Communicator(FakeComm(0, 2)).shard_batch(batch, step_cost=-1)


def test_dataset_shards_and_tree_costs():
    assert distributed.Communicator(FakeComm(1, 3)).shard(list(range(8))) == [1, 4, 7]
    assert distributed.example_cost(read_trees(DATA / "tiny-dev.trees")[0]) >= 1


def test_an_example_with_its_own_generator_draws_the_same_masks_in_any_graph():
    def mask(others: int, seed: int) -> np.ndarray:
        with dn.Graph(seed=seed) as g:
            g.random_mask((11,), 0.5)  # the graph's own generator
            for k in range(others):
                g.use_generator(np.random.default_rng(100 + k))
                g.random_mask((7,), 0.5)
            g.use_generator(np.random.default_rng(1))
            return g.random_mask((5,), 0.5)
    alone = mask(0, 5)
    np.testing.assert_array_equal(mask(3, 9), alone)
    assert alone.any()


def test_an_example_keeps_its_stream_when_examples_interleave():
    def draws(interleave: bool) -> list[np.ndarray]:
        a, b = np.random.default_rng(1), np.random.default_rng(2)
        out = []
        with dn.Graph(seed=3) as g:
            for _ in range(3):
                g.use_generator(a)
                out.append(g.random_mask((4,), 0.5))
                if interleave:
                    g.use_generator(b)
                    g.random_mask((6,), 0.5)
        return out
    for x, y in zip(draws(False), draws(True)):
        np.testing.assert_array_equal(x, y)


# -- the shares of a minibatch add up to the whole minibatch's gradient, for every recipe ----------
def _tagger():
    return tagger_case(6)


def _treelstm():
    return treelstm_case(6)


def _parser():
    return parser_case(6)


def _gradients(model, pc, batch, shares) -> tuple[float, dict[str, np.ndarray]]:
    total = 0.0
    for positions in shares:
        total += train._share_loss(model, batch, positions, 1, 2, 3, True)
    grads = {p.name: p.grad_as_array() for p in pc.parameters()}
    pc.clear_grads()
    return total, grads


@pytest.mark.parametrize("make", [_tagger, _treelstm, _parser], ids=["tagger", "treelstm",
                                                                     "parser"])
def test_shares_of_a_minibatch_add_up_to_its_loss_and_gradients(make):
    Model, config, batch = make()
    pc = dn.ParameterCollection(seed=2)
    model = Model(pc, config, Model.build_vocabs(batch, config))
    whole, expected = _gradients(model, pc, batch, [list(range(len(batch)))])
    halves = [distributed.Communicator(FakeComm(r, 2)).shard_batch(batch) for r in range(2)]
    assert all(halves) and halves[0] != list(range(len(batch)))
    split, got = _gradients(model, pc, batch, halves)
    assert split == pytest.approx(whole, rel=1e-5)
    assert any(np.any(g) for g in got.values())
    for name, grad in expected.items():
        np.testing.assert_allclose(got[name], grad, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("make, step_cost", [(_tagger, distributed.STEP_COST), (_treelstm, 0),
                                             (_parser, distributed.STEP_COST)],
                         ids=["tagger", "treelstm", "parser"])
def test_training_deals_minibatches_with_the_models_step_cost(make, step_cost, monkeypatch):
    """Trees are batched level by level: their recipe deals with step cost 0."""
    Model, config, examples = make()
    pc = dn.ParameterCollection(seed=2)
    model = Model(pc, config, Model.build_vocabs(examples, config))
    assert model.shard_step_cost == step_cost
    seen = []
    deal = distributed.Communicator.shard_batch

    def spy(self, batch, cost=distributed.example_cost, step_cost=distributed.STEP_COST):
        seen.append(step_cost)
        return deal(self, batch, cost, step_cost)
    monkeypatch.setattr(distributed.Communicator, "shard_batch", spy)
    config = {**train.COMMON_DEFAULTS, **config, "batch_size": 3}
    train._train_epoch(model, dn.AdamTrainer(pc), examples, config, 1, True, False,
                       distributed.Communicator())
    assert seen == [step_cost] * 2


@pytest.mark.parametrize("make", [_tagger, _treelstm, _parser],
                         ids=["tagger", "treelstm", "parser"])
def test_training_counts_the_examples_costs_once_and_deals_as_before(make, monkeypatch):
    """The costs the deal reads are each example's example_cost, counted once per run (not at
    every step); an example the run did not count is counted when dealt."""
    Model, config, examples = make()
    costs = train._example_costs(examples)
    assert [costs(e) for e in examples] == [distributed.example_cost(e) for e in examples]
    counted = []
    monkeypatch.setattr(train, "example_cost", lambda e: counted.append(e) or 7)
    assert [costs(e) for e in examples] == [distributed.example_cost(e) for e in examples]
    assert counted == []
    stranger = type(examples[0]).__new__(type(examples[0]))
    assert costs(stranger) == 7 and counted == [stranger]
    two = [distributed.Communicator(FakeComm(r, 2)) for r in range(2)]
    for a, b in zip(two, [distributed.Communicator(FakeComm(r, 2)) for r in range(2)]):
        assert a.shard_batch(examples[:5], costs) == b.shard_batch(examples[:5])


@pytest.mark.parametrize("quiet", [False, True], ids=["rank 0", "other ranks"])
def test_a_refused_run_folder_is_said_once_and_ends_without_an_abort(quiet, monkeypatch,
                                                                     tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise train.RunRefused(f"{tmp_path} holds a run already", quiet=quiet)
    monkeypatch.setattr(cli, "train", refuse)
    aborted = []
    monkeypatch.setattr(cli, "abort_launched", aborted.append)
    monkeypatch.setenv("PMI_SIZE", "1")  # no MPI to start in this process
    status = cli.main(["train", "tagger", "--train", str(DATA / "tiny-train.conllu"),
                       "--dev", str(DATA / "tiny-dev.conllu"), "--out", str(tmp_path)])
    assert status == 2 and not aborted
    error = capsys.readouterr().err
    assert error == ("" if quiet else f"dynlp: error: {tmp_path} holds a run already\n")


def test_an_error_names_its_rank_under_mpiexec(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert cli._message(ValueError("bad")).startswith("rank 3 of 4: bad; the run stops")


@pytest.mark.parametrize("command", [["evaluate", "tagger", "model", "file"],
                                     ["predict", "tagger", "model", "file"], ["data", "list"],
                                     ["report", "run"]])
def test_commands_other_than_train_refuse_several_ranks(monkeypatch, capsys, command):
    monkeypatch.setenv("PMI_SIZE", "2")
    for rank, says in (("0", True), ("1", False)):  # rank 0 says why, the other leaves quietly
        monkeypatch.setenv("PMI_RANK", rank)
        assert cli.main(command) == 2
        error = capsys.readouterr().err
        assert ("runs in one process: start it without mpiexec" in error) == says
        assert error.count("\n") == says


# -- 2 ranks on localhost ----------------------------------------------------------------------
def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason="MPI support is not installed (pip install -e '.[mpi]')")


def _launch(ranks: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for variable in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        env.pop(variable, None)
    done = subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@needs_mpi
def test_two_ranks_sum_gradients_and_share_values(tmp_path):
    _launch(2, str(WORKER), "exchange", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for rank, seen in enumerate(ranks):
        assert (seen["rank"], seen["size"]) == (rank, 2)
        assert not seen["agree_before"] and seen["agree_after"]
        assert seen["loss"] == 3.0
        assert seen["waited"] >= (0.02 if rank == 0 else 0.0)  # rank 1 came 0.1 s late
        np.testing.assert_array_equal(seen["dense"], np.full((3, 2), 3.0))
        # rows 0, 2 from rank 0 and 1, 3 from rank 1: summed, never densified
        assert seen["rows"] == [0, 1, 2, 3]
        np.testing.assert_array_equal(seen["sums"], [[0, 1], [10, 11], [2, 3], [12, 13]])
        assert seen["gathered"] == [{"rank": 0, "n": 7}, {"rank": 1, "n": 7}]
        assert seen["broadcast"] == "from 0"
        assert seen["shard"] == list(range(rank, 7, 2))
        assert seen["evaluated"] == {"outputs": [[k, k % 2] for k in range(5)]}
    assert ranks[0]["values"] == ranks[1]["values"]


@needs_mpi
def test_a_sum_of_gradients_goes_on_while_a_rank_builds_its_next_graph(tmp_path):
    _launch(2, str(WORKER), "pending", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    summed = [[0, 1], [10, 11], [2, 3], [12, 13]]  # rows 0, 1, 2, 3 (as in the test above)
    for seen in ranks:
        assert seen["progressed"] and seen["updated_before_value"] and seen["done"]
        assert seen["updates"] == [[3.0, np.full((3, 2), 3.0).tolist(), [0, 1, 2, 3], summed]]
        # the graph computed with the updated value
        np.testing.assert_allclose(seen["value"], np.array(seen["start"]) - 3.0, rtol=1e-6)
        assert seen["gathered"] == [0, 1]
        assert len(seen["updates_after_allgather"]) == 1 and seen["finish_again"] == 3.0
        np.testing.assert_allclose(seen["end"], np.array(seen["start"]) - 6.0, rtol=1e-6)
    assert ranks[0]["end"] == ranks[1]["end"]
    assert ranks[0]["waiting"] >= 0.02  # rank 1 came 0.1 s late to the second sum


SMALL = {"tagger": ["--word-dim", "16", "--char-dim", "8", "--char-hidden", "16",
                    "--lstm-layers", "1", "--lstm-dim", "32", "--mlp-dim", "16"],
         "treelstm": ["--embedding-dim", "16", "--hidden-dim", "12"],
         "parser": ["--word-dim", "16", "--pos-dim", "8", "--lstm-layers", "1",
                    "--lstm-dim", "24", "--mlp-dim", "16"]}
FILES = {"tagger": "conllu", "treelstm": "trees", "parser": "conllu"}


def _train(recipe: str, ranks: int, out: Path, *more: str) -> None:
    suffix = FILES[recipe]
    _launch(ranks, "-m", "dynlp", "train", recipe, "--train",
            str(DATA / f"tiny-train.{suffix}"), "--dev", str(DATA / f"tiny-dev.{suffix}"),
            "--out", str(out), "--batch-size", "8", "--learning-rate", "0.01",
            *SMALL[recipe], *more)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _parameters(out: Path) -> dict[str, np.ndarray]:
    header, arrays = train.read_checkpoint(out / train.CHECKPOINT_FILE)
    return {name: arrays[f"p{i}"] for i, name in enumerate(header["parameters"])}


def _same_training(one: Path, many: Path) -> None:
    for a, b in zip(_log(one), _log(many), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    expected = _parameters(one)
    for name, value in _parameters(many).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-3, atol=1e-4, err_msg=name)


@needs_mpi
@pytest.mark.parametrize("recipe", ["tagger", "treelstm", "parser"])
def test_two_ranks_train_as_one_process_does(recipe, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train(recipe, 1, one, "--epochs", "2")
    _train(recipe, 2, two, "--epochs", "2")
    _same_training(one, two)
    assert [r["ranks"] for r in _log(two)] == [2, 2]  # rank 0 alone wrote the log
    for one_record, record in zip(_log(one), _log(two)):  # each rank's phases of a step
        assert record["steps"] == one_record["steps"] == 8  # 60 examples, 8 a minibatch
        assert set(record["phase_seconds"]) == set(train.PHASES)
        assert [len(seconds) for seconds in record["phase_seconds"].values()] == [2] * 4
        assert sum(record["phase_seconds"]["compute"]) > 0
        assert one_record["phase_seconds"]["waiting"] == [0.0]
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["epochs_trained"] == 2
    assert metrics["dev"] == json.loads((one / "metrics.json").read_text())["dev"]


@needs_mpi
def test_a_run_of_two_ranks_resumes_on_one_and_back(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train("tagger", 1, straight, "--epochs", "3")
    _train("tagger", 2, resumed, "--epochs", "1")
    _train("tagger", 1, resumed, "--epochs", "2", "--resume")
    _train("tagger", 2, resumed, "--epochs", "3", "--resume")
    assert [r["ranks"] for r in _log(resumed)] == [2, 1, 2]
    _same_training(straight, resumed)


@needs_mpi
def test_rank_0_alone_refuses_a_run_folder_and_every_rank_ends_cleanly(tmp_path):
    out = tmp_path / "run"
    _train("tagger", 2, out, "--epochs", "1")
    before = {name: (out / name).stat().st_mtime_ns for name in train.RUN_FILES}
    for more in ([], ["--resume", "--seed", "3"]):  # a run in the way; other settings
        done = _launch(2, "-m", "dynlp", "train", "tagger", "--train",
                       str(DATA / "tiny-train.conllu"), "--dev", str(DATA / "tiny-dev.conllu"),
                       "--out", str(out), "--batch-size", "8", "--learning-rate", "0.01",
                       *SMALL["tagger"], *more, check=False)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.count("dynlp: error:") == 1 and "the run stops" not in done.stderr
        assert "--overwrite" in done.stderr if not more else "seed: 1 -> 3" in done.stderr
        assert "BAD TERMINATION" not in done.stdout + done.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in train.RUN_FILES} == before
    _train("tagger", 2, out, "--epochs", "1", "--overwrite")
    assert [r["ranks"] for r in _log(out)] == [2]


@needs_mpi
def test_a_dying_rank_ends_the_run_and_leaves_the_checkpoint(tmp_path):
    done = _launch(2, str(WORKER), "die", str(tmp_path), check=False)
    assert done.returncode != 0
    assert "BAD TERMINATION" in done.stdout + done.stderr  # mpiexec says which rank ended how
    header, _ = train.read_checkpoint(tmp_path / train.CHECKPOINT_FILE)
    assert header["state"]["__dict__"]["epoch"] >= 1
    assert not (tmp_path / train.METRICS_FILE).exists()


@needs_mpi
def test_bench_distributed_alternates_rounds_and_gives_the_median(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_distributed",
                                                  ROOT / "scripts" / "bench_distributed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--recipes", "tagger", "--train", str(DATA / "tiny-train.conllu"),
                "--dev", str(DATA / "tiny-dev.conllu"), "--rounds", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "median of 2 rounds" in printed
    result = json.loads(out.read_text())["tagger"]
    rounds = result["rounds"]
    assert len(rounds) == 2
    speedups = sorted(r["speedup"] for r in rounds)
    assert result["speedup"] == pytest.approx(sum(speedups) / 2)
    for r in rounds:  # every round trains the same: 1 process and 2 ranks agree
        assert r["2"]["dev"] == r["1"]["dev"] == rounds[0]["1"]["dev"]
        assert r["2"]["loss"] == pytest.approx(r["1"]["loss"], rel=1e-5)
    with pytest.raises(SystemExit):
        bench.main(["--recipes", "tagger", "--train", str(DATA / "tiny-train.conllu")])
    with pytest.raises(SystemExit):
        bench.main(["--recipes", "tagger", "parser", "--train", "a", "--dev", "b"])
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])


def test_bench_distributed_batch_scale_multiplies_each_recipes_own_batch(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_distributed",
                                                  ROOT / "scripts" / "bench_distributed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    commands = []

    class Seen(Exception):
        pass

    def record(command, **kwargs):
        commands.append(command)
        raise Seen
    monkeypatch.setattr(bench.subprocess, "run", record)
    monkeypatch.setattr(bench, "mpiexec", lambda: "mpiexec")
    for recipe, batch in [("tagger", 64), ("treelstm", 50), ("parser", 64)]:
        with pytest.raises(Seen):
            bench.main(["--recipes", recipe, "--batch-scale", "2"])
        assert commands[-1][commands[-1].index("--batch-size") + 1] == str(batch)
    with pytest.raises(Seen):
        bench.main(["--recipes", "tagger"])
    assert "--batch-size" not in commands[-1]
    with pytest.raises(SystemExit):
        bench.main(["--batch-size", "8", "--batch-scale", "2"])
    with pytest.raises(SystemExit):
        bench.main(["--batch-scale", "0"])
