"""Fused recurrent cells: one primitive per LSTM, GRU and Elman step and per Tree-LSTM node, so that
a whole step is one graph node with its own VJP and JVP, and autobatching groups steps across
sequences. LSTM-like states are laid out as [c; h]. Imports only the op-table core.
"""

import numpy as np

from .core import (SHARED, STACK, Case, OuterProduct, Parts, define,
                   zeros_like_tangents)


def _sigmoid(z):
    # sigmoid(z) = (1 + tanh(z / 2)) / 2: one tanh for all the sigmoid gates at once
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _sigmoid_in_place(z):
    """z <- sigmoid(z), by the same identity, for a contiguous block of gates."""
    z *= 0.5
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5


def _check_vector(name, shape, size=None):
    if len(shape) != 1:
        raise ValueError(f"{name} must be a vector")
    if size is not None and shape[0] != size:
        raise ValueError(f"{name} must have size {size}")


def _check_states(states):
    if not states:
        raise ValueError("no child states")
    for s in states:
        _check_vector("a state [c; h]", s)
        if s[0] % 2 or s != states[0]:
            raise ValueError("states must be vectors [c; h] of one even size")
    return states[0][0] // 2


def _check_weights(W, b, rows, columns):
    if W != (rows, columns):
        raise ValueError(f"W must be ({rows}, {columns})")
    _check_vector("b", b, rows)


# ---------------------------------------------------------------------------------------------
# N-ary gated cells: gates [i; f_1 .. f_n; o] (sigmoid) and u (tanh) from one matmul over
# a = [x; h_1; ..; h_n]; c = i * u + sum_k f_k * c_k, h = o * tanh(c). An LSTM step is the case
# n = 1 (u is the LSTM's g), the binary Tree-LSTM of Tai et al. (2015) the case n = 2.


# The gates are computed gate-major, (gates, B) = W @ a.T, so that each gate is one contiguous
# block: numpy's elementwise calls on contiguous blocks cost a fraction of the same calls on
# column slices of a (B, gates) array at these sizes. The residual keeps that layout.


# OpenBLAS (0.3.31 with its SkylakeX kernels, numpy's on this machine) multiplies float32 matrices
# in place when M * N * K <= 1e6 (its "small matrix" kernels, for NoTrans A and B, and for
# Trans A); above that it packs both operands on every call, which for a weight of ~150K
# entries (an LSTM of H = 128) costs ~30 us, more than the product itself at a few rows. Batch
# sizes that are not multiples of 16 pay most: 9 rows cost about what 16 do. So a small batch
# over such a weight is multiplied in blocks of 4 rows, one stacked matmul whose every product
# takes the small kernel; from 16 rows on the packed product wins.
_SMALL_PRODUCT = 1_000_000
_BLOCK = 4


def _blocked(W, batch):
    """The row count of the batch's leading blocks of `_BLOCK` rows when W's product over
    them is faster block by block, else 0."""
    size = W.shape[0] * W.shape[1]
    if W.dtype != np.float32 or batch >= 16 or size * batch <= _SMALL_PRODUCT \
            or size * _BLOCK > _SMALL_PRODUCT:
        return 0
    return batch - batch % _BLOCK


def _gate_product(W, aT):
    """W @ aT, (G, B), over aT (A, B) C-ordered."""
    batch = aT.shape[1]
    full = _blocked(W, batch)
    if not full:
        return W @ aT
    rows, n = W.shape[0], full // _BLOCK
    pre = np.empty((rows, batch), W.dtype)
    blocks = np.matmul(W, aT[:, :full].reshape(-1, n, _BLOCK).transpose(1, 0, 2))
    pre[:, :full].reshape(rows, n, _BLOCK)[...] = blocks.transpose(1, 0, 2)
    if full < batch:
        np.matmul(W, aT[:, full:], out=pre[:, full:])
    return pre


def _input_product(gpre, W):
    """gpre.T @ W, (B, A), over gpre (G, B) C-ordered."""
    batch = gpre.shape[1]
    full = _blocked(W, batch)
    if not full:
        return gpre.T @ W
    rows, n = W.shape[0], full // _BLOCK
    ga = np.empty((batch, W.shape[1]), W.dtype)
    blocks = np.ascontiguousarray(gpre[:, :full].reshape(rows, n, _BLOCK).transpose(1, 2, 0))
    np.matmul(blocks, W, out=ga[:full].reshape(n, _BLOCK, -1))
    if full < batch:
        np.matmul(gpre[:, full:].T, W, out=ga[full:])
    return ga


