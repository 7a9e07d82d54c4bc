"""Tree-LSTM builders (Tai, Socher and Manning, 2015): binary N-ary and child-sum, one fused op
node per tree node, so that autobatching groups the nodes of many trees. Builds on dynlp's graph,
op table and params; must not import dynlp.data or recipes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..graph import Deferred, Expression, Row, Slice, apply
from ..inplace import over_row
from ..ops import TABLE
from ..params import Parameter, ParameterCollection
from .rnn import ConstantLeaves, check_dims, graph_of, unique_subcollection

KINDS = ("binary", "childsum")
_LEAF = TABLE["treelstm_binary_leaf"]
_LEAF_LOOKUP = over_row(_LEAF, 3, 2)  # the leaf over a table's row, looked up in its node
_NOX = TABLE["treelstm_binary_nox"]
_PICK_RANGE = TABLE["pick_range"]
_NOX_KEY = (_NOX,)


def _halves(hidden: int) -> tuple[tuple, tuple]:
    """Where the halves of a state [c; h] (2H,) are: the windows of h's Slice and the pick_range
    attributes of c (made once per builder)."""
    return ((hidden, 2 * hidden),), (("start", 0), ("end", hidden), ("dim", 0))


class TreeState:
    """A tree node's fused state [c; h] (2H,); `h()` and `c()` slice it once, when asked.
    `h()` is a deferred `Slice`: a classifier (`MLP`) reads it in place, with no node of its
    own; anything else that uses it adds the slice node then."""

    __slots__ = ("state", "hidden_dim", "_halves", "_h", "_c")

    def __init__(self, state: Expression, hidden_dim: int, halves: tuple | None = None) -> None:
        self.state = state
        self.hidden_dim = hidden_dim
        self._halves = halves or _halves(hidden_dim)
        self._h: Expression | None = None
        self._c: Expression | None = None

    def h(self) -> Expression:
        if self._h is None:
            state = self.state
            hidden = self.hidden_dim
            self._h = Slice(state._live(), (state.i,), hidden, 2 * hidden, self._halves[0])
        return self._h

    def c(self) -> Expression:
        if self._c is None:
            state = self.state
            self._c = state._live().add(_PICK_RANGE, (state.i,), self._halves[1])
        return self._c


class TreeLSTMBuilder:
    """kind="binary": W (5H, X+2H) with gate rows [i; f_left; f_right; o; u] over
    [x; h_left; h_right]; a leaf (a word, no children) is the node over two zero children and
    reads only the x columns, an internal node without a word only the h columns of W.
    kind="childsum": W (4H, X+H) with gate rows [i; o; u; f], any number of children (a node
    without a word reads x = 0). Forget-gate biases start at 1.
    """

    def __init__(self, input_dim: int, hidden_dim: int, pc: ParameterCollection,
                 kind: str = "binary", name: str = "treelstm") -> None:
        check_dims(input_dim=input_dim, hidden_dim=hidden_dim)
        if kind not in KINDS:
            raise ValueError(f"TreeLSTMBuilder: kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.input_dim = int(input_dim)
        self.hidden_dim = hidden = int(hidden_dim)
        self.pc = unique_subcollection(pc, name)
        bias = np.zeros((5 if kind == "binary" else 4) * hidden)
        if kind == "binary":
            bias[hidden:3 * hidden] = 1.0
            columns = self.input_dim + 2 * hidden
        else:
            bias[3 * hidden:] = 1.0
            columns = self.input_dim + hidden
        self.W = self.pc.add_parameters((len(bias), columns), name="W")
        self.b = self.pc.add_parameters((len(bias),), init=bias, name="b")
        self._params = (self.W, self.b)
        self._halves = _halves(hidden)
        self._state_shape = (2 * hidden,)
        self._zeros = ConstantLeaves()

    def parameters(self) -> list[Parameter]:
        """This builder's parameters, in creation order (names under its subcollection)."""
        return list(self.pc.parameters())

    def _check_input(self, x: Any) -> None:
        shape = getattr(x, "shape", None)
        if shape is not None and tuple(shape) != (self.input_dim,):
            raise ValueError(f"TreeLSTMBuilder: input of shape {tuple(shape)}, expected "
                             f"({self.input_dim},)")

    def leaf(self, x: Any) -> TreeState:
        """A node with a word x (input_dim,) and no children. When x is an embedding lookup
        (a `Row`), the leaf node reads the table row itself (`lookup+treelstm_binary_leaf`,
        composed from the two ops' rules), with no lookup node of its own."""
        if self.kind == "binary":
            kind = type(x)
            if kind is Row:
                g = x._live()
                x._fused = True
                like = g.template(self, (_LEAF_LOOKUP, x.table))
                if like is not None:  # the same weights and table: the same arguments
                    return TreeState(g.add_as(like, g.args[like], g.single(x.index)),
                                     self.hidden_dim, self._halves)
                self._check_input(x)
                W, b = g.param_nodes_of(self, self._params)
                state = g.add(_LEAF_LOOKUP, (W, b, x.table), (), g.single(x.index))
                g.set_template(self, (_LEAF_LOOKUP, x.table), state.i)
                return TreeState(state, self.hidden_dim, self._halves)
            if kind is Expression or isinstance(x, Deferred):
                g = x._live()
                self._check_input(x)
                W, b = g.param_nodes_of(self, self._params)
                return TreeState(g.add(_LEAF, (W, b, x.i)), self.hidden_dim, self._halves)
        return self.node((), x)

    def node(self, children: Sequence[Any], x: Any = None) -> TreeState:
        """A node over child states (TreeState or [c; h] expressions) and an optional word x."""
        if self.kind == "binary" and len(children) == 2 and x is None:
            left, right = children
            left, right = getattr(left, "state", left), getattr(right, "state", right)
            if type(left) is Expression and type(right) is Expression and left.g is right.g:
                # the common internal node: straight into the graph, made like the first one
                # when the children are states of this builder's size
                g = left._live()
                a, c = left.i, right.i
                like = g.template(self, _NOX_KEY)
                shapes = g.shapes
                if like is not None and shapes[a] == shapes[c] == self._state_shape:
                    W, b, _, _ = g.args[like]
                    return TreeState(g.add_as(like, (W, b, a, c)), self.hidden_dim, self._halves)
                W, b = g.param_nodes_of(self, self._params)
                state = g.add(_NOX, (W, b, a, c))
                if like is None and shapes[a] == shapes[c] == self._state_shape:
                    g.set_template(self, _NOX_KEY, state.i)
                return TreeState(state, self.hidden_dim, self._halves)
        states = [getattr(child, "state", child) for child in children]
        if x is not None:
            self._check_input(x)
        g = graph_of(states + [x])
        if self.kind == "childsum":
            if x is None:
                x = self._zeros(g, self.input_dim)
            return TreeState(apply("treelstm_childsum", self.W, self.b, x, *states),
                             self.hidden_dim)
        if not states:
            if x is not None:
                return TreeState(apply("treelstm_binary_leaf", self.W, self.b, x),
                                 self.hidden_dim)
            zero = self._zeros(g, 2 * self.hidden_dim)
            states = [zero, zero]
        if len(states) != 2:
            raise ValueError(f"a binary Tree-LSTM node takes 2 children, got {len(states)}")
        if x is None:
            return TreeState(apply("treelstm_binary_nox", self.W, self.b, *states),
                             self.hidden_dim)
        return TreeState(apply("treelstm_binary", self.W, self.b, x, *states), self.hidden_dim)
