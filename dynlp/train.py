"""The one training and evaluation loop that serves every recipe: seeded minibatches, dev
evaluation with keep-best, checkpoints with exact resume, tqdm progress, a JSON-lines log and the
final metrics file, all under one output folder. A recipe arrives as an argument (any module with
the recipe interface); this module must not import recipes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

import dynlp as dn

from .autobatch import DEFAULT_STRATEGY
from .data import Vocab, batches, write_text_atomic
from .data.files import remove_stale_temporaries
from .report import REPORT_FILE
from .distributed import STEP_COST, Communicator, PendingSum, example_cost, setup
from .params import ModelSizeError, open_npz, read_header, stored_elements, write_npz
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


class RunRefused(TrainingError):
    """The run folder does not fit the request (a run in the way, no checkpoint to resume,
    other settings than the checkpoint's). Rank 0 alone checks, and every rank of a
    data-parallel run raises this together, so the run ends without an abort; it is `quiet` on
    the other ranks, which leave the saying to rank 0."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


class TrainingInterrupted(Exception):
    """Training was stopped by Ctrl-C or SIGTERM; the message says where the checkpoint is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (the `dynlp` command turns the signal into this), so
    that it unwinds like Ctrl-C: temporary files removed, the last checkpoint kept."""


# -------------------------------------------------------------------------------------------------
# Settings: the allowed range of every numeric setting, checked where settings enter


@dataclass(frozen=True)
class Limit:
    """The allowed values of a numeric setting: low..high (an end excluded when open), an
    integer unless `integer=False`, even when `even`, None too when `optional`."""

    low: float
    high: float
    integer: bool = True
    open_low: bool = False
    open_high: bool = False
    even: bool = False
    optional: bool = False

    def describe(self) -> str:
        if self.integer:
            kind = "an even integer" if self.even else "an integer"
            text = f"{kind} in {self.low:g}..{self.high:g}"
        else:
            text = (f"a number in {'(' if self.open_low else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.open_high else ']'}")
        return text + (" (or none)" if self.optional else "")

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below and not (self.even and value % 2)


MAX_SIZE = 65536  # the largest dimension of any layer
COMMON_LIMITS: dict[str, Limit] = {
    "epochs": Limit(1, 10**6), "batch_size": Limit(1, 10**5),
    "learning_rate": Limit(0, 10, integer=False, open_low=True), "seed": Limit(0, 2**63 - 1),
    "limit": Limit(1, 10**9, optional=True), "dev_limit": Limit(1, 10**9, optional=True),
    "patience": Limit(1, 10**6), "eval_every": Limit(1, 10**6),
}


def limits_of(recipe: ModuleType | None) -> dict[str, Limit]:
    """The common limits and those of a recipe (its optional `LIMITS`)."""
    return {**COMMON_LIMITS, **getattr(recipe, "LIMITS", {})}


def setting_problems(config: dict, limits: dict[str, Limit]) -> list[tuple[str, str]]:
    """(key, what is wrong) for every setting of `config` outside its limit."""
    return [(key, f"must be {limit.describe()}, got {config[key]!r}")
            for key, limit in limits.items() if key in config and not limit.allows(config[key])]


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def integer_argument(text: str) -> int:
    """An argparse type: ASCII digits with an optional sign only (no '0_3', no other
    scripts' digits, no spaces)."""
    if not _INTEGER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(text)


def number_argument(text: str) -> float:
    """An argparse type: a finite decimal number in ASCII (no nan, no inf)."""
    if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return float(text)


def memory_budget() -> int | None:
    """The bytes of parameter values a training run may allocate: an eighth of the memory
    available now (gradients, optimizer moments and initialization take the rest), or None
    where the available memory cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 8
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
    except (OSError, ValueError, AttributeError):
        return None


# -------------------------------------------------------------------------------------------------
# Model files


def model_path(path: str | os.PathLike) -> Path:
    """A run folder means its `model.npz`; a file path is taken as it is."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def add_model_arguments(parser: Any, defaults: dict[str, Any], helps: dict[str, str],
                        choices: dict[str, Sequence[str]] | None = None) -> None:
    """A recipe's model flags: one per entry of `helps`, `--word-dim` for the key `word_dim`,
    with its default from `defaults` and of that default's type (ints and floats read strictly:
    `integer_argument`, `number_argument`; ranges are the recipe's LIMITS, checked after
    parsing). A boolean default gives `--x/--no-x`, a None default a string flag; `choices`
    lists the allowed values of a key."""
    choices = choices or {}
    types = {int: integer_argument, float: number_argument}
    for key, text in helps.items():
        default = defaults[key]
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            kind = None if default is None else types.get(type(default), type(default))
            parser.add_argument(flag, type=kind, default=default, choices=choices.get(key),
                                help=text)


