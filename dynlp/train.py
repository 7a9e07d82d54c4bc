"""The one training and evaluation loop that serves every recipe: seeded minibatches, dev
evaluation with keep-best, checkpoints with exact resume, tqdm progress, a JSON-lines log and the
final metrics file, all under one output folder. A recipe arrives as an argument (any module with
the recipe interface); this module must not import recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

import dynlp as dn

from .autobatch import DEFAULT_STRATEGY
from .data import Vocab, batches
from .distributed import Communicator, setup
from .params import write_npz
from .trainers import make_trainer

COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": 10, "batch_size": 32, "optimizer": "adam", "learning_rate": 1e-3, "seed": 1,
    "autobatch": True, "autobatch_strategy": DEFAULT_STRATEGY, "limit": None, "dev_limit": None,
    "patience": 5, "eval_every": 1,
}
# settings that may change when a run is resumed (everything else must match the checkpoint)
RESUMABLE_KEYS = frozenset({"epochs", "patience", "eval_every"})

MODEL_FILE = "model.npz"
CHECKPOINT_FILE = "checkpoint.npz"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINT_FORMAT = "dynlp-checkpoint"
CHECKPOINT_VERSION = 1


class TrainingError(Exception):
    """A run cannot start or continue: bad settings, no data, a mismatched checkpoint."""


class TrainingInterrupted(Exception):
    """Training was stopped by Ctrl-C; the message says where the checkpoint is."""


# -------------------------------------------------------------------------------------------------
# Model files


def model_path(path: str | os.PathLike) -> Path:
    """A run folder means its `model.npz`; a file path is taken as it is."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def add_model_arguments(parser: Any, defaults: dict[str, Any], helps: dict[str, str],
                        choices: dict[str, Sequence[str]] | None = None) -> None:
    """A recipe's model flags: one per entry of `helps`, `--word-dim` for the key `word_dim`,
    with its default from `defaults` and of that default's type. A boolean default gives
    `--x/--no-x`, a None default a string flag; `choices` lists the allowed values of a key."""
    choices = choices or {}
    for key, text in helps.items():
        default = defaults[key]
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            parser.add_argument(flag, type=None if default is None else type(default),
                                default=default, choices=choices.get(key), help=text)


class RecipeModel:
    """Saving and rebuilding shared by the recipes' models, which are built from a config and a
    dict of `Vocab`s: `Model(pc, config, vocabs)`. Subclasses set `recipe` to their NAME."""

    recipe = ""
    config: dict
    vocabs: dict

    def metadata(self) -> dict:
        return {"recipe": self.recipe, "config": self.config,
                "vocabs": {name: vocab.to_dict() for name, vocab in self.vocabs.items()}}

    @classmethod
    def from_metadata(cls, pc: dn.ParameterCollection, meta: dict) -> Any:
        vocabs = {name: Vocab.from_dict(d) for name, d in meta["vocabs"].items()}
        return cls(pc, meta["config"], vocabs)  # type: ignore[call-arg]


def load_model(recipe: ModuleType, path: str | os.PathLike,
               loader: Callable[[str], Any] | None = None) -> Any:
    """Rebuild a recipe's model from a saved model file (or run folder) and load its values.

    loader (model folder -> model) is handed to models that use other models (the parser's
    `--tagger-model`) through their optional `attach_models` hook.
    Raises dn.ModelFileError for a missing or damaged file, or one made by another recipe.
    """
    path = model_path(path)
    try:
        meta = dn.read_metadata(path)
    except (EOFError, zipfile.BadZipFile) as err:  # not (yet) caught by dynlp.params
        raise dn.ModelFileError(f"{path}: not a dynlp model file ({err})") from None
    made_by = meta.get("recipe") if isinstance(meta, dict) else None
    if made_by != recipe.NAME:
        raise dn.ModelFileError(f"{path}: a model of the {made_by!r} recipe, not of "
                                f"{recipe.NAME!r}")
    pc = dn.ParameterCollection()
    try:
        model = recipe.Model.from_metadata(pc, meta)
    except (KeyError, TypeError, ValueError) as err:
        raise dn.ModelFileError(f"{path}: the model description is damaged ({err})") from None
    try:
        pc.populate(path)
    except (EOFError, zipfile.BadZipFile) as err:
        raise dn.ModelFileError(f"{path}: the model file is damaged ({err})") from None
    _attach(model, loader)
    return model


def _attach(model: Any, loader: Callable[[str], Any] | None) -> None:
    if loader is not None and hasattr(model, "attach_models"):
        model.attach_models(loader)


