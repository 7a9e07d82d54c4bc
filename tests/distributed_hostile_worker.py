"""Run by tests/test_distributed_hostile.py under `mpiexec -n N`: `python
distributed_hostile_worker.py CASE OUT`. Case `misuse`: the library calls of
dynlp/distributed.py made wrongly, one after another, the last rank (N - 1) the odd one out;
every rank appends what each call gave it (its result, or the DistributedError it raised) to
OUT/rank-R.jsonl. Case `fail`: training in which the last rank raises during epoch 2. Case
`interrupt`: Ctrl-C while rank 0 writes a checkpoint. `resume` continues the run of `fail`,
`overwrite` replaces a run with one that fails in its first epoch. `return` and `raise`: the
last rank leaves its script while the others go on. `documented`: the loop of
docs/DISTRIBUTED.md."""

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


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def misuse(out: Path) -> None:
    comm = distributed.setup()
    odd = comm.rank == comm.size - 1  # the rank that does otherwise
    record = out / f"rank-{comm.rank}.jsonl"

    def run(name, case):
        try:
            result = case()
        except distributed.DistributedError as err:
            result = {"error": str(err)}
        with record.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"case": name, **result}) + "\n")

    def extra_parameter():  # the odd rank's model has one more parameter
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((3,), name="W")
        if odd:
            pc.add_parameters((4,), name="V")
        w.accumulate_grad(f32(1, 1, 1))
        comm.sum_gradients(pc, 1.0)
        return {"W": w.grad.tolist()}

    def other_order():  # the same parameters, made in another order: the same flat size
        pc = dn.ParameterCollection(seed=1)
        names = ("b", "a") if odd else ("a", "b")
        made = {name: pc.add_parameters((2 if name == "a" else 3,), name=name) for name in names}
        made["a"].accumulate_grad(f32(1, 1))
        made["b"].accumulate_grad(f32(10, 10, 10))
        comm.sum_gradients(pc, 1.0)
        return {"a": made["a"].grad.tolist(), "b": made["b"].grad.tolist()}

    def other_dtype():  # the odd rank's collection is float64
        pc = dn.ParameterCollection(seed=1, dtype=np.float64 if odd else np.float32)
        w = pc.add_parameters((4,), name="W")
        e = pc.add_lookup_parameters((5, 2), name="E")
        w.accumulate_grad(np.ones(4))
        e.accumulate_sparse(np.array([comm.rank]), np.ones((1, 2)))
        comm.sum_gradients(pc, 1.0)
        return {"W": w.grad.tolist()}

    def other_width():  # a table of other rows on the odd rank
        pc = dn.ParameterCollection(seed=1)
        e = pc.add_lookup_parameters((5, 3 if odd else 2), name="E")
        e.accumulate_sparse(np.array([1]), np.ones((1, e.shape[1]), np.float32))
        comm.sum_gradients(pc, 1.0)
        return {"E": e.grad_as_array().tolist()}

    def table_elsewhere():  # a table on every rank but the odd one
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((2,), name="W")
        if not odd:
            e = pc.add_lookup_parameters((5, 2), name="E")
            e.accumulate_sparse(np.array([1]), np.ones((1, 2), np.float32))
        w.accumulate_grad(f32(1, 1))
        comm.sum_gradients(pc, 1.0)
        return {"W": w.grad.tolist()}

    def added_on_one_rank():  # after a first sum, the odd rank adds a parameter
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((2,), name="W")
        w.accumulate_grad(f32(1, 1))
        comm.sum_gradients(pc)
        pc.clear_grads()
        if odd:
            pc.add_parameters((3,), name="V")
        w.accumulate_grad(f32(1, 1))
        comm.sum_gradients(pc)
        return {"W": w.grad.tolist()}

    def added_on_every_rank():  # after a first sum, every rank adds the same parameter
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((2,), name="W")
        w.accumulate_grad(f32(1, 1))
        comm.sum_gradients(pc)
        pc.clear_grads()
        v = pc.add_parameters((3,), name="V")
        w.accumulate_grad(f32(1, 1))
        v.accumulate_grad(np.full(3, comm.rank + 1, dtype=np.float32))
        loss = comm.sum_gradients(pc, 0.5)
        return {"W": w.grad.tolist(), "V": v.grad.tolist(), "loss": loss}

    def sparse_dense_and_untouched():  # a table touched densely on rank 0, by rows on the
        pc = dn.ParameterCollection(seed=1)  # odd rank, not at all on the others; another
        e = pc.add_lookup_parameters((4, 2), name="E")  # table touched by no rank
        pc.add_lookup_parameters((3, 2), name="F")
        w = pc.add_parameters((2,), name="W")
        if comm.rank == 0:
            e.accumulate_grad(np.array([[0, 0], [1, 1], [0, 0], [0, 0]], np.float32))
        elif odd:
            e.accumulate_sparse(np.array([2, 1]), np.ones((2, 2), np.float32))
        if not odd:  # the odd rank has an empty share: no gradient at all
            w.accumulate_grad(f32(1, 2))
        loss = comm.sum_gradients(pc, 0.0 if odd else 1.0)
        return {"E": e.grad_as_array().tolist(), "F": pc["F"].grad_as_array().tolist(),
                "W": w.grad.tolist(), "loss": loss}

    def mixed_dtypes():  # one rank's dense gradients in two dtypes (the same on every rank)
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((2,), name="W")
        v = pc.add_parameters((2,), name="V")
        v.grad = np.zeros(2, dtype=np.float64)
        w.accumulate_grad(f32(1, 1))
        v.accumulate_grad(np.full(2, 0.1))
        comm.sum_gradients(pc)
        return {"W": w.grad.tolist(), "V": v.grad.tolist(), "V dtype": str(v.grad.dtype)}

    def sum_against_allgather():  # the odd rank calls another collective
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((2,), name="W")
        w.accumulate_grad(f32(1, 1))
        if odd:
            return {"gathered": comm.allgather({"x": 1})}
        comm.sum_gradients(pc, 1.0)
        return {"W": w.grad.tolist()}

    def barrier_against_broadcast():
        if odd:
            return {"value": comm.broadcast("hello")}
        comm.barrier()
        return {}

    def broadcast_other_order():  # broadcast_parameters over parameters made in another order
        pc = dn.ParameterCollection(seed=comm.rank)
        names = ("b", "a") if odd else ("a", "b")
        made = {name: pc.add_parameters((2 if name == "a" else 3,), name=name) for name in names}
        comm.broadcast_parameters(pc)
        return {"a": made["a"].value.tolist(), "b": made["b"].value.tolist()}

    def broadcast_other_root():
        pc = dn.ParameterCollection(seed=comm.rank)
        w = pc.add_parameters((3,), name="W")
        comm.broadcast_parameters(pc, root=1 if odd else 0)
        return {"W": w.value.tolist()}

    def value_other_root():
        return {"value": comm.broadcast(f"from {comm.rank}", root=1 if odd else 0)}

    def agree_by_name():  # the same values under other names: not the same parameters
        pc = dn.ParameterCollection(seed=1)
        pc.add_parameters((3,), name="V" if odd else "W")
        return {"agree": comm.parameters_agree(pc)}

    def shard_and_sum(batch, step_cost=distributed.STEP_COST):
        pc = dn.ParameterCollection(seed=1)
        w = pc.add_parameters((1,), name="W")
        for i in comm.shard_batch(batch, step_cost=step_cost):
            w.accumulate_grad(f32(batch[i].count("x")))
        loss = comm.sum_gradients(pc)
        return {"W": w.grad.tolist(), "loss": loss}

    batch = ["x" * n for n in (30, 28, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5)]  # 133 words

    def other_step_cost():  # the odd rank deals the same minibatch otherwise
        return shard_and_sum(batch, step_cost=0 if odd else distributed.STEP_COST)

    def other_minibatch():  # the odd rank shuffled with another seed
        return shard_and_sum(batch[::-1][:8] if odd else batch[:8])

    def same_minibatch():
        return shard_and_sum(batch)

    def still_in_step():  # after all the above, the ranks still make their calls together
        pc = dn.ParameterCollection(seed=comm.rank)
        w = pc.add_parameters((2,), name="W")
        comm.broadcast_parameters(pc)
        w.accumulate_grad(f32(1, comm.rank))
        loss = comm.sum_gradients(pc, 1.0)
        return {"W": w.grad.tolist(), "loss": loss, "agree": comm.parameters_agree(pc),
                "gathered": comm.allgather(comm.rank)}

    for case in (extra_parameter, other_order, other_dtype, other_width, table_elsewhere,
                 added_on_one_rank, added_on_every_rank, sparse_dense_and_untouched,
                 mixed_dtypes, other_step_cost, other_minibatch, same_minibatch,
                 sum_against_allgather, barrier_against_broadcast,
                 broadcast_other_order, broadcast_other_root, value_other_root, agree_by_name,
                 still_in_step):
        run(case.__name__, case)