class RecipeModel:
    """Saving and rebuilding shared by the recipes' models, which are built from a config and a
    dict of `Vocab`s: `Model(pc, config, vocabs)`. Subclasses set `recipe` to their NAME."""

    recipe = ""
    config: dict
    vocabs: dict
    # the fixed cost of one autobatched step, in words, when a minibatch is dealt across ranks
    # (`Communicator.shard_batch`'s step_cost): a sequence's every word is a step
    shard_step_cost = STEP_COST

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
    header = read_header(path)
    meta = header["metadata"]
    made_by = meta.get("recipe")
    if made_by != recipe.NAME:
        raise dn.ModelFileError(f"{path}: a model of the {made_by!r} recipe, not of "
                                f"{recipe.NAME!r}")
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(meta.get("vocabs"), dict):
        raise dn.ModelFileError(f"{path}: the model description is damaged (its config or "
                                "vocabs are not objects)")
    for key, problem in setting_problems(config, limits_of(recipe)):
        raise dn.ModelFileError(f"{path}: the model description is damaged: config field "
                                f"{key!r} {problem}")
    check_model_references(recipe, config, f"{path}: config field")
    # the model may allocate no more than the file holds, so a description that asks for
    # terabytes fails before allocating anything
    pc = dn.ParameterCollection(max_bytes=stored_elements(header) * np.dtype(np.float32).itemsize)
    try:
        model = recipe.Model.from_metadata(pc, meta)
    except ModelSizeError as err:
        raise dn.ModelFileError(f"{path}: the file's parameters do not match its model "
                                f"description, which asks for more than the file holds ({err})"
                                ) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as err:
        raise dn.ModelFileError(f"{path}: the model description is damaged ({err})") from None
    pc.populate(path)
    _attach(model, loader)
    return model