def _row_sum(gpre):
    """The bias cotangent, gpre (G, B) summed over the batch: a matrix-vector product is the
    fast sum here (numpy's sum along rows of a few entries is several times slower), a copy
    for one row."""
    if gpre.shape[1] == 1:
        return gpre[:, 0].copy()
    return gpre @ np.ones(gpre.shape[1], dtype=gpre.dtype)


def _nary_forward(W, b, x, states):
    """The new state, and the residual (hidden, a, sig, u, tanh(c), [c; h] transposed): a = [x;
    h_1; ..] (B, A), the sigmoid gates (n+2)H x B, u and tanh(c) H x B, [c; h] 2H x B."""
    hidden = states[0].shape[1] // 2
    batch = states[0].shape[0]
    parts = [s[:, hidden:].T for s in states]
    if x is not None:
        parts.insert(0, x.T)
    # a.T is built C-ordered: W @ a.T over a C-ordered a.T is the (NoTrans, NoTrans) product,
    # which OpenBLAS computes without packing W when the product is small (a few rows); over a
    # transposed view it packs W (150K floats for H = 128) on every call
    aT = np.concatenate(parts, axis=0, out=np.empty((W.shape[1], batch), W.dtype))
    pre = _gate_product(W, aT)
    pre += b[:, None]
    split = pre.shape[0] - hidden
    sig, u = pre[:split], pre[split:]
    # sigmoid(z) = (1 + tanh(z / 2)) / 2: one tanh for all the gates, u's included
    sig *= 0.5
    np.tanh(pre, out=pre)
    sig *= 0.5
    sig += 0.5
    # c and h are computed gate-major and transposed in one copy
    state = np.empty((2 * hidden, batch), dtype=pre.dtype)
    c = state[:hidden]
    np.multiply(sig[:hidden], u, out=c)
    for k, s in enumerate(states, 1):
        c += sig[k * hidden:(k + 1) * hidden] * s[:, :hidden].T
    tc = np.tanh(c)
    np.multiply(sig[split - hidden:], tc, out=state[hidden:])
    # (a copy even of one row, where state.T is contiguous: the output never aliases the residual)
    return state.T.copy(), (hidden, aT.T, sig, u, tc, state)


def _nary_vjp(g, out, W, b, x, states, residual):
    hidden, a, sig, u, tc, state = residual
    split = sig.shape[0]
    batch = a.shape[0]
    gT = np.ascontiguousarray(g.T)  # (one transposed copy, then contiguous reads)
    gh = gT[hidden:]
    o = sig[split - hidden:]
    # d c'/d c through h' = o * tanh(c'): o * (1 - tanh(c')^2) = o - h' * tanh(c')
    gc = state[hidden:] * tc
    np.subtract(o, gc, out=gc)
    gc *= gh
    gc += gT[:hidden]
    gpre = np.empty((split + hidden, batch), dtype=gc.dtype)
    gsig, gu = gpre[:split], gpre[split:]
    np.multiply(gc, u, out=gsig[:hidden])
    for k, s in enumerate(states, 1):
        np.multiply(gc, s[:, :hidden].T, out=gsig[k * hidden:(k + 1) * hidden])
    np.multiply(gh, tc, out=gsig[split - hidden:])
    slope = 1.0 - sig  # sigmoid' = sig (1 - sig)
    slope *= sig
    gsig *= slope
    np.multiply(u, u, out=gu)  # tanh' = 1 - u^2
    np.subtract(1.0, gu, out=gu)
    gu *= gc
    gu *= sig[:hidden]
    ga = _input_product(gpre, W)
    cts = [OuterProduct(gpre.T, a), _row_sum(gpre)]
    width = 0
    if x is not None:
        width = x.shape[1]
        cts.append(ga[:, :width])
    for k in range(len(states)):
        cts.append(np.concatenate([(gc * sig[(k + 1) * hidden:(k + 2) * hidden]).T,
                                   ga[:, width + k * hidden:width + (k + 1) * hidden]], axis=1))
    return cts