class FailingTagger(tagger.Model):
    """The last rank raises in the middle of epoch 2 (once rank 0 has written the checkpoint
    of epoch 1 and then its log)."""

    out = Path()

    def loss(self, example, rng):
        if distributed.launched_rank() == distributed.launched_size() - 1 and (
                self.out / train.LOG_FILE).exists():
            raise RuntimeError("a bug in the last rank's model")
        return super().loss(example, rng)


def fail(out: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Train until the last rank fails (or, resuming, to the end with a sound model)."""
    FailingTagger.out = out
    recipe = types.SimpleNamespace(NAME="tagger", MAIN_METRIC=tagger.MAIN_METRIC,
                                   Model=tagger.Model if resume else FailingTagger)
    config = {**train.COMMON_DEFAULTS, **tagger.DEFAULTS, **SMALL, "epochs": 3,
              "batch_size": 4, "learning_rate": 0.01, "limit": 24}
    splits = [read_conllu(DATA / f"tiny-{s}.conllu") for s in ("train", "dev")]
    from dynlp import cli
    with distributed.ending_run_on_error():
        try:
            train.train(recipe, config, out, *splits, progress=False, resume=resume,
                        overwrite=overwrite)
        except Exception as err:  # as the dynlp command says it
            print(f"dynlp: error: {cli._message(err)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def interrupt(out: Path) -> None:
    """`dynlp train tagger` on every rank, which Ctrl-C reaches while rank 0 writes the
    checkpoint of epoch 2 (a slow write: mpiexec forwards Ctrl-C to every rank, and the other
    ranks come to it first)."""
    from dynlp import cli
    comm = distributed.setup()
    pids = comm.allgather(os.getpid())
    savez = np.savez

    def slow_savez(file, **arrays):
        header = json.loads(arrays["header"].tobytes())
        if comm.rank == 0 and header.get("state", {}).get("__dict__", {}).get("epoch") == 2:
            for pid in reversed(pids):  # the others first; rank 0's own waits for the write
                os.kill(pid, signal.SIGINT)
            time.sleep(1.0)
        savez(file, **arrays)

    np.savez = slow_savez
    raise SystemExit(cli.main(["train", "tagger", "--train", str(DATA / "tiny-train.conllu"),
                               "--dev", str(DATA / "tiny-dev.conllu"), "--out", str(out),
                               "--epochs", "5", "--batch-size", "8", "--limit", "16",
                               "--word-dim", "8", "--char-dim", "4", "--char-hidden", "8",
                               "--lstm-layers", "1", "--lstm-dim", "8", "--mlp-dim", "8"]))


def leave(out: Path, how: str) -> None:
    """The last rank leaves the script (returns, or raises without ending_run_on_error) while
    the others call sum_gradients."""
    comm = distributed.setup()
    pc = dn.ParameterCollection(seed=1)
    pc.add_parameters((2,), name="W")
    comm.sum_gradients(pc)  # a first step together
    if comm.rank == comm.size - 1:
        if how == "raise":
            raise RuntimeError("a bug in the last rank's loop")
        return
    comm.sum_gradients(pc)


def documented_loop(out: Path) -> None:
    """The training loop of docs/DISTRIBUTED.md ("In one's own training loop") as it is
    written there, with a small tagger for its MyModel; it prints and saves under OUT."""
    text = (DATA.parent / "docs" / "DISTRIBUTED.md").read_text(encoding="utf-8")
    code = text.split("## In one's own training loop")[1].split("```python\n")[1]
    code = code.split("```")[0]
    examples = read_conllu(DATA / "tiny-train.conllu")[:9]
    config = {**tagger.DEFAULTS, **SMALL}

    class MyModel(tagger.Model):
        def __init__(self, pc):
            super().__init__(pc, config, tagger.Model.build_vocabs(examples, config))

    os.chdir(out)
    exec(compile(code, "DISTRIBUTED.md", "exec"),  # noqa: S102 (the project's own docs)
         {"__name__": "__main__", "MyModel": MyModel, "train": examples,
          "dev": read_conllu(DATA / "tiny-dev.conllu")[:5]})


if __name__ == "__main__":
    CASES = {"misuse": misuse, "fail": fail, "resume": lambda out: fail(out, resume=True),
             "overwrite": lambda out: fail(out, overwrite=True), "interrupt": interrupt,
             "return": lambda out: leave(out, "return"), "raise": lambda out: leave(out, "raise"),
             "documented": documented_loop}
    CASES[sys.argv[1]](Path(sys.argv[2]))