def check_model_references(recipe: ModuleType, config: dict, where: str) -> None:
    """ModelFileError unless every model named by the config (the recipe's optional
    `MODEL_REFERENCES`: setting -> recipe name, such as the parser's tagger_model) is a model
    file of that recipe. Checked before any is loaded, so no chain of references can loop."""
    for key, wanted in getattr(recipe, "MODEL_REFERENCES", {}).items():
        reference = config.get(key)
        if reference is None:
            continue
        if not isinstance(reference, str) or not reference:
            raise dn.ModelFileError(f"{where} {key!r} is not a model folder name")
        target = model_path(reference)
        made_by = read_header(target)["metadata"].get("recipe")
        if made_by != wanted:
            raise dn.ModelFileError(f"{where} {key!r}: {target} is a model of the {made_by!r} "
                                    f"recipe; it must be a {wanted} model")


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


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends, as the handlers
    in place would have taken them: what the block writes and records happens whole. (Python
    runs signal handlers in the main thread whichever thread the signal reached, so holding
    them back there is enough.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    names = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(caught[0])


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
    if not path.exists():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    try:
        header, npz = open_npz(path, "dynlp checkpoint")
        with npz:
            arrays = {key: npz[key] for key in npz.files if key != "header"}
    except dn.ModelFileError as err:
        raise TrainingError(str(err)) from None
    except (OSError, ValueError, EOFError) as err:
        raise TrainingError(f"{path}: a damaged checkpoint ({type(err).__name__})") from None
    if header.get("format") != CHECKPOINT_FORMAT or header.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: not a dynlp checkpoint of version {CHECKPOINT_VERSION}")
    for key in ("parameters", "trainer", "state", "config", "model"):
        if key not in header:
            raise TrainingError(f"{path}: a damaged checkpoint (no {key!r} in its header)")
    if not isinstance(header["config"], dict) or not isinstance(header["model"], dict):
        raise TrainingError(f"{path}: a damaged checkpoint (config or model not objects)")
    return header, arrays


def restore_checkpoint(header: dict, arrays: Any, pc: dn.ParameterCollection,
                       trainer: Any) -> dict:
    """Load parameters and trainer state of a read checkpoint; returns the loop state.
    Every array is checked (present, a float array of the model's shape, finite) first."""
    params = list(pc.parameters())
    if header["parameters"] != [p.name for p in params]:
        raise TrainingError("the checkpoint's parameters do not match the model")
    values = []
    for i, p in enumerate(params):
        value = arrays.get(f"p{i}")
        if value is None:
            raise TrainingError(f"checkpoint parameter {p.name!r} is missing")
        if value.dtype.kind != "f" or value.shape != p.shape:
            raise TrainingError(f"checkpoint parameter {p.name!r} is {value.dtype} "
                                f"{value.shape}, the model's float {p.shape}")
        if not np.isfinite(value).all():
            raise TrainingError(f"checkpoint parameter {p.name!r} holds NaN or infinite values")
        values.append(value)
    try:
        trainer_state = _decode(header["trainer"], arrays)
        state = _decode(header["state"], arrays)
        trainer.load_state_dict(trainer_state)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise TrainingError(f"the checkpoint's trainer or loop state is damaged or does not "
                            f"fit ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(key in state for key in _fresh_state()):
        raise TrainingError("the checkpoint's loop state is damaged")
    for p, value in zip(params, values):
        p.value[...] = value
    return state


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


def environment() -> dict:
    """What a run's numbers depend on besides its settings: the versions of dynlp, numpy and
    Python, and the BLAS threads (their count can change the last bits of float sums)."""
    return {"dynlp": dn.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "blas_threads": dn.blas_threads()}


def _write_json(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def _write_log(path: Path, records: list[dict]) -> None:
    """log.jsonl whole: one line per finished epoch, as many as the checkpoint holds."""
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


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


RUN_FILES = (CHECKPOINT_FILE, MODEL_FILE, LOG_FILE, METRICS_FILE)


def _check(recipe: ModuleType, config: dict) -> None:
    for key, problem in setting_problems(config, limits_of(recipe)):
        raise TrainingError(f"setting {key!r} {problem}")
    check_model_references(recipe, config, "setting")


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: the output folder is a file")
    old = [name for name in RUN_FILES if (out / name).exists()]
    if old and not resume and not overwrite:
        raise TrainingError(f"{out} holds a run already ({', '.join(old)}): continue it with "
                            "--resume, write to another folder, or replace it with --overwrite")


def _agree_on_folder(comm: Communicator, out: Path, resume: bool, overwrite: bool,
                     config: dict) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Rank 0 alone checks the run folder (`_check_out`; with resume, the checkpoint and its
    settings), clears what a killed run left there, and tells the other ranks what it found: a
    problem is raised on every rank as RunRefused, as are settings that differ between ranks
    (every rank trains with the settings rank 0 records). Returns rank 0's read checkpoint
    (None on the others, which read it once rank 0 has found it sound)."""
    problem, checkpoint = None, None
    if comm.size > 1:
        configs = comm.allgather(config)
        for rank, other in enumerate(configs):
            changed = [f"{k}: {configs[0].get(k)!r} -> {other.get(k)!r}"
                       for k in sorted(set(configs[0]) | set(other))
                       if configs[0].get(k) != other.get(k)]
            if changed:
                raise RunRefused(f"rank {rank} was given other settings than rank 0: "
                                 + "; ".join(changed), quiet=not comm.is_root)
    if comm.is_root:
        try:
            _check_out(out, resume, overwrite)
            if out.is_dir():
                # what a killed run (SIGKILL) left
                remove_stale_temporaries(out, RUN_FILES + (REPORT_FILE,))
            if resume:
                checkpoint = read_checkpoint(out / CHECKPOINT_FILE)
                changed = _differences(checkpoint[0]["config"], config)
                if changed:
                    raise TrainingError("the settings differ from the checkpoint's: "
                                        + "; ".join(changed))
        except TrainingError as err:
            problem = str(err)
    problem = comm.broadcast(problem)
    if problem is not None:
        raise RunRefused(problem, quiet=not comm.is_root)
    return checkpoint


def _fresh_state() -> dict:
    return {"epoch": 0, "best": None, "best_epoch": 0, "best_dev": None,
            "epochs_without_improvement": 0, "train_seconds": 0.0, "train_examples": 0}


def train(recipe: ModuleType, config: dict, out: str | os.PathLike, train_examples: list,
          dev_examples: list, test_examples: list | None = None, resume: bool = False,
          progress: bool | None = None, loader: Callable[[str], Any] | None = None,
          overwrite: bool = False, comm: Communicator | None = None) -> dict:
    """Train `recipe.Model` under `out` and return the final metrics (also in metrics.json).

    config: every setting (COMMON_DEFAULTS keys and the recipe's DEFAULTS keys, plus anything
    worth recording); it is stored in the model and the metrics. Writes `out/log.jsonl` (one line
    per epoch), `out/checkpoint.npz` (after every epoch), `out/model.npz` (best on dev) and
    `out/metrics.json` (dev and test scores of the best model). resume: continue from the
    checkpoint; the result equals that of an uninterrupted run. Without resume, a folder that
    holds a run already is refused unless `overwrite`, and even then its files are replaced
    only once the first epoch is done. Every file is written whole (a temporary file renamed)
    and log.jsonl always agrees with the checkpoint after a resume. progress: tqdm bar (None:
    only on a terminal). loader: see `load_model`. comm: the ranks to train on (default
    `dynlp.distributed.setup()`: all the ranks of `mpiexec`, else this process); each computes
    its share of every minibatch and of the evaluations, rank 0 alone checks the folder (its
    refusal is raised on every rank as `RunRefused`), writes files and reports. Raises
    TrainingError (bad settings, a run in the way, a model too large for the memory
    available), or TrainingInterrupted on Ctrl-C or SIGTERM (`Terminated`).
    """
    comm = setup() if comm is None else comm
    _check(recipe, config)
    out = Path(out)
    checkpoint = _agree_on_folder(comm, out, resume, overwrite, config)
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

    pc = dn.ParameterCollection(seed=seed, max_bytes=memory_budget())
    if resume:
        header, arrays = checkpoint or read_checkpoint(checkpoint_path)
    try:
        if resume:
            model = recipe.Model.from_metadata(pc, header["model"])
        else:
            vocabs = recipe.Model.build_vocabs(train_examples, config)
            model = recipe.Model(pc, config, vocabs)
    except ModelSizeError as err:
        raise TrainingError(f"the model does not fit in the memory available: {err}; choose "
                            "smaller sizes") from None
    _attach(model, loader)
    trainer = make_trainer(config["optimizer"], pc, learning_rate=float(config["learning_rate"]))
    if resume:
        state = restore_checkpoint(header, arrays, pc, trainer)
        if "records" in state and comm.is_root:  # the log as the checkpoint knows it
            _write_log(log_path, state["records"])  # (lines of later epochs go)
    else:
        state = _fresh_state()
        if comm.is_root:
            state["git_commit"] = git_commit()  # the code that trains, not the code at the end
            state["environment"] = environment()
            out.mkdir(parents=True, exist_ok=True)
    state.setdefault("records", [])
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
    epoch = saved = state["epoch"]
    costs = _example_costs(train_examples) if comm.size > 1 else None
    try:
        while epoch < epochs and state["epochs_without_improvement"] < patience:
            epoch += 1
            loss, count, seconds, cpu, phases = _train_epoch(
                model, trainer, train_examples, config, epoch, strategy, progress, comm, costs)
            ranks = comm.allgather([cpu, phases])
            record: dict[str, Any] = {
                "epoch": epoch, "train_loss": loss / count, "examples_per_second": count / seconds,
                "seconds": seconds, "learning_rate": trainer.learning_rate, "dev": None,
                "ranks": comm.size, "cpu_seconds": max(r[0] for r in ranks),
                "steps": phases["steps"],
                "phase_seconds": {k: [r[1][k] for r in ranks] for k in PHASES},
            }
            state["train_seconds"] += seconds
            state["train_examples"] += count
            if epoch == 1 and not resume and comm.is_root:
                # a fresh run has something to write: what an older run left goes now
                for name in (MODEL_FILE, METRICS_FILE, CHECKPOINT_FILE, LOG_FILE):
                    (out / name).unlink(missing_ok=True)
            if epoch % int(config["eval_every"]) == 0 or epoch == epochs:
                start = time.perf_counter()
                dev = comm.evaluate(model, dev_during, int(config["batch_size"]))
                record["dev"] = dev
                record["dev_seconds"] = time.perf_counter() - start
                score = float(dev[recipe.MAIN_METRIC])
                if state["best"] is None or score > state["best"]:
                    state.update(best=score, best_epoch=epoch, best_dev=dev)
                    if comm.is_root:
                        with _signals_deferred():  # (written whole, its temporary never left)
                            pc.save(out / MODEL_FILE, metadata=metadata)
                state["epochs_without_improvement"] = epoch - state["best_epoch"]
            state["epoch"] = epoch
            state["records"] = state["records"] + [record]
            trainer.update_epoch()
            if comm.size > 1 and not comm.parameters_agree(pc):
                raise TrainingError(f"the ranks' parameters differ after epoch {epoch}")
            # (the checkpoint on disk, `saved` and the log move together; a signal that comes
            # while they are written takes effect after them, and leaves no temporary file)
            with _signals_deferred():
                if comm.is_root:
                    save_checkpoint(checkpoint_path, pc, trainer, state, config, metadata)
                saved = epoch
                if comm.is_root:
                    _write_log(log_path, state["records"])
            if comm.is_root:
                _report(recipe, record, state)
    except KeyboardInterrupt as stop:
        if saved > 0 and comm.is_root:
            records = [r for r in state["records"] if r["epoch"] <= saved]
            _write_log(log_path, records)  # in case the stop came between checkpoint and log
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        where = (f"the checkpoint after epoch {saved} is {checkpoint_path}; run the same "
                 "command with --resume to continue") if saved > 0 else (
                 "no epoch finished, no checkpoint")
        raise TrainingInterrupted(f"{how} during epoch {saved + 1}: {where}") from None

    comm.barrier()  # the best model file is written
    return _finish(recipe, config, out, dev_examples, test_examples, state, loader, comm)


# where a training step's time goes (seconds of the epoch, per rank, in the log's
# `phase_seconds`): building, evaluating and backpropagating the rank's share; waiting in
# sum_gradients for the other ranks' shares; exchanging gradients; the trainer's update
PHASES = ("compute", "waiting", "exchange", "update")


def _example_costs(examples: list) -> Callable[[Any], int]:
    """`example_cost` of the training examples, counted once for the whole run (a sentence's
    len() and a tree's words() walk their tokens, a few microseconds each, which every step's
    deal would otherwise spend on all of its examples). Keyed by identity: the examples list
    keeps them alive while it trains."""
    known = {id(example): example_cost(example) for example in examples}

    def cost(example: Any) -> int:
        found = known.get(id(example))
        return example_cost(example) if found is None else found
    return cost


def _train_epoch(model: Any, trainer: Any, examples: list, config: dict, epoch: int,
                 strategy: bool | str, progress: bool | None, comm: Communicator,
                 costs: Callable[[Any], int] | None = None
                 ) -> tuple[float, int, float, float, dict]:
    """One pass over the shuffled examples: (summed loss, examples, seconds, this process's
    CPU seconds, its `PHASES` seconds and steps). Each rank computes its share of every
    minibatch, each example with its own generator; `costs`: the examples' costs for the deal
    (`_example_costs`; by default counted at every step)."""
    seed, size = int(config["seed"]), int(config["batch_size"])
    step_cost = getattr(model, "shard_step_cost", STEP_COST)
    total_loss, count = 0.0, 0
    clock = time.perf_counter
    start, cpu = clock(), time.process_time()
    phases: dict[str, Any] = {**dict.fromkeys(PHASES, 0.0), "steps": 0}
    stepping = 0.0  # seconds of the steps, all phases
    disable = None if progress is None else not progress

    def update(step: int) -> Callable[[float], None]:
        def then(loss: float) -> None:  # (the whole minibatch's loss, summed across ranks)
            if not np.isfinite(loss):
                raise TrainingError(f"the loss became {loss} in epoch {epoch}, step {step}; "
                                    "try a smaller learning rate")
            trainer.update()
        return then

    with tqdm(total=len(examples), desc=f"epoch {epoch}", unit="ex", disable=disable,
              leave=False, dynamic_ncols=True) as bar:
        def settle(pending: PendingSum, examples: int) -> None:
            """A step's sum is finished (and its update made): count it."""
            nonlocal total_loss, count
            pending.finish()
            for phase, seconds in pending.seconds.items():
                phases[phase] += seconds
            phases["steps"] += 1
            total_loss += pending.loss
            count += examples
            bar.update(examples)
            bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)

        # Step k's gradients are exchanged while step k + 1's graph is built: its first
        # evaluation finishes the exchange and makes the update (on one process the update
        # follows the backward at once, as there is nothing to exchange)
        pending: PendingSum | None = None
        previous = 0
        for step, batch in enumerate(batches(examples, size, shuffle=True, seed=seed,
                                             epoch=epoch)):
            began = clock()
            mine = comm.shard_batch(batch, costs or example_cost, step_cost=step_cost)
            value = _share_loss(model, batch, mine, seed, epoch, step, strategy, pending)
            if pending is not None:
                settle(pending, previous)
            pending = comm.start_sum_gradients(trainer.pc, value, then=update(step))
            previous = len(batch)
            stepping += clock() - began
        if pending is not None:
            began = clock()
            settle(pending, previous)
            stepping += clock() - began
    phases["compute"] = stepping - phases["waiting"] - phases["exchange"] - phases["update"]
    return total_loss, count, clock() - start, time.process_time() - cpu, phases


def _share_loss(model: Any, batch: list, positions: list[int], seed: int, epoch: int, step: int,
                strategy: bool | str, pending: PendingSum | None = None) -> float:
    """Build, evaluate and backpropagate the summed loss of the examples at `positions` of a
    minibatch (this rank's share); their gradients are left in the parameters. `pending`: the
    step before's sum of gradients, moved on while the graph is built and finished (with its
    update) before the graph's first evaluation."""
    if not positions:
        return 0.0
    rng = step_rng(seed, epoch, step)
    rngs = [example_rng(seed, epoch, step, i) for i in positions]
    examples = [batch[i] for i in positions]
    if pending is not None and pending.done:
        pending = None
    with dn.Graph(autobatch=strategy, seed=int(rng.integers(2**63 - 1))) as g:
        if pending is not None:
            g.before_evaluation(pending.finish)
        if hasattr(model, "batch_loss"):  # recipes that decide in lockstep
            total = model.batch_loss(examples, rngs)
        else:
            losses = []
            for example, example_generator in zip(examples, rngs):
                g.use_generator(example_generator)
                losses.append(model.loss(example, example_generator))
                if pending is not None:
                    pending.progress()
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
        "git_commit": state.get("git_commit"), "environment": state.get("environment"),
        "global_seed": dn.get_seed(), "ranks": comm.size,
    }
    if comm.is_root:
        _write_json(out / METRICS_FILE, metrics)
    return metrics
