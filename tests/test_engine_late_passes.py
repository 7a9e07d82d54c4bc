"""The late scheduler over graphs that mix computed and pending inputs (its passes tell them
apart by their own marks, not by where each input is), the row-by-row gather from several
batches, and the scatter of backward against the statement it stands for."""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn
from dynlp.autobatch import SCATTER_SET_ROWS, _scatter_add


def _model():
    pc = dn.ParameterCollection(seed=4)
    return pc, pc.add_parameters((4, 3), name="W"), pc.add_parameters((4, 7), name="V")


def _incremental(autobatch, search: bool):
    """Examples whose first layer is computed by an early forward for some of them; the second
    layer reads computed and pending nodes (a cheap concatenation, then a costly product).
    `search`: unneeded nodes built early stay pending, and a forward between, so that the last
    forward, of few new nodes, searches the graph for what it needs rather than sweeping what
    was built since the oldest pending node."""
    pc, W, V = _model()
    rng = np.random.default_rng(8)
    values = rng.normal(size=(9, 3))
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=False) as g:
        xs = [dn.inputs(v) for v in values]
        first = [dn.tanh(dn.parameter(W) @ x) for x in xs]
        g.forward(first[::3])
        early = g.engine.counts["forward_nodes"]
        if search:
            for _ in range(60):
                dn.tanh(xs[0])
        second = [dn.logistic(dn.parameter(V) @ dn.concatenate([h, x]))
                  for h, x in zip(first, xs)]
        if search:
            g.forward([first[1]])
        searched = []
        pending = g.engine._pending
        g.engine._pending = lambda targets: searched.append(targets) or pending(targets)
        total = dn.sum_elems(dn.esum(second))
        total.forward()
        total.backward()
        got = ([h.npvalue() for h in first + second], [x.gradient() for x in xs],
               W.grad_as_array().copy(), V.grad_as_array().copy())
        counts = dict(g.engine.counts)
    return got, early, counts, bool(searched)