def _nary_jvp(ts, out, W, b, x, states, residual):
    hidden, a, sig, u = residual[:4]
    sig, u = sig.T, u.T
    tW, tb = ts[0], ts[1]
    tstates = ts[len(ts) - len(states):]
    batch = a.shape[0]
    parts = []
    if x is not None:
        parts.append(np.zeros_like(x) if ts[2] is None else ts[2])
    for t in tstates:
        parts.append(np.zeros((batch, hidden), a.dtype) if t is None else t[:, hidden:])
    tpre = np.concatenate(parts, axis=1) @ W.T
    if tW is not None:
        tpre = tpre + a @ tW.T
    if tb is not None:
        tpre = tpre + tb
    split = sig.shape[1]
    tsig = tpre[:, :split] * sig * (1.0 - sig)
    tu = tpre[:, split:] * (1.0 - u * u)
    tc = tsig[:, :hidden] * u + sig[:, :hidden] * tu
    for k, (s, t) in enumerate(zip(states, tstates), 1):
        gate = slice(k * hidden, (k + 1) * hidden)
        tc += tsig[:, gate] * s[:, :hidden]
        if t is not None:
            tc += sig[:, gate] * t[:, :hidden]
    th = np.tanh(out[:, :hidden])
    t_out = tsig[:, -hidden:] * th + sig[:, -hidden:] * (1.0 - th * th) * tc
    return np.concatenate([tc, t_out], axis=1)


def _lstm_shape(W, b, x, s):
    hidden = _check_states([s])
    _check_vector("x", x)
    _check_weights(W, b, 4 * hidden, x[0] + hidden)
    return s


define("lstm_step", shape=_lstm_shape, batch=(SHARED, SHARED, STACK, STACK), cost=4,
       residual=True, forward=lambda W, b, x, s: _nary_forward(W, b, x, [s]),
       vjp=lambda g, out, W, b, x, s, residual: _nary_vjp(g, out, W, b, x, [s], residual),
       jvp=lambda ts, out, W, b, x, s, residual: _nary_jvp(ts, out, W, b, x, [s], residual),
       cases=[Case([(8, 5), (8,), (3,), (4,)]), Case([(4, 2), (4,), (1,), (2,)])],
       doc="one LSTM step: W (4H, X+H) with gate rows [i; f; o; g], b (4H,), x (X,), "
           "s = [c; h] (2H,) -> [c'; h'] (2H,)")


def _binary_shape(W, b, x, left, right):
    hidden = _check_states([left, right])
    _check_vector("x", x)
    _check_weights(W, b, 5 * hidden, x[0] + 2 * hidden)
    return left


define("treelstm_binary", shape=_binary_shape, batch=(SHARED, SHARED, STACK, STACK, STACK),
       cost=4, residual=True,
       forward=lambda W, b, x, sl, sr: _nary_forward(W, b, x, [sl, sr]),
       vjp=lambda g, out, W, b, x, sl, sr, residual: _nary_vjp(g, out, W, b, x, [sl, sr],
                                                               residual),
       jvp=lambda ts, out, W, b, x, sl, sr, residual: _nary_jvp(ts, out, W, b, x, [sl, sr],
                                                                residual),
       cases=[Case([(10, 7), (10,), (3,), (4,), (4,)])],
       doc="binary Tree-LSTM node (Tai et al. 2015), one forget gate per child: W (5H, X+2H) "
           "with gate rows [i; f_left; f_right; o; u] over [x; h_left; h_right], b (5H,), "
           "x (X,), children [c; h] (2H,) -> [c; h] (2H,)")


def _nox_shape(W, b, left, right):
    hidden = _check_states([left, right])
    if len(W) != 2 or W[1] < 2 * hidden:
        raise ValueError(f"W must be (5H, X+2H) with H = {hidden}")
    _check_weights(W, b, 5 * hidden, W[1])
    return left


def _nox_columns(W, left):
    return W[:, W.shape[1] - left.shape[1]:]


def _nox_vjp(g, out, W, b, left, right, residual):
    gW, gb, gl, gr = _nary_vjp(g, out, _nox_columns(W, left), b, None, [left, right], residual)
    return OuterProduct(gW.left, gW.right, start=W.shape[1] - left.shape[1]), gb, gl, gr


