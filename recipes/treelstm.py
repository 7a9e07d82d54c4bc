"""Sentiment classification with a binary constituency Tree-LSTM (Tai, Socher and Manning, 2015).

Owns the Tree-LSTM sentiment model: a 5-way softmax at every node of an SST tree, trained on the
loss summed over all nodes. Must not import other recipes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

import dynlp as dn
from dynlp.data import (Tree, TreeError, Vocab, binarize, binary_label, fine_label, read_trees,
                        write_trees)
from dynlp.metrics import accuracy
from dynlp.nn import MLP, Embedding
from dynlp.train import MAX_SIZE, Limit, RecipeModel, add_model_arguments

NAME = "treelstm"
MAIN_METRIC = "root_fine"
DEFAULT_DATASET = "sst"
LABELS = 5
DEFAULTS: dict[str, Any] = {
    "embedding_dim": 100,
    "hidden_dim": 150,
    "embedding_dropout": 0.5,
    "dropout": 0.5,
    "word_dropout": 0.25,
    "lowercase": True,
    "binarize": False,
    "epochs": 20,
    "batch_size": 25,
    "optimizer": "adagrad",
    "learning_rate": 0.05,
    "patience": 5,
}


_HELP = {
    "embedding_dim": "word embedding size (default %(default)s)",
    "hidden_dim": "Tree-LSTM memory size (default %(default)s)",
    "embedding_dropout": "dropout on word embeddings (default %(default)s)",
    "dropout": "dropout on node states before the classifier (default %(default)s)",
    "word_dropout": "word dropout alpha: a word seen c times becomes UNK with probability "
                    "alpha / (alpha + c) (default %(default)s)",
    "lowercase": "lowercase words before the vocabulary lookup (default %(default)s)",
    "binarize": "make non-binary input trees binary (a unary node becomes its child under the "
                "upper label, a node of k > 2 children a right-branching chain under its label); "
                "without it such trees are refused (default %(default)s)",
}


# the allowed values of the model settings (checked on the command line and in model files)
LIMITS = {
    "embedding_dim": Limit(1, MAX_SIZE), "hidden_dim": Limit(1, MAX_SIZE),
    "embedding_dropout": Limit(0, 1, integer=False, open_high=True),
    "dropout": Limit(0, 1, integer=False, open_high=True),
    "word_dropout": Limit(0, 1e6, integer=False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model sizes, dropout rates and word normalization."""
    add_model_arguments(parser, DEFAULTS, _HELP)


