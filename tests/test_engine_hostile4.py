"""Hostile tests of the engine's changes of 2026-12-04 (afternoon): `_scatter_add`'s set check
and `_add_rows`, the late scheduler's passes that tell computed inputs apart by their own marks,
the row-by-row gather into place, padded plans that keep their source for backward, and
`_stacked` (a weight's OuterProduct chunks joined along their rows when transposed views).

Graphs are computed in several rounds (forward of some nodes, more nodes built on computed ones,
then backward, twice), with repeated arguments, computed leaves and parameters as inputs, gathers
of repeated rows from several batches on either side of the thresholds, "same" plans, padded
batches read at several forwards, and one weight's chunks in mixed layouts; every value and
gradient is compared with the unbatched engine under every strategy, in float32 and float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn
from dynlp.autobatch import SCATTER_SET_ROWS, _add_rows, _scatter_add, _stacked
from dynlp.ops import OuterProduct

STRATEGIES = ["late", "agenda", "depth", False]
DTYPES = [np.float32, np.float64]
D = 4


def _close(got, want, dtype, err_msg=""):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12, err_msg=err_msg)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=err_msg)


def _params(dtype):
    pc = dn.ParameterCollection(seed=11, dtype=dtype)
    return pc, {"W": pc.add_parameters((D, D)), "U": pc.add_parameters((D, 3 * D)),
                "b": pc.add_parameters(D, init="normal", scale=0.5),
                "E": pc.add_lookup_parameters((7, D))}


# -- several rounds over a partly computed graph -------------------------------------------------
def _rounds(mode, dtype, seed):
    """Round 1 builds per example a few nodes over a leaf, a parameter and a lookup and forwards
    some of them; round 2 builds on computed and pending nodes alike (x * x, concatenate of one
    node three times, a parameter times itself, nodes whose only inputs are computed leaves or
    parameters) and forwards part of it; round 3 adds the losses; backward twice."""
    pc, P = _params(dtype)
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(6, D))
    keep = []
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        xs = [dn.inputs(v) for v in data]
        firsts = []
        for i, x in enumerate(xs):
            e = P["E"][int(rng.integers(7))]
            h = dn.tanh(dn.parameter(P["W"]) @ x + P["b"])
            k = dn.cmult(x, x) + e
            firsts.append((h, k, e))
            keep += [h, k]
        g.forward([firsts[i][int(rng.integers(2))] for i in range(0, 6, 2)])
        seconds = []
        for i, (h, k, e) in enumerate(firsts):
            w = dn.parameter(P["b"])
            triple = dn.concatenate([h, h, h])
            a = dn.tanh(dn.parameter(P["U"]) @ triple)
            b = h * h + dn.cmult(w, w)            # (a parameter read twice by one node)
            c = dn.logistic(xs[i]) * dn.exp(e)    # (inputs: a computed leaf, a lookup)
            d = dn.concatenate([k, xs[i], k])[2:2 + D] + a
            seconds.append((a, b, c, d))
            keep += [w, triple, a, b, c, d]
        g.forward([seconds[i][j] for i in range(6) for j in range(4) if (i + j) % 3 == 0])
        losses = []
        for i, (a, b, c, d) in enumerate(seconds):
            m = dn.cmult(d, d) + b * c            # (built on computed nodes only, some of them)
            losses.append(dn.sum_elems(m) + dn.squared_norm(a + firsts[(i + 1) % 6][0]))
            keep.append(m)
        loss = dn.esum(losses)
        value = loss.scalar_value()
        loss.backward()
        grads = [e.gradient() for e in keep + xs]
        params = {n: p.grad_as_array().copy() for n, p in P.items()}
        values = [e.npvalue() for e in keep]
        loss.backward()
        again = [e.gradient() for e in keep + xs]
        twice = {n: p.grad_as_array().copy() for n, p in P.items()}
    return value, values, grads, params, again, twice


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES)
def test_rounds_over_partly_computed_graphs_match_unbatched(mode, dtype, seed):
    want = _rounds(False, dtype, seed)
    value, values, grads, params, again, twice = _rounds(mode, dtype, seed)
    _close(value, want[0], dtype)
    for i, (a, b) in enumerate(zip(values, want[1])):
        _close(a, b, dtype, f"value {i}")
    for i, (a, b, c) in enumerate(zip(grads, want[2], again)):
        assert a.dtype == dtype, f"gradient {i}: {a.dtype}"
        _close(a, b, dtype, f"gradient {i}")
        np.testing.assert_array_equal(c, a, err_msg=f"gradient {i}, second backward")
    for n in params:
        assert params[n].dtype == dtype
        _close(params[n], want[3][n], dtype, n)
        _close(twice[n], 2 * want[3][n], dtype, n)


def test_rounds_against_central_differences():
    """A function whose graph is forwarded in two rounds before its output: gradcheck."""
    def f(x, y):
        g = dn.current_graph()
        hs = [dn.tanh(x * float(k) + y) for k in range(1, 4)]
        g.forward(hs[:2])
        cats = [dn.concatenate([h, h, x]) for h in hs]
        g.forward(cats[1:])
        return dn.esum([dn.sum_elems(dn.cmult(c, c) * dn.logistic(c)) for c in cats]
                       + [dn.dot_product(hs[0], hs[2])])

    rng = np.random.default_rng(1)
    for mode in STRATEGIES:
        dn.gradcheck(f, rng.normal(size=3), rng.normal(size=3), autobatch=mode, modes=("reverse",))


# -- gathers of repeated rows from several source batches ----------------------------------------
def _gather(mode, dtype, count, sources, repeat_every):
    """`count` nodes W @ s over rows of `sources` source batches (one signature each, so one
    batch each), every `repeat_every`-th row a repeat of the first ones (rows read several
    times: summed by the scatter of backward)."""
    pc, P = _params(dtype)
    rng = np.random.default_rng(count * 7 + sources)
    per = max(2, count // sources)
    makers = [dn.tanh, dn.logistic, dn.exp, dn.rectify, dn.square][:sources]
    weights = rng.normal(size=(count, D))
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        srcs = [[f(dn.inputs(v)) for v in rng.normal(size=(per, D))] for f in makers]
        g.forward([s for group in srcs for s in group])
        order = []
        for i in range(count):
            j = i if repeat_every is None or i % repeat_every else 0
            order.append(srcs[j % sources][(j // sources) % per])
        outs = [dn.parameter(P["W"]) @ s for s in order]
        loss = dn.esum([dn.dot_product(o, dn.inputs(w)) for o, w in zip(outs, weights)])
        loss.backward()
        return ([o.npvalue() for o in outs], [s.gradient() for group in srcs for s in group],
                P["W"].grad_as_array().copy())


@pytest.mark.parametrize("count,sources,repeat_every", [
    (10, 3, 3), (39, 2, None), (40, 2, 2), (41, 2, 5), (59, 3, 4), (60, 3, 7), (63, 2, 3),
    (64, 4, 2), (65, 4, 3), (80, 4, None), (100, 5, 2), (129, 2, 3), (200, 3, 10)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["late", "agenda", "depth"])
def test_gathers_of_repeated_rows_match_unbatched(mode, dtype, count, sources, repeat_every):
    want = _gather(False, dtype, count, sources, repeat_every)
    got = _gather(mode, dtype, count, sources, repeat_every)
    for a, b in zip(got[0], want[0]):
        _close(a, b, dtype)
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert a.dtype == dtype
        _close(a, b, dtype, f"source node {i}")
    _close(got[2], want[2], dtype)


def _same(mode, dtype):
    """Nodes that all read one node (a "same" plan: a broadcast of its row), of one batch and of
    several (the node and a few others), and a node read as two arguments of each."""
    pc, P = _params(dtype)
    rng = np.random.default_rng(5)
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        x = dn.inputs(rng.normal(size=D))
        hub = dn.tanh(x)
        g.forward([hub])
        others = [dn.logistic(dn.inputs(v)) for v in rng.normal(size=(3, D))]
        outs = [dn.cmult(hub, hub) * float(k) + dn.parameter(P["W"]) @ hub for k in range(9)]
        outs += [dn.exp(y) + hub for y in [hub] * 5 + others]
        loss = dn.sum_elems(dn.esum([dn.cmult(o, o) for o in outs]))
        loss.backward()
        return [o.npvalue() for o in outs], x.gradient(), P["W"].grad_as_array().copy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES[:-1])
def test_nodes_reading_one_node_match_unbatched(mode, dtype):
    want, got = _same(False, dtype), _same(mode, dtype)
    for a, b in zip(got[0], want[0]):
        _close(a, b, dtype)
    _close(got[1], want[1], dtype)
    _close(got[2], want[2], dtype)


# -- padded batches read at several forwards, backward twice -------------------------------------
def _padded(mode, dtype):
    rng = np.random.default_rng(12)
    lengths = [1, 2, 3, 3, 5, 6, 7, 2, 9, 4]
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        xs = [dn.inputs(rng.normal(size=(D, n))) for n in lengths]
        mats = [dn.tanh(x) for x in xs]
        q = [dn.inputs(rng.normal(size=D)) for _ in lengths]
        reads = []
        for step in range(4):
            chosen = [i for i in range(len(mats)) if (i + step) % 3]  # (rows of padded batches)
            scores = [dn.softmax(dn.transpose(mats[i]) @ q[i]) for i in chosen]
            now = [mats[i] @ s for i, s in zip(chosen, scores)]
            g.forward(now)
            for i, r in zip(chosen, now):
                q[i] = dn.tanh(q[i] + r)
            reads += now
        loss = dn.sum_elems(dn.esum(reads)) + dn.squared_norm(dn.esum(q))
        loss.backward()
        first = [x.gradient() for x in xs] + [m.gradient() for m in mats]
        loss.backward()
        second = [x.gradient() for x in xs] + [m.gradient() for m in mats]
        # (then one more step over the same padded batches, and backward from a new loss)
        scores = [dn.softmax(dn.transpose(m) @ dn.tanh(v)) for m, v in zip(mats, q)]
        more = [m @ s for m, s in zip(mats, scores)]
        dn.sum_elems(dn.esum(more) * 0.5).backward()
        third = [x.gradient() for x in xs] + [m.gradient() for m in mats]
        return [r.npvalue() for r in reads + more], first, second, third


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES[:-1])
def test_padded_batches_read_at_several_forwards_backward_twice(mode, dtype):
    want = _padded(False, dtype)
    values, first, second, third = _padded(mode, dtype)
    for a, b in zip(values, want[0]):
        _close(a, b, dtype)
    for i, (a, b, c) in enumerate(zip(first, want[1], second)):
        assert a.dtype == dtype
        _close(a, b, dtype, f"gradient {i}")
        np.testing.assert_array_equal(c, a, err_msg=f"gradient {i}, second backward")
    for i, (a, b) in enumerate(zip(third, want[3])):
        _close(a, b, dtype, f"gradient {i}, backward from the new loss")


# -- one weight's chunks in mixed layouts --------------------------------------------------------
def _mixed_weight(mode, dtype, plain_batch):
    """An LSTM's weight read by its steps (chunks whose left side is a transposed view) and by
    plain products W @ [x; h] (chunks of rows), `plain_batch` of them at a time."""
    pc = dn.ParameterCollection(seed=2, dtype=dtype)
    lstm = dn.LSTMBuilder(1, 3, D, pc)
    W = lstm.parameters()[0]
    rng = np.random.default_rng(3)
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        seqs = [[dn.inputs(v) for v in rng.normal(size=(n, 3))] for n in (2, 3, 3, 5, 1)]
        outs = [lstm.initial_state().transduce(seq) for seq in seqs]
        g.forward([o[-1] for o in outs[:2]])
        plains = [dn.parameter(W) @ dn.inputs(v) for v in rng.normal(size=(plain_batch, 3 + D))]
        loss = dn.esum([dn.squared_norm(o[-1]) + dn.sum_elems(o[0]) for o in outs]
                       + [dn.sum_elems(dn.tanh(p)) for p in plains])
        loss.backward()
        return [p.grad_as_array().copy() for p in lstm.parameters()]


@pytest.mark.parametrize("plain_batch", [0, 1, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES[:-1])
def test_weight_read_by_cells_and_plain_products_matches_unbatched(mode, dtype, plain_batch):
    want = _mixed_weight(False, dtype, plain_batch)
    got = _mixed_weight(mode, dtype, plain_batch)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        _close(a, b, dtype)


def _chunk(rng, batch, m, n, layout, dtype):
    """An OuterProduct chunk whose sides are rows (C order), transposed views of (k, B) arrays,
    non-contiguous slices, or broadcasts."""
    def side(k, how):
        if how == "rows":
            return rng.normal(size=(batch, k)).astype(dtype)
        if how == "view":
            return rng.normal(size=(k, batch)).astype(dtype).T
        if how == "slice":
            return rng.normal(size=(batch, 2 * k)).astype(dtype)[:, ::2]
        return np.broadcast_to(rng.normal(size=k).astype(dtype), (batch, k))
    return OuterProduct(side(m, layout[0]), side(n, layout[1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_is_the_concatenation_whatever_the_layouts(dtype):
    """_stacked over chunks of every mix of layouts (and batches of 1, where a row is a view of
    either order): the rows of np.concatenate, bit for bit, and so the product too."""
    rng = np.random.default_rng(4)
    layouts = ["rows", "view", "slice", "broadcast"]
    for trial in range(120):
        count = int(rng.integers(1, 5))
        m, n = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        chunks = [_chunk(rng, int(rng.integers(1, 6)), m, n,
                         (layouts[int(rng.integers(4))], layouts[int(rng.integers(4))]), dtype)
                  for _ in range(count)]
        for side in ("left", "right"):
            want = np.concatenate([getattr(c, side) for c in chunks])
            got = _stacked(chunks, side)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.strides == want.strides  # (the layout decides BLAS's path, so the bits)
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            _stacked(chunks, "left").T @ _stacked(chunks, "right"),
            np.concatenate([c.left for c in chunks]).T @ np.concatenate([c.right for c in chunks]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_of_single_rows_give_the_product_of_their_concatenation(dtype):
    """The unbatched engine's chunks (and any batch of one node's): rows (1, k), both C and F
    contiguous. Their join must be laid out as np.concatenate lays it out (C order), else the
    product takes another BLAS path and a weight's gradient changes in its last bits: the
    parser recipe's MLP weights, unbatched, were no longer those of the engine before."""
    rng = np.random.default_rng(9)
    for count, m, n in [(150, 4, 4), (300, 16, 7), (64, 3, 12), (40, 20, 20)]:
        chunks = [OuterProduct(rng.normal(size=(1, m)).astype(dtype),
                               rng.normal(size=(1, n)).astype(dtype)) for _ in range(count)]
        left = np.concatenate([c.left for c in chunks])
        right = np.concatenate([c.right for c in chunks])
        assert _stacked(chunks, "left").strides == left.strides
        np.testing.assert_array_equal(_stacked(chunks, "left").T @ _stacked(chunks, "right"),
                                      left.T @ right)


