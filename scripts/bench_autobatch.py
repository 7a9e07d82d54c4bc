"""Training throughput of dynlp with autobatching off, by depth, by agenda and late, on a BiLSTM
tagger, a binary Tree-LSTM and an arc-hybrid parser, beside eager PyTorch (when torch imports),
DyNet 2.1 on the paper workloads (when dynet imports; scripts/dynet_peers.py, one child process
per variant) and reference figures, all on real EWT sentences and SST trees when available.

The "-user" workloads (treenn-user, tagger-user, rnnlm-user, attention-user) are models as a
DyNet user writes them: ported line by line from the DyNet benchmark suite's dynet-py scripts
(treenn.py, bilstm-tagger.py, rnnlm-batch.py) plus an attention encoder-decoder, from ordinary
ops (`@`, `+`, `*`, logistic, tanh, concatenate, pick_neg_log_softmax, esum, lookups) and
LSTMBuilder only, each beside the same program in DyNet with autobatching, in each DyNet build
(`--dynet-builds wheel,native`: the dyNET38 wheel and DyNet compiled for this CPU,
docs/DYNET_PEER.md). Round-by-round ratios (median and range) compare runs made back to back:

    python scripts/bench_autobatch.py --workloads treenn-user,tagger-user,rnnlm-user,attention-user
        --batch-sizes 64 --strategies late --repeats 7 --sentences 256 --no-memory --no-torch

    python scripts/bench_autobatch.py [--quick] [--workloads tagger,treelstm,...]
        [--batch-sizes 1,16,64] [--steps N] [--repeats R] [--data DIR] [--json PATH]
        [--no-torch] [--no-dynet] [--dynet-builds wheel,native] [--dynet-native DIR]
        [--dynet-mem MB]

Every figure is TRAINING sentences per second: build the graph of a minibatch, forward, backward
and one Adam update (sparse on embeddings). The variants run interleaved, `--repeats` times, and
the median is reported; speed-up ratios divide medians of the same run. Peak memory comes from a
separate short run under tracemalloc (numpy reports its allocations to it; torch does not), so it
never slows the timed runs. `dynlp bench ARGS` runs this script; `main(argv)` is its entry point.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenBLAS reads its thread count once, when numpy loads: what it read is what counts
BLAS_THREADS_AT_LOAD = ("unknown (numpy was loaded before this script)" if "numpy" in sys.modules
                        else os.environ.get("OPENBLAS_NUM_THREADS", "unset (all cores)"))

import numpy as np  # noqa: E402

import dynlp as dn  # noqa: E402
from dynlp.data import read_conllu, read_trees  # noqa: E402
from dynlp.nn import MLP, BiRNNBuilder, Embedding, LSTMBuilder, TreeLSTMBuilder  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
DEFAULT_DATA = SCRIPTS.parent.parent / "shared" / "data"
# a strategy, or (strategy, fuse[, pad]): "late-unfused" is late scheduling with fusion off,
# "late-regions" with the region pass on (Graph(fuse="regions")) as well, "late-unpadded" with
# batches of equal shapes only (Graph(pad=False))
STRATEGIES = {"off": False, "depth": "depth", "agenda": "agenda", "late": "late",
              "late-unfused": ("late", False), "late-regions": ("late", "regions"),
              "late-unpadded": ("late", True, False)}


def _settings(autobatch: bool | str | tuple) -> tuple:
    """(autobatch, fuse, pad) of a STRATEGIES value."""
    if not isinstance(autobatch, tuple):
        return autobatch, True, True
    return (autobatch + (True,))[:3]


USER_WORKLOADS = ("treenn-user", "tagger-user", "rnnlm-user", "attention-user",
                  "treenn-cells", "attention-cells")
# treenn-cells is treenn-user with its two cells under @dn.fused, attention-cells
# attention-user with its attention: DyNet runs the twin of the model without the decorator
_PEER_OF = {"treenn-cells": "treenn-user", "attention-cells": "attention-user"}
WORKLOADS = ("tagger", "treelstm", "parser", "tagger-paper", "treelstm-paper") + USER_WORKLOADS
# the sizes of the DyNet benchmark suite's run-tests.sh (rnnlm-batch at 128 -> 256, over a
# vocabulary of PTB's size, 10000); attention-user is ours
USER_SIZES = {"treenn-user": {"word_dim": 128, "hidden": 128},
              "tagger-user": {"word_dim": 128, "hidden": 50, "mlp_dim": 32},
              "rnnlm-user": {"embed": 128, "hidden": 256, "vocab": 10000},
              "attention-user": {"word_dim": 64, "hidden": 64, "attention": 64, "tag_dim": 32}}
USER_SIZES["treenn-cells"] = USER_SIZES["treenn-user"]
USER_SIZES["attention-cells"] = USER_SIZES["attention-user"]
SHIFT, LEFT, RIGHT = 0, 1, 2

# measured elsewhere on a machine like this one: references, never same-run measurements
REFERENCES = {
    "tagger-paper": [("DyNet 2.1 autobatch", 2083),
                     ("DyNet 2.1 one sentence per graph, no autobatch", 1231),
                     ("PyTorch 2.13 one graph per sentence", 440),
                     ("PyTorch 2.13 hand-padded nn.LSTM", 1060)],
    "treelstm-paper": [("DyNet 2.1 autobatch", 1069),
                       ("DyNet 2.1 one tree per graph, no autobatch", 567),
                       ("PyTorch 2.13 one graph per tree", 55)],
}
# speed-up of late or agenda over off at batch 64, and absolute sentences/s, that we aim for
TARGET_SPEEDUPS = {"tagger": 10.0, "tagger-paper": 10.0, "treelstm": 7.0,
                   "treelstm-paper": 7.0, "parser": 4.0}
TARGET_RATES = {"tagger-paper": 2000.0, "treelstm-paper": 1000.0}
# dynlp late (or agenda) should train at least as fast as DyNet with autobatching, same run
DYNET_GOAL = 1.0


# -------------------------------------------------------------------------------------------------
# data: lists of Python ints, prepared once and outside every timed run


@dataclass
class TaggedData:
    """Sentences as (word ids, tag ids); heads and relation ids too when parsing."""

    source: str
    sentences: list[tuple[list[int], list[int]]]
    words: int
    tags: int
    heads: list[list[int]] = field(default_factory=list)
    relations: list[list[int]] = field(default_factory=list)
    labels: int = 0


@dataclass
class TreeData:
    """Binary trees in post-order: per node a word id (-1 inside), children (-1 at a leaf) and a
    label 0-4."""

    source: str
    trees: list[tuple[list[int], list[int], list[int], list[int]]]
    words: int


def _index(table: dict[str, int], token: str) -> int:
    index = table.get(token)
    if index is None:
        index = table[token] = len(table)
    return index


def load_sentences(data_dir: Path | None, parsing: bool, rng: np.random.Generator,
                   count: int = 2000) -> TaggedData:
    """EWT train (words, UPOS; heads and relations when parsing), else generated sentences."""
    path = None if data_dir is None else data_dir / "ud_english_ewt" / "en_ewt-ud-train.conllu"
    if path is not None and path.is_file():
        corpus = read_conllu(path)
        words: dict[str, int] = {}
        tags: dict[str, int] = {}
        relations: dict[str, int] = {}
        data = TaggedData(f"UD English EWT train ({path})", [], 0, 0)
        for s in corpus:
            forms = [f.lower() for f in s.forms] if parsing else s.forms
            data.sentences.append(([_index(words, f) for f in forms],
                                   [_index(tags, t) for t in s.upos]))
            data.heads.append(list(s.heads))
            data.relations.append([_index(relations, r) for r in s.deprels])
        data.words, data.tags, data.labels = len(words), len(tags), len(relations)
        return data
    # generated: EWT-like lengths, Zipfian words, random projective trees
    data = TaggedData("generated (no EWT under --data)", [], 5000, 17, labels=37)
    for _ in range(count):
        n = int(np.clip(rng.lognormal(2.6, 0.6), 2, 80))
        data.sentences.append(((np.minimum(rng.zipf(1.3, n), 5000) - 1).tolist(),
                               rng.integers(0, 17, n).tolist()))
        data.heads.append(random_projective_heads(n, rng))
        data.relations.append(rng.integers(0, 37, n).tolist())
    return data


def random_projective_heads(n: int, rng: np.random.Generator) -> list[int]:
    """Heads (1-based, 0 = root) of a random projective tree over n words."""
    heads = [0] * n
    spans = [(1, n, 0)]  # words first..last hang from head
    while spans:
        first, last, head = spans.pop()
        if first > last:
            continue
        root = int(rng.integers(first, last + 1))
        heads[root - 1] = head
        spans.append((first, root - 1, root))
        spans.append((root + 1, last, root))
    return heads


def load_trees(data_dir: Path | None, rng: np.random.Generator, count: int = 2000) -> TreeData:
    """SST train trees, else random binary trees over generated sentences."""
    path = None if data_dir is None else data_dir / "sst" / "train.txt"
    if path is not None and path.is_file():
        words: dict[str, int] = {}
        data = TreeData(f"SST train ({path})", [], 0)
        for tree in read_trees(path):
            encoded = _encode_tree(tree.nodes(), words)
            if encoded is not None:
                data.trees.append(encoded)
        data.words = len(words)
        return data
    data = TreeData("generated (no SST under --data)", [], 5000)
    for _ in range(count):
        n = int(np.clip(rng.lognormal(2.8, 0.5), 2, 60))
        data.trees.append(random_tree(n, 5000, rng))
    return data


def _encode_tree(nodes: list, words: dict[str, int]) -> tuple | None:
    position = {id(node): k for k, node in enumerate(nodes)}
    word_ids, left, right, labels = [], [], [], []
    for node in nodes:
        if node.children and len(node.children) != 2:
            return None
        if node.children:
            word_ids.append(-1)
            left.append(position[id(node.children[0])])
            right.append(position[id(node.children[1])])
        else:
            word_ids.append(_index(words, node.word.lower()))
            left.append(-1)
            right.append(-1)
        labels.append(int(node.label))
    return word_ids, left, right, labels


def random_tree(n: int, vocab: int, rng: np.random.Generator) -> tuple:
    """A random binary tree over n leaves, in post-order."""
    word_ids: list[int] = []
    left: list[int] = []
    right: list[int] = []

    def build(size: int) -> int:
        if size == 1:
            word_ids.append(int(rng.integers(vocab)))
            left.append(-1)
            right.append(-1)
        else:
            cut = int(rng.integers(1, size))
            a = build(cut)
            b = build(size - cut)
            word_ids.append(-1)
            left.append(a)
            right.append(b)
        return len(word_ids) - 1

    build(n)
    return word_ids, left, right, rng.integers(0, 5, len(word_ids)).tolist()


# -------------------------------------------------------------------------------------------------
# the arc-hybrid transition system with a static oracle (ROOT at the end of the buffer)


@dataclass
class Derivation:
    """A sentence's static-oracle derivation: per step the feature positions (s0, s1, s2, b0;
    -1 empty, 0 ROOT, i word i), the gold action index and which of SHIFT/LEFT/RIGHT is legal
    (3 bits)."""

    features: list[tuple[int, int, int, int]]
    actions: list[int]
    legal: list[int]


def static_oracle(heads: list[int], relations: list[int], labels: int) -> Derivation | None:
    """The gold transition sequence of a projective tree; None for a non-projective one."""
    n = len(heads)
    pending = [0] * (n + 1)
    for h in heads:
        pending[h] += 1
    stack: list[int] = []
    front = 1
    out = Derivation([], [], [])
    while stack or front <= n:
        depth = len(stack)
        b0 = front if front <= n else 0
        words_left = front <= n
        legal = (int(words_left) | int(depth > 0 and (words_left or depth == 1)) << 1
                 | int(depth > 1) << 2)
        s0 = stack[-1] if depth else -1
        if depth and heads[s0 - 1] == b0 and not pending[s0] and legal & 2:
            kind, label = LEFT, relations[s0 - 1]
        elif depth > 1 and heads[s0 - 1] == stack[-2] and not pending[s0]:
            kind, label = RIGHT, relations[s0 - 1]
        elif words_left:
            kind, label = SHIFT, -1
        else:
            return None
        out.features.append((s0, stack[-2] if depth > 1 else -1,
                             stack[-3] if depth > 2 else -1, b0))
        out.actions.append(0 if kind == SHIFT else 1 + label + (labels if kind == RIGHT else 0))
        out.legal.append(legal)
        if kind == SHIFT:
            stack.append(front)
            front += 1
        else:
            pending[heads[stack.pop() - 1]] -= 1
    return out


def legal_masks(labels: int) -> list[np.ndarray]:
    """Boolean masks over the 1 + 2 * labels actions, indexed by the 3 legality bits."""
    masks = []
    for bits in range(8):
        mask = np.empty(1 + 2 * labels, dtype=bool)
        mask[0] = bool(bits & 1)
        mask[1:1 + labels] = bool(bits & 2)
        mask[1 + labels:] = bool(bits & 4)
        masks.append(mask)
    return masks


@dataclass
class ParseData:
    source: str
    sentences: list[tuple[list[int], list[int], Derivation]]
    words: int
    tags: int
    labels: int


def parse_data(data: TaggedData) -> ParseData:
    """The projective sentences of data, each with its static-oracle derivation."""
    out = ParseData(data.source + ", projective sentences", [], data.words, data.tags,
                    data.labels)
    for (words, tags), heads, relations in zip(data.sentences, data.heads, data.relations):
        derivation = static_oracle(heads, relations, data.labels)
        if derivation is not None:
            out.sentences.append((words, tags, derivation))
    return out


# -------------------------------------------------------------------------------------------------
# dynlp models: each `step(batch, autobatch)` trains on one minibatch and returns its node count


class DynlpModel:
    """Shared training step: one graph per minibatch, summed example losses, backward, Adam."""

    clip_threshold: float | None = 5.0  # the trainer's gradient clipping (DyNet's default)

    def __init__(self, seed: int) -> None:
        self.pc = dn.ParameterCollection(seed=seed)
        self.trainer: dn.Trainer | None = None

    def loss(self, example: Any) -> dn.Expression:
        raise NotImplementedError

    def batch_loss(self, batch: list) -> dn.Expression:
        return dn.esum([self.loss(example) for example in batch])

    def step(self, batch: list, autobatch: bool | str | tuple) -> int:
        if self.trainer is None:
            # sparse table updates: the default
            self.trainer = dn.AdamTrainer(self.pc, clip_threshold=self.clip_threshold)
        autobatch, fuse, pad = _settings(autobatch)
        with dn.Graph(autobatch=autobatch, fuse=fuse, pad=pad) as g:
            total = self.batch_loss(batch)
            total.backward()
            total.scalar_value()
            nodes = len(g)
        self.trainer.update()
        return nodes

    def batch_loss_value(self, batch: list, autobatch: bool | str | tuple) -> float:
        """The summed loss of a minibatch, without training (for tests)."""
        autobatch, fuse, pad = _settings(autobatch)
        with dn.Graph(autobatch=autobatch, fuse=fuse, pad=pad):
            return self.batch_loss(batch).scalar_value()


class Tagger(DynlpModel):
    """Embeddings -> BiLSTM (hidden per direction) -> MLP -> a softmax loss at every word (the
    MLP and its loss one node per word: `MLP.pick_neg_log_softmax`)."""

    def __init__(self, words: int, tags: int, word_dim: int, layers: int, hidden: int,
                 mlp_dim: int, seed: int = 1) -> None:
        super().__init__(seed)
        self.embed = Embedding(self.pc, words, word_dim)
        self.bilstm = BiRNNBuilder(layers, word_dim, 2 * hidden, self.pc, LSTMBuilder)
        self.mlp = MLP(self.pc, [2 * hidden, mlp_dim, tags])

    def loss(self, example):
        words, tags = example
        embed = self.embed
        states = self.bilstm.transduce([embed(w) for w in words])
        mlp = self.mlp
        return dn.esum([mlp.pick_neg_log_softmax(h, t) for h, t in zip(states, tags)])


class TreeTagger(DynlpModel):
    """Embeddings -> binary Tree-LSTM -> affine -> a softmax loss over 5 labels at every node (the
    affine layer and its loss one node: `MLP.pick_neg_log_softmax`)."""

    def __init__(self, words: int, word_dim: int, hidden: int, seed: int = 1) -> None:
        super().__init__(seed)
        self.embed = Embedding(self.pc, words, word_dim)
        self.cell = TreeLSTMBuilder(word_dim, hidden, self.pc, kind="binary")
        self.output = MLP(self.pc, [hidden, 5], name="output")

    def loss(self, example):
        word_ids, left, right, labels = example
        cell, embed, output = self.cell, self.embed, self.output
        states = []
        losses = []
        for word, a, b, label in zip(word_ids, left, right, labels):
            state = cell.leaf(embed(word)) if word >= 0 else cell.node([states[a], states[b]])
            states.append(state)
            losses.append(output.pick_neg_log_softmax(state.h(), label))
        return dn.esum(losses)


class Parser(DynlpModel):
    """Word and UPOS embeddings -> BiLSTM -> MLP over [s0; s1; s2; b0] -> 1 + 2L transitions.

    The sentences of a minibatch advance in lockstep: every step's scores are evaluated by one
    `g.forward(list)` and read with `npvalue()` to pick the model's best legal action (counted in
    `agreements`, not followed: the static oracle's gold action is followed)."""

    def __init__(self, words: int, tags: int, labels: int, word_dim: int = 100,
                 tag_dim: int = 25, layers: int = 2, lstm_dim: int = 250, mlp_dim: int = 100,
                 seed: int = 1) -> None:
        super().__init__(seed)
        self.words = Embedding(self.pc, words, word_dim, name="words")
        self.tags = Embedding(self.pc, tags, tag_dim, name="tags")
        self.bilstm = BiRNNBuilder(layers, word_dim + tag_dim, lstm_dim, self.pc, LSTMBuilder)
        self.root = self.pc.add_parameters((lstm_dim,), name="root")
        self.empty = self.pc.add_parameters((lstm_dim,), name="empty")
        self.mlp = MLP(self.pc, [4 * lstm_dim, mlp_dim, 1 + 2 * labels])
        self.masks = legal_masks(labels)
        self.agreements = 0

    def batch_loss(self, batch):
        g = dn.current_graph()
        root, empty = dn.parameter(self.root), dn.parameter(self.empty)
        tables = []
        for words, tags, _ in batch:
            xs = [dn.concatenate([self.words(w), self.tags(t)]) for w, t in zip(words, tags)]
            tables.append([root] + self.bilstm.transduce(xs) + [empty])  # empty at -1
        # the encoder in one pass (as recipes/parser.py): the engine evaluates only what a
        # forward needs, so the first transitions would otherwise run the BiLSTM piecemeal
        g.forward([h for table in tables for h in table[1:-1]])
        mlp, masks = self.mlp, self.masks
        losses = []
        longest = max(len(d.actions) for _, _, d in batch)
        for step in range(longest):
            active = [(k, d) for k, (_, _, d) in enumerate(batch) if step < len(d.actions)]
            scores = []
            for k, d in active:
                table = tables[k]
                scores.append(mlp(dn.concatenate([table[i] for i in d.features[step]])))
            g.forward(scores)
            for (k, d), score in zip(active, scores):
                values = np.where(masks[d.legal[step]], score.npvalue(), -np.inf)
                gold = d.actions[step]
                self.agreements += int(np.argmax(values)) == gold
                losses.append(dn.pick_neg_log_softmax(score, gold))
        return dn.esum(losses)


