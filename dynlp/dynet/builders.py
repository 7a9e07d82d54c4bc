"""DyNet's recurrent builders with DyNet 2.1's equations and state API, written over this
package's expression functions (so explicit batches and autobatching apply as to any op), and
the softmax builders. Each builder owns a subcollection named as DyNet names it.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np

from .. import functions as F
from .. import graph as G
from ..inplace import over_masked, over_row
from ..ops import TABLE
from . import expr as dy
from .expr import STATE, Expression, _graph, _vec
from .model import ConstInitializer, ParameterCollection, Parameters


class RNNState:
    """One step of a builder's run: the per-layer states, and the step before."""

    def __init__(self, builder: "_RNNBuilder", layers: tuple | None,
                 prev: "RNNState | None" = None, masks: Any = None) -> None:
        self.builder = builder
        self.layers = layers  # per layer: (h, c) for LSTMs, (h,) otherwise; None: no state yet
        self._prev = prev
        self.masks = masks

    def add_input(self, x: Any) -> "RNNState":
        x = dy._as_expr(x)
        masks = self.masks
        if masks is None:
            masks = self.builder._masks(len(x.es))
        layers = []
        inp = x
        for k in range(self.builder.layers):
            prev = None if self.layers is None else self.layers[k]
            state = self.builder._step(k, inp, prev, None if masks is None else masks[k])
            layers.append(state)
            inp = state[0]
        return RNNState(self.builder, tuple(layers), self, masks)

    def add_inputs(self, xs: Sequence[Any]) -> list["RNNState"]:
        states = []
        state = self
        for x in xs:
            state = state.add_input(x)
            states.append(state)
        return states

    def transduce(self, xs: Sequence[Any]) -> list[Expression]:
        return [s.output() for s in self.add_inputs(xs)]

    def output(self) -> Expression | None:
        return None if self.layers is None else self.layers[-1][0]

    def h(self) -> tuple[Expression, ...]:
        return () if self.layers is None else tuple(s[0] for s in self.layers)

    def s(self) -> tuple[Expression, ...]:
        """LSTMs: the cells c of every layer, then the outputs h; other builders: h."""
        if self.layers is None:
            return ()
        if len(self.layers[0]) == 1:
            return self.h()
        return tuple(s[1] for s in self.layers) + self.h()

    def prev(self) -> "RNNState | None":
        return self._prev

    def b(self) -> "_RNNBuilder":
        return self.builder

    def set_h(self, es: Sequence[Any]) -> "RNNState":
        es = [dy._as_expr(e) for e in es]
        if len(es) != self.builder.layers:
            raise ValueError(f"set_h: {len(es)} vectors for {self.builder.layers} layers")
        if not self.builder.cells:
            return RNNState(self.builder, tuple((h,) for h in es), self, self.masks)
        cs = [s[1] for s in self.layers] if self.layers is not None else \
            [dy.zeros(self.builder.hidden_dim) for _ in es]
        return RNNState(self.builder, tuple(zip(es, cs)), self, self.masks)

    def set_s(self, es: Sequence[Any]) -> "RNNState":
        es = [dy._as_expr(e) for e in es]
        n = self.builder.layers
        if not self.builder.cells:
            return self.set_h(es)
        if len(es) == n:
            hs = list(self.h()) or [dy.zeros(self.builder.hidden_dim) for _ in es]
            return RNNState(self.builder, tuple(zip(hs, es)), self, self.masks)
        if len(es) != 2 * n:
            raise ValueError(f"set_s: {len(es)} vectors for {n} layers (c's, then h's)")
        return RNNState(self.builder, tuple(zip(es[n:], es[:n])), self, self.masks)


