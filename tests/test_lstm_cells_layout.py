"""The n-ary cells (lstm_step, treelstm_binary, treelstm_binary_nox) at every batch size, against
a plain batch-major numpy reference: the cells choose how to lay out and split their products by
the batch size and the weight's size, and every choice must give the same values and cotangents
(the gradients themselves are checked by tests/test_ops.py)."""

import numpy as np
import pytest

from dynlp.ops import OuterProduct
from dynlp.ops.cells import _nary_forward, _nary_vjp


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(W, b, x, states):
    """[c'; h'] and the cotangent function, batch-major, one gate at a time."""
    hidden = states[0].shape[1] // 2
    n = len(states)
    parts = ([] if x is None else [x]) + [s[:, hidden:] for s in states]
    a = np.concatenate(parts, axis=1)
    pre = a @ W.T + b
    sig = sigmoid(pre[:, :(n + 2) * hidden])
    u = np.tanh(pre[:, (n + 2) * hidden:])
    i, o = sig[:, :hidden], sig[:, (n + 1) * hidden:]
    c = i * u
    for k, s in enumerate(states, 1):
        c = c + sig[:, k * hidden:(k + 1) * hidden] * s[:, :hidden]
    out = np.concatenate([c, o * np.tanh(c)], axis=1)

    def vjp(g):
        gc_out, gh = g[:, :hidden], g[:, hidden:]
        tc = np.tanh(c)
        gc = gc_out + gh * o * (1 - tc ** 2)
        gsig = [gc * u] + [gc * s[:, :hidden] for s in states] + [gh * tc]
        gpre = np.concatenate([np.concatenate(gsig, axis=1) * sig * (1 - sig),
                               gc * i * (1 - u ** 2)], axis=1)
        ga = gpre @ W
        cts = [gpre.T @ a, gpre.sum(axis=0)]
        width = 0
        if x is not None:
            width = x.shape[1]
            cts.append(ga[:, :width])
        for k, s in enumerate(states):
            f = sig[:, (k + 1) * hidden:(k + 2) * hidden]
            cts.append(np.concatenate([gc * f, ga[:, width + k * hidden:width + (k + 1) * hidden]],
                                      axis=1))
        return cts

    return out, vjp


def dense(ct):
    return ct.dense() if isinstance(ct, OuterProduct) else ct


# (hidden, input width, children): the weights of the tagger (H 128 over 128 and 256 inputs),
# of DyNet's tagger (H 50 over 128) and small ones; batch sizes on both sides of every split
SHAPES = [(128, 128, 1), (128, 256, 1), (50, 128, 1), (8, 5, 1), (16, 0, 2), (12, 7, 2)]
BATCHES = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 21, 32, 33, 47, 48, 49, 64, 65]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("hidden,width,children", SHAPES)
def test_nary_cell_matches_reference_at_every_batch_size(hidden, width, children, dtype, rtol):
    rng = np.random.default_rng(hidden * 100 + width + children)
    W = rng.normal(scale=0.3, size=((children + 3) * hidden, width + children * hidden))
    b = rng.normal(scale=0.3, size=(children + 3) * hidden)
    for batch in BATCHES:
        x = rng.normal(size=(batch, width)) if width else None
        states = [rng.normal(size=(batch, 2 * hidden)) for _ in range(children)]
        g = rng.normal(size=(batch, 2 * hidden))
        want, vjp = reference(W, b, x, states)
        want_cts = vjp(g)
        cast = [v if v is None else v.astype(dtype) for v in (W, b, x, g)]
        got, residual = _nary_forward(cast[0], cast[1], cast[2], [s.astype(dtype) for s in states])
        assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
        # (the engine owns the output: it must not be a view of what the VJP reads back)
        assert not any(np.shares_memory(got, r) for r in residual if isinstance(r, np.ndarray))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=f"B={batch}")
        cts = _nary_vjp(cast[3], got, cast[0], cast[1], cast[2],
                        [s.astype(dtype) for s in states], residual)
        assert len(cts) == len(want_cts)
        for k, (ct, want_ct) in enumerate(zip(cts, want_cts)):
            ct = dense(ct)
            assert ct.dtype == dtype and ct.shape == want_ct.shape, (batch, k)
            np.testing.assert_allclose(ct, want_ct, rtol=rtol, atol=10 * rtol,
                                       err_msg=f"B={batch}, cotangent {k}")