# -------------------------------------------------------------------------------------------------
# the "-user" workloads: models as a DyNet user writes them, from ordinary ops and DyNet's own
# builders only, ported line by line from the DyNet benchmark suite (github neulab/dynet-benchmark,
# dynet-py/) and, for attention-user, from DyNet's attention example; their DyNet twins, written
# the same way in DyNet's API, are in scripts/dynet_peers.py


class UserTreeNN(DynlpModel):
    """dynet-py/treenn.py: lookup -> binary Tree-LSTM written out gate by gate (one forget gate
    per child, each from its own child's h; the output gate reuses the input gate's bias, as
    there) -> W h (no bias) -> softmax loss over 5 labels at every node. The two branches of
    the script's expr_for_tree, a leaf and a node, are the methods `leaf` and `node`."""

    clip_threshold = None  # the script turns clipping off

    def __init__(self, words: int, word_dim: int, hidden: int, seed: int = 1) -> None:
        super().__init__(seed)
        pc = self.pc
        self.WS = [pc.add_parameters((hidden, word_dim)) for _ in "iou"]
        self.US = [pc.add_parameters((hidden, 2 * hidden)) for _ in "iou"]
        self.UFS = [pc.add_parameters((hidden, hidden)) for _ in "ff"]
        self.BS = [pc.add_parameters(hidden) for _ in "iouf"]
        self.E = pc.add_lookup_parameters((words, word_dim))
        self.W_ = pc.add_parameters((5, hidden))

    def leaf(self, emb):
        Wi, Wo, Wu = [dn.parameter(w) for w in self.WS]
        bi, bo, bu, _ = [dn.parameter(b) for b in self.BS]
        i = dn.logistic(Wi @ emb + bi)
        o = dn.logistic(Wo @ emb + bo)
        u = dn.tanh(Wu @ emb + bu)
        c = i * u
        return o * dn.tanh(c), c

    def node(self, e1, c1, e2, c2):
        Ui, Uo, Uu = [dn.parameter(u) for u in self.US]
        Uf1, Uf2 = [dn.parameter(u) for u in self.UFS]
        bi, bo, bu, bf = [dn.parameter(b) for b in self.BS]
        e = dn.concatenate([e1, e2])
        i = dn.logistic(Ui @ e + bi)
        o = dn.logistic(Uo @ e + bi)
        f1 = dn.logistic(Uf1 @ e1 + bf)
        f2 = dn.logistic(Uf2 @ e2 + bf)
        u = dn.tanh(Uu @ e + bu)
        c = i * u + f1 * c1 + f2 * c2
        return o * dn.tanh(c), c

    def loss(self, example):
        word_ids, left, right, labels = example
        W = dn.parameter(self.W_)
        hs, cs, losses = [], [], []
        for word, a, b, label in zip(word_ids, left, right, labels):
            if word >= 0:
                h, c = self.leaf(self.E[word])
            else:
                h, c = self.node(hs[a], cs[a], hs[b], cs[b])
            hs.append(h)
            cs.append(c)
            losses.append(dn.pick_neg_log_softmax(W @ h, label))
        return dn.esum(losses)