class _RNNBuilder:
    """The shared machinery: parameters per layer, states, dropout, save and load."""

    collection_name = ""
    cells = False  # LSTMs carry a cell c beside h

    def __init__(self, layers: int, input_dim: int, hidden_dim: int,
                 model: ParameterCollection) -> None:
        self.layers = int(layers)
        self.input_dim = int(input_dim)
        self.hidden_dim = int(hidden_dim)
        self.pc = model.add_subcollection(self.collection_name)
        self.spec = (self.layers, self.input_dim, self.hidden_dim)
        self.dropout_rate = 0.0
        self.dropout_rate_h = 0.0
        self.params: list[list[Parameters]] = []
        for k in range(self.layers):
            self.params.append(self._layer_params(self.input_dim if k == 0 else self.hidden_dim))
        self._version = -1

    def _layer_params(self, x_dim: int) -> list[Parameters]:
        raise NotImplementedError

    def _step(self, k: int, x: Expression, prev: tuple | None, mask: Any) -> tuple:
        raise NotImplementedError

    def _masks(self, batch: int) -> Any:
        return None

    # -- DyNet's API -----------------------------------------------------------------------------
    def whoami(self) -> str:
        return type(self).__name__

    def param_collection(self) -> ParameterCollection:
        return self.pc

    @classmethod
    def from_spec(cls, spec: Sequence[Any], model: ParameterCollection) -> "_RNNBuilder":
        return cls(*spec, model)

    def get_parameters(self) -> list[list[Parameters]]:
        return [list(layer) for layer in self.params]

    def get_parameter_expressions(self) -> list[list[Expression]]:
        if self._version != STATE.version:
            raise ValueError("get_parameter_expressions: call initial_state() in this graph "
                             "first")
        return [[p.expr() for p in layer] for layer in self.params]

    def initial_state(self, vecs: Sequence[Any] | None = None, update: bool = True) -> RNNState:
        _graph()
        self._version = STATE.version
        self._update = update
        state = RNNState(self, None)
        return state.set_s(vecs) if vecs is not None else state

    def initial_state_from_raw_vectors(self, vecs: Sequence[Any] | None = None,
                                       update: bool = True) -> RNNState:
        if vecs is None:
            return self.initial_state(None, update)
        return self.initial_state([dy.inputTensor(np.asarray(v)) for v in vecs], update)

    def set_dropout(self, p: float) -> None:
        self.dropout_rate = float(p)
        self.dropout_rate_h = float(p)

    def set_dropouts(self, d: float, d_h: float) -> None:
        self.dropout_rate = float(d)
        self.dropout_rate_h = float(d_h)

    def disable_dropout(self) -> None:
        self.dropout_rate = 0.0
        self.dropout_rate_h = 0.0

    def set_dropout_masks(self, batch_size: int = 1) -> None:
        pass

    def _exprs(self, k: int) -> list[Expression]:
        update = getattr(self, "_update", True)
        return [p.expr(update) for p in self.params[k]]


def _affine(b: Expression, *pairs: Expression) -> Expression:
    return dy.affine_transform([b, *pairs])