def _products(mode, dtype):
    pc, P = _params(dtype)
    rng = np.random.default_rng(21)
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False):
        xs, ws = rng.normal(size=(120, D)), rng.normal(size=(120, D))
        W = dn.parameter(P["W"])  # (one node: its chunks are multiplied once)
        loss = dn.esum([dn.dot_product(W @ dn.inputs(x), dn.inputs(w)) for x, w in zip(xs, ws)])
        loss.backward()
    return P["W"].grad_as_array(), xs.astype(dtype), ws.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES)
def test_weight_gradient_is_one_product_of_the_stacked_rows(mode, dtype):
    """W's gradient from 120 products W @ x_i read by w_i: one product of the stacked rows,
    bit for bit, batched (one chunk) or not (120 chunks of one row, stacked in the order
    backward reached them: newest first)."""
    got, xs, ws = _products(mode, dtype)
    if mode is False:
        xs, ws = np.ascontiguousarray(xs[::-1]), np.ascontiguousarray(ws[::-1])
    np.testing.assert_array_equal(got, ws.T @ xs)


# -- the scatter against its statement ------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [0, 1, SCATTER_SET_ROWS - 1, SCATTER_SET_ROWS,
                                   SCATTER_SET_ROWS + 1, 200])
def test_scatter_with_views_broadcasts_and_mixed_dtypes(count, dtype):
    """Distinct rows into a view of a larger array (a padded total cut to a width), values a
    broadcast row, or of the other dtype: what `target[rows] += values` does."""
    rng = np.random.default_rng(count)
    other = np.float64 if dtype == np.float32 else np.float32
    for values in (rng.normal(size=(count, 3, 5)).astype(dtype),
                   np.broadcast_to(rng.normal(size=(1, 3, 5)).astype(dtype), (count, 3, 5)),
                   rng.normal(size=(count, 3, 5)).astype(other)):
        rows = rng.permutation(300)[:count]
        base = rng.normal(size=(300, 3, 8)).astype(dtype)
        want = base.copy()
        want[:, :, :5][rows] += values
        _scatter_add(base[:, :, :5], rows, values)
        np.testing.assert_array_equal(base, want)
        if count:
            repeated = np.concatenate([rows, rows[:1]])
            both = np.concatenate([values, values[:1]])
            got = base.copy()
            np.add.at(want, (repeated,), np.pad(both, ((0, 0), (0, 0), (0, 3))))
            _scatter_add(got[:, :, :5], repeated, both)
            np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_add_rows_is_the_statement_bit_for_bit():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 6)).astype(np.float32)
    rows = rng.permutation(50)[:20]
    values = rng.normal(size=(20, 6))
    want = target.copy()
    want[rows] += values
    _add_rows(target, rows, values)
    np.testing.assert_array_equal(target, want)