def _nox_jvp(ts, out, W, b, left, right, residual):
    tW = ts[0] if ts[0] is None else _nox_columns(ts[0], left)
    return _nary_jvp([tW] + list(ts[1:]), out, _nox_columns(W, left), b, None, [left, right],
                     residual)


define("treelstm_binary_nox", shape=_nox_shape, batch=(SHARED, SHARED, STACK, STACK), cost=4,
       residual=True,
       forward=lambda W, b, sl, sr: _nary_forward(_nox_columns(W, sl), b, None, [sl, sr]),
       vjp=_nox_vjp, jvp=_nox_jvp,
       cases=[Case([(10, 7), (10,), (4,), (4,)]), Case([(5, 2), (5,), (2,), (2,)])],
       doc="binary Tree-LSTM node without a word (x = 0): the W of treelstm_binary, whose "
           "x columns are unused")


# A binary Tree-LSTM leaf: a word and two zero children. The forget gates multiply zero cells and
# the h columns of W read zeros, so only rows i (0:H) and o, u (3H:5H) over the x columns are
# computed, each block as a matmul with a view of W (no copy): c = i * u, h = o * tanh(c).


def _leaf_shape(W, b, x):
    _check_vector("x", x)
    if len(W) != 2 or not W[0] or W[0] % 5:
        raise ValueError("W must be (5H, X+2H) with H > 0")
    hidden = W[0] // 5
    _check_weights(W, b, 5 * hidden, x[0] + 2 * hidden)
    return (2 * hidden,)


def _leaf_blocks(W, width):
    """The x columns of gate rows i and of gate rows [o; u]."""
    hidden = W.shape[0] // 5
    return W[:hidden, :width], W[3 * hidden:, :width]


def _leaf_forward(W, b, x):
    """[c; h], and the residual (i, o, u, tanh(c)), each H x B (gate-major, as the n-ary
    cells), that the VJP and JVP reuse."""
    hidden = W.shape[0] // 5
    W_i, W_ou = _leaf_blocks(W, x.shape[1])
    i = W_i @ x.T
    i += b[:hidden, None]
    ou = W_ou @ x.T
    ou += b[3 * hidden:, None]
    o, u = ou[:hidden], ou[hidden:]
    _sigmoid_in_place(i)
    _sigmoid_in_place(o)
    np.tanh(u, out=u)
    c = i * u
    tc = np.tanh(c)
    out = np.empty((x.shape[0], 2 * hidden), dtype=c.dtype)
    out[:, :hidden] = c.T
    out[:, hidden:] = (o * tc).T
    return out, (i, o, u, tc)


def _leaf_vjp(g, out, W, b, x, residual):
    i, o, u, tc = residual
    hidden = i.shape[0]
    gh = g[:, hidden:].T
    gc = tc * tc
    np.subtract(1.0, gc, out=gc)
    gc *= o
    gc *= gh
    gc += g[:, :hidden].T
    # the rows of f_left and f_right stay zero: their gates multiply zero cells
    gpre = np.zeros((5 * hidden, x.shape[0]), dtype=gc.dtype)
    gi, go, gu = gpre[:hidden], gpre[3 * hidden:4 * hidden], gpre[4 * hidden:]
    np.multiply(gc, u, out=gi)
    gi *= i
    gi *= 1.0 - i
    np.multiply(gh, tc, out=go)
    go *= o
    go *= 1.0 - o
    np.multiply(u, u, out=gu)
    np.subtract(1.0, gu, out=gu)
    gu *= gc
    gu *= i
    W_i, W_ou = _leaf_blocks(W, x.shape[1])
    gx = gi.T @ W_i
    gx += gpre[3 * hidden:].T @ W_ou
    # W's cotangent in two blocks, rows i and rows [o; u] over the x columns: the f rows are 0
    gW = Parts(OuterProduct(gi.T, x), OuterProduct(gpre[3 * hidden:].T, x, row=3 * hidden))
    return gW, _row_sum(gpre), gx