class VanillaLSTMBuilder(_RNNBuilder):
    """i, f, o, g = gates of b + Wx x + Wh h (h absent at the first step);
    f = sigmoid(. + forget_bias); c = f c + i g; h = o tanh(c). Dropout: one mask per sequence
    on x and on h (variational); ln_lstm: layer norm of Wx x, Wh h and c."""

    collection_name = "vanilla-lstm-builder"
    cells = True

    def __init__(self, layers: int, input_dim: int, hidden_dim: int, model: ParameterCollection,
                 ln_lstm: bool = False, forget_bias: float = 1.0) -> None:
        self.ln_lstm = bool(ln_lstm)
        self.forget_bias = float(forget_bias)
        self.ln_params: list[list[Parameters]] = []
        super().__init__(layers, input_dim, hidden_dim, model)
        self.spec = (self.layers, self.input_dim, self.hidden_dim, self.ln_lstm,
                     self.forget_bias)

    def _layer_params(self, x_dim):
        h4, add = 4 * self.hidden_dim, self.pc.add_parameters
        one, zero = ConstInitializer(1.0), ConstInitializer(0.0)
        if self.ln_lstm:
            params = [add((h4, x_dim)), add((h4, self.hidden_dim)), add(h4, init=zero)]
        else:  # Wx and Wh side by side in one weight, which the fused step reads
            params = self.pc._add_column_blocks(h4, (x_dim, self.hidden_dim))
            params.append(add(h4, init=zero))
        if self.ln_lstm:  # gh, bh, gx, bx, gc, bc, after the layer's weights (DyNet's order)
            hd = self.hidden_dim
            self.ln_params.append([add(h4, init=one), add(h4, init=zero), add(h4, init=one),
                                   add(h4, init=zero), add(hd, init=one), add(hd, init=zero)])
        return params

    def _masks(self, batch):
        if not self.dropout_rate and not self.dropout_rate_h:
            return None
        masks = []
        for k in range(self.layers):
            x_dim = self.input_dim if k == 0 else self.hidden_dim
            rx, rh = 1.0 - self.dropout_rate, 1.0 - self.dropout_rate_h
            masks.append((dy.random_bernoulli(x_dim, rx, 1.0 / rx, batch)
                          if self.dropout_rate else None,
                          dy.random_bernoulli(self.hidden_dim, rh, 1.0 / rh, batch)
                          if self.dropout_rate_h else None))
        return masks

    def _gates(self, k, x, h):
        wx, wh, b = self._exprs(k)
        if not self.ln_lstm:
            return _affine(b, wx, x) if h is None else _affine(b, wx, x, wh, h)
        gh, bh, gx, bx = [p.expr() for p in self.ln_params[k][:4]]
        out = dy.layer_norm(wx * x, gx, bx) + b
        return out if h is None else out + dy.layer_norm(wh * h, gh, bh)

    def _step(self, k, x, prev, mask):
        if not self.ln_lstm:
            return self._fused_step(k, x, prev, mask)
        hd = self.hidden_dim
        if mask is not None and mask[0] is not None:
            x = dy.cmult(x, mask[0])
        h = None
        if prev is not None:
            h = prev[0]
            if mask is not None and mask[1] is not None:
                h = dy.cmult(h, mask[1])
        tmp = self._gates(k, x, h)
        i = dy.logistic(dy.pickrange(tmp, 0, hd))
        f = dy.logistic(dy.pickrange(tmp, hd, 2 * hd) + self.forget_bias) \
            if self.forget_bias else dy.logistic(dy.pickrange(tmp, hd, 2 * hd))
        o = dy.logistic(dy.pickrange(tmp, 2 * hd, 3 * hd))
        g = dy.tanh(dy.pickrange(tmp, 3 * hd, 4 * hd))
        c = dy.cmult(i, g) if prev is None else dy.cmult(f, prev[1]) + dy.cmult(i, g)
        gc, bc = [p.expr() for p in self.ln_params[k][4:]]
        return dy.cmult(o, dy.tanh(dy.layer_norm(c, gc, bc))), c

    # The same equations as one fused `lstm_step` node per step and batch element: its gates
    # [i; f; o; g] come from W = [Wx Wh] over [x; h] and b (plus the forget bias on f), and its
    # state is [c; h]. A first step without a state is the step from c = h = 0 (the h term
    # vanishes and f multiplies c = 0), which is what DyNet computes without those terms.
    def _weights(self, k):
        """The nodes W = [Wx Wh] and b (plus the forget bias) of layer k, once per graph."""
        g = _graph()
        update = getattr(self, "_update", True)
        cache = getattr(self, "_fused", None)
        if cache is None or cache[0] is not g or cache[1] != update:
            cache = self._fused = (g, update, {})
        weights = cache[2].get(k)
        if weights is None:
            wx, wh, pb = self.params[k]
            update = getattr(self, "_update", True)
            W, b = g.parameter(wx.p), pb.expr(update).es[0]
            if not update:
                W = F.nobackprop(W)
            if self.forget_bias:
                hd = self.hidden_dim
                shift = np.zeros(4 * hd)
                shift[hd:2 * hd] = self.forget_bias
                b = b + g.leaf(shift)
            weights = cache[2][k] = (W.i, b.i)
        return g, weights

    def _fused_step(self, k, x, prev, mask):
        g, (W, b) = self._weights(k)
        hd = self.hidden_dim
        if prev is None:
            states = [g.leaf(np.zeros(2 * hd))]
        elif len(prev) > 2:
            states = list(prev[2])
        else:
            states = list(dy.concatenate([prev[1], prev[0]]).es)
        xs = [_vec(e) for e in x.es]
        b_size = max(len(xs), len(states))
        if mask is not None:
            mx, mh = mask
            x_mask = list(mx.es) if mx is not None else [g.leaf(np.ones(xs[0].shape))]
            h_mask = dy.concatenate([dy.ones(hd), mh]).es if mh is not None \
                else [g.leaf(np.ones(2 * hd))]
        for e in [*xs, *states, *(() if mask is None else (*x_mask, *h_mask))]:
            if e.g is not g:  # (a row, state or mask of an ended graph: its node numbers are
                # another graph's)
                raise G.GraphError("an expression of another computation graph was used "
                                   "after renew_cg(); build it again in the current graph")
        nodes = []
        for j in range(b_size):
            xj = xs[j if len(xs) > 1 else 0]
            sj = states[j if len(states) > 1 else 0]
            if mask is not None:
                mxj = x_mask[j if len(x_mask) > 1 else 0]
                msj = h_mask[j if len(h_mask) > 1 else 0]
                node = g.add(_LSTM_MASKED, (W, b, xj.i, sj.i, mxj.i, msj.i))
            elif type(xj) is G.Row:
                xj._fused = True
                node = g.add(_LSTM_LOOKUP, (W, b, xj.table, sj.i), (), g.single(xj.index))
            else:
                node = g.add(_LSTM, (W, b, xj.i, sj.i))
            nodes.append(node)
        h = Expression([G.Slice(g, (n.i,), hd, 2 * hd) for n in nodes])
        c = Expression([G.Slice(g, (n.i,), 0, hd) for n in nodes])
        return h, c, nodes


