"""The three recipes at a tiny size over the repository's fixtures, for tests that train them or
take their gradients: each function gives (Model class, config, the first `count` examples)."""

from __future__ import annotations

from pathlib import Path

from dynlp.data import read_conllu, read_trees
from recipes import parser, tagger, treelstm

DATA = Path(__file__).resolve().parent.parent / "data"


def tagger_case(count: int = 6, lstm_layers: int = 1) -> tuple:
    examples = read_conllu(DATA / "tiny-train.conllu")[:count]
    config = {**tagger.DEFAULTS, "word_dim": 8, "char_dim": 4, "char_hidden": 8,
              "lstm_layers": lstm_layers, "lstm_dim": 16, "mlp_dim": 8}
    return tagger.Model, config, examples


def treelstm_case(count: int = 6) -> tuple:
    examples = read_trees(DATA / "tiny-train.trees")[:count]
    return treelstm.Model, {**treelstm.DEFAULTS, "embedding_dim": 8, "hidden_dim": 6}, examples


def parser_case(count: int = 6, exploration: float = 0.5) -> tuple:
    examples = read_conllu(DATA / "tiny-train.conllu")[:count]
    config = {**parser.DEFAULTS, "word_dim": 8, "pos_dim": 4, "lstm_layers": 1, "lstm_dim": 12,
              "mlp_dim": 8, "exploration": exploration}
    return parser.Model, config, examples
