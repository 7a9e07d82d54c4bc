"""Probabilities and losses: softmax, log_softmax, pick_neg_log_softmax, hinge, binary_log_loss,
squared_distance, huber_distance; and whole MLPs as one node: `mlp` (the scores) and its fused
classifier head `mlp_pick_neg_log_softmax`, which share one layer loop.
Softmaxes normalize along per-example axis 0 (columns of a matrix, as DyNet). Imports only the
op-table core and the activation table of linalg.
"""

import numpy as np

from .core import SHARED, STACK, Case, OuterProduct, define, ragged
from .linalg import ACTIVATIONS, segment_sum
from .structure import concat_windows, dropout_mask


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nonempty(x):
    if not x or x[0] == 0:
        raise ValueError("expects a nonempty vector or matrix of scores")
    return x


define("softmax", shape=_nonempty, forward=_softmax,
       vjp=lambda g, out, x: (out * (g - (g * out).sum(axis=1, keepdims=True)),),
       jvp=lambda ts, out, x: out * (ts[0] - (ts[0] * out).sum(axis=1, keepdims=True)),
       pad=lambda shapes, out: ((0,), 0, ("-inf",)),  # (-inf scores: zero probability)
       cases=[Case([(4,)]), Case([(3, 2)])])


def _log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


define("log_softmax", shape=_nonempty, forward=_log_softmax,
       vjp=lambda g, out, x: (g - np.exp(out) * g.sum(axis=1, keepdims=True),),
       jvp=lambda ts, out, x: ts[0] - (np.exp(out) * ts[0]).sum(axis=1, keepdims=True),
       cases=[Case([(4,)]), Case([(3, 2)])])


def _vector(x):
    if len(x) != 1 or x[0] == 0:
        raise ValueError("expects a nonempty vector of scores")
    return ()


def _label_case(n):
    return Case([(n,)], {}, {"index": lambda rng: int(rng.integers(n))})


# The cross-entropy of scores z (B, C) and labels, shared by pick_neg_log_softmax and the MLP
# heads: -log softmax(z)[label] = max + log(sum(exp(z - max))) - z[label], and its tangent.


def _cross_entropy(z, label):
    """The loss of each row, and exp(z - max) with its row sums (softmax = e / total)."""
    m = z.max(axis=1)
    e = np.exp(z - m[:, None])
    total = e.sum(axis=1)
    return m + np.log(total) - z[np.arange(z.shape[0]), label], e, total


def _cross_entropy_jvp(p, t, label):
    """The tangent of each row's loss for a tangent t of its scores; p = softmax."""
    return (p * t).sum(axis=1) - t[np.arange(p.shape[0]), label]


def _cross_entropy_vjp(p, g, label):
    """d loss / d z for cotangents g of the losses (B,): (softmax - onehot) * g."""
    gz = p * g[:, None]
    gz[np.arange(p.shape[0]), label] -= g
    return gz


def _pnls_forward(x, index):
    return _cross_entropy(x, index)[0]


def _pnls_vjp(g, out, x, index):
    p = _softmax(x)
    p[np.arange(x.shape[0]), index] -= 1.0
    return (g[:, None] * p,)


def _pnls_jvp(ts, out, x, index):
    return _cross_entropy_jvp(_softmax(x), ts[0], index)


define("pick_neg_log_softmax", shape=_vector, batched_attrs=("index",),
       forward=_pnls_forward, vjp=_pnls_vjp, jvp=_pnls_jvp, cases=[_label_case(5)],
       doc="-log softmax(x)[index]: the cross-entropy loss of one label")


# ---------------------------------------------------------------------------------------------
# An MLP in one node, alone (`mlp`) or with its cross-entropy (`mlp_pick_neg_log_softmax`):
# x -> a_1 = f(W_1 x + b_1) -> ... -> z = W_k a_{k-1} + b_k. Each layer is the arithmetic of
# affine_transform with the activation fused, so the values agree with that chain of nodes to the
# last bit. Both ops share the layer loop below; the residual is the input of every layer.
# The input x is one vector or the concatenation of two (the arguments x1, x2, W1, b1, ...: an
# odd count is one input, an even count two), and `windows`, one (start, end) per input, reads
# x1[start:end] (and x2[start:end]) in place: the h half of a state [c; h], or the h halves of
# a BiLSTM's two directions, need no slicing or concatenation node of their own.


def _input_count(nargs):
    return 2 - nargs % 2