class UserTreeNNFused(UserTreeNN):
    """treenn-user with its two cells under `@dn.fused` (one node per cell): the same model,
    parameters, code and numbers."""

    leaf = dn.fused(UserTreeNN.leaf)
    node = dn.fused(UserTreeNN.node)


class UserTagger(DynlpModel):
    """dynet-py/bilstm-tagger.py: lookup (words seen 5 times or fewer -> UNK) -> forward and
    backward LSTMBuilder -> concatenate -> O tanh(H x) (no biases) -> softmax loss per word."""

    clip_threshold = None  # the script turns clipping off

    def __init__(self, words: int, tags: int, word_dim: int, hidden: int, mlp_dim: int,
                 seed: int = 1) -> None:
        super().__init__(seed)
        pc = self.pc
        self.WORDS_LOOKUP = pc.add_lookup_parameters((words, word_dim))
        self.pH = pc.add_parameters((mlp_dim, hidden * 2))
        self.pO = pc.add_parameters((tags, mlp_dim))
        self.fwdRNN = LSTMBuilder(1, word_dim, hidden, pc)
        self.bwdRNN = LSTMBuilder(1, word_dim, hidden, pc)

    def loss(self, example):
        words, tags = example
        H = dn.parameter(self.pH)
        O = dn.parameter(self.pO)  # noqa: E741 (the names of bilstm-tagger.py)
        f_init = self.fwdRNN.initial_state()
        b_init = self.bwdRNN.initial_state()
        wembs = [self.WORDS_LOOKUP[w] for w in words]
        fw_exps = f_init.transduce(wembs)
        bw_exps = b_init.transduce(reversed(wembs))
        bi_exps = [dn.concatenate([f, b]) for f, b in zip(fw_exps, reversed(bw_exps))]
        exps = [O @ dn.tanh(H @ x) for x in bi_exps]
        return dn.esum([dn.pick_neg_log_softmax(v, t) for v, t in zip(exps, tags)])