_LSTM = TABLE["lstm_step"]
_LSTM_MASKED = over_masked(_LSTM, 4, (2, 3))  # the step over x and s times their masks
_LSTM_LOOKUP = over_row(_LSTM, 4, 2)  # the step over a table's row


LSTMBuilder = VanillaLSTMBuilder


class SparseLSTMBuilder(VanillaLSTMBuilder):
    """VanillaLSTMBuilder whose Wx and Wh are multiplied by fixed 0/1 masks (all ones until
    `set_sparsity(p)` zeroes a fraction p of each), kept as two more parameters per layer."""

    collection_name = "vanilla-lstm-builder"

    def __init__(self, layers: int, input_dim: int, hidden_dim: int,
                 model: ParameterCollection) -> None:
        super().__init__(layers, input_dim, hidden_dim, model)
        self.spec = (self.layers, self.input_dim, self.hidden_dim)

    def _layer_params(self, x_dim):
        h4, add = 4 * self.hidden_dim, self.pc.add_parameters
        one, zero = ConstInitializer(1.0), ConstInitializer(0.0)
        params = [add((h4, x_dim)), add((h4, self.hidden_dim)), add(h4, init=zero),
                  add((h4, x_dim), init=one), add((h4, self.hidden_dim), init=one)]
        for mask in params[3:]:
            mask.set_updated(False)
        return params

    def set_sparsity(self, percent: float) -> None:
        for layer in self.params:
            for mask in layer[3:]:
                mask.set_value(STATE.rng.random(mask.shape()) >= float(percent))

    def _weights(self, k):
        g = _graph()
        update = getattr(self, "_update", True)
        cache = getattr(self, "_fused", None)
        if cache is None or cache[0] is not g or cache[1] != update:
            cache = self._fused = (g, update, {})
        weights = cache[2].get(k)
        if weights is None:
            wx, wh, b, mx, mh = [e.es[0] for e in self._exprs(k)]
            W = F.concatenate_cols([wx * F.nobackprop(mx), wh * F.nobackprop(mh)])
            if self.forget_bias:
                shift = np.zeros(4 * self.hidden_dim)
                shift[self.hidden_dim:2 * self.hidden_dim] = self.forget_bias
                b = b + g.leaf(shift)
            weights = cache[2][k] = (W.i, b.i)
        return g, weights


class CompactVanillaLSTMBuilder(VanillaLSTMBuilder):
    """VanillaLSTMBuilder's equations (DyNet computes them in fused nodes)."""

    collection_name = "compact-vanilla-lstm-builder"

    def __init__(self, layers: int, input_dim: int, hidden_dim: int,
                 model: ParameterCollection) -> None:
        super().__init__(layers, input_dim, hidden_dim, model)
        self.spec = (self.layers, self.input_dim, self.hidden_dim)

    def set_weightnoise(self, std: float) -> None:
        if std:
            raise NotImplementedError("weight noise is not available in dynlp.dynet")


