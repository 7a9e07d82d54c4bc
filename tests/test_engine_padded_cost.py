"""The padded path's cheaper bookkeeping (`Engine._inside`'s masks kept for reuse, places set by
map, backward's per-node padded delivery with grad_of inlined, the views of an output padded
along its first axis) gives the numbers of the path without it: padded batches of mixed
lengths, every fill (zero, -inf, edge), several consumers of a padded node, gradient() of nodes
inside padded batches, float32 and float64, against one node per call and against an engine
that keeps no mask."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import autobatch
from dynlp.autobatch import PaddedBatch

LENGTHS = [1, 2, 3, 3, 5, 6, 7, 7, 8, 11, 13, 13]


def _model(strategy, dtype, lengths=LENGTHS, whole_after=True):
    """MLP attention over sequences of several lengths, 1 to 3 steps each; a step's scores feed
    a softmax (-inf fill), its weights a contraction (zero fill) and a log-sum (a second
    consumer), tanh and add pad with the edge; w1 @ mat is read whole (by a sum of its tanh)
    as well as padded, before or after the attention."""
    rng = np.random.default_rng(11)
    a, h = 4, 3
    with dn.Graph(dtype=dtype, autobatch=strategy) as g:
        w1 = g.leaf(rng.normal(size=(a, h)))
        w2 = g.leaf(rng.normal(size=(a, h)))
        v = g.leaf(rng.normal(size=(1, a)))
        leaves = [w1, w2, v]
        terms, inside = [], []
        for k, length in enumerate(lengths):
            cols = [g.leaf(rng.normal(size=h)) for _ in range(length)]
            state = g.leaf(rng.normal(size=h))
            leaves += cols + [state]
            mat = dn.concatenate_cols(cols)
            w1dt = w1 @ mat
            if not whole_after:
                terms.append(dn.sum_elems(dn.tanh(w1dt)))
            for _ in range(1 + k % 3):
                summed = w1dt + dn.reshape(w2 @ state, (a, 1))
                e = dn.tanh(summed)
                score = dn.transpose(v @ e)
                att = dn.softmax(score)
                context = dn.reshape(mat @ att, (h,))
                terms.append(dn.sum_elems(dn.log(att)) * 0.01)  # (att's second consumer)
                state = dn.tanh(context + state)
                inside += [summed, e, score, att]
            if whole_after:
                terms.append(dn.sum_elems(dn.tanh(w1dt)))
            terms.append(dn.dot_product(state, dn.inputs(rng.normal(size=h))))
        loss = dn.esum(terms)
        loss.backward()
        padded = sum(type(b) is PaddedBatch for b in set(g.engine.batches) if b is not None)
        return {"loss": np.asarray(loss.value()),
                "grads": [x.gradient() for x in leaves],
                "values": [x.npvalue() for x in inside],
                "inner": [x.gradient() for x in inside],
                "padded": padded}


def _same(x, y):
    assert x["padded"] == y["padded"]
    for key in ("loss", "grads", "values", "inner"):
        xs, ys = x[key], y[key]
        for p, q in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
            assert p.dtype == q.dtype and p.shape == q.shape
            assert p.tobytes() == q.tobytes()


def _close(x, y, tol):
    for key in ("loss", "grads", "values", "inner"):
        xs, ys = x[key], y[key]
        for p, q in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
            np.testing.assert_allclose(p, q, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["late", "depth", "agenda"])
@pytest.mark.parametrize("whole_after", [True, False])
def test_padded_batches_match_one_node_per_call(strategy, dtype, whole_after):
    got = _model(strategy, dtype, whole_after=whole_after)
    assert got["padded"] > 0
    want = _model(False, dtype, whole_after=whole_after)
    _close(got, want, 1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["late", "depth"])
def test_masks_kept_or_not_give_the_same_bits(monkeypatch, strategy, dtype):
    kept = _model(strategy, dtype)
    monkeypatch.setattr(autobatch, "MASKS_KEPT", 1)  # (each mask made again, nearly)
    _same(kept, _model(strategy, dtype))


def test_masks_are_read_only_and_bounded(monkeypatch):
    monkeypatch.setattr(autobatch, "MASKS_KEPT", 3)
    with dn.Graph(dtype=np.float64, autobatch="late") as g:
        rng = np.random.default_rng(0)
        outs = []
        for length in [2, 3, 5, 6, 9, 12]:
            x = g.leaf(rng.normal(size=(length, 1)))
            outs.append(dn.sum_elems(dn.softmax(dn.tanh(x))))
        loss = dn.esum(outs)
        loss.backward()
        masks = g.engine._masks
        assert 0 < len(masks) <= 3
        for mask in masks.values():
            assert not mask.flags.writeable
        # the same again in the same graph: the kept masks read, the same numbers
        first = [x.npvalue() for x in outs]
        assert all(np.isfinite(v).all() for v in first)


def test_an_output_padded_along_its_first_axis_keeps_each_nodes_view():
    """transpose and softmax of (length, 1) columns: views out[i:i + 1, :length]."""
    rng = np.random.default_rng(5)
    lengths = [2, 3, 5, 7]
    with dn.Graph(dtype=np.float64, autobatch="late") as g:
        rows = [g.leaf(rng.normal(size=(1, n))) for n in lengths]
        cols = [dn.softmax(dn.transpose(r)) for r in rows]
        loss = dn.esum([dn.sum_elems(dn.log(c) * dn.inputs(rng.normal(size=(n, 1))))
                        for c, n in zip(cols, lengths)])
        loss.backward()
        batches = [b for b in set(g.engine.batches) if type(b) is PaddedBatch]
        assert any(b.axis == 0 for b in batches)
        for c, n, r in zip(cols, lengths, rows):
            value = c.npvalue()
            assert value.shape == (n, 1)
            x = r.npvalue()[0]
            want = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
            np.testing.assert_allclose(value[:, 0], want, rtol=1e-12)
            assert c.gradient().shape == (n, 1)


def _decoder(strategy, dtype, lengths=LENGTHS):
    """An encoder-decoder's attention: each sequence attends over its columns at 1 + length
    steps, so that a step's padded batch holds the sequences of the step before and more (late)
    or fewer (by depth): copies of the same nodes padded alike, rows of a kept copy."""
    rng = np.random.default_rng(17)
    a, h = 3, 4
    with dn.Graph(dtype=dtype, autobatch=strategy) as g:
        w1 = g.leaf(rng.normal(size=(a, h)))
        w2 = g.leaf(rng.normal(size=(a, h)))
        v = g.leaf(rng.normal(size=(1, a)))
        leaves = [w1, w2, v]
        terms, inside = [], []
        for length in lengths:
            cols = [g.leaf(rng.normal(size=h)) for _ in range(length)]
            state = g.leaf(rng.normal(size=h))
            leaves += cols + [state]
            mat = dn.concatenate_cols(cols)
            w1dt = w1 @ mat
            for _ in range(1 + length):
                e = dn.tanh(w1dt + dn.reshape(w2 @ state, (a, 1)))
                att = dn.softmax(dn.transpose(v @ e))
                state = dn.tanh(dn.reshape(mat @ att, (h,)) + state)
                inside += [e, att]
            terms.append(dn.dot_product(state, dn.inputs(rng.normal(size=h))))
        loss = dn.esum(terms)
        loss.backward()
        padded = sum(type(b) is PaddedBatch for b in set(g.engine.batches) if b is not None)
        return {"loss": np.asarray(loss.value()),
                "grads": [x.gradient() for x in leaves],
                "values": [x.npvalue() for x in inside],
                "inner": [x.gradient() for x in inside],
                "padded": padded}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["late", "depth", "agenda"])
def test_rows_of_kept_padded_copies_give_the_same_bits(monkeypatch, strategy, dtype):
    taken = []
    rows_of = autobatch.Engine._padded_rows

    def counted(self, x, places, *rest):
        left = rows_of(self, x, places, *rest)
        taken.append(len(places) - len(left))
        return left

    monkeypatch.setattr(autobatch.Engine, "_padded_rows", counted)
    reused = _decoder(strategy, dtype)
    if strategy == "late":
        assert sum(taken) > 0  # (some rows came from kept copies)
    monkeypatch.setattr(autobatch.Engine, "_padded_rows",
                        lambda self, x, places, *rest: range(len(places)))
    _same(reused, _decoder(strategy, dtype))
    _close(reused, _decoder(False, dtype), 1e-4 if dtype == np.float32 else 1e-10)