class UserRNNLM(DynlpModel):
    """dynet-py/rnnlm-batch.py, one sentence at a time (dynlp has no minibatch dimension; the
    engine batches the sentences): <s> -> LSTMBuilder -> affine softmax over the vocabulary
    predicting each next word and the final <s>."""

    clip_threshold = None  # the script turns clipping off

    def __init__(self, words: int, embed: int, hidden: int, seed: int = 1) -> None:
        super().__init__(seed)
        pc = self.pc
        self.WORDS_LOOKUP = pc.add_lookup_parameters((words, embed))
        self.RNN = LSTMBuilder(1, embed, hidden, pc)
        self.W_sm = pc.add_parameters((words, hidden))
        self.b_sm = pc.add_parameters(words)
        self.S = 0  # "<s>" is word 0

    def loss(self, sent):
        W_exp = dn.parameter(self.W_sm)
        b_exp = dn.parameter(self.b_sm)
        s = self.RNN.initial_state().add_input(self.WORDS_LOOKUP[self.S])
        losses = []
        for wid in sent:
            score = W_exp @ s.output() + b_exp
            losses.append(dn.pick_neg_log_softmax(score, wid))
            s = s.add_input(self.WORDS_LOOKUP[wid])
        return dn.esum(losses)


class UserAttention(DynlpModel):
    """An attention encoder-decoder in the style of DyNet's attention example: words -> BiLSTM
    encoder, its states as the columns of a matrix; an LSTMBuilder decoder emits the sentence's
    UPOS tags and then </s>, each step attending (MLP attention: v tanh(W1 H + W2 s)) over the
    encoder states, fed [context; previous tag embedding]."""

    clip_threshold = None  # the script turns clipping off

    def __init__(self, words: int, tags: int, word_dim: int, hidden: int, attention: int,
                 tag_dim: int, seed: int = 1) -> None:
        super().__init__(seed)
        pc = self.pc
        self.src_lookup = pc.add_lookup_parameters((words, word_dim))
        self.tgt_lookup = pc.add_lookup_parameters((tags + 1, tag_dim))  # tags, then </s>
        self.enc_fwd = LSTMBuilder(1, word_dim, hidden, pc)
        self.enc_bwd = LSTMBuilder(1, word_dim, hidden, pc)
        self.dec = LSTMBuilder(1, 2 * hidden + tag_dim, 2 * hidden, pc)
        self.attention_w1 = pc.add_parameters((attention, 2 * hidden))
        self.attention_w2 = pc.add_parameters((attention, 2 * hidden))
        self.attention_v = pc.add_parameters((1, attention))
        self.decoder_w = pc.add_parameters((tags + 1, 2 * hidden))
        self.decoder_b = pc.add_parameters(tags + 1)
        self.eos = tags
        self.state = 2 * hidden
        self.attention = attention

    def attend(self, input_mat, w1dt, h):
        w2 = dn.parameter(self.attention_w2)
        v = dn.parameter(self.attention_v)
        w2dt = w2 @ h
        unnormalized = dn.transpose(v @ dn.tanh(w1dt + dn.reshape(w2dt, (self.attention, 1))))
        att_weights = dn.softmax(unnormalized)
        return dn.reshape(input_mat @ att_weights, (self.state,))

    def loss(self, example):
        words, tags = example
        embedded = [self.src_lookup[w] for w in words]
        fwd = self.enc_fwd.initial_state().transduce(embedded)
        bwd = self.enc_bwd.initial_state().transduce(reversed(embedded))
        encoded = [dn.concatenate([f, b]) for f, b in zip(fwd, reversed(bwd))]
        w = dn.parameter(self.decoder_w)
        b = dn.parameter(self.decoder_b)
        w1 = dn.parameter(self.attention_w1)
        input_mat = dn.concatenate_cols(encoded)
        w1dt = w1 @ input_mat
        last = self.tgt_lookup[self.eos]
        s = self.dec.initial_state().add_input(dn.concatenate([dn.zeros(self.state), last]))
        losses = []
        for tag in list(tags) + [self.eos]:
            vector = dn.concatenate([self.attend(input_mat, w1dt, s.output()), last])
            s = s.add_input(vector)
            out = w @ s.output() + b
            losses.append(dn.pick_neg_log_softmax(out, tag))
            last = self.tgt_lookup[tag]
        return dn.esum(losses)