def read_examples(path: str | Path, purpose: str = "train",
                  config: dict | None = None) -> list[Tree]:
    """SST trees, one per line (raises dynlp.data.TreeError naming file, line and column).
    Every tree must be binary, or is made binary with the `binarize` setting; training and
    evaluation also need labels 0-4 at every node."""
    if (config or {}).get("binarize"):
        trees = read_trees(path, fine_labels=purpose != "predict")
        return [binarize(tree) for tree in trees]
    try:
        return read_trees(path, fine_labels=purpose != "predict", binary=True)
    except TreeError as error:
        if "children" not in error.problem:
            raise
        raise TreeError(error.source, error.line, error.column,
                        error.problem + " (--binarize makes such trees binary)") from None


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Model(RecipeModel):
    """Embeddings -> binary Tree-LSTM -> affine + softmax over 5 labels at every node.

    Leaves read their word's embedding; inner nodes combine their two children (no input).
    Predictions are fine labels 0-4 for every node; the binary view of a root compares
    p(0) + p(1) against p(3) + p(4), i.e. the total probability of negative against positive.
    """

    # A tree's nodes are batched level by level, and a tall tree's levels cost no more than
    # its words do: dealt with step cost 0, the two ranks' shares of a minibatch of 25 trees
    # cost 16.3 and 16.4 ms (CPU, one process, mean of 30), against 16.3 and 17.8 with the
    # sequences' 2 (the rank of the more, shorter trees waited for the other)
    shard_step_cost = 0

    recipe = NAME

    def __init__(self, pc: dn.ParameterCollection, config: dict, vocabs: dict) -> None:
        self.config = {**DEFAULTS, **config}
        self.vocabs = vocabs
        c = self.config
        self.embed = Embedding(pc, len(vocabs["word"]), c["embedding_dim"])
        self.tree_lstm = dn.TreeLSTMBuilder(c["embedding_dim"], c["hidden_dim"], pc,
                                            kind="binary")
        self.weight = pc.add_parameters((LABELS, c["hidden_dim"]), name="output_weight")
        self.bias = pc.add_parameters((LABELS,), init="zeros", name="output_bias")
        # the classifier over those two (their names stay those of the model files): a tree's
        # losses become one node (`MLP.pick_neg_log_softmax` summed by `dn.esum`)
        self.output = MLP.from_parameters([(self.weight, self.bias)])

    @staticmethod
    def build_vocabs(train_examples: list, config: dict) -> dict:
        lower = {**DEFAULTS, **config}["lowercase"]
        return {"word": Vocab.build([w.lower() if lower else w for w in tree.words()]
                                    for tree in train_examples)}

    def _word(self, word: str) -> str:
        return word.lower() if self.config["lowercase"] else word

    def _node_states(self, tree: Tree, rng: np.random.Generator | None) -> list[Any]:
        """h (hidden,) of every node, in post-order, as the classifier reads it; with rng, word
        dropout and dropout apply."""
        vocab = self.vocabs["word"]
        c = self.config
        states: dict[int, Any] = {}
        hs = []
        for node in tree.nodes():
            if node.is_leaf:
                word = self._word(node.word)
                if rng is not None and c["word_dropout"] > 0:
                    index = vocab.index_with_dropout(word, rng, c["word_dropout"])
                else:
                    index = vocab.index(word)
                x = dn.dropout(self.embed(index), c["embedding_dropout"])
                state = self.tree_lstm.leaf(x)
            else:
                state = self.tree_lstm.node([states[id(child)] for child in node.children])
            states[id(node)] = state
            hs.append(dn.dropout(state.h(), c["dropout"]))
        return hs

    def _node_scores(self, tree: Tree, rng: np.random.Generator | None) -> list[dn.Expression]:
        """Label scores (5,) of every node, in post-order; with rng, word dropout applies."""
        return [self.output(h) for h in self._node_states(tree, rng)]

    def loss(self, example: Tree, rng: np.random.Generator) -> dn.Expression:
        """Cross-entropy summed over all nodes of one tree."""
        output = self.output
        return dn.esum([output.pick_neg_log_softmax(h, fine_label(node))
                        for h, node in zip(self._node_states(example, rng), example.nodes())])

    def node_probabilities(self, trees: list[Tree], batch_size: int = 64,
                           autobatch: bool | str = True) -> list[np.ndarray]:
        """Label distributions (nodes, 5) per tree, nodes in post-order (root last).

        Many trees share one evaluation graph: one forward call per `batch_size` trees."""
        result = []
        for start in range(0, len(trees), batch_size):
            batch = trees[start:start + batch_size]
            with dn.Graph(autobatch=autobatch, training=False) as g:
                per_tree = [self._node_scores(tree, None) for tree in batch]
                g.forward([s for scores in per_tree for s in scores])
                for scores in per_tree:
                    result.append(_softmax(np.stack([s.npvalue() for s in scores])))
        return result

    def predict(self, examples: list[Tree], batch_size: int = 64,
                autobatch: bool | str = True) -> list[list[int]]:
        """Fine labels 0-4 of every node of each tree, in post-order (the root's is last)."""
        probabilities = self.node_probabilities(examples, batch_size, autobatch)
        return [p.argmax(axis=1).tolist() for p in probabilities]

    def evaluate(self, examples: list[Tree], batch_size: int = 64) -> dict:
        """root_fine: 5-class root accuracy; root_binary: positive vs negative root accuracy
        over non-neutral gold roots (p(0)+p(1) vs p(3)+p(4)); all_fine: 5-class accuracy over
        every node. Percentages."""
        return self.score(examples, self.evaluation_outputs(examples, batch_size))

    def evaluation_outputs(self, examples: list[Tree], batch_size: int = 64) -> list:
        """What `score` needs of each tree: [the fine labels of its nodes (post-order, root
        last), its root's binary label (1 positive)]."""
        return [[p.argmax(axis=1).tolist(), int(p[-1, 3:].sum() > p[-1, :2].sum())]
                for p in self.node_probabilities(examples, batch_size)]

    def score(self, examples: list[Tree], outputs: list) -> dict:
        """The metrics of `evaluate` from the trees' evaluation outputs (the work of evaluation
        split across the ranks of a data-parallel run)."""
        gold_roots = [fine_label(tree) for tree in examples]
        root_predictions = [labels[-1] for labels, _ in outputs]
        gold_binary, predicted_binary = [], []
        for tree, (_, binary) in zip(examples, outputs):
            gold = binary_label(tree)
            if gold is not None:
                gold_binary.append(gold)
                predicted_binary.append(binary)
        gold_nodes = [fine_label(node) for tree in examples for node in tree.nodes()]
        node_predictions = [label for labels, _ in outputs for label in labels]
        return {"root_fine": accuracy(gold_roots, root_predictions),
                "root_binary": accuracy(gold_binary, predicted_binary),
                "all_fine": accuracy(gold_nodes, node_predictions)}

    def write_predictions(self, examples: list[Tree], predictions: list, path) -> None:
        """Each tree again, one per line, with its predicted label at every node."""
        write_trees([_relabel(tree, labels) for tree, labels in zip(examples, predictions)], path)


def _relabel(tree: Tree, labels: list[int]) -> Tree:
    """A copy of tree whose nodes (in post-order) carry the given labels."""
    copies: dict[int, Tree] = {}
    for node, label in zip(tree.nodes(), labels):
        copies[id(node)] = Tree(str(label), [copies[id(c)] for c in node.children], node.word)
    return copies[id(tree)]