def _leaf_jvp(ts, out, W, b, x, residual):
    tW, tb, tx = zeros_like_tangents(ts, (W, b, x))
    i, o, u, tc = (r.T for r in residual)
    hidden = i.shape[1]
    W_i, W_ou = _leaf_blocks(W, x.shape[1])
    tW_i, tW_ou = _leaf_blocks(tW, x.shape[1])
    tpre_i = tx @ W_i.T + x @ tW_i.T + tb[:hidden]
    tpre_ou = tx @ W_ou.T + x @ tW_ou.T + tb[3 * hidden:]
    ti = tpre_i * i * (1.0 - i)
    to = tpre_ou[:, :hidden] * o * (1.0 - o)
    tu = tpre_ou[:, hidden:] * (1.0 - u * u)
    t_cell = ti * u + i * tu
    return np.concatenate([t_cell, to * tc + o * (1.0 - tc * tc) * t_cell], axis=1)


define("treelstm_binary_leaf", shape=_leaf_shape, batch=(SHARED, SHARED, STACK), cost=4,
       residual=True, forward=_leaf_forward, vjp=_leaf_vjp, jvp=_leaf_jvp,
       cases=[Case([(10, 7), (10,), (3,)]), Case([(5, 3), (5,), (1,)])],
       doc="binary Tree-LSTM leaf: treelstm_binary with a word x (X,) and two zero children, "
           "reading only the x columns and gate rows i, o, u of W (5H, X+2H); b (5H,) "
           "-> [c; h] (2H,)")


# ---------------------------------------------------------------------------------------------
# Child-sum Tree-LSTM (Tai et al. 2015): i, o, u read h~ = sum_k h_k; each child k has its own
# forget gate f_k = sigmoid(W_f x + U_f h_k + b_f). W (4H, X+H) has gate rows [i; o; u; f] and
# columns [x | h]. One node per count of children (zero children: a leaf).


def _childsum_mask(nargs):
    return (SHARED, SHARED) + (STACK,) * (nargs - 2)


def _childsum_shape(W, b, x, *children):
    _check_vector("x", x)
    if len(W) != 2 or W[0] % 4:
        raise ValueError("W must be (4H, X+H)")
    hidden = W[0] // 4
    if children and _check_states(list(children)) != hidden:
        raise ValueError(f"children must be states [c; h] of size {2 * hidden}")
    _check_weights(W, b, 4 * hidden, x[0] + hidden)
    return (2 * hidden,)


def _childsum_parts(W, b, x, children):
    hidden = W.shape[0] // 4
    width = x.shape[1]
    batch = x.shape[0]
    U = W[:, width:]
    px = x @ W[:, :width].T + b
    if children:
        hs = np.stack([s[:, hidden:] for s in children], axis=1)
        cs = np.stack([s[:, :hidden] for s in children], axis=1)
        piou = px[:, :3 * hidden] + hs.sum(axis=1) @ U[:3 * hidden].T
        pf = px[:, None, 3 * hidden:] + hs @ U[3 * hidden:].T
    else:
        hs = cs = pf = np.zeros((batch, 0, hidden), x.dtype)
        piou = px[:, :3 * hidden]
    io = _sigmoid(piou[:, :2 * hidden])
    return hidden, hs, cs, io, np.tanh(piou[:, 2 * hidden:]), _sigmoid(pf)


def _childsum_forward(W, b, x, *children):
    hidden, _, cs, io, u, f = _childsum_parts(W, b, x, children)
    c = io[:, :hidden] * u + (f * cs).sum(axis=1)
    return np.concatenate([c, io[:, hidden:] * np.tanh(c)], axis=1)


def _childsum_vjp(g, out, W, b, x, *children):
    hidden, hs, cs, io, u, f = _childsum_parts(W, b, x, children)
    width = x.shape[1]
    U = W[:, width:]
    tc = np.tanh(out[:, :hidden])
    gh = g[:, hidden:]
    gc = g[:, :hidden] + gh * io[:, hidden:] * (1.0 - tc * tc)
    gio = np.concatenate([gc * u, gh * tc], axis=1)
    gpiou = np.concatenate([gio * io * (1.0 - io), gc * io[:, :hidden] * (1.0 - u * u)], axis=1)
    gpf = gc[:, None, :] * cs * f * (1.0 - f)
    gpx = np.concatenate([gpiou, gpf.sum(axis=1)], axis=1)
    gU = np.concatenate([gpiou.T @ hs.sum(axis=1),
                         gpf.reshape(-1, hidden).T @ hs.reshape(-1, hidden)], axis=0)
    cts = [np.concatenate([gpx.T @ x, gU], axis=1), gpx.sum(axis=0), gpx @ W[:, :width]]
    ghs = (gpiou @ U[:3 * hidden])[:, None, :] + gpf @ U[3 * hidden:]
    gcs = gc[:, None, :] * f
    for k in range(len(children)):
        cts.append(np.concatenate([gcs[:, k], ghs[:, k]], axis=1))
    return cts


