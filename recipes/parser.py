"""Labeled arc-hybrid transition parser with BiLSTM features (Kiperwasser and Goldberg, 2016).

Owns the transition system, its dynamic oracle and the parser model; trains and decodes all the
sentences of a minibatch in lockstep inside one graph. Must not import other recipes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex

import dynlp as dn
from dynlp.data import Sentence, Vocab, check_annotation, read_conllu, write_conllu
from dynlp.metrics import attachment_scores
from dynlp.nn import Embedding
from dynlp.train import MAX_SIZE, Limit, RecipeModel, add_model_arguments

NAME = "parser"
MAIN_METRIC = "las"
DEFAULT_DATASET = "ud-english-ewt"
DEFAULTS: dict[str, Any] = {
    "word_dim": 100,
    "pos_dim": 25,
    "lstm_layers": 2,
    "lstm_dim": 250,
    "mlp_dim": 100,
    "activation": "tanh",
    "dropout": 0.33,
    "word_dropout": 0.25,
    "exploration": 0.1,
    "tagger_model": None,
    "epochs": 20,
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "patience": 5,
}

SHIFT, LEFT, RIGHT = 0, 1, 2
_NUMBER = regex.compile(r"[0-9]+|[0-9]+\.[0-9]+|[0-9]+[0-9,]+")


def normalize(form: str) -> str:
    """The word-vocabulary key of a form: lowercased; numbers become NUM (as K&G do)."""
    return "NUM" if _NUMBER.fullmatch(form) else form.lower()


# -- the arc-hybrid transition system --------------------------------------------------------------
class Configuration:
    """An arc-hybrid parser state over words 1..n, with ROOT (0) at the end of the buffer.

    SHIFT pushes the first buffer word; LEFT-l pops s0 and attaches it to the buffer front b0;
    RIGHT-l pops s0 and attaches it to s1. ROOT never moves onto the stack, and LEFT onto ROOT is
    allowed only when s0 is the last word on the stack, so every final tree has one root word
    and every word exactly one head. Terminal: empty stack, buffer holding only ROOT.
    """

    __slots__ = ("front", "heads", "labels", "n", "on_stack", "stack")

    def __init__(self, n: int) -> None:
        self.n = n
        self.stack: list[int] = []
        self.front = 1                      # first buffer word; front > n: b0 is ROOT
        self.heads = [-1] * (n + 1)         # index 0 unused
        self.labels = [-1] * (n + 1)
        self.on_stack = [False] * (n + 1)

    @property
    def b0(self) -> int:
        return self.front if self.front <= self.n else 0

    def is_terminal(self) -> bool:
        return not self.stack and self.front > self.n

    def legal(self) -> tuple[bool, bool, bool]:
        """Whether SHIFT, LEFT and RIGHT may be applied now."""
        depth = len(self.stack)
        words_left = self.front <= self.n
        return words_left, depth > 0 and (words_left or depth == 1), depth > 1

    def apply(self, kind: int, label: int) -> None:
        if kind == SHIFT:
            self.stack.append(self.front)
            self.on_stack[self.front] = True
            self.front += 1
            return
        s0 = self.stack.pop()
        self.on_stack[s0] = False
        self.heads[s0] = self.b0 if kind == LEFT else self.stack[-1]
        self.labels[s0] = label

    def features(self) -> tuple[int, int, int, int]:
        """Positions of s0, s1, s2 and b0 (-1 for an empty stack slot, 0 for ROOT)."""
        stack = self.stack
        depth = len(stack)
        return (stack[-1] if depth > 0 else -1, stack[-2] if depth > 1 else -1,
                stack[-3] if depth > 2 else -1, self.b0)


class Oracle:
    """Dynamic oracle for arc-hybrid (Goldberg and Nivre, 2013): the number of gold arcs each
    transition makes unreachable. Exact for projective trees (following zero-cost transitions
    from any configuration gives the best reachable tree); for non-projective trees it counts
    the arcs each transition loses one by one, a close approximation we also train on.
    """

    def __init__(self, heads: list[int], labels: list[int]) -> None:
        self.heads = [-1] + list(heads)     # 1-based: heads[d] is d's gold head (0 = ROOT)
        self.labels = [-1] + list(labels)
        self.dependents: list[list[int]] = [[] for _ in self.heads]
        for d, h in enumerate(heads, start=1):
            self.dependents[h].append(d)

    def costs(self, c: Configuration) -> tuple[int, int, int, int]:
        """Unlabeled costs of SHIFT, LEFT, RIGHT (a large number when illegal), plus the gold
        label index that a zero-cost arc onto s0 must carry (-1 when s0's gold arc is gone)."""
        can_shift, can_left, can_right = c.legal()
        heads, front = self.heads, c.front
        big = 1 << 20
        shift = left = right = big
        gold_label = -1
        if can_shift:
            b0 = front
            lost = sum(1 for d in self.dependents[b0] if c.on_stack[d])
            h = heads[b0]
            shift = lost + (1 if h > 0 and c.on_stack[h] and h != c.stack[-1] else 0)
        if can_left or can_right:
            s0 = c.stack[-1]
            h = heads[s0]
            below = sum(1 for d in self.dependents[s0] if d >= front)
            in_buffer = h == 0 or h >= front
            if can_left:
                b0 = c.b0
                s1 = c.stack[-2] if len(c.stack) > 1 else -1
                left = below + (1 if h != b0 and (h == s1 or in_buffer) else 0)
                if h == b0:
                    gold_label = self.labels[s0]
            if can_right:
                right = below + (1 if in_buffer else 0)
                if h == c.stack[-2]:
                    gold_label = self.labels[s0]
        return shift, left, right, gold_label


def action_index(kind: int, label: int, labels: int) -> int:
    """The index of a transition among 1 + 2 * labels scores: SHIFT, LEFT-l..., RIGHT-l..."""
    if kind == SHIFT:
        return 0
    return 1 + label if kind == LEFT else 1 + labels + label


def action_of(index: int, labels: int) -> tuple[int, int]:
    """(kind, label) of an action index (label -1 for SHIFT)."""
    if index == 0:
        return SHIFT, -1
    if index <= labels:
        return LEFT, index - 1
    return RIGHT, index - 1 - labels


def legal_mask(c: Configuration, labels: int) -> np.ndarray:
    """Boolean mask over the 1 + 2 * labels actions."""
    can_shift, can_left, can_right = c.legal()
    mask = np.empty(1 + 2 * labels, dtype=bool)
    mask[0] = can_shift
    mask[1:1 + labels] = can_left
    mask[1 + labels:] = can_right
    return mask


def action_costs(oracle: Oracle, c: Configuration, labels: int) -> np.ndarray:
    """Labeled costs over all actions: an arc onto s0 with s0's gold head but another label
    costs one more; illegal actions cost about a million."""
    shift, left, right, gold_label = oracle.costs(c)
    costs = np.empty(1 + 2 * labels, dtype=np.int64)
    costs[0] = shift
    costs[1:1 + labels] = left
    costs[1 + labels:] = right
    if gold_label >= 0:
        s0, b0 = c.stack[-1], c.b0
        if oracle.heads[s0] == b0:
            costs[1:1 + labels] += 1
            costs[1 + gold_label] -= 1
        elif len(c.stack) > 1 and oracle.heads[s0] == c.stack[-2]:
            costs[1 + labels:] += 1
            costs[1 + labels + gold_label] -= 1
    return costs


def is_projective(heads: list[int]) -> bool:
    """True when no two arcs of the tree (heads 1-based, 0 = root) cross."""
    spans = sorted((min(d, h), max(d, h)) for d, h in enumerate(heads, start=1))
    for i, (a, b) in enumerate(spans):
        for c, d in spans[i + 1:]:
            if c >= b:
                break
            if a < c < b < d:
                return False
    return True


# -- the recipe ------------------------------------------------------------------------------------
_HELP = {
    "word_dim": "word embedding size (default %(default)s)",
    "pos_dim": "UPOS embedding size (default %(default)s)",
    "lstm_layers": "BiLSTM layers (default %(default)s)",
    "lstm_dim": "BiLSTM output size, both directions together (default %(default)s)",
    "mlp_dim": "hidden size of the transition MLP (default %(default)s)",
    "activation": "MLP hidden activation (default %(default)s)",
    "dropout": "dropout in the BiLSTM and the MLP (default %(default)s)",
    "word_dropout": "word dropout alpha: a word seen c times becomes UNK with probability "
                    "alpha / (alpha + c) (default %(default)s)",
    "exploration": "probability of following a wrong predicted transition during training "
                   "(dynamic-oracle exploration; default %(default)s)",
    "tagger_model": "a trained tagger model directory: tag UPOS with it before parsing "
                    "(default: gold UPOS from the input file)",
}


# the allowed values of the model settings (checked on the command line and in model files)
LIMITS = {
    "word_dim": Limit(1, MAX_SIZE), "pos_dim": Limit(1, MAX_SIZE), "lstm_layers": Limit(1, 64),
    "lstm_dim": Limit(2, MAX_SIZE, even=True), "mlp_dim": Limit(1, MAX_SIZE),
    "dropout": Limit(0, 1, integer=False, open_high=True),
    "word_dropout": Limit(0, 1e6, integer=False), "exploration": Limit(0, 1, integer=False),
}
# settings that name another model, and the recipe that model must be of
MODEL_REFERENCES = {"tagger_model": "tagger"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model sizes, dropout, exploration and the optional tagger model for UPOS."""
    add_model_arguments(parser, DEFAULTS, _HELP, {"activation": ("tanh", "relu")})


def read_examples(path: str | Path, purpose: str = "train",
                  config: dict | None = None) -> list[Sentence]:
    """CoNLL-U sentences (raises dynlp.data.CoNLLUError naming file and line). Training and
    evaluation need trees (one root, no cycle) with DEPREL filled; every purpose needs UPOS
    unless the model tags with its own tagger (`tagger_model`), at prediction nothing more."""
    sentences = list(read_conllu(path))
    tagged = bool((config or {}).get("tagger_model")) and purpose != "train"
    columns = () if tagged else ("upos",)
    if purpose == "predict":
        check_annotation(sentences, columns, source=str(path))
    else:
        check_annotation(sentences, columns + ("deprel",), tree=True, source=str(path))
    return sentences


class Model(RecipeModel):
    """Word and UPOS embeddings -> BiLSTM -> MLP over [s0; s1; s2; b0] -> 1 + 2L transitions.

    Features: the BiLSTM vectors of the top three stack words and the first buffer item, with a
    learned vector for ROOT and another for an empty stack slot. One tanh MLP scores SHIFT,
    LEFT-l and RIGHT-l for every relation l (full UD relations, subtypes included).

    Training: cross-entropy towards the best-scoring minimum-cost transition of the dynamic
    oracle; with probability `exploration` the parser then follows its own wrong prediction
    instead (Kiperwasser and Goldberg's error exploration). Non-projective training trees are
    kept: their targets are the oracle's minimum-cost transitions (288 of the 12,544 EWT train
    sentences; those targets give up about 380 of their gold heads). All sentences of a minibatch
    advance in lockstep: one batched forward per step. Decoding is greedy among legal
    transitions, in lockstep too.
    """

    recipe = NAME

    def __init__(self, pc: dn.ParameterCollection, config: dict, vocabs: dict) -> None:
        self.config = {**DEFAULTS, **config}
        self.vocabs = vocabs
        c = self.config
        self.labels = len(vocabs["deprel"])
        self.words = Embedding(pc, len(vocabs["word"]), c["word_dim"])
        self.tags = Embedding(pc, len(vocabs["upos"]), c["pos_dim"])
        self.bilstm = dn.BiRNNBuilder(c["lstm_layers"], c["word_dim"] + c["pos_dim"],
                                      c["lstm_dim"], pc, dn.LSTMBuilder)
        self.root = pc.add_parameters((c["lstm_dim"],), name="root")
        self.empty = pc.add_parameters((c["lstm_dim"],), name="empty")
        self.mlp = dn.MLP(pc, [4 * c["lstm_dim"], c["mlp_dim"], 1 + 2 * self.labels],
                          activation=c["activation"], dropout=c["dropout"])
        self.bilstm.set_dropout(c["dropout"])
        self.tagger: Any = None

    @staticmethod
    def build_vocabs(train_examples: list, config: dict) -> dict:
        return {
            "word": Vocab.build([normalize(f) for f in s.forms] for s in train_examples),
            "upos": Vocab.build(s.upos for s in train_examples),
            "deprel": Vocab.build((s.deprels for s in train_examples), specials=()),
        }

    def attach_models(self, load_model: Callable[[str], Any]) -> None:
        """Optional interface hook: the CLI hands its model loader (model directory -> Model);
        the parser loads the tagger named by `tagger_model`, if any."""
        if self.config.get("tagger_model"):
            self.tagger = load_model(self.config["tagger_model"])

    # -- graph building --------------------------------------------------------------------------
    def _encode(self, sentence: Sentence, upos: list[str], rng: np.random.Generator | None
                ) -> list[dn.Expression]:
        """BiLSTM vectors of the words; with rng, rare words become UNK (word dropout)."""
        words, tags = self.vocabs["word"], self.vocabs["upos"]
        forms = [normalize(f) for f in sentence.forms]
        if rng is not None and self.config["word_dropout"] > 0:
            ids = words.indices_with_dropout(forms, rng, self.config["word_dropout"])
        else:
            ids = words.indices(forms)
        xs = [dn.concatenate([self.words(w), self.tags(t)])
              for w, t in zip(ids, tags.indices(upos))]
        return self.bilstm.transduce(xs)

    def _scores(self, vectors: list[dn.Expression], c: Configuration) -> dn.Expression:
        root, empty = dn.parameter(self.root), dn.parameter(self.empty)
        parts = [empty if i < 0 else root if i == 0 else vectors[i - 1] for i in c.features()]
        return self.mlp(dn.concatenate(parts))

    def loss(self, example: Sentence, rng: np.random.Generator) -> dn.Expression:
        """The loss of one sentence (the lockstep `batch_loss` of a batch of one)."""
        return self.batch_loss([example], rng)

    def batch_loss(self, examples: list[Sentence],
                   rng: np.random.Generator | Sequence[np.random.Generator]) -> dn.Expression:
        """Summed transition losses of a minibatch, parsed in lockstep in the current graph.

        At every step the scores of all unfinished sentences are evaluated by one forward call;
        their values pick the target (the best minimum-cost action) and the transition followed
        (the target, or the model's wrong choice with probability `exploration`). rng: one
        generator for the batch, or one per sentence, which then draws all of that sentence's
        word dropout, dropout masks and exploration (the same in any batch).
        """
        g = dn.current_graph()
        deprels = self.vocabs["deprel"]
        labels = self.labels
        explore = self.config["exploration"]
        rngs = [rng] * len(examples) if isinstance(rng, np.random.Generator) else list(rng)
        vectors = []
        for s, r in zip(examples, rngs):
            g.use_generator(r)
            vectors.append(self._encode(s, s.upos, r))
        # the encoder in one pass: the engine evaluates only what a forward needs, so the
        # first transitions would otherwise run the BiLSTM a few positions at a time
        g.forward([v for vs in vectors for v in vs])
        states = [(i, Configuration(len(s)), Oracle(s.heads, deprels.indices(s.deprels)))
                  for i, s in enumerate(examples)]
        losses = []
        while states:
            scores = []
            for i, c, _ in states:
                g.use_generator(rngs[i])
                scores.append(self._scores(vectors[i], c))
            g.use_generator(None)
            g.forward(scores)
            for (i, c, oracle), score in zip(states, scores):
                values = score.npvalue()
                costs = action_costs(oracle, c, labels)
                best = costs == costs.min()
                target = int(np.argmax(np.where(best, values, -np.inf)))
                losses.append(dn.pick_neg_log_softmax(score, target))
                follow = target
                if explore > 0:
                    predicted = int(np.argmax(np.where(legal_mask(c, labels), values, -np.inf)))
                    if not best[predicted] and rngs[i].random() < explore:
                        follow = predicted
                c.apply(*action_of(follow, labels))
            states = [state for state in states if not state[1].is_terminal()]
        return dn.esum(losses)

    # -- decoding --------------------------------------------------------------------------------
    def _upos(self, examples: list[Sentence], batch_size: int) -> list[list[str]]:
        """The UPOS tags to parse with: the tagger's, when one is configured, else the file's."""
        if not self.config.get("tagger_model"):
            return [s.upos for s in examples]
        if self.tagger is None:
            raise RuntimeError(f"the parser is configured to tag with "
                               f"{self.config['tagger_model']}, but no tagger was attached "
                               "(call attach_models with a model loader first)")
        return [list(tags) for tags in self.tagger.predict(examples, batch_size=batch_size)]

    def predict(self, examples: list[Sentence], batch_size: int = 64,
                autobatch: bool | str = True) -> list[tuple[list[int], list[str], list[str]]]:
        """Greedy parses: (heads, deprels, upos) per sentence, heads 0 for the root; upos are
        the tags the parse used (the input's, or the tagger's with `tagger_model`).

        The sentences of a batch are decoded in lockstep: one forward call per step."""
        deprels = self.vocabs["deprel"]
        labels = self.labels
        upos = self._upos(examples, batch_size)
        results = []
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            tags = upos[start:start + batch_size]
            with dn.Graph(autobatch=autobatch, training=False) as g:
                vectors = [self._encode(s, t, None) for s, t in zip(batch, tags)]
                g.forward([v for vs in vectors for v in vs])  # the encoder in one pass
                configs = [Configuration(len(s)) for s in batch]
                active = list(range(len(batch)))
                while active:
                    scores = [self._scores(vectors[i], configs[i]) for i in active]
                    g.forward(scores)
                    for i, score in zip(active, scores):
                        c = configs[i]
                        values = np.where(legal_mask(c, labels), score.npvalue(), -np.inf)
                        c.apply(*action_of(int(np.argmax(values)), labels))
                    active = [i for i in active if not configs[i].is_terminal()]
            for c, t in zip(configs, tags):
                results.append((c.heads[1:], [deprels.token(label) for label in c.labels[1:]],
                                list(t)))
        return results

    def evaluate(self, examples: list[Sentence], batch_size: int = 64) -> dict:
        """UAS and LAS in percent (CoNLL 2018: punctuation included, LAS without subtypes)."""
        return self.score(examples, self.evaluation_outputs(examples, batch_size))

    def evaluation_outputs(self, examples: list[Sentence], batch_size: int = 64) -> list:
        """What `score` needs of each sentence: its predicted (heads, deprels, upos)."""
        return self.predict(examples, batch_size)

    def score(self, examples: list[Sentence], outputs: list) -> dict:
        """The metrics of `evaluate` from the sentences' evaluation outputs (the work of
        evaluation split across the ranks of a data-parallel run)."""
        return attachment_scores(examples, [p[0] for p in outputs], [p[1] for p in outputs])

    def write_predictions(self, examples: list[Sentence], predictions: list, path) -> None:
        """CoNLL-U with the predicted HEAD and DEPREL and the UPOS the parse used; every other
        column (DEPS included) is kept from the input."""
        write_conllu([s.with_columns(head=heads, deprel=rels, upos=tags)
                      for s, (heads, rels, tags) in zip(examples, predictions)], path)
