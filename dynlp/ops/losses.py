"""Probabilities and losses: softmax, log_softmax, pick_neg_log_softmax, hinge, binary_log_loss,
squared_distance, huber_distance. Softmaxes normalize along per-example axis 0 (columns of a
matrix, as DyNet). Imports only the op-table core.
"""

import numpy as np

from .core import Case, define


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


define("softmax", shape=lambda x: x, forward=_softmax,
       vjp=lambda g, out, x: (out * (g - (g * out).sum(axis=1, keepdims=True)),),
       jvp=lambda ts, out, x: out * (ts[0] - (ts[0] * out).sum(axis=1, keepdims=True)),
       cases=[Case([(4,)]), Case([(3, 2)])])


def _log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


define("log_softmax", shape=lambda x: x, forward=_log_softmax,
       vjp=lambda g, out, x: (g - np.exp(out) * g.sum(axis=1, keepdims=True),),
       jvp=lambda ts, out, x: ts[0] - (np.exp(out) * ts[0]).sum(axis=1, keepdims=True),
       cases=[Case([(4,)]), Case([(3, 2)])])


def _vector(x):
    if len(x) != 1:
        raise ValueError("expects a vector of scores")
    return ()


def _label_case(n):
    return Case([(n,)], {}, {"index": lambda rng: int(rng.integers(n))})


def _pnls_forward(x, index):
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    return lse - x[np.arange(x.shape[0]), index]


def _pnls_vjp(g, out, x, index):
    p = _softmax(x)
    p[np.arange(x.shape[0]), index] -= 1.0
    return (g[:, None] * p,)


def _pnls_jvp(ts, out, x, index):
    t = ts[0]
    return (_softmax(x) * t).sum(axis=1) - t[np.arange(x.shape[0]), index]


define("pick_neg_log_softmax", shape=_vector, batched_attrs=("index",),
       forward=_pnls_forward, vjp=_pnls_vjp, jvp=_pnls_jvp, cases=[_label_case(5)],
       doc="-log softmax(x)[index]: the cross-entropy loss of one label")


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
