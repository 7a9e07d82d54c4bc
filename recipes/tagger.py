"""Part-of-speech tagging (UPOS from CoNLL-U) in the style of Plank, Søgaard and Goldberg (2016):
each word is its embedding (with word dropout to UNK) joined to a character BiLSTM encoding, a
stacked BiLSTM reads the sentence and an MLP scores the tags of every word. A recipe over dynlp's
library; it must not import other recipes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

import dynlp as dn
from dynlp.data import Sentence, Vocab, check_annotation, read_conllu, write_conllu
from dynlp.metrics import accuracy
from dynlp.nn import MLP, BiRNNBuilder, CharacterEncoder, Embedding, LSTMBuilder
from dynlp.train import MAX_SIZE, Limit, RecipeModel, add_model_arguments

NAME = "tagger"
MAIN_METRIC = "upos_accuracy"
DEFAULT_DATASET = "ud-english-ewt"
DEFAULTS: dict[str, Any] = {
    # model
    "word_dim": 100, "char_dim": 32, "char_hidden": 64, "max_word_chars": 30,
    "lstm_layers": 2, "lstm_dim": 256, "mlp_dim": 128,
    "dropout": 0.33, "recurrent_dropout": 0.0, "word_dropout": 0.25, "min_count": 1,
    # training
    "epochs": 20, "batch_size": 32, "optimizer": "adam", "learning_rate": 1e-3, "patience": 5,
    "seed": 1,
}

_HELP = {
    "word_dim": "word embedding size",
    "char_dim": "character embedding size",
    "char_hidden": "character BiLSTM output size (half per direction)",
    "max_word_chars": "longer words are read as their first and last halves of this many "
                      "characters",
    "lstm_layers": "levels of the sentence BiLSTM",
    "lstm_dim": "sentence BiLSTM output size per level (half per direction)",
    "mlp_dim": "hidden size of the tag scorer",
    "dropout": "dropout on the BiLSTM inputs and the scorer's hidden layer",
    "recurrent_dropout": "variational dropout on the BiLSTM's recurrent state",
    "word_dropout": "alpha of word dropout: a word of count c becomes UNK with probability "
                    "alpha / (alpha + c)",
    "min_count": "words seen fewer times in training are UNK",
}


# the allowed values of the model settings (checked on the command line and in model files)
LIMITS = {
    "word_dim": Limit(1, MAX_SIZE), "char_dim": Limit(1, MAX_SIZE),
    "char_hidden": Limit(2, MAX_SIZE, even=True), "max_word_chars": Limit(1, 10**4),
    "lstm_layers": Limit(1, 64), "lstm_dim": Limit(2, MAX_SIZE, even=True),
    "mlp_dim": Limit(1, MAX_SIZE),
    "dropout": Limit(0, 1, integer=False, open_high=True),
    "recurrent_dropout": Limit(0, 1, integer=False, open_high=True),
    "word_dropout": Limit(0, 1e6, integer=False), "min_count": Limit(1, 10**9),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags (`--word-dim` ...), with their defaults from DEFAULTS."""
    add_model_arguments(parser, DEFAULTS, _HELP)