def _childsum_jvp(ts, out, W, b, x, *children):
    tW, tb, tx, *tchildren = zeros_like_tangents(ts, (W, b, x) + children)
    hidden, hs, cs, io, u, f = _childsum_parts(W, b, x, children)
    width = x.shape[1]
    U, tU = W[:, width:], tW[:, width:]
    tpx = tx @ W[:, :width].T + x @ tW[:, :width].T + tb
    iou = slice(0, 3 * hidden)
    if children:
        ths = np.stack([t[:, hidden:] for t in tchildren], axis=1)
        tcs = np.stack([t[:, :hidden] for t in tchildren], axis=1)
        tpiou = (tpx[:, iou] + ths.sum(axis=1) @ U[iou].T + hs.sum(axis=1) @ tU[iou].T)
        tpf = tpx[:, None, 3 * hidden:] + ths @ U[3 * hidden:].T + hs @ tU[3 * hidden:].T
    else:
        ths = tcs = tpf = np.zeros((x.shape[0], 0, hidden), x.dtype)
        tpiou = tpx[:, iou]
    tio = tpiou[:, :2 * hidden] * io * (1.0 - io)
    tu = tpiou[:, 2 * hidden:] * (1.0 - u * u)
    tf = tpf * f * (1.0 - f)
    tc = tio[:, :hidden] * u + io[:, :hidden] * tu + (tf * cs + f * tcs).sum(axis=1)
    th = np.tanh(out[:, :hidden])
    t_out = tio[:, hidden:] * th + io[:, hidden:] * (1.0 - th * th) * tc
    return np.concatenate([tc, t_out], axis=1)


define("treelstm_childsum", shape=_childsum_shape, batch=_childsum_mask, cost=4,
       forward=_childsum_forward, vjp=_childsum_vjp, jvp=_childsum_jvp,
       cases=[Case([(8, 5), (8,), (3,)]), Case([(8, 5), (8,), (3,), (4,)]),
              Case([(8, 5), (8,), (3,), (4,), (4,), (4,)])],
       doc="child-sum Tree-LSTM node: W (4H, X+H) with gate rows [i; o; u; f], b (4H,), x (X,), "
           "any number of children [c; h] (2H,) -> [c; h] (2H,)")


# ---------------------------------------------------------------------------------------------
# GRU (DyNet semantics): z = sigmoid(W_z [x; h] + b_z), r = sigmoid(W_r [x; h] + b_r),
# u = tanh(W_u [x; r * h] + b_u), h' = (1 - z) * h + z * u. W (3H, X+H) has gate rows [z; r; u].
# An optional fifth argument m multiplies h inside the gates only (recurrent dropout that
# leaves the carried h untouched).


def _gru_mask(nargs):
    return (SHARED, SHARED) + (STACK,) * (nargs - 2)


def _gru_shape(W, b, x, h, *mask):
    _check_vector("x", x)
    _check_vector("h", h)
    if len(mask) > 1 or (mask and mask[0] != h):
        raise ValueError("the optional mask must have the shape of h")
    _check_weights(W, b, 3 * h[0], x[0] + h[0])
    return h


def _gru_parts(W, b, x, h, mask):
    hidden = h.shape[1]
    hm = h if mask is None else h * mask
    a = np.concatenate([x, hm], axis=1)
    zr = _sigmoid(a @ W[:2 * hidden].T + b[:2 * hidden])
    aq = np.concatenate([x, zr[:, hidden:] * hm], axis=1)
    u = np.tanh(aq @ W[2 * hidden:].T + b[2 * hidden:])
    return hidden, hm, a, aq, zr, u