# -- random graphs forwarded at random points ----------------------------------------------------
def _custom_ops():
    """An unbatchable op (no batching mask) and a costly one (cost 4): both kinds the late
    scheduler's passes treat apart."""
    lone = dn.Op("hostile4_lone", shape=lambda s: s, forward=lambda x: np.sin(x),
                 vjp=lambda g, out, x: (g * np.cos(x),),
                 jvp=lambda ts, out, x: ts[0] * np.cos(x), batch=None)
    costly = dn.Op("hostile4_costly", shape=lambda a, b: a, forward=lambda a, b: np.tanh(a * b),
                   vjp=lambda g, out, a, b: (g * (1 - out * out) * b, g * (1 - out * out) * a),
                   jvp=lambda ts, out, a, b: (1 - out * out) * (
                       (0 if ts[0] is None else ts[0] * b) + (0 if ts[1] is None else a * ts[1])),
                   batch=(dn.STACK, dn.STACK), cost=4)
    return dn.op_function(lone), dn.op_function(costly)


_LONE, _COSTLY_OP = _custom_ops()


def _random_rounds(mode, dtype, seed):
    """Examples that grow node by node, each node over two earlier nodes of its example (or of
    another), with forwards of random nodes (computed ones too) at random points."""
    pc, P = _params(dtype)
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        nodes = [dn.inputs(v) for v in rng.normal(size=(4, D))]
        nodes += [dn.parameter(P["b"]), P["E"][2], P["E"][5]]
        for _ in range(70):
            a, b = (nodes[int(k)] for k in rng.integers(len(nodes), size=2))
            k = int(rng.integers(9))
            made = (a * a if k == 0 else dn.concatenate([a, a, b])[D:2 * D] if k == 1
                    else _LONE(a) if k == 2 else _COSTLY_OP(a, b) if k == 3
                    else dn.tanh(dn.parameter(P["W"]) @ a + b) if k == 4
                    else dn.cmult(a, b) if k == 5 else dn.logistic(a) + b if k == 6
                    else dn.esum([a, b, a]) if k == 7 else _COSTLY_OP(a, a))
            nodes.append(made)
            if rng.random() < 0.15:
                g.forward([nodes[int(i)] for i in rng.integers(len(nodes), size=3)])
        loss = dn.esum([dn.sum_elems(dn.cmult(n, n)) for n in nodes[-12:]]
                       + [dn.dot_product(nodes[i], nodes[-i]) for i in range(7, 20, 3)])
        value = loss.scalar_value()
        loss.backward()
        grads = [n.gradient() for n in nodes]
        return value, [n.npvalue() for n in nodes], grads, {
            n: p.grad_as_array().copy() for n, p in P.items()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES[:-1])
