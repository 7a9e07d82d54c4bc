"""Recurrent builders with DyNet semantics: `LSTMBuilder`, `GRUBuilder`, `SimpleRNNBuilder` (one
fused op node per step and layer), their immutable states, and `BiRNNBuilder`; variational
dropout with one mask per sequence. Builds on dynlp's graph, functions and params; must not
import dynlp.data or recipes.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .. import functions as F
from ..graph import Expression, Graph, Row, Slice, as_node, current_graph
from ..inplace import over_masked, over_row
from ..ops import TABLE
from ..params import Parameter, ParameterCollection


def unique_subcollection(pc: ParameterCollection, name: str) -> ParameterCollection:
    """A subcollection of pc named `name`, or `name_1`, `name_2`, ... if that name is taken."""
    candidate, k = name, 0
    while any(True for _ in pc.add_subcollection(candidate).parameters()):
        k += 1
        candidate = f"{name}_{k}"
    return pc.add_subcollection(candidate)


def graph_of(items: Iterable[Any]) -> Graph:
    """The graph of the first expression among items, else the current graph."""
    for x in items:
        if isinstance(x, Expression):
            return x._live()
    return current_graph()


class ConstantLeaves:
    """Constant vectors of one graph, zeros (or `fill`), one leaf per size, made again for a
    new graph (kept in the graph's `cache`: nothing here keeps an ended graph alive).

    Every sequence of a minibatch starts from the same leaf, so the first steps gather their
    states without a copy.
    """

    __slots__ = ("fill",)

    def __init__(self, fill: float = 0.0) -> None:
        self.fill = fill

    def __call__(self, g: Graph, size: int) -> Expression:
        leaves = g.cache.get(self)
        if leaves is None:
            leaves = g.cache[self] = {}
        leaf = leaves.get(size)
        if leaf is None:
            leaf = leaves[size] = g.leaf(np.full(size, self.fill, g.dtype))
        return leaf


def _table_of(xs: list[Any], g: Graph) -> int | None:
    """The table node when every x is a deferred row of one table of graph g (see `Row`),
    else None."""
    first = xs[0]
    if type(first) is not Row:
        return None
    table = first.table
    for x in xs:
        if type(x) is not Row or x.table != table or x.g is not g:
            return None
    return table


def check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_rate(rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} not in [0, 1)")
    return float(rate)


class RNNState:
    """A point in a sequence: one fused state per layer. Immutable; `add_input` returns a new one.

    The dropout masks drawn by `initial_state()` travel with every state of the sequence.
    """

    __slots__ = ("builder", "states", "masks", "zero", "_prev", "_h")

    def __init__(self, builder: "RecurrentBuilder", states: list[Expression],
                 masks: list[tuple[Expression | None, Expression | None]], zero: bool,
                 prev: "RNNState | None") -> None:
        self.builder = builder
        self.states = states
        self.masks = masks
        self.zero = zero  # the states are the builder's zero leaves (no recurrent mask needed)
        self._prev = prev
        self._h: list[Expression | None] = [None] * len(states)

    def _layer_h(self, layer: int) -> Expression:
        h = self._h[layer]
        if h is None:
            h = self._h[layer] = self.builder._hidden(self.states[layer])
        return h

    def add_input(self, x: Any) -> "RNNState":
        """Feed x (input_dim,) through every layer; returns the next state."""
        return self.add_inputs([x])[0]

    def add_inputs(self, xs: Iterable[Any]) -> list["RNNState"]:
        """The states after each of xs, in order."""
        b, out, prev = self.builder, [], self
        xs = list(xs)
        chain = self._chain(xs)
        if chain is not None:
            g, nodes = chain
            for node in nodes:
                state = RNNState(b, [Expression(g, node)], self.masks, False, prev)
                out.append(state)
                prev = state
            return out
        for layer_states, hs in self._steps(xs):
            state = RNNState(b, layer_states, self.masks, False, prev)
            state._h = hs
            out.append(state)
            prev = state
        return out

    def _chain(self, xs: list[Any]) -> tuple[Graph, list[int]] | None:
        """For one layer without dropout, (the graph, each step's state node), the steps added
        as one chain (embedding rows read in place); else None, and nothing added."""
        if xs and len(self.builder.params) == 1 and self.masks[0] == (None, None):
            g = graph_of(list(self.states) + xs)
            return g, self._steps(xs, top_only=True, g=g)
        return None

    def _steps(self, xs: list[Any], top_only: bool = False, g: Graph | None = None) -> list:
        """Add the steps over xs (expressions, or arrays that become constants) to the graph
        (g: theirs, if known): per step, (the layers' states, the lower layers' h and None) or,
        with top_only, the top layer's state node alone."""
        if not xs:
            return []
        b = self.builder
        if g is None:
            g = graph_of(list(self.states) + xs)
        chain = top_only and len(b.params) == 1 and self.masks[0] == (None, None)
        if chain and b.reads_rows:
            table = _table_of(xs, g)
            if table is not None and g.shapes[table][1:] == (b.input_dim,):
                # a sequence of embedding rows: the step reads its row itself, no lookup nodes
                W, bias = b.params[0]
                shared = (g.param_node(W), g.param_node(bias), table)
                single = g.single
                for x in xs:
                    x._fused = True
                return g.add_chain(over_row(TABLE[b.step_op], 4, 2), shared, None,
                                   as_node(g, self.states[0]), [single(x.index) for x in xs])
        nodes = [as_node(g, x) for x in xs]
        want = (b.input_dim,)
        shapes = g.shapes
        for node in nodes:
            if shapes[node] != want:
                raise ValueError(f"{type(b).__name__}.add_input: input of shape "
                                 f"{shapes[node]}, expected {want}")
        if chain:  # one layer, no dropout: one chain of steps
            state = as_node(g, self.states[0])
            W, bias = b.params[0]
            return g.add_chain(TABLE[b.step_op], (g.param_node(W), g.param_node(bias)), nodes,
                               state)
        masks = [(None if m is None else m.i, None if r is None else r.i) for m, r in self.masks]
        states = [as_node(g, s) for s in self.states]
        weights = [(g.param_node(W), g.param_node(bias)) for W, bias in b.params]
        return self._layered_steps(nodes, states, top_only, g, weights, masks)

    def _layered_steps(self, nodes: list[int], states: list[int], top_only: bool, g: Graph,
                       weights: list[tuple[int, int]], masks: list[tuple]) -> list:
        """`_steps` layer by layer, with dropout: each layer's input times its mask, and the
        carried state times the recurrent mask (or the mask as the step's last argument, for
        cells that mask inside their gates), except on the first step from zero states. A cell
        with a masked step op (the LSTM) takes both masks in its step node (ones for a missing
        one)."""
        b = self.builder
        add, mul, op = g.add, TABLE["mul"], TABLE[b.step_op]
        masked = over_masked(op, 4, (2, 3)) if b.masks_in_node else None
        last = len(states) - 1
        zero = self.zero
        out = []
        for node in nodes:
            layer_states, hs = [], []
            for layer, (W, bias) in enumerate(weights):
                input_mask, recurrent_mask = masks[layer]
                state = states[layer]
                if masked is not None and (input_mask is not None or (
                        recurrent_mask is not None and not zero)):
                    # the masks inside the step: one node, not one or two `mul`s and a step
                    if input_mask is None:
                        input_mask = b._ones(g, g.shapes[node][0]).i
                    if recurrent_mask is None or zero:
                        recurrent_mask = b._ones(g, g.shapes[state][0]).i
                    new = add(masked, (W, bias, node, state, input_mask, recurrent_mask))
                else:
                    if input_mask is not None:
                        node = add(mul, (node, input_mask)).i
                    if recurrent_mask is None or zero:
                        args: tuple[int, ...] = (W, bias, node, state)
                    elif b.mask_in_step:
                        args = (W, bias, node, state, recurrent_mask)
                    else:
                        args = (W, bias, node, add(mul, (state, recurrent_mask)).i)
                    new = add(op, args)
                states[layer] = new.i
                layer_states.append(new)
                if layer < last:
                    h = b._hidden(new)
                    hs.append(h)
                    node = h.i
                else:
                    hs.append(None)
            zero = False
            out.append(layer_states[-1].i if top_only else (layer_states, hs))
        return out

    def transduce(self, xs: Iterable[Any]) -> list[Expression]:
        """The top layer's output after each of xs: a list of (hidden_dim,) expressions."""
        xs = list(xs)
        chain = self._chain(xs)
        if chain is not None:  # (the outputs alone: no state object is needed for them)
            return self.builder._hiddens(*chain)
        return [state.output() for state in self.add_inputs(xs)]

    def output(self) -> Expression:
        """h of the top layer, (hidden_dim,)."""
        return self._layer_h(len(self.states) - 1)

    def h(self) -> list[Expression]:
        """h of every layer, bottom first."""
        return [self._layer_h(k) for k in range(len(self.states))]

    def s(self) -> list[Expression]:
        """The full state in DyNet's order: the cells of every layer, then the h's (LSTM);
        the h's alone for cells without a memory cell."""
        return [self.builder._cell(s) for s in self.states if self.builder.has_cell] + self.h()

    def prev(self) -> "RNNState | None":
        """The state before the last input (None for an initial state)."""
        return self._prev


class RecurrentBuilder:
    """Shared machinery of the stacked recurrent builders; subclasses define one layer's cell."""

    default_name = "rnn"
    has_cell = False
    step_op = ""  # the op of one step, (W, b, x, state) -> state
    reads_rows = True  # a first layer over a table's rows reads each row in its step's node
    mask_in_step = False  # the recurrent dropout mask is the step op's last argument
    # under dropout, a step node multiplies x and the state by their masks itself,
    # (W, b, x, state, mx, ms)
    masks_in_node = False

    def __init__(self, layers: int, input_dim: int, hidden_dim: int, pc: ParameterCollection,
                 name: str | None = None) -> None:
        check_dims(layers=layers, input_dim=input_dim, hidden_dim=hidden_dim)
        self.layers = int(layers)
        self.input_dim = int(input_dim)
        self.hidden_dim = int(hidden_dim)
        self.pc = unique_subcollection(pc, name or self.default_name)
        self.params: list[tuple[Parameter, Parameter]] = []
        for layer in range(self.layers):
            width = self.input_dim if layer == 0 else self.hidden_dim
            self.params.append(self._make_layer(self.pc.add_subcollection(f"layer{layer}"),
                                                width))
        self.dropout_rate = 0.0
        self.recurrent_dropout_rate = 0.0
        self._zeros = ConstantLeaves()
        self._ones = ConstantLeaves(1.0)

    # -- per cell ----------------------------------------------------------------------------
    state_factor = 1  # the fused state holds this many vectors of hidden_dim

    def _make_layer(self, pc: ParameterCollection, width: int) -> tuple[Parameter, Parameter]:
        raise NotImplementedError

    def _hidden(self, state: Expression) -> Expression:
        return state

    def _hiddens(self, g: Graph, nodes: list[int]) -> list[Expression]:
        """`_hidden` of the state nodes of a single-layer chain in live graph g."""
        return [self._hidden(Expression(g, node)) for node in nodes]

    def hidden_range(self) -> tuple[int, int] | None:
        """Where h sits in a single-layer fused state, when it is only part of it."""
        return None

    def _cell(self, state: Expression) -> Expression:
        raise NotImplementedError

    def _recurrent_mask(self, mask: np.ndarray) -> np.ndarray:
        return mask

    def _initial(self, vecs: Sequence[Any]) -> list[Expression]:
        if len(vecs) != self.layers:
            raise ValueError(f"initial_state: {len(vecs)} vectors given, expected one h per "
                             f"layer ({self.layers})")
        return list(vecs)

    # -- public ------------------------------------------------------------------------------
    def initial_state(self, vecs: Sequence[Any] | None = None) -> RNNState:
        """The start of a new sequence: zero states, or the given `vecs` in the order of `s()`.

        Draws this sequence's dropout masks (when dropout is set and the graph is training).
        """
        g = graph_of(vecs or ())
        if vecs is None:
            zero = self._zeros(g, self.state_factor * self.hidden_dim)
            states = [zero] * self.layers
        else:
            states = self._initial(list(vecs))
        return RNNState(self, states, self._draw_masks(g), vecs is None, None)

    def _draw_masks(self, g: Graph) -> list[tuple[Expression | None, Expression | None]]:
        p, q = self.dropout_rate, self.recurrent_dropout_rate
        if not g.training or (p == 0.0 and q == 0.0):
            return [(None, None)] * self.layers
        masks = []
        for layer in range(self.layers):
            width = self.input_dim if layer == 0 else self.hidden_dim
            input_mask = g.leaf(g.random_mask((width,), p)) if p > 0.0 else None
            recurrent_mask = None
            if q > 0.0:
                recurrent_mask = g.leaf(self._recurrent_mask(
                    g.random_mask((self.hidden_dim,), q)))
            masks.append((input_mask, recurrent_mask))
        return masks

    def transduce(self, xs: Iterable[Any]) -> list[Expression]:
        """Run a fresh sequence over xs; the top layer's outputs."""
        return self.initial_state().transduce(xs)

    def set_dropout(self, rate: float, recurrent_rate: float | None = None) -> None:
        """Dropout on each layer's input (rate) and recurrent h (recurrent_rate, default rate),
        with one mask per sequence shared by all its time steps (Gal and Ghahramani, 2016)."""
        self.dropout_rate = check_rate(rate)
        self.recurrent_dropout_rate = check_rate(rate if recurrent_rate is None
                                                  else recurrent_rate)

    def disable_dropout(self) -> None:
        self.dropout_rate = self.recurrent_dropout_rate = 0.0

    def parameters(self) -> list[Parameter]:
        return [p for pair in self.params for p in pair]


class LSTMBuilder(RecurrentBuilder):
    """DyNet's vanilla LSTM: one `lstm_step` node per step and layer; forget-gate bias 1.

    Per layer: W (4H, X+H) with gate rows [i; f; o; g] over [x; h], b (4H,). The fused state
    is [c; h] (2H,); `output()` and `h()` slice h out only when asked.
    """

    default_name = "lstm"
    step_op = "lstm_step"
    masks_in_node = True
    has_cell = True
    state_factor = 2

    def _make_layer(self, pc: ParameterCollection, width: int) -> tuple[Parameter, Parameter]:
        hidden = self.hidden_dim
        bias = np.zeros(4 * hidden)
        bias[hidden:2 * hidden] = 1.0
        return (pc.add_parameters((4 * hidden, width + hidden), name="W"),
                pc.add_parameters((4 * hidden,), init=bias, name="b"))

    def __init__(self, layers: int, input_dim: int, hidden_dim: int, pc: ParameterCollection,
                 name: str | None = None) -> None:
        super().__init__(layers, input_dim, hidden_dim, pc, name)
        self._h_windows = ((self.hidden_dim, 2 * self.hidden_dim),)  # (of every h Slice)

    def _hidden(self, state):
        # deferred: a concatenation of two directions, an MLP or dropout reads it in place;
        # anything else makes the pick_range node
        return Slice(state._live(), (state.i,), self.hidden_dim, 2 * self.hidden_dim,
                     self._h_windows)

    def _hiddens(self, g, nodes):
        start, end, windows = self.hidden_dim, 2 * self.hidden_dim, self._h_windows
        return [Slice(g, (node,), start, end, windows) for node in nodes]

    def hidden_range(self):
        return (self.hidden_dim, 2 * self.hidden_dim) if len(self.params) == 1 else None

    def _cell(self, state):
        return F.pick_range(state, 0, self.hidden_dim)

    def _recurrent_mask(self, mask):
        # the state is [c; h]: c passes unmasked
        return np.concatenate([np.ones_like(mask), mask])

    def _initial(self, vecs):
        layers = self.layers
        if len(vecs) == layers:
            g = graph_of(vecs)
            cells = [self._zeros(g, self.hidden_dim)] * layers
            hs = vecs
        elif len(vecs) == 2 * layers:
            cells, hs = vecs[:layers], vecs[layers:]
        else:
            raise ValueError(f"initial_state: {len(vecs)} vectors given, expected the c's then "
                             f"the h's of {layers} layers ({2 * layers}), or the h's alone")
        return [F.concatenate([c, h]) for c, h in zip(cells, hs)]


class GRUBuilder(RecurrentBuilder):
    """DyNet's GRU: h' = (1 - z) * h + z * tanh(W_u [x; r * h] + b_u), one `gru_step` per step.

    Per layer: W (3H, X+H) with gate rows [z; r; u], b (3H,). Recurrent dropout masks h inside
    the gates only (the op's optional mask argument), not the carried h.
    """

    default_name = "gru"
    step_op = "gru_step"
    mask_in_step = True

    def _make_layer(self, pc, width):
        hidden = self.hidden_dim
        return (pc.add_parameters((3 * hidden, width + hidden), name="W"),
                pc.add_parameters((3 * hidden,), init="zeros", name="b"))


class SimpleRNNBuilder(RecurrentBuilder):
    """Elman RNN: h' = tanh(W [x; h] + b), one `rnn_step` node per step and layer."""

    default_name = "simple_rnn"
    step_op = "rnn_step"

    def _make_layer(self, pc, width):
        hidden = self.hidden_dim
        return (pc.add_parameters((hidden, width + hidden), name="W"),
                pc.add_parameters((hidden,), init="zeros", name="b"))


class BiRNNBuilder:
    """Stacked bidirectional RNN: each level runs a forward and a backward builder of
    output_dim / 2 units and concatenates their outputs; level k + 1 reads level k's outputs.
    """

    def __init__(self, layers: int, input_dim: int, output_dim: int, pc: ParameterCollection,
                 builder_class: type = LSTMBuilder, name: str = "birnn") -> None:
        check_dims(layers=layers, input_dim=input_dim, output_dim=output_dim)
        if output_dim % 2:
            raise ValueError(f"BiRNNBuilder: output_dim must be even, got {output_dim}")
        self.pc = unique_subcollection(pc, name)
        self.output_dim = int(output_dim)
        half = self.output_dim // 2
        self.builder_layers: list[tuple[Any, Any]] = []
        for level in range(int(layers)):
            width = input_dim if level == 0 else self.output_dim
            self.builder_layers.append(
                (builder_class(1, width, half, self.pc.add_subcollection(f"forward{level}")),
                 builder_class(1, width, half, self.pc.add_subcollection(f"backward{level}"))))

    def parameters(self) -> list[Parameter]:
        """This builder's parameters, in creation order (names under its subcollection)."""
        return list(self.pc.parameters())

    def transduce(self, xs: Iterable[Any]) -> list[Expression]:
        """xs: (input_dim,) each -> a list of (output_dim,) expressions."""
        xs = list(xs)
        for forward, backward in self.builder_layers:
            # one draw of each direction's dropout masks, whichever path builds the steps
            start_ahead, start_behind = forward.initial_state(), backward.initial_state()
            span = forward.hidden_range()
            if xs and span is not None and span == backward.hidden_range():
                # h from both fused states as one node per position (not two slices and a
                # concatenation), made only when something other than an MLP reads it
                ahead = start_ahead._steps(xs, top_only=True)
                behind = start_behind._steps(xs[::-1], top_only=True)[::-1]
                g = graph_of(xs)
                start, end = span
                # deferred: a classifier reads both halves in place; anything else makes the
                # concatenate_ranges node
                windows = ((start, end),) * 2
                xs = [Slice(g, (a, c), start, end, windows) for a, c in zip(ahead, behind)]
            else:
                ahead_states = start_ahead.add_inputs(xs)
                behind_states = start_behind.add_inputs(xs[::-1])[::-1]
                xs = [F.concatenate([a.output(), c.output()])
                      for a, c in zip(ahead_states, behind_states)]
        return xs

    def set_dropout(self, rate: float, recurrent_rate: float | None = None) -> None:
        for pair in self.builder_layers:
            for builder in pair:
                builder.set_dropout(rate, recurrent_rate)

    def disable_dropout(self) -> None:
        for pair in self.builder_layers:
            for builder in pair:
                builder.disable_dropout()