def _gru_forward(W, b, x, h, mask=None):
    hidden, _, _, _, zr, u = _gru_parts(W, b, x, h, mask)
    return h + zr[:, :hidden] * (u - h)


def _gru_vjp(g, out, W, b, x, h, mask=None):
    hidden, hm, a, aq, zr, u = _gru_parts(W, b, x, h, mask)
    width = x.shape[1]
    z, r = zr[:, :hidden], zr[:, hidden:]
    gpu = g * z * (1.0 - u * u)
    gaq = gpu @ W[2 * hidden:]
    gq = gaq[:, width:]
    gzr = np.concatenate([g * (u - h), gq * hm], axis=1) * zr * (1.0 - zr)
    ga = gzr @ W[:2 * hidden]
    ghm = gq * r + ga[:, width:]
    gh = g * (1.0 - z) + (ghm if mask is None else ghm * mask)
    cts = [np.concatenate([gzr.T @ a, gpu.T @ aq], axis=0),
           np.concatenate([gzr.sum(axis=0), gpu.sum(axis=0)]),
           gaq[:, :width] + ga[:, :width], gh]
    if mask is not None:
        cts.append(ghm * h)
    return cts


def _gru_jvp(ts, out, W, b, x, h, mask=None):
    xs = (W, b, x, h) if mask is None else (W, b, x, h, mask)
    tW, tb, tx, th, *tm = zeros_like_tangents(ts, xs)
    hidden, hm, a, aq, zr, u = _gru_parts(W, b, x, h, mask)
    thm = th if mask is None else th * mask + h * tm[0]
    zr_rows, u_rows = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
    tpzr = (np.concatenate([tx, thm], axis=1) @ W[zr_rows].T + a @ tW[zr_rows].T + tb[zr_rows])
    tzr = tpzr * zr * (1.0 - zr)
    tq = tzr[:, hidden:] * hm + zr[:, hidden:] * thm
    tpu = np.concatenate([tx, tq], axis=1) @ W[u_rows].T + aq @ tW[u_rows].T + tb[u_rows]
    tu = tpu * (1.0 - u * u)
    z = zr[:, :hidden]
    return th + tzr[:, :hidden] * (u - h) + z * (tu - th)


define("gru_step", shape=_gru_shape, batch=_gru_mask, cost=4,
       forward=_gru_forward, vjp=_gru_vjp, jvp=_gru_jvp,
       cases=[Case([(6, 5), (6,), (3,), (2,)]), Case([(6, 5), (6,), (3,), (2,), (2,)])],
       doc="one GRU step: W (3H, X+H) with gate rows [z; r; u], b (3H,), x (X,), h (H,), "
           "optional recurrent mask m (H,) -> h' (H,)")


# ---------------------------------------------------------------------------------------------
# Elman RNN: h' = tanh(W [x; h] + b).


def _rnn_shape(W, b, x, h):
    _check_vector("x", x)
    _check_vector("h", h)
    _check_weights(W, b, h[0], x[0] + h[0])
    return h


def _rnn_vjp(g, out, W, b, x, h):
    a = np.concatenate([x, h], axis=1)
    gpre = g * (1.0 - out * out)
    ga = gpre @ W
    return OuterProduct(gpre, a), gpre.sum(axis=0), ga[:, :x.shape[1]], ga[:, x.shape[1]:]


def _rnn_jvp(ts, out, W, b, x, h):
    tW, tb, tx, th = zeros_like_tangents(ts, (W, b, x, h))
    a = np.concatenate([x, h], axis=1)
    tpre = np.concatenate([tx, th], axis=1) @ W.T + a @ tW.T + tb
    return tpre * (1.0 - out * out)


define("rnn_step", shape=_rnn_shape, batch=(SHARED, SHARED, STACK, STACK), cost=4,
       forward=lambda W, b, x, h: np.tanh(np.concatenate([x, h], axis=1) @ W.T + b),
       vjp=_rnn_vjp, jvp=_rnn_jvp, cases=[Case([(2, 5), (2,), (3,), (2,)])],
       doc="one Elman step: W (H, X+H), b (H,), x (X,), h (H,) -> tanh(W [x; h] + b) (H,)")
