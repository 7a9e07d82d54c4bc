"""The `dynlp` command: help, `data list`, and bad inputs failing with one line and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dynlp as dn
from dynlp import cli

DATA = Path(__file__).resolve().parent.parent / "data"
TINY = ["--train", str(DATA / "tiny-train.conllu"), "--dev", str(DATA / "tiny-dev.conllu")]
SMALL = ["--word-dim", "4", "--char-dim", "4", "--char-hidden", "4", "--lstm-layers", "1",
         "--lstm-dim", "4", "--mlp-dim", "4", "--epochs", "1"]


def fails(capsys, argv: list[str], *words: str) -> str:
    """Run the command: it must exit 2 with one `dynlp: error:` line naming `words`."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dynlp: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_top_level_and_recipe_help(capsys):
    assert cli.main(["--help"]) == 0
    assert "train RECIPE" in capsys.readouterr().out
    assert cli.main(["train", "--help"]) == 0
    assert "tagger" in capsys.readouterr().out
    assert cli.main(["evaluate", "tagger", "--help"]) == 0
    assert "--output-metrics" in capsys.readouterr().out


def test_data_list(tmp_path, capsys):
    assert cli.main(["data", "list", "--cache", str(tmp_path)]) == 0
    assert "ud-english-ewt" in capsys.readouterr().out


def test_unknown_command_recipe_and_flag(capsys):
    fails(capsys, ["fly"], "unknown command 'fly'")
    fails(capsys, ["train", "poet", "--out", "x"], "unknown recipe 'poet'", "tagger")
    fails(capsys, ["evaluate", "poet"], "unknown recipe 'poet'")
    fails(capsys, ["train", "tagger", "--out", "x", "--epochs", "many"], "--epochs")
    fails(capsys, ["train", "tagger", "--out", "x", "--train", "a.conllu"], "--dev")


def test_unknown_dataset(tmp_path, capsys):
    fails(capsys, ["train", "tagger", "--out", str(tmp_path), "--dataset", "klingon"],
          "klingon")


def test_missing_training_file(tmp_path, capsys):
    fails(capsys, ["train", "tagger", "--out", str(tmp_path), "--train", "nowhere.conllu",
                   "--dev", str(DATA / "tiny-dev.conllu")], "nowhere.conllu")


def test_malformed_conllu_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.conllu"
    lines = (DATA / "tiny-dev.conllu").read_text().split("\n")
    lines[5] = lines[5].replace("\t", " ", 3)  # line 6: too few columns
    bad.write_text("\n".join(lines))
    fails(capsys, ["train", "tagger", "--out", str(tmp_path / "run"), "--train", str(bad),
                   "--dev", str(DATA / "tiny-dev.conllu")], f"{bad}:6:", "columns")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "tagger", *TINY, "--out", str(out), *SMALL]) == 0
    return out


def test_evaluate_missing_model_and_input(trained, tmp_path, capsys):
    fails(capsys, ["evaluate", "tagger", "--model", str(tmp_path / "none"), "--input",
                   str(DATA / "tiny-dev.conllu")], "no such model file")
    fails(capsys, ["evaluate", "tagger", "--model", str(trained), "--input",
                   str(tmp_path / "none.conllu")], "none.conllu")


def test_model_of_another_recipe(tmp_path, capsys):
    pc = dn.ParameterCollection()
    pc.add_parameters((2, 2))
    pc.save(tmp_path / "model.npz", metadata={"recipe": "parser", "config": {}})
    fails(capsys, ["evaluate", "tagger", "--model", str(tmp_path), "--input",
                   str(DATA / "tiny-dev.conllu")], "'parser' recipe")


def test_corrupt_and_mismatched_model_files(trained, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    fails(capsys, ["predict", "tagger", "--model", str(corrupt), "--input",
                   str(DATA / "tiny-dev.conllu"), "--output", str(tmp_path / "o.conllu")],
          "not a dynlp model file")
    # the right metadata over parameters of another shape
    meta = dn.read_metadata(trained / "model.npz")
    pc = dn.ParameterCollection()
    pc.add_parameters((3,), name="something/else")
    pc.save(tmp_path / "model.npz", metadata=meta)
    fails(capsys, ["evaluate", "tagger", "--model", str(tmp_path / "model.npz"), "--input",
                   str(DATA / "tiny-dev.conllu")], "do not match")
    damaged = dict(meta, vocabs={})
    pc.save(tmp_path / "model.npz", metadata=damaged)
    fails(capsys, ["evaluate", "tagger", "--model", str(tmp_path / "model.npz"), "--input",
                   str(DATA / "tiny-dev.conllu")], "damaged")


def test_resume_without_checkpoint(tmp_path, capsys):
    fails(capsys, ["train", "tagger", *TINY, "--out", str(tmp_path), *SMALL, "--resume"],
          "no checkpoint")


def test_console_entry_point_exit_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dynlp", "evaluate", "tagger", "--model",
                           str(tmp_path), "--input", "x.conllu"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("dynlp: error:")
    assert not done.stdout
