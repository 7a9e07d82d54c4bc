"""The `dynlp` command: an explicit table of subcommands and of recipes (the only place that knows
the recipes). `train`, `evaluate` and `predict` run through dynlp.train; `data`, `trace` and
`bench` hand their arguments on. Every expected failure is one `dynlp: error: ...` line on stderr
and exit status 2 (130 after Ctrl-C, 143 after SIGTERM), never a traceback; a closed standard
output (`dynlp data list | head -0`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import dynlp as dn

from .autobatch import STRATEGIES
from .data import CoNLLUError, DataError, TreeError, fetch, input_problem, write_text_atomic
from .distributed import (DistributedError, abort_launched, ending_run_on_error, launched_rank,
                          launched_size, running_ranks)
from .distributed import setup as setup_ranks
from .train import (
    COMMON_DEFAULTS,
    COMMON_LIMITS,
    RunRefused,
    Terminated,
    TrainingError,
    TrainingInterrupted,
    integer_argument,
    limits_of,
    load_model,
    model_path,
    number_argument,
    setting_problems,
    train,
)
from .trainers import TRAINERS

# recipe name -> module; imported on first use so that `dynlp data list` starts fast
RECIPES = {"tagger": "recipes.tagger", "treelstm": "recipes.treelstm", "parser": "recipes.parser"}
BENCH_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_autobatch.py"
# parsed train options that are not run settings
NOT_CONFIG = ("out", "resume", "mirror", "overwrite")

USAGE = f"""usage: dynlp COMMAND ...

Dynamic neural networks for NLP with automatic operation batching, on numpy.

commands:
  train RECIPE      train a model under --out DIR (recipes: {", ".join(RECIPES)})
  evaluate RECIPE   score a trained model on a file: --model DIR --input FILE
  predict RECIPE    label a file with a trained model: --model DIR --input FILE --output FILE
  data              list and fetch the known datasets (dynlp data list | fetch NAME)
  trace             forward, tangent and adjoint traces of a small formula (for teaching)
  report RUN_DIR    one offline HTML page about a training run (also written by train)
  bench             the autobatching benchmark (scripts/bench_autobatch.py)
  run-dynet SCRIPT  run a DyNet program unmodified on dynlp (see docs/DYNET.md)

'dynlp COMMAND RECIPE --help' documents every option with its default.
"""


class UsageError(Exception):
    """The command line asks for something that does not exist or does not fit together."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UsageErrors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def load_recipe(name: str) -> ModuleType:
    """The recipe module called `name`; UsageError for an unknown or absent recipe."""
    module = RECIPES.get(name)
    if module is None:
        raise UsageError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"the {name} recipe ({module}) is not installed")
    return importlib.import_module(module)


def _existing_file(path: str, what: str) -> str:
    problem = input_problem(path)
    if problem == "no such file":
        raise UsageError(f"{path}: no such {what} file")
    if problem is not None:
        raise UsageError(f"{path}: the {what} file {problem}")
    return path


def _check_flags(args: argparse.Namespace, limits: dict) -> None:
    """UsageError naming the flag and its allowed values for the first setting out of range."""
    for key, problem in setting_problems(vars(args), limits):
        raise UsageError(f"--{key.replace('_', '-')} {problem}")


# -------------------------------------------------------------------------------------------------
# train


