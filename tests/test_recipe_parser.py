"""Tests for recipes/parser.py: the arc-hybrid system and its dynamic oracle on the fixture,
lockstep batching against per-sentence unbatched losses, the tagger hook, and a smoke run of
`dynlp train parser` that saves, reloads, evaluates and predicts.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp.cli import main
from dynlp.data import read_conllu
from recipes import parser as P

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "tiny-train.conllu"
DEV = DATA / "tiny-dev.conllu"
TEST = DATA / "tiny-test.conllu"
LABELS = 7
SMALL = {"word_dim": 12, "pos_dim": 6, "lstm_layers": 1, "lstm_dim": 16, "mlp_dim": 16}


def sentences():
    return list(read_conllu(TRAIN)) + list(read_conllu(DEV))


def gold_labels(sentence):
    return [sum(map(ord, rel)) % LABELS for rel in sentence.deprels]


def check_tree(heads, n):
    """One root word, every word one head in 0..n (not itself), no cycle."""
    assert len(heads) == n and heads.count(0) == 1
    for word, head in enumerate(heads, start=1):
        assert 0 <= head <= n and head != word
        seen = {word}
        while head:
            assert head not in seen, f"cycle through word {head}"
            seen.add(head)
            head = heads[head - 1]


def test_fixture_is_projective_and_oracle_reproduces_gold():
    rng = np.random.default_rng(0)
    for s in sentences():
        assert P.is_projective(s.heads)
        labels = gold_labels(s)
        oracle = P.Oracle(s.heads, labels)
        c = P.Configuration(len(s))
        while not c.is_terminal():
            costs = P.action_costs(oracle, c, LABELS)
            zero = np.flatnonzero(costs == 0)
            assert len(zero), f"{s.sent_id}: no zero-cost transition"
            c.apply(*P.action_of(int(rng.choice(zero)), LABELS))
        assert c.heads[1:] == s.heads and c.labels[1:] == labels, s.sent_id


def test_dynamic_oracle_costs_add_up_to_the_errors():
    """After random mistakes, the summed costs of the transitions taken equal the labeled errors
    of the final tree (the oracle is exact on projective trees)."""
    rng = np.random.default_rng(1)
    for s in sentences():
        labels = gold_labels(s)
        oracle = P.Oracle(s.heads, labels)
        c = P.Configuration(len(s))
        total = 0
        while not c.is_terminal():
            costs = P.action_costs(oracle, c, LABELS)
            legal = np.flatnonzero(P.legal_mask(c, LABELS))
            assert set(np.flatnonzero(costs < 1000)) == set(legal)
            if rng.random() < 0.4:
                action = int(rng.choice(legal))
            else:
                action = int(rng.choice(np.flatnonzero(costs == costs.min())))
            total += int(costs[action])
            c.apply(*P.action_of(action, LABELS))
        errors = sum(h != g or lab != gl for h, g, lab, gl
                     in zip(c.heads[1:], s.heads, c.labels[1:], labels))
        assert errors == total, s.sent_id


def test_random_legal_transitions_always_give_a_tree():
    rng = np.random.default_rng(2)
    for n in list(range(1, 12)) * 20:
        c = P.Configuration(n)
        steps = 0
        while not c.is_terminal():
            scores = rng.normal(size=1 + 2 * LABELS)
            action = int(np.argmax(np.where(P.legal_mask(c, LABELS), scores, -np.inf)))
            c.apply(*P.action_of(action, LABELS))
            steps += 1
        assert steps == 2 * n
        check_tree(c.heads[1:], n)
        assert all(0 <= label < LABELS for label in c.labels[1:])


def test_is_projective():
    assert P.is_projective([2, 0, 2])
    assert not P.is_projective([3, 4, 0, 3])  # 1 <- 3 crosses 2 <- 4


def make_model(config=None, dtype=np.float32):
    train = list(read_conllu(TRAIN))
    config = {**P.DEFAULTS, **SMALL, **(config or {})}
    pc = dn.ParameterCollection(seed=3, dtype=dtype)
    return P.Model(pc, config, P.Model.build_vocabs(train, config)), train


def test_untrained_model_predicts_valid_trees():
    model, train = make_model()
    for s, (heads, rels, upos) in zip(train, model.predict(train, batch_size=7)):
        check_tree(heads, len(s))
        assert all(r in model.vocabs["deprel"] for r in rels) and upos == s.upos


@pytest.mark.parametrize("exploration", [0.0, 1.0])
def test_lockstep_batch_loss_equals_unbatched_sentence_losses(exploration):
    """One lockstep graph over the batch (autobatch on) against one graph per sentence with
    autobatch off: the same decisions, the same loss, the same gradients (float64)."""
    config = {"dropout": 0.0, "word_dropout": 0.0, "exploration": exploration}
    model, train = make_model(config, dtype=np.float64)
    batch = train[:9]
    params = list(model.mlp.pc.parameters())
    with dn.Graph(autobatch=True, dtype=np.float64) as g:
        loss = model.batch_loss(batch, np.random.default_rng(0))
        batched = loss.scalar_value()
        loss.backward()
        assert g.stats()["mean_batch_size"] > 2
    batched_grads = [p.grad_as_array() for p in params]
    for p in params:
        p.clear_grad()
    singles = 0.0
    for s in batch:
        with dn.Graph(autobatch=False, dtype=np.float64):
            loss = model.loss(s, np.random.default_rng(0))
            singles += loss.scalar_value()
            loss.backward()
    assert batched == pytest.approx(singles, rel=1e-10)
    for b, p in zip(batched_grads, params):
        np.testing.assert_allclose(b, p.grad_as_array(), rtol=1e-8, atol=1e-10)


def test_batch_loss_depends_on_intermediate_values():
    """With exploration 1 the transitions followed are the model's own wrong choices, so the
    loss differs from the oracle-only run: decisions really read the step's values."""
    values = []
    for exploration in (0.0, 1.0):
        model, train = make_model({"dropout": 0.0, "word_dropout": 0.0,
                                   "exploration": exploration})
        with dn.Graph():
            values.append(model.batch_loss(train[:5], np.random.default_rng(0)).scalar_value())
    assert values[0] != pytest.approx(values[1])