class CoupledLSTMBuilder(_RNNBuilder):
    """The LSTM with full peepholes and a coupled forget gate f = 1 - i:
    i = sigmoid(bi + Wxi x + Whi h + Wci c); c = (1 - i) c + i tanh(bc + Wxc x + Whc h);
    o = sigmoid(bo + Wxo x + Who h + Wco c_new); h = o tanh(c)."""

    collection_name = "lstm-builder"
    cells = True

    def _layer_params(self, x_dim):
        hd, add = self.hidden_dim, self.pc.add_parameters
        return [add((hd, x_dim)), add((hd, hd)), add((hd, hd)), add(hd),
                add((hd, x_dim)), add((hd, hd)), add((hd, hd)), add(hd),
                add((hd, x_dim)), add((hd, hd)), add(hd)]

    def _step(self, k, x, prev, mask):
        x2i, h2i, c2i, bi, x2o, h2o, c2o, bo, x2c, h2c, bc = self._exprs(k)
        if self.dropout_rate:
            x = dy.dropout(x, self.dropout_rate)
        if prev is None:
            i = dy.logistic(_affine(bi, x2i, x))
            c = dy.cmult(i, dy.tanh(_affine(bc, x2c, x)))
            o = dy.logistic(_affine(bo, x2o, x, c2o, c))
        else:
            h, c_prev = prev
            i = dy.logistic(_affine(bi, x2i, x, h2i, h, c2i, c_prev))
            w = dy.tanh(_affine(bc, x2c, x, h2c, h))
            c = dy.cmult(1.0 - i, c_prev) + dy.cmult(i, w)
            o = dy.logistic(_affine(bo, x2o, x, h2o, h, c2o, c))
        return dy.cmult(o, dy.tanh(c)), c


class FastLSTMBuilder(CoupledLSTMBuilder):
    """CoupledLSTMBuilder's gates without the peepholes: DyNet 2.1 creates c2i and c2o
    (hidden, 1) but leaves them out of its equations, and so does this builder."""

    collection_name = "fast-lstm-builder"

    def _layer_params(self, x_dim):
        hd, add = self.hidden_dim, self.pc.add_parameters
        zero = ConstInitializer(0.0)
        return [add((hd, x_dim)), add((hd, hd)), add((hd, 1)), add(hd, init=zero),
                add((hd, x_dim)), add((hd, hd)), add((hd, 1)), add(hd, init=zero),
                add((hd, x_dim)), add((hd, hd)), add(hd, init=zero)]

    def _step(self, k, x, prev, mask):
        x2i, h2i, _, bi, x2o, h2o, _, bo, x2c, h2c, bc = self._exprs(k)
        if self.dropout_rate:
            x = dy.dropout(x, self.dropout_rate)
        if prev is None:
            i = dy.logistic(_affine(bi, x2i, x))
            c = dy.cmult(i, dy.tanh(_affine(bc, x2c, x)))
            o = dy.logistic(_affine(bo, x2o, x))
        else:
            h, c_prev = prev
            i = dy.logistic(_affine(bi, x2i, x, h2i, h))
            w = dy.tanh(_affine(bc, x2c, x, h2c, h))
            c = dy.cmult(1.0 - i, c_prev) + dy.cmult(i, w)
            o = dy.logistic(_affine(bo, x2o, x, h2o, h))
        return dy.cmult(o, dy.tanh(c)), c


