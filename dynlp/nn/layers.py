"""Feed-forward building blocks: `MLP` (one node for all its layers, with or without dropout, or,
without dropout, for the layers and their cross-entropy), `Embedding` (a lookup table with
sparse gradients) and `CharacterEncoder` (a character BiLSTM word encoder, Plank et al. 2016).
Builds on dynlp's functions, params and the recurrent builders; must not import dynlp.data or
recipes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .. import functions as F
from ..graph import Deferred, Expression, Row, Slice
from ..ops import TABLE
from ..params import LookupParameter, Parameter, ParameterCollection
from .rnn import LSTMBuilder, check_dims, check_rate, unique_subcollection

_AFFINE = TABLE["affine_transform"]
_PICK_NEG_LOG_SOFTMAX = TABLE["pick_neg_log_softmax"]
_DROPOUT = TABLE["dropout"]
_LAST_LOSS_SUM = TABLE["mlp_loss_sum_1"]

ACTIVATIONS: dict[str, Callable[[Any], Expression]] = {
    "tanh": F.tanh, "relu": F.rectify, "rectify": F.rectify, "sigmoid": F.logistic,
    "logistic": F.logistic, "elu": F.elu, "selu": F.selu, "softplus": F.softplus,
}


class MLP:
    """dims = [input, hidden ..., output]: affine layers with `activation` between them and
    dropout on the hidden layers while training; the last layer is linear. `mlp(x)` -> (output,);
    `mlp.pick_neg_log_softmax(x, label)` -> () is the cross-entropy of those scores. With an
    activation the ops fuse (tanh, rectify, logistic), each is one graph node: `mlp` (or
    `mlp_dropout` while training with dropout, the masks drawn when the node is made, as the
    chain of nodes would draw them), `mlp_pick_neg_log_softmax` (with dropout: an `mlp_dropout`
    node and a `pick_neg_log_softmax` node); `dn.esum` of one MLP's losses is one node (under
    dropout, the terms' hidden layers as nodes and one node; see `LossTerm`). A Slice input (a
    BiLSTM output, a Tree-LSTM `h()`) is read in place and has no gradient of its own.
    """

    _SCORES = TABLE["mlp"]
    _LOSS = TABLE["mlp_pick_neg_log_softmax"]
    _SCORES_DROPOUT = TABLE["mlp_dropout"]  # the scores with dropout after the hidden layers

    def __init__(self, pc: ParameterCollection, dims: Sequence[int], activation: str = "tanh",
                 dropout: float = 0.0, name: str = "mlp") -> None:
        if len(dims) < 2:
            raise ValueError(f"MLP: dims needs an input and an output size, got {list(dims)}")
        check_dims(**{f"dims[{k}]": d for k, d in enumerate(dims)})
        self._configure([int(d) for d in dims], activation, dropout)
        self.pc = unique_subcollection(pc, name)
        self.layers: list[tuple[Parameter, Parameter]] = []
        for k, (fan_in, fan_out) in enumerate(zip(self.dims, self.dims[1:])):
            self.layers.append((self.pc.add_parameters((fan_out, fan_in), name=f"W{k}"),
                                self.pc.add_parameters((fan_out,), init="zeros", name=f"b{k}")))
        self._finish()

    @classmethod
    def from_parameters(cls, layers: Sequence[tuple[Parameter, Parameter]],
                        activation: str = "tanh", dropout: float = 0.0) -> "MLP":
        """An MLP over parameters that exist already: `layers` = [(W, b), ...], W (out, in)
        and b (out,), each layer's out the next one's in. A model that keeps its own weights
        (and their names in its files) gets the one-node forms this way."""
        layers = [(W, b) for W, b in layers]
        if not layers:
            raise ValueError("MLP.from_parameters: no layers")
        dims = [layers[0][0].shape[-1]]
        for k, (W, b) in enumerate(layers):
            if len(W.shape) != 2 or W.shape[1] != dims[-1] or b.shape != (W.shape[0],):
                raise ValueError(f"MLP.from_parameters: layer {k} has W {W.shape} and b "
                                 f"{b.shape}; expected W (out, {dims[-1]}) and b (out,)")
            dims.append(W.shape[0])
        mlp = cls.__new__(cls)
        mlp._configure(dims, activation, dropout)
        mlp.pc = None
        mlp.layers = layers
        mlp._finish()
        return mlp

    def _configure(self, dims: list[int], activation: str, dropout: float) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; use one of "
                             f"{sorted(ACTIVATIONS)}")
        self.dims = dims
        self.activation = ACTIVATIONS[activation]
        # activations the affine node applies itself: one node per hidden layer instead of two
        self.fused = {"tanh": "tanh", "relu": "rectify", "rectify": "rectify",
                      "sigmoid": "logistic", "logistic": "logistic"}.get(activation)
        self.dropout = check_rate(dropout)
        # the static attributes of the one-node ops: a single layer has no hidden activation
        self._node_attrs = (("activation", self.fused),) if (
            self.fused is not None and len(self.dims) > 2) else ()

    def parameters(self) -> list[Parameter]:
        """The weights and biases of every layer: [W0, b0, W1, b1, ...]."""
        return [p for layer in self.layers for p in layer]

    def _finish(self) -> None:
        self._params = tuple(p for layer in self.layers for p in layer)
        # one node for the whole MLP: an activation the ops fuse, or a single (linear) layer
        self._single_node = self.fused is not None or len(self.layers) == 1
        # and the op that sums many of its losses in one node, if there is one for its depth
        self._loss_sum = TABLE.get(f"mlp_loss_sum_{len(self.layers)}") if (
            self._single_node) else None
        self._input_shape = (self.dims[0],)
        self._hidden_size = sum(self.dims[1:-1])  # the units that dropout masks

    def __call__(self, x: Any) -> Expression:
        if len(self.layers) > 1 or type(x) is Slice:  # (one layer over a vector: affine below)
            node = self._one_node(self._SCORES, x)
            if node is not None:
                return node
        if isinstance(x, Deferred):
            x = x.plain()
        if type(x) is Expression and len(self.layers) == 1:
            g = x._live()
            if self.dropout == 0.0 or not g.training:
                W, b = self.layers[0]
                return g.add(_AFFINE, (g.param_node(b), g.param_node(W), x.i))
        last = len(self.layers) - 1
        for k, (W, b) in enumerate(self.layers):
            if k < last and self.fused is not None:
                x = F.affine_transform([b, W, x], activation=self.fused)
            else:
                x = F.affine_transform([b, W, x])
                if k < last:
                    x = self.activation(x)
            if k < last and self.dropout > 0.0:
                x = F.dropout(x, self.dropout)
        return x

    def pick_neg_log_softmax(self, x: Any, label: int) -> Expression:
        """-log softmax(mlp(x))[label] -> (): the layers and the loss as one graph node, with
        the value and gradients of `F.pick_neg_log_softmax(mlp(x), label)` (with dropout while
        training: the `mlp_dropout` node and a `pick_neg_log_softmax` node). An activation the
        node does not fuse (elu, selu, softplus) builds that chain of nodes instead.
        """
        label = int(label)
        if not 0 <= label < self.dims[-1]:
            raise IndexError(f"pick_neg_log_softmax: label {label} out of range for scores of "
                             f"shape {(self.dims[-1],)}")
        if self._loss_sum is not None:
            kind = type(x)
            if kind is Slice and x.width == self.dims[0] or (
                    (kind is Expression or kind is Row) and x.shape == self._input_shape):
                g = x._live()
                return LossTerm(g, self, x, label, self._draw(g))
        node = self._one_node(self._LOSS, x, label)
        if node is not None:
            return node
        return F.pick_neg_log_softmax(self(x), label)

    def _draw(self, g: Any) -> tuple | None:
        """(uniform numbers for the hidden layers' masks, rate) when dropout applies in graph
        g now, drawn now (where the chain of nodes would draw them), else None."""
        if self.dropout == 0.0 or not g.training or not self._hidden_size:
            return None
        return g.uniform((self._hidden_size,)), self.dropout

    def _one_node(self, op: Any, x: Any, label: int | None = None, settled: bool = False,
                  masks: tuple | None = None) -> Expression | None:
        """The node of op (`mlp`, or `mlp_pick_neg_log_softmax` with label) over x and the
        layers; when dropout applies (training), the `mlp_dropout` node (and with label, the
        `pick_neg_log_softmax` node over it); None when x or the
        settings need the chain of nodes (an unfused activation, x not an expression). A Slice
        of the input size is read in place, through windows. The first such node of a graph
        goes through `add`, which checks the shapes; the next ones with inputs of the same
        shapes are made like it (`add_as`). `settled`: the one-node form was chosen already (a
        `LossTerm`, with its `masks` drawn then), whatever the settings are now."""
        kind = type(x)
        if kind is Slice and x.width == self.dims[0]:
            sources, windows = x.sources, x.windows
        elif kind is Expression or isinstance(x, Deferred):
            sources, windows = (x.i,), None
        else:
            return None
        g = x.g
        if not g.alive:
            g._check_alive()
        if not settled:
            if not self._single_node:
                return None
            masks = self._draw(g)
        if windows is not None:
            x._fused = True
        shapes = g.shapes
        attrs = self._attrs(windows)
        if masks is None:
            battrs = None if label is None else g.single(label)
            rate = None
        else:
            if label is not None:  # the scores' dropout node and the loss over them
                scores = self._one_node(self._SCORES, x, settled=True, masks=masks)
                return g.add(_PICK_NEG_LOG_SOFTMAX, (scores.i,), (), g.single(label))
            uniform, rate = masks
            op = self._SCORES_DROPOUT
            attrs += (("rate", rate),)
            battrs = (uniform,)
        key = (op, windows, shapes[sources[0]], shapes[sources[-1]], rate)
        args = sources + g.param_nodes_of(self, self._params)
        like = g.template(self, key)
        if like is not None:
            return g.add_as(like, args, battrs)
        node = g.add(op, args, attrs, battrs)
        g.set_template(self, key, node.i)
        return node

    def _attrs(self, windows: tuple | None) -> tuple:
        """The static attributes of this MLP's one-node ops, reading x through `windows`."""
        return self._node_attrs if windows is None else self._node_attrs + (("windows", windows),)

    def _dropout_loss_sum(self, g: Any, terms: Sequence["LossTerm"],
                          labels: list[int]) -> Expression:
        """The sum of loss terms made under dropout: each term's hidden layers as nodes (an
        `affine_transform` node with the activation, then a `dropout` node over the numbers
        the term drew), and one `mlp_loss_sum_1` node for the last layer and all the losses."""
        params = g.param_nodes_of(self, self._params)
        activation = (("activation", self.fused),)
        rate = (("rate", terms[0].masks[1]),)
        sizes = self.dims[1:-1]
        add = g.add
        hidden = []
        for term in terms:
            term._fused = True
            node = term.x.i
            uniform = term.masks[0]
            at = 0
            for k, size in enumerate(sizes):
                node = add(_AFFINE, (params[2 * k + 1], params[2 * k], node), activation).i
                node = add(_DROPOUT, (node,), rate, (uniform[at:at + size],)).i
                at += size
            hidden.append(node)
        return add(_LAST_LOSS_SUM, params[-2:] + tuple(hidden), (), (tuple(labels),))

    def set_dropout(self, rate: float) -> None:
        self.dropout = check_rate(rate)

    def disable_dropout(self) -> None:
        self.dropout = 0.0


class LossTerm(Deferred):
    """`mlp.pick_neg_log_softmax(x, label)`, deferred: `dn.esum` of the terms of one MLP (the
    losses of a sentence's words, of a tree's nodes) is one `mlp_loss_sum_L` node, and the
    minibatch's terms then run as one batch (for terms made while training with dropout, whose
    masks' numbers they keep: each term's hidden layers and their dropout as nodes, and one
    `mlp_loss_sum_1` node for the last layer and the losses); read any other way (`value()`,
    an op built on it, a sum of mixed terms), a term becomes its own `mlp_pick_neg_log_softmax`
    node (with dropout, an `mlp_dropout` node and a `pick_neg_log_softmax` node)."""

    __slots__ = ("mlp", "x", "label", "masks")

    def __init__(self, g: Any, mlp: MLP, x: Expression, label: int,
                 masks: tuple | None = None) -> None:
        self.g = g
        self.mlp = mlp
        self.x = x
        self.label = label
        self.masks = masks  # (uniform numbers, rate) of the hidden layers' dropout, or None
        self._node = -1
        self._fused = False

    def _materialize(self) -> int:
        return self.mlp._one_node(self.mlp._LOSS, self.x, self.label, settled=True,
                                  masks=self.masks).i

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    def _what(self) -> str:
        return f"a loss term, label {self.label}"

    @staticmethod
    def fuse_sum(terms: Sequence[Any]) -> Expression | None:
        """One node for the sum of terms of one MLP (none made into nodes yet, inputs of one
        shape and windows; under dropout, their hidden layers' nodes and one node), else
        None."""
        first = terms[0]
        mlp, g, x = first.mlp, first.g, first.x
        windows = x.windows if type(x) is Slice else None
        shapes = g.shapes
        shape = shapes[x.sources[0]] if windows is not None else x.shape
        rate = None if first.masks is None else first.masks[1]
        sources: list[int] = []
        labels = []
        for term in terms:
            if type(term) is not LossTerm or term.mlp is not mlp or term.g is not g or (
                    term._node >= 0) or (None if term.masks is None else term.masks[1]) != rate:
                return None
            x = term.x
            if windows is not None:
                if type(x) is not Slice or (x.windows is not windows and x.windows != windows):
                    return None
                for source in x.sources:
                    if shapes[source] != shape:
                        return None
                sources.extend(x.sources)
            else:
                if type(x) is Slice or x.shape != shape:
                    return None
                sources.append(x.i)
            labels.append(term.label)
        g._check_alive()
        if rate is not None:
            return mlp._dropout_loss_sum(g, terms, labels)
        for term in terms:  # read in place: no node, no gradient of their own
            term._fused = True
            if windows is not None:
                term.x._fused = True
        args = g.param_nodes_of(mlp, mlp._params) + tuple(sources)
        return g.add(mlp._loss_sum, args, mlp._attrs(windows), (tuple(labels),))


class Embedding:
    """A (vocab_size, dim) lookup table; `embedding(index)` -> (dim,), with a sparse gradient."""

    def __init__(self, pc: ParameterCollection, vocab_size: int, dim: int,
                 init: Any = "glorot", name: str = "embedding") -> None:
        check_dims(vocab_size=vocab_size, dim=dim)
        self.table: LookupParameter = unique_subcollection(pc, name).add_lookup_parameters(
            (vocab_size, dim), init=init, name="E")

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def __call__(self, index: int) -> Expression:
        return F.lookup(self.table, index)

    def parameters(self) -> list[Parameter]:
        """[the lookup table]"""
        return [self.table]


class CharacterEncoder:
    """A word from its characters: embeddings read by a forward and a backward LSTM of
    hidden_dim / 2 units each; `encoder(char_indices)` -> [forward final h; backward final h]
    (hidden_dim,).
    """

    def __init__(self, pc: ParameterCollection, num_chars: int, char_dim: int, hidden_dim: int,
                 name: str = "chars") -> None:
        check_dims(num_chars=num_chars, char_dim=char_dim, hidden_dim=hidden_dim)
        if hidden_dim % 2:
            raise ValueError(f"CharacterEncoder: hidden_dim must be even, got {hidden_dim}")
        self.pc = unique_subcollection(pc, name)
        self.hidden_dim = int(hidden_dim)
        self.embedding = Embedding(self.pc, num_chars, char_dim)
        self.forward = LSTMBuilder(1, char_dim, hidden_dim // 2, self.pc, name="forward")
        self.backward = LSTMBuilder(1, char_dim, hidden_dim // 2, self.pc, name="backward")

    def parameters(self) -> list[Parameter]:
        """This builder's parameters, in creation order (names under its subcollection)."""
        return list(self.pc.parameters())

    def __call__(self, char_indices: Sequence[int]) -> Expression:
        indices = [int(c) for c in np.asarray(char_indices).reshape(-1)]
        if not indices:
            raise ValueError("CharacterEncoder: a word needs at least one character")
        chars = [self.embedding(c) for c in indices]
        ahead, behind = self.forward.initial_state(), self.backward.initial_state()
        # the final states only: without dropout the steps read their rows in place
        last = (ahead._steps(chars, top_only=True)[-1],
                behind._steps(chars[::-1], top_only=True)[-1])
        start, end = self.forward.hidden_range()
        # [forward h; backward h], deferred: one concatenate_ranges node when read as a node
        return Slice(chars[0].g, last, start, end)

    def set_dropout(self, rate: float, recurrent_rate: float | None = None) -> None:
        self.forward.set_dropout(rate, recurrent_rate)
        self.backward.set_dropout(rate, recurrent_rate)

    def disable_dropout(self) -> None:
        self.forward.disable_dropout()
        self.backward.disable_dropout()
