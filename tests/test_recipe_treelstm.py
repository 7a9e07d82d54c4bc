"""Tests for recipes/treelstm.py: a smoke run of `dynlp train treelstm` on the tiny trees that
saves, reloads, evaluates and predicts; batched prediction against unbatched; the metrics.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp.cli import main
from dynlp.data import fine_label, parse_tree, read_trees
from recipes import treelstm as T

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "tiny-train.trees"
DEV = DATA / "tiny-dev.trees"
TEST = DATA / "tiny-test.trees"
SMALL = {"embedding_dim": 16, "hidden_dim": 12}


def make_model(config=None, dtype=np.float32):
    train = read_trees(TRAIN)
    config = {**T.DEFAULTS, **SMALL, **(config or {})}
    pc = dn.ParameterCollection(seed=4, dtype=dtype)
    return T.Model(pc, config, T.Model.build_vocabs(train, config)), train


def test_loss_sums_every_node():
    model, train = make_model({"embedding_dropout": 0.0, "dropout": 0.0, "word_dropout": 0.0})
    tree = train[0]
    probabilities = model.node_probabilities([tree])[0]
    assert probabilities.shape == (len(tree.nodes()), T.LABELS)
    expected = -sum(np.log(p[fine_label(node)]) for p, node in zip(probabilities, tree.nodes()))
    with dn.Graph():
        loss = model.loss(tree, np.random.default_rng(0)).scalar_value()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_training_graph_reads_rows_and_states_in_place_and_sums_a_trees_losses_once():
    # with dropout: one lookup+dropout per leaf, one concatenate_ranges+dropout per node, and
    # the node losses of a tree one mlp_loss_sum_1 node; the loss equals the per-node chain's
    model, train = make_model(dtype=np.float64)
    tree = train[0]
    with dn.Graph(fuse=False, dtype=np.float64, seed=9) as g:
        loss = model.loss(tree, np.random.default_rng(0)).scalar_value()
        names = [op.name for op in g.ops]
    leaves = sum(1 for node in tree.nodes() if node.is_leaf)
    assert names.count("lookup+dropout") == leaves and "lookup" not in names
    assert names.count("concatenate_ranges+dropout") == len(tree.nodes())
    assert "pick_range" not in names
    assert names.count("mlp_loss_sum_1") == 1 and "pick_neg_log_softmax" not in names
    with dn.Graph(fuse=False, dtype=np.float64, seed=9):
        hs = model._node_states(tree, np.random.default_rng(0))
        chain = dn.esum([dn.pick_neg_log_softmax(
            dn.affine_transform([model.bias, model.weight, h]), fine_label(node))
            for h, node in zip(hs, tree.nodes())]).scalar_value()
    assert loss == pytest.approx(chain, rel=1e-12)


def test_batched_prediction_equals_unbatched():
    model, train = make_model()
    batched = model.node_probabilities(train[:12], batch_size=12, autobatch=True)
    single = model.node_probabilities(train[:12], batch_size=1, autobatch=False)
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert model.predict(train[:12], batch_size=5) == [p.argmax(axis=1).tolist() for p in single]


class FixedModel(T.Model):
    """Root distributions chosen by the test (every node gets the tree's one distribution)."""

    def __init__(self, distributions):
        self.distributions = distributions

    def node_probabilities(self, trees, batch_size=64, autobatch=True):
        return [np.tile(d, (len(t.nodes()), 1)) for t, d in zip(trees, self.distributions)]


def test_evaluate_metrics():
    trees = [parse_tree(text) for text in
             ["(4 (3 a) (4 b))", "(1 (2 a) (1 b))", "(2 (2 a) (2 b))", "(0 (0 a) (2 b))"]]
    distributions = np.array([
        [0.0, 0.0, 0.1, 0.5, 0.4],    # fine 3 (gold 4), positive: binary right
        [0.3, 0.25, 0.45, 0.0, 0.0],  # fine 2 (gold 1), p(0)+p(1) = 0.55: negative, right
        [0.0, 0.0, 1.0, 0.0, 0.0],    # fine 2 right; a neutral root is left out of binary
        [0.1, 0.1, 0.45, 0.35, 0.0],  # fine 2 (gold 0), 0.35 > 0.2: positive, wrong
    ])
    metrics = FixedModel(distributions).evaluate(trees)
    assert metrics["root_fine"] == pytest.approx(25.0)
    assert metrics["root_binary"] == pytest.approx(200 / 3)
    # nodes: tree 1 gets 3 (right: leaf a), tree 2 gets 2 (leaf a), tree 3 all three,
    # tree 4 gets 2 (leaf b)
    assert metrics["all_fine"] == pytest.approx(100 * 6 / 12)


def test_train_save_reload_evaluate_predict(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "treelstm", "--train", str(TRAIN), "--dev", str(DEV), "--test", str(TEST),
            "--out", str(out), "--epochs", "6", "--batch-size", "10", "--embedding-dim", "16",
            "--hidden-dim", "12", "--optimizer", "adam", "--learning-rate", "0.03",
            "--dropout", "0.1", "--embedding-dropout", "0.1"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"root_fine", "root_binary", "all_fine"}

    meta = dn.read_metadata(out / "model.npz")
    assert meta["recipe"] == "treelstm"
    pc = dn.ParameterCollection()
    model = T.Model.from_metadata(pc, meta)
    pc.populate(out / "model.npz")
    test = T.read_examples(TEST)
    assert model.evaluate(test) == pytest.approx(metrics["test"])

    predicted = tmp_path / "predicted.trees"
    assert main(["predict", "treelstm", "--model", str(out), "--input", str(TEST),
                 "--output", str(predicted)]) == 0
    reread = read_trees(predicted)
    labels = model.predict(test)
    assert len(reread) == len(test)
    for gold, tree, predicted_labels in zip(test, reread, labels):
        assert tree.words() == gold.words()
        assert [int(node.label) for node in tree.nodes()] == predicted_labels
    roots = [int(tree.label) for tree in reread]
    gold_roots = [fine_label(tree) for tree in test]
    accuracy = 100 * np.mean([r == g for r, g in zip(roots, gold_roots)])
    assert accuracy == pytest.approx(metrics["test"]["root_fine"])
