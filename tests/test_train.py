"""The shared training loop (dynlp/train.py) on a toy recipe defined here: exact resume, same seed
same numbers, keep-best, logs, checkpoints and model files."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp import metrics, train
from dynlp.data import Vocab, read_conllu

DATA = Path(__file__).resolve().parent.parent / "data"


class ToyModel:
    """Per-token UPOS from a word embedding: word dropout (loop rng) and dropout (graph seed)."""

    def __init__(self, pc: dn.ParameterCollection, config: dict, vocabs: dict) -> None:
        self.config, self.vocabs = config, vocabs
        self.embeddings = pc.add_lookup_parameters((len(vocabs["words"]), 8), name="E")
        self.weight = pc.add_parameters((len(vocabs["tags"]), 8), name="W")
        self.bias = pc.add_parameters(len(vocabs["tags"]), init="zeros", name="b")

    @staticmethod
    def build_vocabs(examples: list, config: dict) -> dict:
        return {"words": Vocab.build(s.forms for s in examples),
                "tags": Vocab.build((s.upos for s in examples), specials=())}

    def _scores(self, sentence, rng):
        words = self.vocabs["words"]
        out = []
        for form in sentence.forms:
            index = words.index(form) if rng is None else words.index_with_dropout(form, rng)
            x = dn.dropout(dn.tanh(self.embeddings[index]), self.config["dropout"])
            out.append(self.weight @ x + self.bias)
        return out

    def loss(self, sentence, rng):
        tags = self.vocabs["tags"]
        return dn.esum([dn.pick_neg_log_softmax(s, tags.index(t))
                        for s, t in zip(self._scores(sentence, rng), sentence.upos)])

    def predict(self, examples, batch_size=64, autobatch=True):
        with dn.Graph(autobatch=autobatch, training=False) as g:
            scores = [self._scores(s, None) for s in examples]
            g.forward([e for s in scores for e in s])
            tags = self.vocabs["tags"]
            return [[tags.token(int(np.argmax(e.npvalue()))) for e in s] for s in scores]

    def evaluate(self, examples, batch_size=64):
        predicted = self.predict(examples, batch_size)
        return {"upos_accuracy": metrics.accuracy([s.upos for s in examples], predicted)}

    def metadata(self):
        return {"recipe": "toy", "config": self.config,
                "vocabs": {k: v.to_dict() for k, v in self.vocabs.items()}}

    @classmethod
    def from_metadata(cls, pc, meta):
        return cls(pc, meta["config"], {k: Vocab.from_dict(v) for k, v in meta["vocabs"].items()})


TOY = types.SimpleNamespace(NAME="toy", MAIN_METRIC="upos_accuracy", Model=ToyModel)


@pytest.fixture(scope="module")
def splits():
    return [read_conllu(DATA / f"tiny-{s}.conllu") for s in ("train", "dev", "test")]


def config(**changes) -> dict:
    return {**train.COMMON_DEFAULTS, "learning_rate": 0.05, "batch_size": 8, "dropout": 0.3,
            "epochs": 2, "patience": 10, **changes}


def parameters(path: Path) -> dict[str, np.ndarray]:
    header, arrays = train.read_checkpoint(path)
    return {name: arrays[f"p{i}"] for i, name in enumerate(header["parameters"])}


def test_resume_gives_the_same_parameters_and_trainer_state(tmp_path, splits):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.train(TOY, config(), straight, *splits, progress=False)
    train.train(TOY, config(epochs=1), split, *splits, progress=False)
    after_one = parameters(split / "checkpoint.npz")
    train.train(TOY, config(), split, *splits, resume=True, progress=False)
    expected = parameters(straight / "checkpoint.npz")
    resumed = parameters(split / "checkpoint.npz")
    assert expected.keys() == resumed.keys()
    assert any(not np.array_equal(after_one[k], resumed[k]) for k in expected)  # it did train
    for name in expected:
        np.testing.assert_array_equal(expected[name], resumed[name], err_msg=name)
    header = train.read_checkpoint(split / "checkpoint.npz")[0]
    assert train._decode(header["state"], None)["epoch"] == 2
    # the log holds one line per epoch in both runs, with equal losses
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (straight, split)]
    assert [r["epoch"] for r in logs[1]] == [1, 2]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]
    assert (json.loads((straight / "metrics.json").read_text())["test"]
            == json.loads((split / "metrics.json").read_text())["test"])


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path, splits):
    with pytest.raises(train.TrainingError, match="no checkpoint"):
        train.train(TOY, config(), tmp_path, *splits, resume=True, progress=False)
    train.train(TOY, config(epochs=1), tmp_path, *splits, progress=False)
    with pytest.raises(train.TrainingError, match="learning_rate"):
        train.train(TOY, config(learning_rate=0.1), tmp_path, *splits, resume=True,
                    progress=False)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, splits):
    runs = [train.train(TOY, config(seed=seed), tmp_path / str(i), *splits, progress=False)
            for i, seed in enumerate((3, 3, 4))]
    logs = [(tmp_path / str(i) / "log.jsonl").read_text() for i in range(3)]
    losses = [[json.loads(line)["train_loss"] for line in log.splitlines()] for log in logs]
    assert runs[0]["dev"] == runs[1]["dev"] and runs[0]["test"] == runs[1]["test"]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_run_folder_holds_log_metrics_and_best_model(tmp_path, splits):
    result = train.train(TOY, config(epochs=3), tmp_path, *splits, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    for key in ("train_loss", "examples_per_second", "seconds", "learning_rate", "dev"):
        assert key in log[0]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("dev", "test", "train_examples_per_second", "config", "seed", "dynlp_version",
                "git_commit"):
        assert key in saved
    best = max(log, key=lambda r: r["dev"]["upos_accuracy"])
    assert saved["best_epoch"] == best["epoch"]
    assert saved["dev"] == best["dev"]  # the saved model is the best one on dev
    model = train.load_model(TOY, tmp_path)
    assert model.evaluate(splits[2]) == saved["test"]


def test_patience_stops_early(tmp_path, splits):
    # a learning rate this small cannot change the dev accuracy: no improvement after epoch 1
    train.train(TOY, config(learning_rate=1e-9, epochs=10, patience=2), tmp_path, *splits,
                progress=False)
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) == 3


def test_load_model_rejects_another_recipe(tmp_path, splits):
    train.train(TOY, config(epochs=1), tmp_path, *splits, progress=False)
    other = types.SimpleNamespace(NAME="tagger", Model=ToyModel)
    with pytest.raises(dn.ModelFileError, match="'toy' recipe"):
        train.load_model(other, tmp_path)


def test_checkpoint_encoding_round_trips_trainer_like_state():
    state = {"trainer": "adam", "updates": 3, "learning_rate": 0.1, "m/W": np.arange(6.0),
             "nested": {"a": [np.float32(1.5), None, True]}, 7: "int key"}
    arrays: dict = {}
    back = train._decode(json.loads(json.dumps(train._encode(state, arrays))), arrays)
    assert back.keys() == state.keys()
    np.testing.assert_array_equal(back["m/W"], state["m/W"])
    assert back["nested"]["a"][0] == np.float32(1.5)
    assert back["nested"]["a"][0].dtype == np.float32
    assert back[7] == "int key" and back["updates"] == 3


def test_metrics_accuracy_and_attachment_scores():
    assert metrics.accuracy(["A", "B", "C", "D"], ["A", "B", "C", "X"]) == 75.0
    assert metrics.accuracy([["A", "B"], ["C"]], [["A", "X"], ["C"]]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        metrics.accuracy(["A"], ["A", "B"])
    gold = [types.SimpleNamespace(heads=[2, 0, 2], deprels=["nsubj:pass", "root", "punct"])]
    # word 1: right head, subtype differs only (counts for LAS); word 3: wrong head
    scores = metrics.attachment_scores(gold, [[2, 0, 1]], [["nsubj", "root", "punct"]])
    assert scores == {"uas": pytest.approx(200 / 3), "las": pytest.approx(200 / 3)}
    scores = metrics.attachment_scores(gold, [[2, 0, 2]], [["obj", "root", "punct"]])
    assert scores == {"uas": 100.0, "las": pytest.approx(200 / 3)}


class InterruptedModel(ToyModel):
    def loss(self, sentence, rng):
        raise KeyboardInterrupt


def test_ctrl_c_leaves_the_last_checkpoint_to_resume_from(tmp_path, splits):
    train.train(TOY, config(epochs=1), tmp_path, *splits, progress=False)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    stopping = types.SimpleNamespace(NAME="toy", MAIN_METRIC="upos_accuracy",
                                     Model=InterruptedModel)
    with pytest.raises(train.TrainingInterrupted, match="after epoch 1 .*--resume"):
        train.train(stopping, config(), tmp_path, *splits, resume=True, progress=False)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    with pytest.raises(train.TrainingInterrupted, match="no checkpoint"):
        train.train(stopping, config(), tmp_path / "fresh", *splits, progress=False)
