"""Run by tests/test_distributed.py under `mpiexec -n 2`: `python distributed_worker.py CASE OUT`.
Each rank writes what it saw to OUT/rank-R.json (case `exchange`), or trains until rank 1 dies
(case `die`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dynlp as dn  # noqa: E402
from dynlp import distributed, train  # noqa: E402
from dynlp.data import read_conllu  # noqa: E402
from recipes import tagger  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"
SMALL = {"word_dim": 8, "char_dim": 4, "char_hidden": 8, "lstm_layers": 1, "lstm_dim": 16,
         "mlp_dim": 8}


def contribution(rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank r's dense gradient (3, 2) and touched rows of a (6, 2) table: rows overlap."""
    dense = np.full((3, 2), rank + 1.0, dtype=np.float32)
    rows = np.array([rank, rank + 2], dtype=np.int64)
    values = np.arange(4, dtype=np.float32).reshape(2, 2) + 10 * rank
    return dense, rows, values


def exchange(out: Path) -> None:
    comm = distributed.setup()
    pc = dn.ParameterCollection(seed=comm.rank)  # other values on every rank
    weight = pc.add_parameters((3, 2), name="W")
    table = pc.add_lookup_parameters((6, 2), name="E")
    agree_before = comm.parameters_agree(pc)
    comm.broadcast_parameters(pc)
    agree_after = comm.parameters_agree(pc)
    dense, rows, values = contribution(comm.rank)
    weight.accumulate_grad(dense)
    table.accumulate_sparse(rows, values)
    if comm.rank == 1:
        time.sleep(0.1)  # rank 0 waits for rank 1, and says so
    loss = comm.sum_gradients(pc, float(comm.rank + 1))
    touched, sums = table.sparse_grad()

    class Halves:
        def evaluation_outputs(self, examples, batch_size):
            return [[x, comm.rank] for x in examples]

        def score(self, examples, outputs):
            return {"outputs": outputs}

    result = {
        "rank": comm.rank, "size": comm.size, "agree_before": agree_before,
        "agree_after": agree_after, "loss": loss, "waited": comm.waiting_seconds,
        "dense": weight.grad.tolist(),
        "rows": touched.tolist(), "sums": sums.tolist(), "values": weight.value.tolist(),
        "gathered": comm.allgather({"rank": comm.rank, "n": np.int64(7)}),
        "broadcast": comm.broadcast(f"from {comm.rank}"),
        "shard": comm.shard(list(range(7))),
        "evaluated": comm.evaluate(Halves(), list(range(5)), 2),
    }
    (out / f"rank-{comm.rank}.json").write_text(json.dumps(result), encoding="utf-8")


def pending(out: Path) -> None:
    """start_sum_gradients: the exchange moves while a rank builds a graph, finish() makes the
    update before the graph's first value; an allgather called while a sum is pending finishes
    it first."""
    comm = distributed.setup()
    pc = dn.ParameterCollection(seed=0)  # the same values on every rank
    weight = pc.add_parameters((3, 2), name="W")
    table = pc.add_lookup_parameters((6, 2), name="E")
    start = weight.value.copy()
    dense, rows, values = contribution(comm.rank)
    seen = {}
    for step in range(2):
        weight.accumulate_grad(dense)
        table.accumulate_sparse(rows, values)
        if comm.rank == 1:
            time.sleep(0.1)  # rank 0 builds meanwhile
        updates = []

        def update(loss: float) -> None:
            updates.append((loss, weight.grad.tolist(), table.sparse_grad()[0].tolist(),
                            table.sparse_grad()[1].tolist()))
            weight.value -= weight.grad  # (an SGD step of rate 1)
            pc.clear_grads()
        pending = comm.start_sum_gradients(pc, float(comm.rank + 1), then=update)
        if step == 0:
            with dn.Graph() as g:
                g.before_evaluation(pending.finish)
                y = dn.parameter(weight) * 1.0
                tests = 0
                while not pending.progress() and tests < 10**6:
                    tests += 1
                seen["progressed"] = pending.progress()
                seen["updated_before_value"] = updates == []
                seen["value"] = y.npvalue().tolist()
                seen["updates"] = list(updates)
                seen["done"] = pending.done
        else:  # the next call finishes the pending sum first
            seen["gathered"] = comm.allgather(comm.rank)
            seen["updates_after_allgather"] = list(updates)
            seen["finish_again"] = pending.finish()
    seen["start"] = start.tolist()
    seen["end"] = weight.value.tolist()
    seen["waiting"] = pending.seconds["waiting"]
    (out / f"rank-{comm.rank}.json").write_text(json.dumps(seen), encoding="utf-8")


class DyingTagger(tagger.Model):
    """Rank 1 dies as soon as rank 0 has written the first checkpoint."""

    out = Path()

    def loss(self, example, rng):
        if distributed.launched_rank() == 1 and (self.out / train.CHECKPOINT_FILE).exists():
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        return super().loss(example, rng)


def die(out: Path) -> None:
    DyingTagger.out = out
    recipe = types.SimpleNamespace(NAME="tagger", MAIN_METRIC=tagger.MAIN_METRIC,
                                   Model=DyingTagger)
    config = {**train.COMMON_DEFAULTS, **tagger.DEFAULTS, **SMALL, "epochs": 4,
              "batch_size": 4, "learning_rate": 0.01}
    splits = [read_conllu(DATA / f"tiny-{s}.conllu") for s in ("train", "dev")]
    train.train(recipe, config, out, *splits, progress=False)


if __name__ == "__main__":
    {"exchange": exchange, "pending": pending, "die": die}[sys.argv[1]](Path(sys.argv[2]))