class UserAttentionFused(UserAttention):
    """attention-user with its attention under `@dn.fused` (one node per decoder step, calls
    over source sentences of different lengths batched padded): the same model, parameters,
    code and numbers."""

    attend = dn.fused(UserAttention.attend)


# -------------------------------------------------------------------------------------------------
# workloads


@dataclass
class Workload:
    name: str
    description: str
    examples: list
    dynlp: DynlpModel
    peers: dict[str, Any]  # label -> an object with step(batch)
    words: Callable[[Any], int]  # words (or tree nodes) in an example


def _sizes(tiny: bool, **full: int) -> dict[str, int]:
    return {k: (min(v, 8) if tiny else v) for k, v in full.items()}


def make_workload(name: str, data: dict, torch_peers: Any, tiny: bool = False,
                  dynet_peers: Any = None, seed: int = 0, dynet_builds: Sequence[str] = ("wheel",),
                  dynet_native: Path | None = None, dynet_mem: int | None = None) -> Workload:
    """One of WORKLOADS over the loaded data (and its torch peers when torch_peers is given, its
    DyNet peers, child processes to close, when dynet_peers is given and it is a paper or user
    one: a user one runs against each of dynet_builds, "wheel" and "native", the native one
    from dynet_native, with DyNet's arena dynet_mem MB or the workload's best)."""
    if name in ("tagger", "tagger-paper"):
        d: TaggedData = data["sentences"]
        if name == "tagger":
            s = _sizes(tiny, word_dim=128, layers=2, hidden=128, mlp_dim=128)
        else:
            s = _sizes(tiny, word_dim=128, layers=1, hidden=50, mlp_dim=32)
        what = (f"embeddings {s['word_dim']}, BiLSTM {s['layers']} layer(s) x {s['hidden']} "
                f"per direction, MLP {s['mlp_dim']} (tanh)")
        model = Tagger(d.words, d.tags, **s)
        peers = {}
        if torch_peers is not None:
            peers = {"torch per-sentence": torch_peers.Tagger(d.words, d.tags, padded=False, **s),
                     "torch padded nn.LSTM": torch_peers.Tagger(d.words, d.tags, padded=True,
                                                                **s)}
        if dynet_peers is not None and name == "tagger-paper":
            peers.update(dynet_peers.make_peers(name, d.words, d.tags, seed, tiny))
        return Workload(name, f"BiLSTM tagger: {what}, softmax loss per word; {d.source}",
                        d.sentences, model, peers, lambda x: len(x[0]))
    if name in ("treelstm", "treelstm-paper"):
        t: TreeData = data["trees"]
        if name == "treelstm":
            s = _sizes(tiny, word_dim=300, hidden=150)
        else:
            s = _sizes(tiny, word_dim=128, hidden=128)
        model = TreeTagger(t.words, **s)
        peers = {}
        if torch_peers is not None:
            peers = {"torch per-tree": torch_peers.TreeLSTM(t.words, **s)}
        if dynet_peers is not None and name == "treelstm-paper":
            peers.update(dynet_peers.make_peers(name, t.words, 0, seed, tiny))
        return Workload(name, f"binary Tree-LSTM: embeddings {s['word_dim']}, hidden "
                        f"{s['hidden']}, softmax loss over 5 labels at every node; {t.source}",
                        t.trees, model, peers, lambda x: len(x[0]))
    if name == "parser":
        p: ParseData = data["parse"]
        s = _sizes(tiny, word_dim=100, tag_dim=25, layers=2, lstm_dim=250, mlp_dim=100)
        if tiny:
            s["lstm_dim"] = 8
        model = Parser(p.words, p.tags, p.labels, **s)
        peers = {}
        if torch_peers is not None:
            peers = {"torch per-sentence": torch_peers.Parser(p.words, p.tags, p.labels, **s)}
        return Workload(name, f"arc-hybrid parser: words {s['word_dim']} + UPOS {s['tag_dim']}, "
                        f"BiLSTM {s['layers']} layers x {s['lstm_dim'] // 2} per direction, "
                        f"MLP {s['mlp_dim']} over [s0; s1; s2; b0] -> {1 + 2 * p.labels} "
                        f"transitions, static oracle, lockstep g.forward per step; {p.source}",
                        p.sentences, model, peers, lambda x: len(x[0]))
    if name in USER_WORKLOADS:
        return make_user_workload(name, data, tiny, dynet_peers, seed, dynet_builds,
                                  dynet_native, dynet_mem)
    raise ValueError(f"unknown workload {name!r}; use some of {', '.join(WORKLOADS)}")


def unk_rare_words(d: TaggedData, min_count: int = 6) -> tuple[list[tuple[list[int], list[int]]],
                                                                 int]:
    """bilstm-tagger.py's vocabulary: words seen fewer than min_count times become UNK (id 0)."""
    counts = Counter(w for words, _ in d.sentences for w in words)
    ids: dict[int, int] = {}
    out = []
    for words, tags in d.sentences:
        out.append(([ids.setdefault(w, len(ids) + 1) if counts[w] >= min_count else 0
                     for w in words], tags))
    return out, len(ids) + 1