class GRUBuilder(_RNNBuilder):
    """z = sigmoid(bz + Wxz x + Whz h); r = sigmoid(br + Wxr x + Whr h);
    h' = (1 - z) h + z tanh(bh + Wxh x + Whh (r h))."""

    collection_name = "gru-builder"

    def _layer_params(self, x_dim):
        hd, add = self.hidden_dim, self.pc.add_parameters
        return [add((hd, x_dim)), add((hd, hd)), add(hd),
                add((hd, x_dim)), add((hd, hd)), add(hd),
                add((hd, x_dim)), add((hd, hd)), add(hd)]

    def _step(self, k, x, prev, mask):
        x2z, h2z, bz, x2r, h2r, br, x2h, h2h, bh = self._exprs(k)
        if self.dropout_rate:
            x = dy.dropout(x, self.dropout_rate)
        if prev is None:
            z = dy.logistic(_affine(bz, x2z, x))
            return (dy.cmult(z, dy.tanh(_affine(bh, x2h, x))),)
        (h,) = prev
        z = dy.logistic(_affine(bz, x2z, x, h2z, h))
        r = dy.logistic(_affine(br, x2r, x, h2r, h))
        candidate = dy.tanh(_affine(bh, x2h, x, h2h, dy.cmult(r, h)))
        return (dy.cmult(1.0 - z, h) + dy.cmult(z, candidate),)


class SimpleRNNBuilder(_RNNBuilder):
    """h' = tanh(b + Wx x + Wh h)."""

    collection_name = "simple-rnn-builder"

    def _layer_params(self, x_dim):
        hd, add = self.hidden_dim, self.pc.add_parameters
        return [add((hd, x_dim)), add((hd, hd)), add(hd)]

    def _step(self, k, x, prev, mask):
        x2h, h2h, b = self._exprs(k)
        if self.dropout_rate:
            x = dy.dropout(x, self.dropout_rate)
        if prev is None:
            return (dy.tanh(_affine(b, x2h, x)),)
        return (dy.tanh(_affine(b, x2h, x, h2h, prev[0])),)


def _class_name(cls: Any) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _class_from(name: str) -> Any:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class BiRNNBuilder:
    """Layers of a forward and a backward builder of hidden_dim / 2 each; each layer reads the
    concatenated outputs of the one below."""

    def __init__(self, num_layers: int, input_dim: int, hidden_dim: int,
                 model: ParameterCollection, rnn_builder_factory: Any,
                 builder_layers: Any = None) -> None:
        model = self.model = model.add_subcollection("birnn")
        if builder_layers is None:
            if num_layers <= 0 or hidden_dim % 2:
                raise ValueError("BiRNNBuilder needs layers > 0 and an even hidden_dim")
            half = hidden_dim // 2
            self.builder_layers = [(rnn_builder_factory(1, input_dim, half, model),
                                    rnn_builder_factory(1, input_dim, half, model))]
            for _ in range(num_layers - 1):
                self.builder_layers.append((rnn_builder_factory(1, hidden_dim, half, model),
                                            rnn_builder_factory(1, hidden_dim, half, model)))
        else:
            self.builder_layers = builder_layers
        factory = rnn_builder_factory if isinstance(rnn_builder_factory, str) \
            else _class_name(rnn_builder_factory)
        self.spec = (num_layers, input_dim, hidden_dim, factory)

    def whoami(self) -> str:
        return "BiRNNBuilder"

    def param_collection(self) -> ParameterCollection:
        return self.model

    @staticmethod
    def from_spec(spec: Sequence[Any], model: ParameterCollection) -> "BiRNNBuilder":
        num_layers, input_dim, hidden_dim, factory = spec[:4]
        if isinstance(factory, str):
            factory = _class_from(factory)
        return BiRNNBuilder(num_layers, input_dim, hidden_dim, model, factory)

    def set_dropout(self, p: float) -> None:
        for f, b in self.builder_layers:
            f.set_dropout(p)
            b.set_dropout(p)

    def disable_dropout(self) -> None:
        for f, b in self.builder_layers:
            f.disable_dropout()
            b.disable_dropout()

    def _lower(self, es: list) -> list:
        for fb, bb in self.builder_layers[:-1]:
            fs = fb.initial_state().transduce(es)
            bs = bb.initial_state().transduce(list(reversed(es)))
            es = [dy.concatenate([f, b]) for f, b in zip(fs, reversed(bs))]
        return es

    def add_inputs(self, es: Sequence[Any]) -> list[tuple[RNNState, RNNState]]:
        es = self._lower(list(es))
        fb, bb = self.builder_layers[-1]
        fs = fb.initial_state().add_inputs(es)
        bs = bb.initial_state().add_inputs(list(reversed(es)))
        return list(zip(fs, reversed(bs)))

    def transduce(self, es: Sequence[Any]) -> list[Expression]:
        es = self._lower(list(es))
        fb, bb = self.builder_layers[-1]
        fs = fb.initial_state().transduce(es)
        bs = bb.initial_state().transduce(list(reversed(es)))
        return [dy.concatenate([f, b]) for f, b in zip(fs, reversed(bs))]