def test_random_graphs_forwarded_at_random_points_match_unbatched(mode, dtype, seed):
    want = _random_rounds(False, dtype, seed)
    got = _random_rounds(mode, dtype, seed)
    _close(got[0], want[0], dtype)
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        _close(a, b, dtype, f"value {i}")
    for i, (a, b) in enumerate(zip(got[2], want[2])):
        assert a.dtype == dtype
        _close(a, b, dtype, f"gradient {i}")
    for n in want[3]:
        _close(got[3][n], want[3][n], dtype, n)


def _padded_repeats(mode, dtype):
    """Matrices of several lengths (one padded batch) read by attention steps in which one
    matrix is read by several nodes of a batch: a padded argument whose rows in its source
    repeat (summed by the scatter of backward), then read again after a forward."""
    rng = np.random.default_rng(13)
    lengths = [2, 3, 5, 6, 7, 4]
    with dn.Graph(dtype=dtype, autobatch=mode, fuse=False) as g:
        xs = [dn.inputs(rng.normal(size=(D, n))) for n in lengths]
        mats = [dn.tanh(x) for x in xs]
        g.forward(mats)
        reads = []
        for step, chosen in enumerate([[0, 0, 1, 2, 2, 2, 5], [3, 3, 4, 0], list(range(6)) * 2]):
            qs = [dn.inputs(v) for v in rng.normal(size=(len(chosen), D))]
            now = [mats[i] @ dn.softmax(dn.transpose(mats[i]) @ q) for i, q in zip(chosen, qs)]
            g.forward(now)
            reads += now
        loss = dn.squared_norm(dn.esum(reads))
        loss.backward()
        return [r.npvalue() for r in reads], [x.gradient() for x in xs]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", STRATEGIES[:-1])
def test_padded_arguments_with_repeated_rows_match_unbatched(mode, dtype):
    want, got = _padded_repeats(False, dtype), _padded_repeats(mode, dtype)
    for a, b in zip(got[0], want[0]):
        _close(a, b, dtype)
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert a.dtype == dtype
        _close(a, b, dtype, f"gradient {i}")