class ConstantTagger:
    def __init__(self, tag):
        self.tag = tag

    def predict(self, examples, batch_size=64):
        return [[self.tag] * len(s) for s in examples]


def test_tagger_hook(tmp_path):
    model, train = make_model({"tagger_model": "some/tagger"})
    with pytest.raises(RuntimeError, match="no tagger was attached"):
        model.predict(train[:2])
    asked = []
    model.attach_models(lambda path: asked.append(path) or ConstantTagger("NOUN"))
    assert asked == ["some/tagger"]
    predictions = model.predict(train[:3])
    assert all(set(upos) == {"NOUN"} for _, _, upos in predictions)
    model.write_predictions(train[:3], predictions, tmp_path / "out.conllu")
    assert set(read_conllu(tmp_path / "out.conllu")[0].upos) == {"NOUN"}
    plain, _ = make_model()
    plain.attach_models(lambda path: pytest.fail("no tagger is configured"))


def test_real_tagger_through_the_hook(tmp_path):
    """The tagger recipe's saved model plugs into the hook (a test may import both recipes;
    the recipes themselves never import each other)."""
    from dynlp.train import load_model
    from recipes import tagger

    tagger_dir = tmp_path / "tagger"
    assert main(["train", "tagger", "--train", str(TRAIN), "--dev", str(DEV), "--out",
                 str(tagger_dir), "--epochs", "1"]) == 0
    model, train = make_model({"tagger_model": str(tagger_dir)})
    model.attach_models(lambda directory: load_model(tagger, directory))
    expected = load_model(tagger, tagger_dir).predict(train[:4])
    predictions = model.predict(train[:4])
    assert [upos for _, _, upos in predictions] == [list(tags) for tags in expected]


def test_train_save_reload_evaluate_predict(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "parser", "--train", str(TRAIN), "--dev", str(DEV), "--test", str(TEST),
            "--out", str(out), "--epochs", "4", "--batch-size", "8", "--learning-rate", "0.005",
            "--word-dim", "12", "--pos-dim", "6", "--lstm-layers", "1", "--lstm-dim", "16",
            "--mlp-dim", "16", "--dropout", "0.1"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"uas", "las"}
    assert metrics["test"]["uas"] >= metrics["test"]["las"]

    meta = dn.read_metadata(out / "model.npz")
    assert meta["recipe"] == "parser"
    pc = dn.ParameterCollection()
    model = P.Model.from_metadata(pc, meta)
    pc.populate(out / "model.npz")
    test = P.read_examples(TEST)
    assert model.evaluate(test) == pytest.approx(metrics["test"])

    predicted = tmp_path / "predicted.conllu"
    assert main(["predict", "parser", "--model", str(out), "--input", str(TEST),
                 "--output", str(predicted), "--batch-size", "5"]) == 0
    reread = read_conllu(predicted)
    assert len(reread) == len(test)
    for gold, parsed in zip(test, reread):
        assert parsed.forms == gold.forms and parsed.comments == gold.comments
        check_tree(parsed.heads, len(parsed))
    predictions = model.predict(test, batch_size=64, autobatch=False)
    assert [p[0] for p in predictions] == [s.heads for s in reread]
    assert [p[1] for p in predictions] == [s.deprels for s in reread]


def test_tagger_model_through_the_command_line(tmp_path):
    """`--tagger-model DIR`: the CLI hands its model loader to the parser, in training,
    evaluation and prediction."""
    tagger_dir, parser_dir = tmp_path / "tagger", tmp_path / "parser"
    assert main(["train", "tagger", "--train", str(TRAIN), "--dev", str(DEV), "--out",
                 str(tagger_dir), "--epochs", "1"]) == 0
    assert main(["train", "parser", "--train", str(TRAIN), "--dev", str(DEV), "--out",
                 str(parser_dir), "--epochs", "1", "--tagger-model", str(tagger_dir)]) == 0
    assert main(["evaluate", "parser", "--model", str(parser_dir), "--input", str(TEST)]) == 0
    output = tmp_path / "parsed.conllu"
    assert main(["predict", "parser", "--model", str(parser_dir), "--input", str(TEST),
                 "--output", str(output)]) == 0
    assert len(read_conllu(output)) == len(read_conllu(TEST))