def train_parser(recipe: ModuleType) -> argparse.ArgumentParser:
    """The parser of `dynlp train RECIPE`: data, common training flags and the recipe's flags."""
    defaults = {**COMMON_DEFAULTS, **recipe.DEFAULTS}
    parser = _Parser(prog=f"dynlp train {recipe.NAME}",
                     description=f"Train the {recipe.NAME} recipe. Writes log.jsonl, "
                     "checkpoint.npz, model.npz (best on dev) and metrics.json under --out.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None,
                      help=f"a registered dataset (see 'dynlp data list'); without --train: "
                      f"{recipe.DEFAULT_DATASET}")
    data.add_argument("--train", metavar="FILE", help="training file instead of --dataset")
    data.add_argument("--dev", metavar="FILE", help="development file (with --train)")
    data.add_argument("--test", metavar="FILE", help="test file (with --train; optional)")
    data.add_argument("--mirror", metavar="DIR",
                      help="local folder to copy the dataset from ($DYNLP_DATA_MIRROR)")
    data.add_argument("--limit", type=integer_argument, default=defaults["limit"], metavar="N",
                      help="train on the first N training examples only")
    data.add_argument("--dev-limit", type=integer_argument, default=defaults["dev_limit"],
                      metavar="N",
                      help="evaluate on the first N dev examples during training (the final "
                      "scores use all of them)")
    run = parser.add_argument_group("training")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    run.add_argument("--epochs", type=integer_argument, default=defaults["epochs"])
    run.add_argument("--batch-size", type=integer_argument, default=defaults["batch_size"],
                     help="examples per update")
    run.add_argument("--optimizer", choices=sorted(TRAINERS), default=defaults["optimizer"])
    run.add_argument("--learning-rate", type=number_argument,
                     default=defaults["learning_rate"])
    run.add_argument("--seed", type=integer_argument, default=defaults["seed"],
                     help="seeds initialization, shuffling, dropout: same seed, same numbers")
    run.add_argument("--autobatch", action=argparse.BooleanOptionalAction,
                     default=defaults["autobatch"], help="batch equal operations automatically")
    run.add_argument("--autobatch-strategy", choices=STRATEGIES,
                     default=defaults["autobatch_strategy"], help="scheduling of the batches")
    run.add_argument("--patience", type=integer_argument, default=defaults["patience"],
                     help="stop after this many epochs without improvement on dev")
    run.add_argument("--eval-every", type=integer_argument, default=defaults["eval_every"],
                     metavar="EPOCHS",
                     help="evaluate on dev every this many epochs (and after the last)")
    run.add_argument("--resume", action="store_true",
                     help="continue from DIR/checkpoint.npz (use the same settings; --epochs "
                     "and --patience may grow)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in --out (without it, a folder holding a run is "
                     "refused); its files are replaced once the first epoch is done")
    recipe.add_arguments(parser.add_argument_group(f"{recipe.NAME} model"))
    return parser


def _training_files(args: argparse.Namespace, recipe: ModuleType) -> dict[str, str | None]:
    if args.train or args.dev or args.test:
        if args.dataset:
            raise UsageError("give either --dataset or --train/--dev/--test, not both")
        if not (args.train and args.dev):
            raise UsageError("--train and --dev go together (--test is optional)")
        return {"train": args.train, "dev": args.dev, "test": args.test}
    name = args.dataset or recipe.DEFAULT_DATASET
    return {split: str(path) for split, path in fetch(name, mirror=args.mirror).items()}


def _read(recipe: ModuleType, path: str | None, purpose: str, config: dict,
          split: str = "input") -> list | None:
    if path is None:
        return None
    examples = recipe.read_examples(_existing_file(path, split), purpose, config)
    if not examples:
        raise UsageError(f"{path}: the {split} file holds no examples")
    return examples


def command_train(recipe: ModuleType, argv: Sequence[str]) -> int:
    args = train_parser(recipe).parse_args(argv)
    _check_flags(args, limits_of(recipe))
    comm = setup_ranks()  # all the ranks under mpiexec, else this process alone
    with comm.root_first():  # one rank fills the dataset cache
        files = _training_files(args, recipe)
    parsed = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    config = {**COMMON_DEFAULTS, **recipe.DEFAULTS, **parsed}
    examples = {split: _read(recipe, path, "train" if split == "train" else "evaluate",
                             config, split)
                for split, path in files.items()}
    metrics = train(recipe, config, args.out, examples["train"] or [], examples["dev"] or [],
                    examples.get("test"), resume=args.resume, loader=load_any_model,
                    overwrite=args.overwrite, comm=comm)
    if comm.is_root:
        print(json.dumps({"dev": metrics["dev"], "test": metrics["test"],
                          "best_epoch": metrics["best_epoch"]}, indent=2))
        from .report import after_training
        after_training(args.out, recipe, load_any_model, files["dev"])
    comm.barrier()  # the other ranks wait for the report without spinning in MPI's finalize
    return 0