# -------------------------------------------------------------------------------------------------
# Checkpoints: parameters, trainer state and loop state in one npz, described by a JSON header


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON skeleton of value; arrays (and numpy scalars) go to `arrays` under fresh keys."""
    if isinstance(value, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"__array__" if isinstance(value, np.ndarray) else "__scalar__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _encode(v, arrays) for k, v in value.items()}}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.array(arrays[value["__array__"]])
        if "__scalar__" in value:
            return np.asarray(arrays[value["__scalar__"]])[()]
        if "__dict__" in value:
            return {k: _decode(v, arrays) for k, v in value["__dict__"].items()}
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__items__"]}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def save_checkpoint(path: str | os.PathLike, pc: dn.ParameterCollection, trainer: Any,
                    state: dict, config: dict, model_metadata: dict) -> None:
    """Write parameters, trainer state and loop state to `path` (temporary file, then rename)."""
    arrays: dict[str, np.ndarray] = {}
    params = list(pc.parameters())
    for i, p in enumerate(params):
        arrays[f"p{i}"] = p.value
    header = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "parameters": [p.name for p in params],
        "trainer": _encode(trainer.state_dict(), arrays),
        "state": _encode(state, arrays),
        "config": config, "model": model_metadata,
    }
    write_npz(path, header, arrays)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a checkpoint; TrainingError when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError,
            zipfile.BadZipFile) as err:
        raise TrainingError(f"{path}: not a dynlp checkpoint ({err})") from None
    if header.get("format") != CHECKPOINT_FORMAT or header.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: not a dynlp checkpoint of version {CHECKPOINT_VERSION}")
    return header, arrays


def restore_checkpoint(header: dict, arrays: Any, pc: dn.ParameterCollection,
                       trainer: Any) -> dict:
    """Load parameters and trainer state of a read checkpoint; returns the loop state."""
    params = list(pc.parameters())
    if header["parameters"] != [p.name for p in params]:
        raise TrainingError("the checkpoint's parameters do not match the model")
    for i, p in enumerate(params):
        value = arrays[f"p{i}"]
        if value.shape != p.shape:
            raise TrainingError(f"checkpoint parameter {p.name!r} has shape {value.shape}, "
                                f"the model {p.shape}")
        p.value[...] = value
    try:
        trainer.load_state_dict(_decode(header["trainer"], arrays))
    except ValueError as err:
        raise TrainingError(f"the checkpoint's trainer state does not fit: {err}") from None
    return _decode(header["state"], arrays)


# -------------------------------------------------------------------------------------------------
# Run records


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the source tree holding dynlp, with "-dirty" when tracked files
    differ from it, or None when there is no git tree."""
    where = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=10,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        return None
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - RESUMABLE_KEYS)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def graph_strategy(config: dict) -> bool | str:
    """The `autobatch` argument of dn.Graph for a run's settings."""
    return config["autobatch_strategy"] if config["autobatch"] else False


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one training step: depends on (seed, epoch, step) only, so a resumed
    run draws exactly what an uninterrupted one draws."""
    return np.random.default_rng((seed, epoch, step))


def example_rng(seed: int, epoch: int, step: int, position: int) -> np.random.Generator:
    """The generator of the example at `position` in a step's minibatch, for its word dropout,
    dropout masks and other draws: the same whichever rank (or how many) computes it."""
    return np.random.default_rng((seed, epoch, step, position))


# -------------------------------------------------------------------------------------------------
# The loop


def _check(config: dict) -> None:
    for key in ("epochs", "batch_size"):
        if int(config[key]) < 1:
            raise TrainingError(f"{key} must be at least 1, got {config[key]}")
    if int(config["seed"]) < 0:
        raise TrainingError(f"seed must be non-negative, got {config['seed']}")
    if float(config["learning_rate"]) <= 0:
        raise TrainingError(f"learning_rate must be positive, got {config['learning_rate']}")
    if int(config["eval_every"]) < 1 or int(config["patience"]) < 1:
        raise TrainingError("eval_every and patience must be at least 1")


def _fresh_state() -> dict:
    return {"epoch": 0, "best": None, "best_epoch": 0, "best_dev": None,
            "epochs_without_improvement": 0, "train_seconds": 0.0, "train_examples": 0}


def train(recipe: ModuleType, config: dict, out: str | os.PathLike, train_examples: list,
          dev_examples: list, test_examples: list | None = None, resume: bool = False,
          progress: bool | None = None, loader: Callable[[str], Any] | None = None,
          comm: Communicator | None = None) -> dict:
    """Train `recipe.Model` under `out` and return the final metrics (also in metrics.json).

    config: every setting (COMMON_DEFAULTS keys and the recipe's DEFAULTS keys, plus anything
    worth recording); it is stored in the model and the metrics. Writes `out/log.jsonl` (one line
    per epoch), `out/checkpoint.npz` (after every epoch), `out/model.npz` (best on dev) and
    `out/metrics.json` (dev and test scores of the best model). resume: continue from the
    checkpoint; the result equals that of an uninterrupted run. progress: tqdm bar (None: only
    on a terminal). loader: see `load_model`. comm: the ranks to train on (default
    `dynlp.distributed.setup()`: all the ranks of `mpiexec`, else this process); each computes
    its share of every minibatch and of the evaluations, rank 0 alone writes files and reports.
    Raises TrainingError, or TrainingInterrupted on Ctrl-C.
    """
    comm = setup() if comm is None else comm
    _check(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.get("limit") is not None:
        train_examples = train_examples[:int(config["limit"])]
    if not train_examples:
        raise TrainingError("no training examples")
    if not dev_examples:
        raise TrainingError("no development examples")
    dev_during = dev_examples
    if config.get("dev_limit") is not None:
        dev_during = dev_examples[:int(config["dev_limit"])]
    seed = int(config["seed"])
    checkpoint_path = out / CHECKPOINT_FILE
    log_path = out / LOG_FILE

    pc = dn.ParameterCollection(seed=seed)
    if resume:
        header, arrays = read_checkpoint(checkpoint_path)
        changed = _differences(header["config"], config)
        if changed:
            raise TrainingError("the settings differ from the checkpoint's: " + "; ".join(changed))
        model = recipe.Model.from_metadata(pc, header["model"])
    else:
        vocabs = recipe.Model.build_vocabs(train_examples, config)
        model = recipe.Model(pc, config, vocabs)
    _attach(model, loader)
    trainer = make_trainer(config["optimizer"], pc, learning_rate=float(config["learning_rate"]))
    if resume:
        state = restore_checkpoint(header, arrays, pc, trainer)
    else:
        state = _fresh_state()
        if comm.is_root:
            state["git_commit"] = git_commit()  # the code that trains, not the code at the end
            log_path.write_text("", encoding="utf-8")
            checkpoint_path.unlink(missing_ok=True)  # a stale one would resume another run
    comm.broadcast_parameters(pc)
    if not comm.is_root:
        progress = False
    elif comm.size > 1:
        print(f"training on {comm.size} ranks; should one fail, mpiexec ends them all and "
              f"{checkpoint_path} keeps the last finished epoch: rerun with --resume (with any "
              "number of ranks)", file=sys.stderr)
    metadata = model.metadata()
    strategy = graph_strategy(config)

    epochs, patience = int(config["epochs"]), int(config["patience"])
    epoch = state["epoch"]
    try:
        while epoch < epochs and state["epochs_without_improvement"] < patience:
            epoch += 1
            loss, count, seconds, cpu = _train_epoch(model, trainer, train_examples, config,
                                                     epoch, strategy, progress, comm)
            record: dict[str, Any] = {
                "epoch": epoch, "train_loss": loss / count, "examples_per_second": count / seconds,
                "seconds": seconds, "learning_rate": trainer.learning_rate, "dev": None,
                "ranks": comm.size, "cpu_seconds": max(comm.allgather(cpu)),
            }
            state["train_seconds"] += seconds
            state["train_examples"] += count
            if epoch % int(config["eval_every"]) == 0 or epoch == epochs:
                start = time.perf_counter()
                dev = comm.evaluate(model, dev_during, int(config["batch_size"]))
                record["dev"] = dev
                record["dev_seconds"] = time.perf_counter() - start
                score = float(dev[recipe.MAIN_METRIC])
                if state["best"] is None or score > state["best"]:
                    state.update(best=score, best_epoch=epoch, best_dev=dev)
                    if comm.is_root:
                        pc.save(out / MODEL_FILE, metadata=metadata)
                state["epochs_without_improvement"] = epoch - state["best_epoch"]
            state["epoch"] = epoch
            trainer.update_epoch()
            if comm.size > 1 and not comm.parameters_agree(pc):
                raise TrainingError(f"the ranks' parameters differ after epoch {epoch}")
            if comm.is_root:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
                save_checkpoint(checkpoint_path, pc, trainer, state, config, metadata)
                _report(recipe, record, state)
    except KeyboardInterrupt:
        done = state["epoch"]
        where = (f"the checkpoint after epoch {done} is {checkpoint_path}; run the same command "
                 "with --resume to continue") if done > 0 else "no epoch finished, no checkpoint"
        raise TrainingInterrupted(f"interrupted during epoch {done + 1}: {where}") from None

    comm.barrier()  # the best model file is written
    return _finish(recipe, config, out, dev_examples, test_examples, state, loader, comm)


def _train_epoch(model: Any, trainer: Any, examples: list, config: dict, epoch: int,
                 strategy: bool | str, progress: bool | None,
                 comm: Communicator) -> tuple[float, int, float, float]:
    """One pass over the shuffled examples: (summed loss, examples, seconds, this process's
    CPU seconds). Each rank computes its share of every minibatch, each example with its own
    generator."""
    seed, size = int(config["seed"]), int(config["batch_size"])
    total_loss, count = 0.0, 0
    start, cpu = time.perf_counter(), time.process_time()
    disable = None if progress is None else not progress
    with tqdm(total=len(examples), desc=f"epoch {epoch}", unit="ex", disable=disable,
              leave=False, dynamic_ncols=True) as bar:
        for step, batch in enumerate(batches(examples, size, shuffle=True, seed=seed,
                                             epoch=epoch)):
            value = _share_loss(model, batch, comm.shard_batch(batch), seed, epoch, step,
                                strategy)
            value = comm.sum_gradients(trainer.pc, value)
            trainer.update()
            if not np.isfinite(value):
                raise TrainingError(f"the loss became {value} in epoch {epoch}, step {step}; "
                                    "try a smaller learning rate")
            total_loss += value
            count += len(batch)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)
    return total_loss, count, time.perf_counter() - start, time.process_time() - cpu


def _share_loss(model: Any, batch: list, positions: list[int], seed: int, epoch: int, step: int,
                strategy: bool | str) -> float:
    """Build, evaluate and backpropagate the summed loss of the examples at `positions` of a
    minibatch (this rank's share); their gradients are left in the parameters."""
    if not positions:
        return 0.0
    rng = step_rng(seed, epoch, step)
    rngs = [example_rng(seed, epoch, step, i) for i in positions]
    examples = [batch[i] for i in positions]
    with dn.Graph(autobatch=strategy, seed=int(rng.integers(2**63 - 1))) as g:
        if hasattr(model, "batch_loss"):  # recipes that decide in lockstep
            total = model.batch_loss(examples, rngs)
        else:
            losses = []
            for example, example_generator in zip(examples, rngs):
                g.use_generator(example_generator)
                losses.append(model.loss(example, example_generator))
            total = dn.esum(losses)
        value = total.scalar_value()
        total.backward()
    return value


def _report(recipe: ModuleType, record: dict, state: dict) -> None:
    dev = record["dev"]
    score = f", dev {recipe.MAIN_METRIC} {dev[recipe.MAIN_METRIC]:.2f}" if dev else ""
    print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}{score}, "
          f"{record['examples_per_second']:.0f} examples/s, {record['seconds']:.1f} s "
          f"(best epoch {state['best_epoch']})", file=sys.stderr)


def _finish(recipe: ModuleType, config: dict, out: Path, dev_examples: list,
            test_examples: list | None, state: dict,
            loader: Callable[[str], Any] | None = None,
            comm: Communicator | None = None) -> dict:
    """Evaluate the best model on the full dev and test sets; write and return metrics.json
    (rank 0 writes; every rank returns the metrics)."""
    comm = Communicator() if comm is None else comm
    model = load_model(recipe, out / MODEL_FILE, loader)
    size = int(config["batch_size"])
    dev = comm.evaluate(model, dev_examples, size)
    test = comm.evaluate(model, test_examples, size) if test_examples else None
    seconds = state["train_seconds"]
    metrics = {
        "recipe": recipe.NAME, "main_metric": recipe.MAIN_METRIC, "dev": dev, "test": test,
        "best_epoch": state["best_epoch"], "epochs_trained": state["epoch"],
        "train_examples_per_second": state["train_examples"] / seconds if seconds else None,
        "config": config, "seed": int(config["seed"]), "dynlp_version": dn.__version__,
        "git_commit": state.get("git_commit"), "ranks": comm.size,
    }
    if comm.is_root:
        _write_json(out / METRICS_FILE, metrics)
    return metrics