def lm_sentences(d: TaggedData, vocab: int) -> list[list[int]]:
    """Word ids of the vocab - 2 most frequent words (1 UNK, 0 "<s>"), each sentence ending in
    "<s>" as rnnlm-batch.py reads its corpus."""
    counts = Counter(w for words, _ in d.sentences for w in words)
    ids = {w: k + 2 for k, (w, _) in enumerate(counts.most_common(vocab - 2))}
    return [[ids.get(w, 1) for w in words] + [0] for words, _ in d.sentences]


def make_user_workload(name: str, data: dict, tiny: bool, dynet_peers: Any, seed: int,
                       dynet_builds: Sequence[str] = ("wheel",), dynet_native: Path | None = None,
                       dynet_mem: int | None = None) -> Workload:
    """One of USER_WORKLOADS; its DyNet twins (one child process per DyNet build) when
    dynet_peers is given."""
    sizes = _sizes(tiny, **USER_SIZES[name])
    if name in ("treenn-user", "treenn-cells"):
        t: TreeData = data["trees"]
        examples, words, tags = t.trees, t.words, 5
        model: DynlpModel = (UserTreeNN if name == "treenn-user" else UserTreeNNFused)(
            words, **sizes)
        what = (f"dynet-py/treenn.py: binary Tree-LSTM, embeddings {sizes['word_dim']}, hidden "
                f"{sizes['hidden']}, softmax loss over 5 labels at every node; {t.source}")
        if name == "treenn-cells":
            what += "; its two cells as functions under @dn.fused (DyNet: treenn-user's twin)"
    elif name == "rnnlm-user":
        d: TaggedData = data["sentences"]
        words = min(d.words + 2, sizes.pop("vocab"))
        examples, tags = lm_sentences(d, words), 0
        model = UserRNNLM(words, **sizes)
        what = (f"dynet-py/rnnlm-batch.py one sentence at a time: LSTM {sizes['embed']} -> "
                f"{sizes['hidden']}, softmax over {words} words at every word and the closing <s>; "
                f"{d.source}")
    else:
        d = data["sentences"]
        examples, words = unk_rare_words(d, 1 if tiny else 6)
        tags = d.tags
        if name == "tagger-user":
            model = UserTagger(words, tags, **sizes)
            what = (f"dynet-py/bilstm-tagger.py: embeddings {sizes['word_dim']}, BiLSTM "
                    f"{sizes['hidden']} per direction, MLP {sizes['mlp_dim']} (tanh, no biases), "
                    f"softmax loss per word; words seen < 6 times -> UNK; {d.source}")
        else:
            model = (UserAttention if name == "attention-user" else UserAttentionFused)(
                words, tags, **sizes)
            what = (f"attention encoder-decoder, words -> UPOS sequence + </s>: embeddings "
                    f"{sizes['word_dim']}, BiLSTM {sizes['hidden']} per direction, MLP attention "
                    f"{sizes['attention']}, LSTM decoder {2 * sizes['hidden']} fed [context; "
                    f"tag embedding {sizes['tag_dim']}]; {d.source}")
            if name == "attention-cells":
                what += "; its attention under @dn.fused (DyNet: attention-user's twin)"
    peers = {}
    if dynet_peers is not None:
        peers = dynet_peers.make_user_peers(_PEER_OF.get(name, name), words, tags, sizes, seed,
                                            dynet_builds, dynet_native, dynet_mem, tiny)
    return Workload(name, what, examples, model, peers,
                    (lambda x: len(x[0])) if name != "rnnlm-user" else len)


def load_data(names: Sequence[str], data_dir: Path | None, rng: np.random.Generator,
              tiny: bool = False) -> dict:
    """Only what the named workloads need."""
    count = 40 if tiny else 2000
    if tiny:
        data_dir = None
    data: dict[str, Any] = {}
    if any(n.startswith(("tagger", "rnnlm", "attention")) or n == "parser" for n in names):
        data["sentences"] = load_sentences(data_dir, False, rng, count)
    if "parser" in names:
        data["parse"] = parse_data(load_sentences(data_dir, True, rng, count)
                                   if data_dir is not None else data["sentences"])
    if any(n.startswith(("treelstm", "treenn")) for n in names):
        data["trees"] = load_trees(data_dir, rng, count)
    return data


# -------------------------------------------------------------------------------------------------
# measuring


@dataclass
class Row:
    """One variant at one batch size: the timed runs, then the derived figures."""

    batch_size: int
    variant: str
    rates: list[float] = field(default_factory=list)       # sentences per second, one per run
    cpu_rates: list[float] = field(default_factory=list)   # sentences per CPU second
    node_rates: list[float] = field(default_factory=list)  # graph nodes per second
    nodes_per_sentence: float = 0.0
    peak_mb: float | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    @property
    def cpu_rate(self) -> float:
        return statistics.median(self.cpu_rates) if self.cpu_rates else float("nan")

    @property
    def node_rate(self) -> float:
        return statistics.median(self.node_rates) if self.node_rates else float("nan")