def read_examples(path: str | Path, purpose: str = "train",
                  config: dict | None = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file (dynlp.data.CoNLLUError names file and line). Training
    and evaluation need the UPOS column filled; prediction only the forms."""
    sentences = read_conllu(path)
    if purpose != "predict":
        check_annotation(sentences, ("upos",), source=str(path))
    return sentences


def _clip(form: str, limit: int) -> str:
    if len(form) <= limit:
        return form
    half = limit // 2
    return form[:half] + form[len(form) - (limit - half):]


class Model(RecipeModel):
    """The tagger's parameters and computation; `loss` for training, `predict` for tagging."""

    recipe = NAME

    def __init__(self, pc: dn.ParameterCollection, config: dict, vocabs: dict) -> None:
        self.config = dict(config)
        self.vocabs = vocabs
        c = {**DEFAULTS, **config}
        self.words, self.chars, self.tags = vocabs["words"], vocabs["chars"], vocabs["tags"]
        self.word_embedding = Embedding(pc, len(self.words), c["word_dim"], name="words")
        self.char_encoder = CharacterEncoder(pc, len(self.chars), c["char_dim"],
                                             c["char_hidden"], name="chars")
        self.bilstm = BiRNNBuilder(c["lstm_layers"], c["word_dim"] + c["char_hidden"],
                                   c["lstm_dim"], pc, LSTMBuilder, name="bilstm")
        self.bilstm.set_dropout(c["dropout"], c["recurrent_dropout"])
        self.scorer = MLP(pc, [c["lstm_dim"], c["mlp_dim"], len(self.tags)], activation="tanh",
                          dropout=c["dropout"], name="scorer")
        self.dropout = c["dropout"]
        self.word_dropout = c["word_dropout"]
        self.max_word_chars = c["max_word_chars"]

    @staticmethod
    def build_vocabs(train_examples: list[Sentence], config: dict) -> dict[str, Vocab]:
        forms = [s.forms for s in train_examples]
        return {
            "words": Vocab.build(forms, min_count=int(config["min_count"])),
            "chars": Vocab.characters(form for sentence in forms for form in sentence),
            "tags": Vocab.build((s.upos for s in train_examples), specials=()),
        }

    def _encode_chars(self, g: dn.Graph, form: str) -> dn.Expression:
        """The character encoding of a word form, built once per graph (in its `cache`)."""
        cache = g.cache.get(self.char_encoder)
        if cache is None:
            cache = g.cache[self.char_encoder] = {}
        encoding = cache.get(form)
        if encoding is None:
            chars = self.chars.indices(_clip(form, self.max_word_chars))
            encoding = cache[form] = self.char_encoder(chars)
        return encoding

    def _states(self, sentence: Sentence, rng: np.random.Generator | None) -> list[Any]:
        """The BiLSTM's vector (lstm_dim,) of every word, as the scorer reads it; rng given:
        training (word dropout, dropout)."""
        g = dn.current_graph()
        inputs = []
        for form in sentence.forms:
            if rng is None:
                index = self.words.index(form)
            else:
                index = self.words.index_with_dropout(form, rng, self.word_dropout)
            inputs.append(dn.concatenate([self.word_embedding(index),
                                          self._encode_chars(g, form)]))
        states = self.bilstm.transduce(inputs)
        if rng is not None and self.dropout > 0.0:
            states = [dn.dropout(h, self.dropout) for h in states]
        return states

    def _scores(self, sentence: Sentence, rng: np.random.Generator | None) -> list[dn.Expression]:
        """Tag scores (tags,) of every word; rng given: training (word dropout, dropout)."""
        return [self.scorer(h) for h in self._states(sentence, rng)]

    def loss(self, example: Sentence, rng: np.random.Generator) -> dn.Expression:
        """Summed cross-entropy of the gold UPOS tags of one sentence (one node for the
        sentence's losses: `MLP.pick_neg_log_softmax` summed by `dn.esum`)."""
        scorer, tags = self.scorer, self.tags
        return dn.esum([scorer.pick_neg_log_softmax(h, tags.index(tag))
                        for h, tag in zip(self._states(example, rng), example.upos)])

    def predict(self, examples: list[Sentence], batch_size: int = 64,
                autobatch: bool | str = True) -> list[list[str]]:
        """UPOS tags of every sentence; sentences of similar length share a graph."""
        order = sorted(range(len(examples)), key=lambda k: len(examples[k]))
        result: list[list[str]] = [[] for _ in examples]
        tags = self.tags.tokens
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            with dn.Graph(autobatch=autobatch, training=False) as g:
                scores = [self._scores(examples[k], None) for k in chunk]
                g.forward([s for sentence in scores for s in sentence])
                for k, sentence in zip(chunk, scores):
                    result[k] = [tags[int(np.argmax(s.npvalue()))] for s in sentence]
        return result

    def evaluate(self, examples: list[Sentence], batch_size: int = 64) -> dict:
        """{"upos_accuracy": percent of words tagged right, "words": how many}."""
        return self.score(examples, self.evaluation_outputs(examples, batch_size))

    def evaluation_outputs(self, examples: list[Sentence], batch_size: int = 64) -> list:
        """What `score` needs of each sentence: its predicted tags."""
        return self.predict(examples, batch_size)

    def score(self, examples: list[Sentence], predicted: list[list[str]]) -> dict:
        """The metrics of `evaluate` from the sentences' evaluation outputs (the work of
        evaluation split across the ranks of a data-parallel run)."""
        gold = [s.upos for s in examples]
        return {MAIN_METRIC: accuracy(gold, predicted), "words": sum(len(s) for s in gold)}

    def write_predictions(self, examples: list[Sentence], predictions: list[list[str]],
                          path: str | Path) -> None:
        """The input sentences with the UPOS column replaced, everything else kept."""
        write_conllu([s.with_columns(upos=tags) for s, tags in zip(examples, predictions)], path)