def _mlp_mask(nargs):
    k = _input_count(nargs)
    return (STACK,) * k + (SHARED,) * (nargs - k)


def _layer_sizes(shapes, activation, windows=None):
    """Check the shapes of the inputs (and windows) and of the (W, b) pairs; the size of the
    scores."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    k = _input_count(len(shapes))
    xs, layers = shapes[:k], shapes[k:]
    if not layers or len(layers) % 2:
        raise ValueError("arguments must be x (or x1, x2), W1, b1, W2, b2, ... with at least "
                         "one layer")
    if any(len(x) != 1 for x in xs):
        raise ValueError("x must be a vector")
    if windows is None:
        windows = [(0, x[0]) for x in xs]
    elif len(windows) != k:
        raise ValueError(f"{len(windows)} windows for {k} input(s)")
    size = 0
    for (start, end), x in zip(windows, xs):
        if not 0 <= start < end <= x[0]:
            raise ValueError(f"window {(start, end)} out of range for x of size {x[0]}")
        size += end - start
    for n, (w, b) in enumerate(zip(layers[::2], layers[1::2]), 1):
        if len(w) != 2 or w[1] != size:
            raise ValueError(f"W{n} must be a matrix (out, {size}), got {w}")
        if b != (w[0],):
            raise ValueError(f"b{n} must be ({w[0]},) to match W{n} {w}, got {b}")
        size = w[0]
    return size


def _split(args):
    k = _input_count(len(args))
    return args[:k], args[k:]


def _first_input(xs, windows):
    """The first layer's input (B, X): x itself, its window (a view), or the windows of both
    inputs concatenated."""
    if windows is None:
        return xs[0] if len(xs) == 1 else np.concatenate(xs, axis=1)
    return concat_windows(xs, windows)


def _input_cotangents(ga, xs, windows):
    """Each input's cotangent from that of the first layer's input (zero outside windows)."""
    if windows is None and len(xs) == 1:
        return [ga]
    cts, at = [], 0
    for k, x in enumerate(xs):
        start, end = (0, x.shape[1]) if windows is None else windows[k]
        width = end - start
        if width == x.shape[1]:
            cts.append(ga[:, at:at + width])
        else:
            ct = np.zeros(x.shape, ga.dtype)
            ct[:, start:end] = ga[:, at:at + width]
            cts.append(ct)
        at += width
    return cts


def _layers_forward(x, layers, activation, masks=None):
    """The scores z (B, out_k) and the inputs of every layer [x, a_1, ..., a_{k-1}]. With
    dropout `masks` (one (B, size) per hidden layer), a_j = f(...) * masks[j-1], and the
    activations before their masks follow in the same list: [x, a_1, .., a_{k-1}, f_1, ..]."""
    f = ACTIVATIONS[activation][0]
    inputs = [x]
    acts = []
    last = len(layers) // 2 - 1
    for k in range(last + 1):
        z = inputs[-1] @ layers[2 * k].T + layers[2 * k + 1]
        if k < last:
            a = z if f is None else f(z)
            if masks is not None:
                acts.append(a)
                a = a * masks[k]
            inputs.append(a)
    inputs.extend(acts)
    return z, inputs


def _layers_vjp(gz, inputs, layers, activation, masks=None):
    """Cotangents of x, W1, b1, ..., Wk, bk from the cotangent gz (B, out_k) of the scores;
    `inputs` and `masks` as `_layers_forward` made and took them."""
    df = ACTIVATIONS[activation][1]
    count = len(layers) // 2
    acts = inputs[count:] if masks is not None else inputs[1:]
    cts = [None] * (len(layers) + 1)
    for k in range(count - 1, -1, -1):
        a = inputs[k]
        cts[2 * k + 1] = OuterProduct(gz, a)
        cts[2 * k + 2] = gz.sum(axis=0)
        ga = gz @ layers[2 * k]
        if k > 0:
            if masks is not None:
                ga *= masks[k - 1]
            if df is not None:
                ga *= df(acts[k - 1])
        gz = ga
    cts[0] = gz
    return cts


def _layers_jvp(t, inputs, layers, activation, ts, masks=None):
    """The tangent of the scores (B, out_k) from the tangent t of the first layer's input and
    the tangents ts of W1, b1, ... (None: 0); `inputs` and `masks` as in `_layers_vjp`."""
    df = ACTIVATIONS[activation][1]
    x = inputs[0]
    last = len(layers) // 2 - 1
    acts = inputs[last + 1:] if masks is not None else inputs[1:]
    for k in range(last + 1):
        w, tw, tb = layers[2 * k], ts[2 * k], ts[2 * k + 1]
        tz = np.zeros((x.shape[0], w.shape[0]), x.dtype) if t is None else t @ w.T
        if tw is not None:
            tz += inputs[k] @ tw.T
        if tb is not None:
            tz += tb
        if k < last:
            if df is not None:
                tz *= df(acts[k])
            if masks is not None:
                tz *= masks[k]
        t = tz
    return t


def _masks_of(layers, uniform, rate):
    """The dropout masks of the hidden layers, (B, size) each, from uniform numbers
    (B, total hidden size); None without them (no dropout)."""
    if uniform is None:
        return None
    mask = dropout_mask(uniform, rate, layers[0].dtype)
    masks, at = [], 0
    for w in layers[0:len(layers) - 2:2]:
        masks.append(mask[:, at:at + w.shape[0]])
        at += w.shape[0]
    return masks


def _check_rate(rate):
    if rate is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} not in [0, 1)")


def _mlp_vjp_all(gz, args, residual, activation, windows, masks=None):
    xs, layers = _split(args)
    cts = _layers_vjp(gz, residual, layers, activation, masks)
    return _input_cotangents(cts[0], xs, windows) + cts[1:]


def _mlp_jvp_all(ts, args, residual, activation, windows, masks=None):
    xs, layers = _split(args)
    k = len(xs)
    t = None
    if any(tx is not None for tx in ts[:k]):
        t = _first_input([np.zeros_like(x) if tx is None else tx for x, tx in zip(xs, ts)],
                         windows)
    return _layers_jvp(t, residual, layers, activation, ts[k:], masks)


def _mlp_case(sizes, activation=None, labeled=False, windows=None, inputs=None):
    """sizes: [input, hidden ..., output]; `inputs` the sizes of two inputs, `windows` what the
    first layer reads of each (their widths summing to sizes[0])."""
    shapes = [(n,) for n in inputs] if inputs else [(sizes[0],)]
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        shapes += [(fan_out, fan_in), (fan_out,)]
    batched = {"label": lambda rng: int(rng.integers(sizes[-1]))} if labeled else {}
    attrs = {"activation": activation} if activation else {}
    if windows is not None:
        attrs["windows"] = windows
    return Case(shapes, attrs, batched)


def _mlp_cases(labeled):
    return [_mlp_case([4, 5], labeled=labeled), _mlp_case([4, 6, 3], "tanh", labeled),
            _mlp_case([3, 5, 4, 3], "rectify", labeled), _mlp_case([3, 4, 2], "logistic", labeled),
            # the first layer reads x[2:5] of a vector of 7
            _mlp_case([3, 4, 2], "tanh", labeled, windows=((2, 5),), inputs=(7,)),
            _mlp_case([2, 3], labeled=labeled, windows=((0, 2),), inputs=(4,)),
            # two inputs: x1[1:3] and x2[2:4] concatenated, or the whole of both
            _mlp_case([4, 5, 3], "tanh", labeled, windows=((1, 3), (2, 4)), inputs=(4, 4)),
            _mlp_case([5, 3], labeled=labeled, inputs=(2, 3))]


# The rules of `mlp` serve its `_dropout` form too: with `uniform` and `rate` (see
# `_masks_of`), each hidden layer's output is masked as a `dropout` node after it would.


def _mlp_shape(*shapes, activation=None, windows=None, rate=None):
    _check_rate(rate)
    return (_layer_sizes(shapes, activation, windows),)


def _mlp_forward(*args, activation=None, windows=None, uniform=None, rate=None):
    xs, layers = _split(args)
    return _layers_forward(_first_input(xs, windows), layers, activation,
                           _masks_of(layers, uniform, rate))


def _mlp_vjp(g, out, *args, residual, activation=None, windows=None, uniform=None, rate=None):
    return _mlp_vjp_all(g, args, residual, activation, windows,
                        _masks_of(_split(args)[1], uniform, rate))


def _mlp_jvp(ts, out, *args, residual, activation=None, windows=None, uniform=None, rate=None):
    return _mlp_jvp_all(ts, args, residual, activation, windows,
                        _masks_of(_split(args)[1], uniform, rate))


define("mlp", shape=_mlp_shape, batch=_mlp_mask, cost=4, residual=True, forward=_mlp_forward,
       vjp=_mlp_vjp, jvp=_mlp_jvp, cases=_mlp_cases(labeled=False) + [_mlp_case([3, 4], "tanh")],
       doc="W_k a_{k-1} + b_k with a_0 = x, a_j = f(W_j a_{j-1} + b_j): the scores of an MLP "
           "in one node; x (X,) stacked, every W_j (out, in) and b_j (out,) shared; f an "
           "activation (tanh, rectify, logistic) or None, not applied to the last layer. x may "
           "be two arguments x1, x2, concatenated; windows=((start, end), ...), one per input, "
           "makes the first layer read those slices of them")


def _mlp_loss_shape(*shapes, activation=None, windows=None):
    _mlp_shape(*shapes, activation=activation, windows=windows)
    return ()


def _mlp_loss_forward(*args, label, activation=None, windows=None):
    """The loss, and the residual (inputs of every layer, softmax of the scores)."""
    z, inputs = _mlp_forward(*args, activation=activation, windows=windows)
    out, e, total = _cross_entropy(z, label)
    return out, (inputs, e / total[:, None])


def _mlp_loss_vjp(g, out, *args, label, residual, activation=None, windows=None):
    inputs, p = residual
    return _mlp_vjp(_cross_entropy_vjp(p, g, label), out, *args, residual=inputs,
                    activation=activation, windows=windows)


def _mlp_loss_jvp(ts, out, *args, label, residual, activation=None, windows=None):
    inputs, p = residual
    return _cross_entropy_jvp(p, _mlp_jvp(ts, out, *args, residual=inputs,
                                          activation=activation, windows=windows), label)


define("mlp_pick_neg_log_softmax", shape=_mlp_loss_shape, batch=_mlp_mask,
       batched_attrs=("label",), cost=4, residual=True, forward=_mlp_loss_forward,
       vjp=_mlp_loss_vjp, jvp=_mlp_loss_jvp, cases=_mlp_cases(labeled=True),
       doc="-log softmax(W_k a_{k-1} + b_k)[label] with a_0 = x, a_j = f(W_j a_{j-1} + b_j): "
           "x (X,) stacked, every W_j (out, in) and b_j (out,) shared; f an activation "
           "(tanh, rectify, logistic) or None; one node for an MLP and its cross-entropy; x "
           "and windows as in mlp")


# `mlp` with dropout on the hidden layers while training: `rate` (static) and, per example,
# `uniform` (the hidden sizes summed) drawn when the node is built; the masks are
# (uniform >= rate) / (1 - rate), as `dropout` nodes after each hidden layer would make them.
# (`MLP` makes a single loss under dropout this node and a `pick_neg_log_softmax` node, and
# the losses that `dn.esum` sums the hidden layers' nodes and one `mlp_loss_sum_1` node.)


def _dropout_case(case, hidden, rate=0.4):
    """A case of the dropout form: `case` with a rate and uniform numbers for `hidden` units."""
    batched = dict(case.batched)
    batched["uniform"] = lambda rng: rng.random(hidden)
    return Case(case.shapes, {**case.attrs, "rate": rate}, batched)


_MLP_DROPOUT_CASES = [
    _dropout_case(_mlp_case([4, 6, 3], "tanh"), 6),
    _dropout_case(_mlp_case([3, 5, 4, 3], "rectify"), 9, 0.5),
    _dropout_case(_mlp_case([3, 4, 2], "logistic"), 4),
    _dropout_case(_mlp_case([4, 5, 3], "tanh", windows=((1, 3), (2, 4)), inputs=(4, 4)), 5)]

define("mlp_dropout", shape=_mlp_shape, batch=_mlp_mask, batched_attrs=("uniform",),
       cost=4, residual=True, forward=_mlp_forward, vjp=_mlp_vjp, jvp=_mlp_jvp,
       cases=_MLP_DROPOUT_CASES,
       doc="mlp with dropout after each hidden layer: masks (uniform >= rate) / (1 - rate) "
           "from `uniform`, the hidden layers' sizes summed, drawn when the node is built")


# The sum of many MLP losses in one node: mlp_loss_sum_L(W1, b1, ..., WL, bL, x_1, x_2, ...;
# label) = sum_t mlp_pick_neg_log_softmax(x_t, label_t), with every x_t one input (or, with two
# windows, two consecutive arguments of one shape), of an MLP of L layers. A ragged op: the
# nodes of a batch may sum any number of terms (a sentence's words, a tree's nodes), and they
# all run as one call, so that the losses of a whole minibatch are one batch and the
# minibatch's graph has one node per sentence or tree for them instead of one per word.
# `label` has one value per term. The backward recomputes the forward (the MLP is the small
# part of these models).


def _loss_sum_terms(x, counts, windows):
    """The inputs of the terms (a list of one or two (T, X) arrays) and the terms per node."""
    inputs = 1 if windows is None else len(windows)
    if inputs == 1:
        return [x], counts
    grouped = x.reshape((-1, inputs) + x.shape[1:])
    return [grouped[:, k] for k in range(inputs)], counts // inputs


def _loss_sum_terms_forward(x, ws, counts, label, activation, windows):
    """The terms' inputs, their count per node, the MLP's layer inputs, each term's loss and
    the softmax of its scores."""
    xs, terms = _loss_sum_terms(x, counts, windows)
    z, inputs = _layers_forward(_first_input(xs, windows), ws, activation)
    losses, e, total = _cross_entropy(z, label)
    return xs, terms, inputs, losses, e / total[:, None]


def _loss_sum_forward(x, *ws, counts, label, activation=None, windows=None):
    _, terms, _, losses, _ = _loss_sum_terms_forward(x, ws, counts, label, activation, windows)
    return segment_sum(losses, terms)


def _loss_sum_vjp(g, out, x, *ws, counts, label, activation=None, windows=None):
    xs, terms, inputs, _, p = _loss_sum_terms_forward(x, ws, counts, label, activation,
                                                      windows)
    gz = _cross_entropy_vjp(p, np.repeat(g, terms), label)
    cts = _layers_vjp(gz, inputs, ws, activation)
    parts = _input_cotangents(cts[0], xs, windows)
    ct = parts[0] if len(parts) == 1 else np.stack(parts, axis=1).reshape(x.shape)
    return [ct] + cts[1:]


def _loss_sum_jvp(t, out, x, *ws, counts, tws, label, activation=None, windows=None):
    xs, terms, inputs, _, p = _loss_sum_terms_forward(x, ws, counts, label, activation,
                                                      windows)
    ts, _ = _loss_sum_terms(t, counts, windows)
    tz = _layers_jvp(_first_input(ts, windows), inputs, ws, activation, tws)
    return segment_sum(_cross_entropy_jvp(p, tz, label), terms)


def _loss_sum_shape(layers):
    def shape(*shapes, activation=None, windows=None):
        xs = shapes[2 * layers:]
        inputs = 1 if windows is None else len(windows)
        if not xs or len(xs) % inputs:
            raise ValueError(f"the terms need {inputs} input(s) each, got {len(xs)} arguments")
        _layer_sizes(xs[:inputs] + shapes[:2 * layers], activation, windows)
        if any(s != xs[0] for s in xs):
            raise ValueError("the terms' inputs must all have one shape")
        return ()
    return shape


def _loss_sum_case(sizes, terms, activation=None, windows=None, inputs=None):
    layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [(fan_out, fan_in), (fan_out,)]
    per_term = [(n,) for n in inputs] if inputs else [(sizes[0],)]
    labels = {"label": lambda rng: tuple(int(v) for v in rng.integers(sizes[-1], size=terms))}
    attrs = {"activation": activation} if activation else {}
    if windows is not None:
        attrs["windows"] = windows
    return Case(layers + per_term * terms, attrs, labels)


_LOSS_SUM_CASES = {
    1: [_loss_sum_case([4, 3], 3), _loss_sum_case([3, 4], 2, windows=((2, 5),), inputs=(6,))],
    2: [_loss_sum_case([4, 5, 3], 3, "tanh"),
        _loss_sum_case([4, 3, 2], 2, "rectify", windows=((1, 3), (0, 2)), inputs=(4, 4))],
    3: [_loss_sum_case([3, 4, 3, 2], 2, "logistic")],
    4: [_loss_sum_case([2, 3, 3, 2, 2], 2, "tanh")],
}

LOSS_SUM_LAYERS = tuple(_LOSS_SUM_CASES)  # the MLP depths with a loss-sum op

for _layers in LOSS_SUM_LAYERS:
    ragged(f"mlp_loss_sum_{_layers}", shape=_loss_sum_shape(_layers), shared=2 * _layers,
           batched_attrs=("label",), cost=4, forward=_loss_sum_forward, vjp=_loss_sum_vjp,
           jvp=_loss_sum_jvp, cases=_LOSS_SUM_CASES[_layers],
           doc=f"sum over terms t of mlp_pick_neg_log_softmax(x_t, label_t) for an MLP of "
               f"{_layers} layer(s): W1, b1, ... shared, then the terms' inputs (one each, or "
               f"two with two windows); one label per term; nodes of any number of terms "
               f"batch together")


def _hinge_active(x, index, margin):
    rows = np.arange(x.shape[0])
    viol = margin - x[rows, index][:, None] + x
    active = (viol > 0).astype(x.dtype)
    active[rows, index] = 0.0
    return viol, active


def _hinge_forward(x, index, margin=1.0):
    viol, active = _hinge_active(x, index, margin)
    return (viol * active).sum(axis=1)


def _hinge_vjp(g, out, x, index, margin=1.0):
    _, active = _hinge_active(x, index, margin)
    gx = active * g[:, None]
    gx[np.arange(x.shape[0]), index] = -active.sum(axis=1) * g
    return (gx,)


def _hinge_jvp(ts, out, x, index, margin=1.0):
    _, active = _hinge_active(x, index, margin)
    t = ts[0]
    return (active * (t - t[np.arange(x.shape[0]), index][:, None])).sum(axis=1)


define("hinge", shape=lambda x, margin=1.0: _vector(x), batched_attrs=("index",),
       forward=_hinge_forward, vjp=_hinge_vjp, jvp=_hinge_jvp,
       cases=[Case([(5,)], {"margin": 0.7}, {"index": lambda rng: int(rng.integers(5))})],
       doc="sum over j != index of max(0, margin - x[index] + x[j])")


def _pair_shape(x, y, **unused):
    if x != y:
        raise ValueError("shapes differ")
    return ()


def _flat_sum(a):
    return a.reshape(a.shape[0], -1).sum(axis=1)


def _expand(g, x):
    return g.reshape((g.shape[0],) + (1,) * (x.ndim - 1))


def _bll(x, y):
    return -_flat_sum(y * np.log(x) + (1.0 - y) * np.log1p(-x))


def _bll_grads(x, y):
    return (1.0 - y) / (1.0 - x) - y / x, np.log1p(-x) - np.log(x)


def _bll_vjp(g, out, x, y):
    dx, dy = _bll_grads(x, y)
    ge = _expand(g, x)
    return ge * dx, ge * dy


def _bll_jvp(ts, out, x, y):
    dx, dy = _bll_grads(x, y)
    result = np.zeros_like(out)
    if ts[0] is not None:
        result = result + _flat_sum(ts[0] * dx)
    if ts[1] is not None:
        result = result + _flat_sum(ts[1] * dy)
    return result


define("binary_log_loss", shape=_pair_shape, domain="unit", forward=_bll, vjp=_bll_vjp,
       jvp=_bll_jvp, cases=[Case([(3,), (3,)])],
       doc="-sum(y log x + (1 - y) log(1 - x)) for probabilities x and targets y")


def _diff_jvp(dfun):
    def jvp(ts, out, x, y, **a):
        d = dfun(x - y, **a)
        result = np.zeros_like(out)
        if ts[0] is not None:
            result = result + _flat_sum(ts[0] * d)
        if ts[1] is not None:
            result = result - _flat_sum(ts[1] * d)
        return result
    return jvp


def _sqdist_d(a):
    return 2.0 * a


def _sqdist_vjp(g, out, x, y):
    d = _expand(g, x) * _sqdist_d(x - y)
    return d, -d


define("squared_distance", shape=_pair_shape, forward=lambda x, y: _flat_sum(np.square(x - y)),
       vjp=_sqdist_vjp, jvp=_diff_jvp(_sqdist_d), cases=[Case([(3,), (3,)])])


def _huber(a, c):
    r = np.abs(a)
    return np.where(r <= c, 0.5 * a * a, c * (r - 0.5 * c))


def _huber_d(a, c=1.345):
    return np.clip(a, -c, c)


def _huber_vjp(g, out, x, y, c=1.345):
    d = _expand(g, x) * _huber_d(x - y, c)
    return d, -d


define("huber_distance", shape=_pair_shape,
       forward=lambda x, y, c=1.345: _flat_sum(_huber(x - y, c)), vjp=_huber_vjp,
       jvp=_diff_jvp(_huber_d), cases=[Case([(4,), (4,)], {"c": 0.5})],
       doc="sum of Huber losses of x - y with threshold c")
