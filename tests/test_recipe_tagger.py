"""The tagger recipe smoke-trained through the command line on the tiny fixtures: the loss falls,
the model saves, reloads, evaluates and predicts, and predictions change nothing but UPOS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynlp import cli, train
from dynlp.data import read_conllu
from recipes import tagger

DATA = Path(__file__).resolve().parent.parent / "data"
SMALL = ["--word-dim", "16", "--char-dim", "8", "--char-hidden", "16", "--lstm-layers", "1",
         "--lstm-dim", "32", "--mlp-dim", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tagger")
    status = cli.main(["train", "tagger", "--train", str(DATA / "tiny-train.conllu"),
                       "--dev", str(DATA / "tiny-dev.conllu"), "--test",
                       str(DATA / "tiny-test.conllu"), "--out", str(out), "--epochs", "8",
                       "--batch-size", "8", "--learning-rate", "0.01", *SMALL])
    assert status == 0
    return out


def test_training_lowers_the_loss_and_writes_the_run_folder(run):
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 8
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recipe"] == "tagger"
    assert metrics["config"]["lstm_dim"] == 32  # flags reach the config
    assert metrics["config"]["dropout"] == tagger.DEFAULTS["dropout"]  # defaults too
    assert metrics["test"]["upos_accuracy"] > 60.0  # the fixtures' lexicon is easy to learn
    assert (run / "model.npz").is_file() and (run / "checkpoint.npz").is_file()


def test_reloaded_model_evaluates_like_the_trained_one(run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "scores.json"
    status = cli.main(["evaluate", "tagger", "--model", str(run), "--input",
                       str(DATA / "tiny-test.conllu"), "--output-metrics", str(out)])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed == json.loads((run / "metrics.json").read_text())["test"]


def test_predictions_change_only_the_upos_column(run, tmp_path):
    source = DATA / "tiny-dev.conllu"
    out = tmp_path / "tagged.conllu"
    status = cli.main(["predict", "tagger", "--model", str(run), "--input", str(source),
                       "--output", str(out), "--batch-size", "7"])
    assert status == 0
    gold, tagged = read_conllu(source), read_conllu(out)
    assert len(gold) == len(tagged)
    changed = 0
    for g, t in zip(gold, tagged):
        assert g.comments == t.comments
        assert len(g.tokens) == len(t.tokens)
        for a, b in zip(g.tokens, t.tokens):
            assert a._replace(upos=b.upos) == b  # every other column (and line) is kept
            changed += a.upos != b.upos
    accuracy = json.loads((run / "metrics.json").read_text())["dev"]["upos_accuracy"]
    words = sum(len(s) for s in gold)
    assert changed == round(words * (100.0 - accuracy) / 100.0)
    # batched prediction does not depend on the batch size or on autobatching
    model = train.load_model(tagger, run)
    assert model.predict(gold, batch_size=7) == model.predict(gold, batch_size=64,
                                                              autobatch=False)


def test_help_documents_the_model_flags_with_defaults(capsys):
    assert cli.main(["train", "tagger", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--word-dim", "--char-hidden", "--lstm-dim", "--word-dropout", "--epochs",
                 "--optimizer", "--autobatch", "--resume", "--patience"):
        assert flag in text
    assert "(default: 256)" in text


def test_resume_through_the_command_line_is_exact(tmp_path):
    def run(out: Path, epochs: int, *extra: str) -> None:
        assert cli.main(["train", "tagger", "--train", str(DATA / "tiny-train.conllu"), "--dev",
                         str(DATA / "tiny-dev.conllu"), "--out", str(out), "--epochs",
                         str(epochs), "--batch-size", "16", "--limit", "32", *SMALL,
                         *extra]) == 0

    run(tmp_path / "straight", 2)
    run(tmp_path / "split", 1)
    run(tmp_path / "split", 2, "--resume")
    straight, split = (train.read_checkpoint(tmp_path / name / "checkpoint.npz")
                       for name in ("straight", "split"))
    assert straight[0]["parameters"] == split[0]["parameters"]
    for i, name in enumerate(straight[0]["parameters"]):
        assert (straight[1][f"p{i}"] == split[1][f"p{i}"]).all(), name