# -------------------------------------------------------------------------------------------------
# evaluate and predict


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a training output folder (or its model.npz)")
    parser.add_argument("--input", required=True, metavar="FILE", help="examples to read")
    parser.add_argument("--batch-size", type=integer_argument, default=64,
                        help="examples per graph")


def load_any_model(directory: str) -> Any:
    """The model saved in a run folder, of whichever recipe made it (for models that use other
    models, such as the parser's --tagger-model)."""
    path = model_path(directory)
    return load_model(load_recipe(dn.read_metadata(path).get("recipe", "")), path, load_any_model)


def _load(recipe: ModuleType, args: argparse.Namespace, purpose: str) -> tuple[Any, list]:
    _check_flags(args, {"batch_size": COMMON_LIMITS["batch_size"]})
    model = load_model(recipe, model_path(args.model), load_any_model)
    examples = _read(recipe, args.input, purpose, model.config)
    return model, examples


def command_evaluate(recipe: ModuleType, argv: Sequence[str]) -> int:
    parser = _Parser(prog=f"dynlp evaluate {recipe.NAME}",
                     description="Score a trained model on a labelled file; print the metrics.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _model_arguments(parser)
    parser.add_argument("--output-metrics", metavar="FILE", help="also write them as JSON here")
    args = parser.parse_args(argv)
    model, examples = _load(recipe, args, "evaluate")
    metrics = model.evaluate(examples, batch_size=args.batch_size)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output_metrics:
        write_text_atomic(args.output_metrics, text + "\n")
    return 0


def command_predict(recipe: ModuleType, argv: Sequence[str]) -> int:
    parser = _Parser(prog=f"dynlp predict {recipe.NAME}",
                     description="Label a file with a trained model.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _model_arguments(parser)
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write")
    parser.add_argument("--autobatch", action=argparse.BooleanOptionalAction, default=True,
                        help="batch equal operations automatically")
    args = parser.parse_args(argv)
    model, examples = _load(recipe, args, "predict")
    predictions = model.predict(examples, batch_size=args.batch_size, autobatch=args.autobatch)
    model.write_predictions(examples, predictions, args.output)
    return 0


RECIPE_COMMANDS = {"train": command_train, "evaluate": command_evaluate,
                   "predict": command_predict}


# -------------------------------------------------------------------------------------------------
# data, trace, bench


def command_data(argv: Sequence[str]) -> int:
    from .data.registry import cli_data
    return cli_data(list(argv))


def command_trace(argv: Sequence[str]) -> int:
    if importlib.util.find_spec("dynlp.trace") is None:
        raise UsageError("the trace command is not part of this installation")
    return importlib.import_module("dynlp.trace").cli_trace(list(argv))


def command_bench(argv: Sequence[str]) -> int:
    if not BENCH_SCRIPT.is_file():
        raise UsageError(f"the benchmark script {BENCH_SCRIPT} is not there (it comes with a "
                         "source checkout of dynlp)")
    return subprocess.run([sys.executable, str(BENCH_SCRIPT), *argv], check=False).returncode


def command_run_dynet(argv: Sequence[str]) -> int:
    from .dynet.runner import main as run_dynet
    return run_dynet(list(argv))


def command_report(argv: Sequence[str]) -> int:
    from .report import cli_report
    return cli_report(list(argv))


OTHER_COMMANDS = {"data": command_data, "trace": command_trace, "bench": command_bench,
                  "run-dynet": command_run_dynet, "report": command_report}


# -------------------------------------------------------------------------------------------------


def _recipe_command(command: str, argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: dynlp {command} RECIPE [options]\n\nrecipes: {', '.join(RECIPES)}\n"
              f"'dynlp {command} RECIPE --help' lists the options.")
        return 0 if argv else 2
    return RECIPE_COMMANDS[command](load_recipe(argv[0]), argv[1:])


def _message(error: BaseException) -> str:
    """The error as one line (saying which rank met it when mpiexec started several)."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    size = launched_size()
    if size > 1:
        text = (f"rank {launched_rank()} of {size}: {text}; the run stops (mpiexec ends the "
                "other ranks)")
    return " ".join(text.split())


# how long a rank other than 0 that Ctrl-C or SIGTERM stopped leaves rank 0 (which mpiexec sends
# the signal to as well) to finish the checkpoint it may be writing, say where it is and end
# the run, before the rank ends the run itself
RANK_0_GRACE_SECONDS = 30.0


def _stopped(message: str, status: int) -> int:
    """Say `message` on stderr and return `status` (the command was interrupted). A rank other
    than 0 of a run under mpiexec first waits, silent, for rank 0 to end the run (ending it
    too soon would kill rank 0 in the middle of writing a checkpoint, and rank 0 alone knows
    which checkpoint is on disk); should rank 0 not do so within RANK_0_GRACE_SECONDS (or
    another Ctrl-C come), the rank speaks for itself and the caller ends the run."""
    if running_ranks() and launched_rank() != 0:
        try:
            time.sleep(RANK_0_GRACE_SECONDS)  # rank 0's MPI_Abort ends this rank in here
        except KeyboardInterrupt:
            pass
        message = (f"{message} (rank {launched_rank()} of {launched_size()}; rank 0 did not "
                   "end the run)")
    print(message, file=sys.stderr)
    return status


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `dynlp` command line; returns the exit status. SIGTERM is handled as Ctrl-C
    while it runs (on the main thread). Under mpiexec, a rank that fails ends every rank of the
    run (a failing rank left to exit would wait for the others), unless all the ranks fail
    together (RunRefused: rank 0 says why, the others leave quietly)."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        with ending_run_on_error():
            try:
                status = _main(list(sys.argv[1:] if argv is None else argv))
            except RunRefused as refusal:  # every rank raised it: none waits for another
                if not refusal.quiet:
                    print(f"dynlp: error: {' '.join(str(refusal).split())}", file=sys.stderr)
                return 2
        if status != 0:
            abort_launched(status)
        return status
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


def _quiet_stdout() -> None:
    """The reader of stdout has gone: send what is left to /dev/null, so that Python's flush
    at exit does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _main(argv: list[str]) -> int:
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE, end="")
            return 0 if argv else 2
        command, rest = argv[0], argv[1:]
        if command == "--version":
            print(f"dynlp {dn.__version__}")
            return 0
        if launched_size() > 1 and command != "train":
            # (every rank would run the whole command and write the same outputs)
            raise RunRefused(f"`dynlp {command}` runs in one process: start it without mpiexec "
                             "(`dynlp train` alone shares its work across ranks)",
                             quiet=launched_rank() != 0)
        if command in RECIPE_COMMANDS:
            return _recipe_command(command, rest)
        if command in OTHER_COMMANDS:
            return OTHER_COMMANDS[command](rest)
        raise UsageError(f"unknown command {command!r} (choose from "
                         f"{', '.join([*RECIPE_COMMANDS, *OTHER_COMMANDS])})")
    except SystemExit as request:  # --help and friends
        return request.code if isinstance(request.code, int) else 0
    except TrainingInterrupted as stop:
        return _stopped(f"dynlp: {stop}", 143 if str(stop).startswith("terminated") else 130)
    except Terminated:
        return _stopped("dynlp: terminated (SIGTERM)", 143)
    except KeyboardInterrupt:
        return _stopped("dynlp: interrupted", 130)
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except RunRefused:
        raise  # main() reports it, without ending the other ranks (they end too)
    except (UsageError, TrainingError, dn.ModelFileError, CoNLLUError, TreeError, DataError,
            DistributedError, OSError) as error:
        print(f"dynlp: error: {_message(error)}", file=sys.stderr)
        return 2