@pytest.mark.parametrize("search", [False, True])
@pytest.mark.parametrize("strategy", ["late", "depth", "agenda"])
def test_forwards_over_computed_and_pending_inputs_agree_and_never_recompute(strategy, search):
    want, _, _, _ = _incremental(False, search)
    got, early, counts, searched = _incremental(strategy, search)
    for a, b in zip(got[0] + got[1] + [got[2], got[3]], want[0] + want[1] + [want[2], want[3]]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if strategy == "late":
        assert searched == search
    # the early forward: 3 products and 3 tanh; then each node once (the other 6 first
    # layers, 9 of each second-layer op, the sum and its sum_elems; not the unneeded ones)
    assert early == 6
    assert counts["forward_nodes"] == 6 + 2 * 6 + 3 * 9 + 2


def test_late_runs_cheap_nodes_over_computed_inputs_early_in_one_batch():
    """Concatenations whose inputs are all computed (an early forward) or leaves run as one
    batch in the first level, whatever the heights of their consumers."""
    pc, W, V = _model()
    with dn.Graph(dtype=np.float64, fuse=False) as g:
        xs = [dn.inputs(np.full(3, float(i))) for i in range(6)]
        hs = [dn.tanh(dn.parameter(W) @ x) for x in xs]
        g.forward(hs)
        ran = []
        run = g.engine._run

        def record(nodes):
            ran.append(g.ops[nodes[0]].name)
            run(nodes)

        g.engine._run = record
        cats = [dn.concatenate([h, x]) for h, x in zip(hs, xs)]
        # chains of different lengths above them: heights from 2 to 7
        tops = []
        for i, c in enumerate(cats):
            y = dn.parameter(V) @ c
            for _ in range(i):
                y = dn.tanh(y)
            tops.append(dn.sum_elems(y))
        dn.esum(tops).forward()
    assert ran[0] == "concatenate"
    assert ran.count("concatenate") == 1


def _rows_of(engine, places):
    bufs = engine.bufs
    return np.stack([bufs[p >> 32][p & ((1 << 32) - 1)] for p in places])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_row_by_row_gather_from_several_batches_copies_each_row(dtype, shape):
    rng = np.random.default_rng(2)
    with dn.Graph(dtype=dtype, fuse=False) as g:
        xs = [dn.inputs(rng.normal(size=shape)) for _ in range(12)]
        made = [(dn.tanh, dn.logistic, dn.rectify)[i % 3](x) for i, x in enumerate(xs)]
        g.forward(made)
        loc = g.loc
        places = [loc[m.i] for m in made]
        for chosen in (places, places[::-1], places[1:4], [places[5], places[0], places[5]]):
            x, plan = g.engine._gather(list(chosen))
            assert plan[0] == "multi"
            assert x.dtype == dtype and x.shape == (len(chosen),) + shape
            np.testing.assert_array_equal(x, _rows_of(g.engine, chosen))


@pytest.mark.parametrize("count", [1, 2, SCATTER_SET_ROWS, SCATTER_SET_ROWS + 1, 300])
def test_scatter_of_distinct_rows_is_the_fancy_index_statement(count):
    """Bit for bit what `target[rows] += values` gives, on either side of the set check."""
    rng = np.random.default_rng(count)
    rows = rng.permutation(500)[:count]
    values = rng.normal(size=(count, 4)).astype(np.float32)
    target = rng.normal(size=(500, 4)).astype(np.float32)
    want = target.copy()
    want[rows] += values
    _scatter_add(target, rows, values)
    np.testing.assert_array_equal(target, want)


@pytest.mark.parametrize("count", [2, SCATTER_SET_ROWS, SCATTER_SET_ROWS + 1])
def test_scatter_of_one_repeated_row_sums_it(count):
    """One row repeated once among distinct rows, on either side of the set check."""
    rng = np.random.default_rng(count)
    rows = rng.permutation(500)[:count]
    rows[-1] = rows[0]
    values = rng.normal(size=(count, 4))
    target = rng.normal(size=(500, 4))
    want = target.copy()
    np.add.at(want, rows, values)
    _scatter_add(target, rows, values)
    np.testing.assert_allclose(target, want, rtol=1e-14, atol=1e-14)


def _attention(autobatch):
    """Encoder matrices of lengths 1 to 9 (several padded batches, some lengths a batch of
    their own), each read at three decoder steps, a forward between the steps: padded
    arguments that are a padded batch, rows of one, or nodes of several."""
    rng = np.random.default_rng(6)
    lengths = [1, 2, 3, 3, 4, 5, 7, 9] + [12] * 17
    with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=False) as g:
        xs = [dn.inputs(rng.normal(size=(4, n))) for n in lengths]
        mats = [dn.tanh(x) for x in xs]
        q = [dn.inputs(rng.normal(size=(4,))) for _ in lengths]
        terms = []
        for step in range(3):
            chosen = range(len(mats)) if step != 1 else range(0, len(mats), 2)
            scores = [dn.softmax(dn.transpose(mats[i]) @ q[i]) for i in chosen]
            reads = [mats[i] @ s for i, s in zip(chosen, scores)]
            g.forward(reads)
            q = [dn.tanh(q[i] + r) for i, r in zip(chosen, reads)] + q[len(reads):]
            terms += reads
        loss = dn.sum_elems(dn.esum(terms))
        loss.backward()
        engine = g.engine
        plans = [p for b in engine.batches if b is not None for p in b.plans
                 if type(p) is tuple and p[0] == "padded"]
        found = [engine._padded_source(p[1], p[3]) for p in plans]
        return ([x.gradient() for x in xs], [m.npvalue() for m in mats], plans, found)


def test_padded_plans_keep_what_their_source_is():
    """What each padded argument's plan keeps of its source (read by backward) is what the
    engine finds for it after the last forward and backward."""
    grads, values, plans, found = _attention("late")
    assert plans
    assert any(s is not None and r is None for _, s, r in (p[3:] for p in plans))
    assert any(s is not None and r is not None for _, s, r in (p[3:] for p in plans))
    assert any(s is None for _, s, _ in (p[3:] for p in plans))
    for plan, (source, rows) in zip(plans, found):
        assert plan[4] is source
        if rows is None:
            assert plan[5] is None
        else:
            np.testing.assert_array_equal(plan[5], rows)
    want_grads, want_values, _, _ = _attention(False)
    for a, b in zip(grads + values, want_grads + want_values):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