# -- softmax builders -----------------------------------------------------------------------------
class StandardSoftmaxBuilder:
    """p(w | r) = softmax(W r + b)."""

    def __init__(self, rep_dim: int, num_labels: int, pc: ParameterCollection,
                 bias: bool = True) -> None:
        self.pc = pc.add_subcollection("standard-softmax-builder")
        self.w = self.pc.add_parameters((num_labels, rep_dim))
        self.b = self.pc.add_parameters(num_labels, init=ConstInitializer(0.0)) if bias else None
        self.spec = (rep_dim, num_labels, bool(bias))

    def param_collection(self) -> ParameterCollection:
        return self.pc

    @staticmethod
    def from_spec(spec: Sequence[Any], model: ParameterCollection) -> "StandardSoftmaxBuilder":
        return StandardSoftmaxBuilder(*spec[:2], model, *spec[2:])

    def full_logits(self, rep: Any, update: bool = True) -> Expression:
        w = self.w.expr(update)
        return w * rep if self.b is None else dy.affine_transform([self.b.expr(update), w, rep])

    def full_log_distribution(self, rep: Any, update: bool = True) -> Expression:
        return dy.log_softmax(self.full_logits(rep, update))

    def neg_log_softmax(self, rep: Any, classidx: int, update: bool = True) -> Expression:
        return dy.pickneglogsoftmax(self.full_logits(rep, update), classidx)

    def neg_log_softmax_batch(self, rep: Any, classidxs: Sequence[int],
                              update: bool = True) -> Expression:
        return dy.pickneglogsoftmax_batch(self.full_logits(rep, update), classidxs)

    def sample(self, rep: Any) -> int:
        p = np.asarray(dy.softmax(self.full_logits(rep)).npvalue(), dtype=np.float64)
        return int(STATE.rng.choice(len(p), p=p / p.sum()))


SoftmaxBuilder = StandardSoftmaxBuilder


class ClassFactoredSoftmaxBuilder:
    """p(w | r) = p(class(w) | r) p(w | class(w), r); the classes from a file of
    `class word` lines, words numbered by word_dict."""

    def __init__(self, rep_dim: int, cluster_file: str, word_dict: dict,
                 pc: ParameterCollection, bias: bool = True) -> None:
        self.pc = pc.add_subcollection("class-factored-softmax-builder")
        classes: dict[str, int] = {}
        members: list[list[int]] = []
        self.word_class: dict[int, tuple[int, int]] = {}
        with open(cluster_file, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue
                c = classes.setdefault(parts[0], len(classes))
                if c == len(members):
                    members.append([])
                word = word_dict[parts[1]]
                self.word_class[word] = (c, len(members[c]))
                members[c].append(word)
        self.members = members
        self.cw = self.pc.add_parameters((len(members), rep_dim))
        self.cb = self.pc.add_parameters(len(members), init=ConstInitializer(0.0))
        self.rw = [self.pc.add_parameters((len(m), rep_dim)) if len(m) > 1 else None
                   for m in members]
        self.rb = [self.pc.add_parameters(len(m), init=ConstInitializer(0.0))
                   if len(m) > 1 else None for m in members]

    def param_collection(self) -> ParameterCollection:
        return self.pc

    def neg_log_softmax(self, rep: Any, wordidx: int, update: bool = True) -> Expression:
        c, k = self.word_class[int(wordidx)]
        loss = dy.pickneglogsoftmax(
            dy.affine_transform([self.cb.expr(update), self.cw.expr(update), rep]), c)
        if self.rw[c] is not None:
            loss = loss + dy.pickneglogsoftmax(dy.affine_transform(
                [self.rb[c].expr(update), self.rw[c].expr(update), rep]), k)
        return loss