def run_variant(workload: Workload, variant: str, batches: list[list]
                ) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of this process (all its threads) and graph nodes for training
    on the given minibatches with one variant."""
    peer = workload.peers.get(variant)
    gc.collect()
    if hasattr(peer, "timed_run"):  # a child process (DyNet): it times itself
        return peer.timed_run(batches)
    nodes = 0
    cpu = time.process_time()
    start = time.perf_counter()
    if peer is not None:
        for batch in batches:
            peer.step(batch)
    else:
        autobatch = STRATEGIES[variant]
        step = workload.dynlp.step
        for batch in batches:
            nodes += step(batch, autobatch)
    return time.perf_counter() - start, time.process_time() - cpu, nodes


def peak_memory(workload: Workload, variant: str, batch: list) -> float | None:
    """Peak traced bytes (MB) above the starting level during one training step; None for
    torch, whose allocator tracemalloc does not see."""
    if variant in workload.peers:
        return None
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        workload.dynlp.step(batch, STRATEGIES[variant])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2 ** 20


def measure(workload: Workload, batch_sizes: Sequence[int], strategies: Sequence[str],
            steps: int | None, repeats: int, sentences: int, memory: bool,
            rng: np.random.Generator, log: Callable[[str], None] = print) -> list[Row]:
    """Interleaved timed runs of every variant at every batch size; medians over repeats."""
    variants = list(strategies) + list(workload.peers)
    rows = {(b, v): Row(b, v) for b in batch_sizes for v in variants}
    examples = workload.examples

    def draw(b: int) -> list[list]:
        count = steps if steps else max(1, math.ceil(sentences / b))
        return [[examples[i] for i in rng.integers(0, len(examples), b)] for _ in range(count)]

    for b in batch_sizes:  # warm up: first steps allocate optimizer state and caches
        for v in variants:
            run_variant(workload, v, draw(b)[:1])
    for repeat in range(repeats):
        for b in batch_sizes:
            batches = draw(b)
            count = sum(len(batch) for batch in batches)
            shift = repeat % len(variants)
            for v in variants[shift:] + variants[:shift]:
                seconds, cpu, nodes = run_variant(workload, v, batches)
                row = rows[b, v]
                row.rates.append(count / seconds)
                row.cpu_rates.append(count / max(cpu, 1e-9))
                if nodes:
                    row.node_rates.append(nodes / seconds)
                    row.nodes_per_sentence = nodes / count
        log(f"  {workload.name}: repeat {repeat + 1}/{repeats} done")
    if memory:
        for b in batch_sizes:
            batch = draw(b)[0]
            for v in variants:
                rows[b, v].peak_mb = peak_memory(workload, v, batch)
    return list(rows.values())


# -------------------------------------------------------------------------------------------------
# reporting


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}x" if y > 0 and not math.isnan(x / y) else "-"


def _spread(ratios: list[float]) -> str:
    return (f"median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-"
            f"{max(ratios):.2f}x over {len(ratios)} rounds")


def round_ratios(by: dict, batch_sizes: Sequence[int], ours: Sequence[str],
                 peers: Sequence[str]) -> list[str]:
    """dynlp / each peer, and the later peers / the first, round by round (the variants of a
    round run back to back, so each ratio compares runs under the same machine load): median and
    range of the per-round ratios, wall and CPU."""
    lines = []
    pairs = [(s, p) for p in peers for s in ours] + [(p, peers[0]) for p in peers[1:]]
    for b in batch_sizes:
        for mine, theirs in pairs:
            x, y = by[b, mine], by[b, theirs]
            wall = [u / v for u, v in zip(x.rates, y.rates)]
            cpu = [u / v for u, v in zip(x.cpu_rates, y.cpu_rates)]
            if wall:
                lines.append(f"  batch {b}: {mine} / {theirs}, round by round: wall "
                             f"{_spread(wall)}; cpu {_spread(cpu)}")
    return lines


def report(workload: Workload, rows: list[Row], strategies: Sequence[str]) -> list[str]:
    """The table of one workload, its ratios to torch, references and targets, as lines.

    Wall-clock rates are what a user waits for; rates per CPU second of this process count only
    the time it was actually running, which stays readable on a busy shared machine."""
    header = (f"{'batch':>5}  {'variant':26} {'sent/s':>8} {'min-max':>11} {'vs off':>7} "
              f"{'sent/cpu-s':>10} {'vs off':>7} {'knodes/s':>8} {'nodes/sent':>10} "
              f"{'peak MB':>8}")
    lines = [f"== {workload.name}: {workload.description}", header]
    by = {(r.batch_size, r.variant): r for r in rows}
    batch_sizes = sorted({r.batch_size for r in rows})
    for b in batch_sizes:
        off = by.get((b, "off"))
        for r in (r for r in rows if r.batch_size == b):
            ours = off is not None and r.variant in STRATEGIES
            spread = f"{min(r.rates):.0f}-{max(r.rates):.0f}" if r.rates else "-"
            lines.append(
                f"{b:5d}  {r.variant:26} {r.rate:8.1f} {spread:>11} "
                f"{_ratio(r.rate, off.rate) if ours else '-':>7} {r.cpu_rate:10.1f} "
                f"{_ratio(r.cpu_rate, off.cpu_rate) if ours else '-':>7} "
                f"{_fmt(r.node_rate / 1e3 if r.node_rates else None, '8.1f')} "
                f"{_fmt(r.nodes_per_sentence or None, '10.1f')} {_fmt(r.peak_mb, '8.1f')}")
    ours = [s for s in ("late", "late-unfused", "late-unpadded", "late-regions", "agenda")
            if s in strategies]
    for b in batch_sizes:
        for peer in workload.peers:
            theirs = by[b, peer]
            parts = [f"{s} {_ratio(by[b, s].rate, theirs.rate)} wall, "
                     f"{_ratio(by[b, s].cpu_rate, theirs.cpu_rate)} cpu" for s in ours]
            if parts:
                lines.append(f"  batch {b}: dynlp / {peer} (same run): {'; '.join(parts)}")
    if workload.name in USER_WORKLOADS:
        lines += round_ratios(by, batch_sizes, ours, list(workload.peers))
    dynet_on = by.get((max(batch_sizes), "DyNet autobatch"))
    dynet_off = by.get((max(batch_sizes), "DyNet off, 1 per graph"))
    if dynet_on is not None and dynet_off is not None:
        lines.append(f"  batch {dynet_on.batch_size}: DyNet autobatch vs DyNet off (1 per graph) "
                     f"{_ratio(dynet_on.rate, dynet_off.rate)} wall, "
                     f"{_ratio(dynet_on.cpu_rate, dynet_off.cpu_rate)} cpu")
        for s in ours:
            r = by[dynet_on.batch_size, s]
            met = r.rate >= DYNET_GOAL * dynet_on.rate
            lines.append(f"  batch {dynet_on.batch_size}: {s} / DyNet autobatch "
                         f"{_ratio(r.rate, dynet_on.rate)} wall, "
                         f"{_ratio(r.cpu_rate, dynet_on.cpu_rate)} cpu "
                         f"(goal >= {DYNET_GOAL:g}x: {'met' if met else 'missed'})")
    for label, value in REFERENCES.get(workload.name, ()):
        lines.append(f"  reference, measured elsewhere (not this run): {label}: {value} sent/s")
    big = max(batch_sizes)
    if big >= 64 and "off" in strategies and ours:
        best = max(ours, key=lambda s: by[big, s].rate)
        wall = by[big, best].rate / by[big, "off"].rate
        cpu = by[big, best].cpu_rate / by[big, "off"].cpu_rate
        target = TARGET_SPEEDUPS.get(workload.name)
        verdict = "" if target is None else (
            f" (target >= {target:g}x: {'met' if wall >= target else 'missed'})")
        lines.append(f"  batch {big}: {best} vs off {wall:.1f}x wall{verdict}, {cpu:.1f}x cpu")
        goal = TARGET_RATES.get(workload.name)
        if goal is not None:
            rate = by[big, best].rate
            lines.append(f"  batch {big}: {best} {rate:.0f} sent/s wall, "
                         f"{by[big, best].cpu_rate:.0f} per cpu-s (goal ~{goal:.0f}: "
                         f"{'met' if rate >= 0.95 * goal else 'missed'})")
    return lines


# -------------------------------------------------------------------------------------------------
# entry point


def load_torch_peers() -> Any:
    """scripts/torch_peers.py when torch imports, else None (runs with runpy need the path)."""
    if importlib.util.find_spec("torch") is None:
        return None
    spec = importlib.util.spec_from_file_location("torch_peers", SCRIPTS / "torch_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_dynet_peers() -> Any:
    """scripts/dynet_peers.py when `import dynet` works in a child process, else None."""
    spec = importlib.util.spec_from_file_location("dynet_peers", SCRIPTS / "dynet_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module if module.dynet_imports() else None


def source_version() -> str:
    """The checkout's commit, marked dirty when the engine or ops differ from it."""
    try:
        def run(*words: str) -> str:
            return subprocess.run(["git", *words], cwd=SCRIPTS.parent, capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        commit = run("rev-parse", "--short", "HEAD")
        dirty = run("status", "--porcelain", "--", "dynlp")
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"commit {commit}{' + uncommitted dynlp changes' if dirty else ''}"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from "
                                             f"{','.join(choices)}")
        return names
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_autobatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", type=_name_list(WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated, from %(default)s")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 16, 64],
                        help="sentences per update (default 1,16,64)")
    parser.add_argument("--strategies", type=_name_list(tuple(STRATEGIES)),
                        default=list(STRATEGIES), help="autobatch settings (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="minibatches per timed run (default: enough for --sentences)")
    parser.add_argument("--sentences", type=int, default=None,
                        help="sentences per timed run when --steps is not given "
                             "(default 96; 32 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved runs of every variant; medians are reported "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: fewer sentences "
                        "and repeats, no memory pass")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "DYNLP_DATA_MIRROR", DEFAULT_DATA)), help="the data mirror holding ud_english_ewt/ "
        "and sst/ (default %(default)s); generated data when they are missing")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the PyTorch peers when torch imports (default on)")
    parser.add_argument("--dynet", action=argparse.BooleanOptionalAction, default=True,
                        help="also run DyNet 2.1 on the paper workloads, autobatch on and off, "
                             "each in a child process, when dynet imports (default on)")
    parser.add_argument("--dynet-builds", type=_name_list(("wheel", "native")),
                        default=["wheel", "native"],
                        help="the DyNet builds the -user workloads run against, each in its own "
                             "child process: the dyNET38 wheel and DyNet built from source for "
                             "this CPU (docs/DYNET_PEER.md); one that does not import is left "
                             "out (default %(default)s)")
    parser.add_argument("--dynet-native", type=Path, default=None,
                        help="the native build's directory (with python/ and dynet/; default "
                             "$DYNET_NATIVE_BUILD or /tmp/dynet_src/dyNET-2.1.2/build/"
                             "py3.11-64bit)")
    parser.add_argument("--dynet-mem", type=int, default=None,
                        help="DyNet's arena in MB for the -user workloads (default: the "
                             "fastest measured per workload, dynet_peers.USER_MEM)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="OPENBLAS_NUM_THREADS for numpy, set by re-running this script "
                             "(default %(default)s, as DyNet's CPU default; 0 keeps the "
                             "environment's setting, or dynlp's one thread when it is unset)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch.set_num_threads for the peers (default %(default)s)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                        help="peak memory under tracemalloc in a separate pass (default on, "
                             "off with --quick)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models on generated data: a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    wanted = str(args.blas_threads)
    if args.blas_threads > 0 and BLAS_THREADS_AT_LOAD != wanted:
        # numpy reads the variable when it loads: run again in a process that has it from start
        env = {**os.environ, "OPENBLAS_NUM_THREADS": wanted}
        return subprocess.run([sys.executable, str(SCRIPTS / "bench_autobatch.py"), *argv],
                              env=env, check=False).returncode
    repeats = args.repeats or (1 if args.quick else 3)
    sentences = args.sentences or (32 if args.quick else 96)
    memory = (not args.quick) if args.memory is None else args.memory
    rng = np.random.default_rng(args.seed)
    torch_peers = load_torch_peers() if args.torch else None
    if torch_peers is not None:
        torch_peers.setup(args.seed, args.torch_threads)
    torch_text = (f"torch {torch_peers.version()} ({args.torch_threads} threads)"
                  if torch_peers else "torch not run")
    dynet_peers = (load_dynet_peers() if args.dynet and any(n.endswith(("-paper", "-user"))
                                                            for n in args.workloads) else None)
    torch_text += ", DyNet 2.1 run" if dynet_peers else ", DyNet not run"
    builds = []
    if dynet_peers is not None and any(n in USER_WORKLOADS for n in args.workloads):
        builds = [b for b in args.dynet_builds
                  if b == "wheel" or dynet_peers.dynet_imports(build=b, native=args.dynet_native)]
        missing = [b for b in args.dynet_builds if b not in builds]
        native = args.dynet_native or dynet_peers.NATIVE_BUILD
        torch_text += (f" (user workloads: DyNet builds {','.join(builds) or 'none'}"
                       f"{'; native from ' + str(native) if 'native' in builds else ''}"
                       f"{'; not importable: ' + ','.join(missing) if missing else ''}; arena "
                       f"{args.dynet_mem or 'per workload'} MB)")
    per_run = f"{args.steps} steps" if args.steps else f"{sentences} sentences"
    print(f"dynlp {dn.__version__} ({source_version()}), numpy {np.__version__} "
          f"(OPENBLAS_NUM_THREADS {BLAS_THREADS_AT_LOAD} when it loaded; OpenBLAS threads "
          f"{dn.blas_threads() or 'unknown'} now), "
          f"python {sys.version.split()[0]}, {torch_text}; {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f} at start; repeats {repeats}, {per_run} per timed run")
    start = time.perf_counter()
    data = load_data(args.workloads, args.data, rng, args.tiny)
    print(f"data loaded in {time.perf_counter() - start:.1f}s", flush=True)
    results = {}
    for name in args.workloads:
        workload = make_workload(name, data, torch_peers, args.tiny, dynet_peers, args.seed,
                                 builds, args.dynet_native, args.dynet_mem)
        try:
            rows = measure(workload, args.batch_sizes, args.strategies, args.steps, repeats,
                           sentences, memory, rng, log=lambda m: print(m, file=sys.stderr,
                                                                       flush=True))
        finally:
            for peer in workload.peers.values():
                if hasattr(peer, "close"):
                    peer.close()
        print("\n".join(report(workload, rows, args.strategies)), flush=True)
        results[name] = {"description": workload.description,
                         "rows": [{"batch_size": r.batch_size, "variant": r.variant,
                                   "sentences_per_second": r.rate, "runs": r.rates,
                                   "sentences_per_cpu_second": r.cpu_rate,
                                   "cpu_runs": r.cpu_rates,
                                   "nodes_per_second": r.node_rate if r.node_rates else None,
                                   "nodes_per_sentence": r.nodes_per_sentence or None,
                                   "peak_mb": r.peak_mb} for r in rows]}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
