"""The benchmark workloads of scripts/bench_autobatch.py written as a competent eager PyTorch user
would: per-sentence and padded (packed) nn.LSTM taggers, a node-by-node binary Tree-LSTM and a
per-sentence arc-hybrid parser; sparse embeddings with SparseAdam, Adam for the rest, two threads.
Imported by the benchmark only when torch imports; imports nothing of dynlp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence


def setup(seed: int, threads: int = 2) -> None:
    """Intra-op threads (two: the machine has two cores) and a fixed seed."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def version() -> str:
    return torch.__version__


class Peer(nn.Module):
    """One training step per minibatch: summed example losses, backward, SparseAdam on the
    embeddings (sparse gradients) and Adam on every other parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: list[torch.optim.Optimizer] | None = None
        self.cache: dict[int, Any] = {}

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        sparse = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        ids = {id(p) for p in sparse}
        dense = [p for p in self.parameters() if id(p) not in ids]
        return [torch.optim.SparseAdam(sparse, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]

    def tensors(self, example: Any) -> Any:
        """Index tensors of an example, made once (as a data loader would)."""
        key = id(example)
        made = self.cache.get(key)
        if made is None:
            made = self.cache[key] = self.prepare(example)
        return made

    def prepare(self, example: Any) -> Any:
        raise NotImplementedError

    def batch_loss(self, batch: list) -> torch.Tensor:
        return torch.stack([self.loss(example) for example in batch]).sum()

    def loss(self, example: Any) -> torch.Tensor:
        raise NotImplementedError

    def step(self, batch: list) -> None:
        if self.optimizers is None:
            self.optimizers = self._make_optimizers()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        total = self.batch_loss(batch)
        total.backward()
        total.item()
        for optimizer in self.optimizers:
            optimizer.step()


class Tagger(Peer):
    """Embeddings -> bidirectional nn.LSTM -> MLP -> cross-entropy per word. padded=False runs
    one sentence at a time; padded=True packs the minibatch into one nn.LSTM call."""

    def __init__(self, words: int, tags: int, word_dim: int, layers: int, hidden: int,
                 mlp_dim: int, padded: bool) -> None:
        super().__init__()
        self.padded = padded
        self.embed = nn.Embedding(words, word_dim, sparse=True)
        self.lstm = nn.LSTM(word_dim, hidden, num_layers=layers, bidirectional=True,
                            batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, mlp_dim), nn.Tanh(),
                                 nn.Linear(mlp_dim, tags))

    def prepare(self, example):
        words, tags = example
        return torch.tensor(words), torch.tensor(tags)

    def loss(self, example):
        words, tags = self.tensors(example)
        states, _ = self.lstm(self.embed(words)[None])
        return F.cross_entropy(self.mlp(states[0]), tags, reduction="sum")

    def batch_loss(self, batch):
        if not self.padded:
            return super().batch_loss(batch)
        pairs = [self.tensors(example) for example in batch]
        lengths = torch.tensor([len(words) for words, _ in pairs])
        words = pad_sequence([w for w, _ in pairs], batch_first=True)
        tags = pad_sequence([t for _, t in pairs], batch_first=True, padding_value=-100)
        packed = pack_padded_sequence(self.embed(words), lengths, batch_first=True,
                                      enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        scores = self.mlp(states)
        return F.cross_entropy(scores.reshape(-1, scores.shape[-1]),
                               tags[:, :scores.shape[1]].reshape(-1), reduction="sum")


class TreeLSTM(Peer):
    """Binary Tree-LSTM, one node at a time in post-order: gates [i; f_left; f_right; o; u] from
    W_x x at a leaf and from U [h_left; h_right] inside; a 5-label loss at every node."""

    def __init__(self, words: int, word_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(words, word_dim, sparse=True)
        self.leaf_gates = nn.Linear(word_dim, 5 * hidden)
        self.node_gates = nn.Linear(2 * hidden, 5 * hidden)
        self.output = nn.Linear(hidden, 5)

    def prepare(self, example):
        word_ids, labels = example[0], example[3]
        leaves = [w for w in word_ids if w >= 0]
        return torch.tensor(leaves), torch.tensor(labels)

    def loss(self, example):
        word_ids, left, right, _ = example
        leaves, labels = self.tensors(example)
        xs = self.embed(leaves)
        hidden = self.hidden
        cs: list[torch.Tensor] = []
        hs: list[torch.Tensor] = []
        k = 0
        for word, a, b in zip(word_ids, left, right):
            if word >= 0:
                i, _, _, o, u = self.leaf_gates(xs[k]).split(hidden)
                k += 1
                c = torch.sigmoid(i) * torch.tanh(u)
            else:
                i, fl, fr, o, u = self.node_gates(torch.cat([hs[a], hs[b]])).split(hidden)
                c = (torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * cs[a]
                     + torch.sigmoid(fr) * cs[b])
            cs.append(c)
            hs.append(torch.sigmoid(o) * torch.tanh(c))
        return F.cross_entropy(self.output(torch.stack(hs)), labels, reduction="sum")


class Parser(Peer):
    """Word and UPOS embeddings -> nn.LSTM -> per transition an MLP over [s0; s1; s2; b0]; each
    step's scores are read (.item()) to pick the best legal action before the next step, as the
    dynlp version does; the static oracle's gold action is followed."""

    def __init__(self, words: int, tags: int, labels: int, word_dim: int, tag_dim: int,
                 layers: int, lstm_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.words = nn.Embedding(words, word_dim, sparse=True)
        self.tags = nn.Embedding(tags, tag_dim, sparse=True)
        self.lstm = nn.LSTM(word_dim + tag_dim, lstm_dim // 2, num_layers=layers,
                            bidirectional=True)
        self.root = nn.Parameter(torch.randn(lstm_dim) * 0.1)
        self.empty = nn.Parameter(torch.randn(lstm_dim) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(4 * lstm_dim, mlp_dim), nn.Tanh(),
                                 nn.Linear(mlp_dim, 1 + 2 * labels))
        masks = []
        for bits in range(8):
            mask = torch.empty(1 + 2 * labels, dtype=torch.bool)
            mask[0] = bool(bits & 1)
            mask[1:1 + labels] = bool(bits & 2)
            mask[1 + labels:] = bool(bits & 4)
            masks.append(mask)
        self.masks = masks
        self.agreements = 0

    def prepare(self, example):
        words, tags, derivation = example
        # table rows: 0 ROOT, 1..n the words, n + 1 (also -1) the empty slot
        positions = [torch.tensor(f) % (len(words) + 2) for f in derivation.features]
        return (torch.tensor(words), torch.tensor(tags), positions,
                torch.tensor(derivation.actions))

    def loss(self, example):
        derivation = example[2]
        words, tags, positions, actions = self.tensors(example)
        x = torch.cat([self.words(words), self.tags(tags)], dim=1)
        states, _ = self.lstm(x)
        table = torch.cat([self.root[None], states, self.empty[None]])
        scores = []
        for step, rows in enumerate(positions):
            score = self.mlp(table[rows].reshape(-1))
            with torch.no_grad():
                mask = self.masks[derivation.legal[step]]
                best = int(score.masked_fill(~mask, -np.inf).argmax())
            self.agreements += best == derivation.actions[step]
            scores.append(score)
        return F.cross_entropy(torch.stack(scores), actions, reduction="sum")
