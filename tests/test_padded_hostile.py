"""Adversarial checks of batching across lengths (padded batches): graphs whose padded nodes
are read by ordinary batches, singletons, multi-source gathers, sums and concatenations, by
several padded batches (subsets, other orders, repeated rows), read mid-graph and through two
backward passes; lengths 1, equal and far apart; many nodes of one length; elementwise programs
that a padded entry could turn into inf or nan; softmaxes of huge and tiny scores. Each graph's
values and gradients (of inputs, parameters and intermediate expressions) under every strategy
equal those of the unbatched graph in float64 (looser in float32), with fuse=False,
fuse="regions" and pad=False too."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import autobatch
from dynlp.autobatch import PaddedBatch
from test_padded import _batches

MODES = ["late", "depth", "agenda"]




def _padded(batches):
    return [b for b in batches if type(b) is PaddedBatch]


def _run(build, mode, dtype=np.float64, seed=5, **settings):
    """build(g, rng) -> (loss, leaves, watched expressions); everything read after backward."""
    rng = np.random.default_rng(seed)
    with dn.Graph(dtype=dtype, autobatch=mode, **settings) as g:
        loss, leaves, watched = build(g, rng)
        loss.backward()
        return {"loss": loss.scalar_value(),
                "grads": [x.gradient() for x in leaves],
                "values": [w.npvalue() for w in watched],
                "inner": [w.gradient() for w in watched],
                "batches": _batches(g)}


def _same(got, want, rtol=1e-10, atol=1e-12):
    assert np.isfinite(got["loss"])
    assert got["loss"] == pytest.approx(want["loss"], rel=max(rtol, 1e-12), abs=atol)
    for key in ("grads", "values", "inner"):
        assert len(got[key]) == len(want[key])
        for k, (x, y) in enumerate(zip(got[key], want[key])):
            assert x.shape == y.shape, (key, k)
            assert np.isfinite(x).all() or not np.isfinite(y).all(), (key, k)
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"{key}[{k}]")


def _check(build, modes=MODES, want_padded=True, **settings):
    want = _run(build, False, **settings)
    for mode in modes:
        got = _run(build, mode, **settings)
        _same(got, want)
        if want_padded:
            assert _padded(got["batches"]), mode
    return want


def _weighted(x, rng):
    """sum(x * R) for a fixed random R: every entry of x matters to the loss."""
    return dn.sum_elems(dn.cmult(x, dn.inputs(rng.normal(size=x.shape))))


# ---------------------------------------------------------------------------------------------
# readers of padded nodes


def _readers(g, rng, lengths=(1, 2, 3, 3, 5, 6, 7)):
    """W @ X_i padded, then read by: a padded batch over all (tanh(W @ X): affine_transform,
    in order), padded batches over subsets in other orders with rows repeated, an ordinary
    batch (sum_elems), a singleton (a log of one), a concatenation, esum of the equal-length
    ones, a transpose."""
    w = g.leaf(rng.normal(size=(3, 4)))
    xs = [g.leaf(rng.normal(size=(4, n))) for n in lengths]
    ms = [w @ x for x in xs]
    leaves = [w] + xs
    terms = [_weighted(dn.tanh(m), rng) for m in ms]                       # all, in order
    # subsets of the padded products' batches, in other orders, rows repeated: lengths
    # 3, 2, 3, 3 | 7, 5, 6, 5 (a padded batch orders its nodes by length, then as built: the
    # two of length 3 read in the other order)
    order = [3, 1, 2, 3, 6, 4, 5, 4]
    terms += [_weighted(dn.exp(ms[i] * 0.3) + ms[i], rng) for i in order]
    terms += [dn.sum_elems(m) for m in ms]                                 # plain batch
    terms.append(dn.log(dn.sum_elems(dn.square(ms[4])) + 1.0))             # a singleton
    terms.append(_weighted(dn.concatenate_cols([ms[1], ms[6], ms[0]]), rng))
    terms.append(_weighted(dn.esum([ms[2], ms[3]]), rng))
    terms.append(_weighted(dn.transpose(ms[5]), rng))
    loss = dn.esum(terms)
    return loss, leaves, ms


def test_padded_nodes_read_by_every_kind_of_consumer():
    _check(_readers)


@pytest.mark.parametrize("settings", [{"fuse": False}, {"fuse": "regions"}, {"pad": False}])
def test_padded_readers_under_other_settings(settings):
    want = _check(_readers, want_padded=False, **settings)
    assert want["batches"]


def test_padded_readers_float32():
    want = _run(_readers, False, dtype=np.float32)
    for mode in MODES:
        got = _run(_readers, mode, dtype=np.float32)
        _same(got, want, rtol=2e-4, atol=2e-5)
        assert _padded(got["batches"])
        assert {b.out.dtype for b in _padded(got["batches"])} == {np.dtype(np.float32)}
        for key in ("grads", "values", "inner"):
            assert all(x.dtype == np.float32 for x in got[key])


def _two_padded_readers(g, rng):
    """One padded batch A (scores (n, 1)) read whole by two different batches that pad
    (softmax: -inf refill; a contraction: zero refill), and in part by a third contraction
    (rows in another order, one repeated)."""
    lengths = (2, 3, 3, 4, 1)
    w = g.leaf(rng.normal(size=(1, 3)))
    hs = [g.leaf(rng.normal(size=(3, n))) for n in lengths]
    a = [dn.transpose(w @ h) for h in hs]               # (n, 1)
    probs = [dn.softmax(s) for s in a]                  # reads all of A: -inf refill
    ctx = [dn.tanh(h) @ s for h, s in zip(hs, a)]      # zero refill
    back = [dn.logistic(hs[i]) @ a[i] for i in (3, 1, 0, 1)]  # a subset, other order
    terms = [_weighted(p, rng) for p in probs] + [_weighted(c, rng) for c in ctx]
    terms += [_weighted(b, rng) for b in back]
    return dn.esum(terms), [w] + hs, a + probs + back


def test_a_padded_batch_read_by_several_padded_batches():
    _check(_two_padded_readers)


def _read_twice(g, rng):
    """One padded batch reads the same padded node m four times (m * m + m / (m * m + 1)), and
    q @ softmax(q's first row) reads q as a matrix and through its softmax."""
    lengths = (1, 2, 3, 4, 6)
    w = g.leaf(rng.normal(size=(2, 3)))
    xs = [g.leaf(rng.uniform(0.5, 1.5, size=(3, n))) for n in lengths]
    ms = [w @ x for x in xs]
    sq = [m * m + m / (m * m + 1.0) for m in ms]
    att = [dn.softmax(dn.transpose(dn.pick_range(q, 0, 1, dim=0))) for q in sq]
    ctx = [q @ dn.reshape(p, (p.shape[0],)) for q, p in zip(sq, att)]
    terms = [_weighted(c, rng) for c in ctx] + [_weighted(q, rng) for q in sq]
    return dn.esum(terms), [w] + xs, ms + sq + att


def test_a_padded_batch_reads_one_node_twice():
    _check(_read_twice)


def _vector_readers(g, rng):
    """Padded elementwise vectors (scores of every length) read by losses and reductions that
    do not pad (pick_neg_log_softmax, log_softmax, max_dim, dot_product, concatenate), by a
    padded softmax, and one of them by an ordinary batch three times (one row, repeated)."""
    w = g.leaf(rng.normal(size=(3, 3)))
    v = g.leaf(rng.normal(size=(1, 3)))
    leaves, terms, watched = [w, v], [], []
    for n in (1, 2, 3, 3, 5, 6, 7, 4):
        x = g.leaf(rng.normal(size=(3, n)))
        leaves.append(x)
        s = dn.transpose(v @ dn.tanh(w @ x))                 # (n, 1)
        e = dn.exp(dn.reshape(s, (n,)) * 0.5) + 0.1          # (n,)
        p = dn.softmax(e)
        watched += [s, e, p]
        terms += [dn.pick_neg_log_softmax(e, n - 1), dn.max_dim(e, 0),
                  dn.sum_elems(dn.log_softmax(e) * 0.3), dn.sum_elems(dn.concatenate([p, e])),
                  dn.dot_product(p, e)]
    last = watched[-2]
    terms += [dn.sum_elems(dn.cmult(last, dn.inputs(rng.normal(size=last.shape))))
              for _ in range(3)]
    return dn.esum(terms), leaves, watched


def test_padded_vectors_read_by_losses_and_reductions():
    _check(_vector_readers)


# ---------------------------------------------------------------------------------------------
# reading mid-graph, two backward passes


@pytest.mark.parametrize("mode", [False] + MODES)
def test_values_read_mid_graph_and_two_backward_passes(mode):
    def run(mode):
        rng = np.random.default_rng(9)
        with dn.Graph(dtype=np.float64, autobatch=mode) as g:
            w = g.leaf(rng.normal(size=(3, 4)))
            xs = [g.leaf(rng.normal(size=(4, n))) for n in (1, 2, 3, 5, 7)]
            ms = [dn.tanh(w @ x) for x in xs]
            g.forward(ms[:3])                      # some of them, then all
            early = [m.npvalue() for m in ms[:2]]
            g.forward(ms)
            # built after the padded batch ran: padded readers of a subset, in another order
            probs = [dn.softmax(dn.transpose(dn.pick_range(ms[i], 1, 2, dim=0)))
                     for i in (4, 0, 2, 3)]
            loss1 = dn.esum([_weighted(p, rng) for p in probs])
            mid = [p.npvalue() for p in probs]
            loss1.backward()
            first = [x.gradient() for x in [w] + xs] + [m.gradient() for m in ms]
            loss2 = dn.esum([_weighted(m, rng) for m in ms[1:]])
            loss2.backward()
            second = [x.gradient() for x in [w] + xs] + [m.gradient() for m in ms]
            loss1.backward()                       # the first again: the same gradients
            third = [x.gradient() for x in [w] + xs] + [m.gradient() for m in ms]
            return early, mid, first, second, third, _batches(g)

    want = run(False)
    got = run(mode)
    for a, b in zip(got[:5], want[:5]):
        for x, y in zip(a, b):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    if mode:
        assert _padded(got[5])


def test_gradient_of_a_padded_node_the_second_loss_does_not_reach_is_zero():
    rng = np.random.default_rng(1)
    with dn.Graph(dtype=np.float64) as g:
        w = g.leaf(rng.normal(size=(2, 3)))
        ms = [dn.tanh(w @ g.leaf(rng.normal(size=(3, n)))) for n in (2, 3)]
        dn.esum([dn.sum_elems(m) for m in ms]).backward()
        assert np.abs(ms[0].gradient()).sum() > 0
        dn.sum_elems(ms[1]).backward()
        assert _padded(_batches(g))
        np.testing.assert_array_equal(ms[0].gradient(), np.zeros((2, 2)))
        assert np.abs(ms[1].gradient()).sum() > 0


# ---------------------------------------------------------------------------------------------
# lengths


def _attention(lengths, watch_contexts=False):
    """A build: scores of tanh(W H) over each length, their softmax, the contexts H a."""
    def build(g, rng):
        w = g.leaf(rng.normal(size=(2, 3)))
        v = g.leaf(rng.normal(size=(1, 2)))
        hs = [g.leaf(rng.normal(size=(3, n))) for n in lengths]
        e = [dn.tanh(w @ h) for h in hs]
        att = [dn.softmax(dn.transpose(v @ x)) for x in e]
        ctx = [h @ a for h, a in zip(hs, att)]
        watched = e + att + ctx if watch_contexts else e + att
        return dn.esum([_weighted(c, rng) for c in ctx]), [w, v] + hs, watched
    return build


@pytest.mark.parametrize("lengths", [(1, 1, 1), (4, 4, 4), (1, 2), (1, 100), (1, 100, 60, 2),
                                     (100, 51, 99, 64, 1, 1, 2)])
def test_lengths_one_equal_and_far_apart(lengths):
    build = _attention(lengths, watch_contexts=True)
    _check(build, want_padded=False)
    got = _run(build, "late")
    for b in _padded(got["batches"]):  # less than half of each node's row is padding
        assert max(b.lengths) < 2 * min(b.lengths), b.lengths


@pytest.mark.parametrize("mode", MODES)
def test_many_nodes_of_one_length_with_few_of_others(mode):
    """PAD_ALONE nodes of length 3 run as their own batch; 2, 3 (few: the same length as the
    many) and 4 to 7 pad; all read by a padded softmax and a contraction."""
    lengths = (3,) * (autobatch.PAD_ALONE + 2) + (2, 4, 5, 7, 6, 1)

    build = _attention(lengths)

    want = _run(build, False)
    got = _run(build, mode)
    _same(got, want)
    sizes = sorted(len(b.nodes) for b in got["batches"] if b.op.name == "softmax")
    assert sizes[-1] == autobatch.PAD_ALONE + 2


def _wide_gathers(g, rng):
    """Ten padded batches (fifteen products of length 3 and one of length 2 each, one weight
    each) read by one ordinary batch of 150 nodes (a gather of more than 128 rows from 150
    padded entries: one copy of the sources), and one padded batch's nodes of length 3 read
    five times each by a program: PAD_ALONE nodes of one length, a batch of their own, that
    gathers padded entries, rows repeated."""
    leaves, ms = [], []
    for _ in range(10):
        w = g.leaf(rng.normal(size=(2, 3)))
        leaves.append(w)
        for n in (3,) * 15 + (2,):
            leaves.append(g.leaf(rng.normal(size=(3, n))))
            ms.append(w @ leaves[-1])
    three = [m for m in ms if m.shape[1] == 3]
    terms = [dn.sum_elems(dn.tanh(m) * dn.inputs(rng.normal(size=(2, 3)))) for m in three]
    terms += [dn.sum_elems(dn.square(m)) for m in ms]
    repeated = [m for m in ms[:16] for _ in range(5 if m.shape[1] == 3 else 1)]
    terms += [_weighted(dn.exp(m * 0.5) + m, rng) for m in repeated]
    return dn.esum(terms), leaves, ms[:20]


def test_wide_gathers_and_pad_alone_batches_read_padded_entries():
    want = _check(_wide_gathers)
    got = _run(_wide_gathers, "late")
    programs = [b for b in got["batches"] if b.op.name.startswith("fused(mul_const")]
    assert max(len(b.nodes) for b in programs) >= autobatch.PAD_ALONE
    assert len(want["grads"]) == 170


# ---------------------------------------------------------------------------------------------
# elementwise programs


def _programs(g, rng, lengths=(1, 2, 3, 4, 4, 6, 7)):
    """log, sqrt, division, exp, 1 / x (pow_const), constants, reshape, broadcast columns
    and rows, over entries where a zero in the padding would give inf or nan."""
    leaves, outs = [], []
    col = g.leaf(rng.uniform(0.5, 2.0, size=3))
    row_src = g.leaf(rng.uniform(0.5, 2.0, size=(1, 4)))
    leaves += [col, row_src]
    for n in lengths:
        x = g.leaf(rng.uniform(0.5, 2.0, size=(3, n)))
        r = g.leaf(rng.uniform(0.5, 2.0, size=(1, n)))
        y = g.leaf(rng.normal(size=(3, n)))
        leaves += [x, r, y]
        c = dn.reshape(col, (3, 1))
        a = dn.log(x) / dn.sqrt(x * r) + 1.0 / (x + c) - dn.exp(-y) * 0.5
        b = a * c / r + (2.0 - x) / 3.0
        outs += [a, b]
        vec = dn.logistic(g.leaf(rng.normal(size=n))) + 0.1     # (a node of its own)
        outs.append(dn.log(vec) * dn.sqrt(vec) / (vec - 0.05))   # rank 1 programs
    for n in (4, 4, 3):
        # (1, 4) reshaped to (4, 1), broadcast against (4, n): its last axis is the output's
        # by accident when n = 4
        z = g.leaf(rng.uniform(0.5, 2.0, size=(4, n)))
        leaves.append(z)
        outs.append(dn.log(z) * dn.reshape(row_src, (4, 1)) + z / dn.reshape(row_src, (4, 1)))
    terms = [_weighted(o, rng) for o in outs]
    return dn.esum(terms), leaves, outs


def test_elementwise_programs_never_see_padding():
    with np.errstate(all="raise"):
        _check(_programs)


@pytest.mark.parametrize("settings", [{"fuse": False}, {"pad": False}, {"fuse": "regions"}])
def test_elementwise_programs_other_settings(settings):
    with np.errstate(all="raise"):
        _check(_programs, want_padded=False, **settings)


def test_coincident_last_axis_program_pads_with_other_lengths():
    """(1, n) rows reshaped to (n, 1) columns against (n, n): the row's last axis is the
    output's; against (n, m) it is not. Nodes of both kinds in one graph."""
    def build(g, rng):
        leaves, outs = [], []
        for n, m in ((4, 4), (4, 2), (4, 3), (4, 4), (4, 1), (4, 5)):
            r = g.leaf(rng.uniform(0.5, 2.0, size=(1, n)))
            z = g.leaf(rng.normal(size=(n, m)))
            leaves += [r, z]
            outs.append(dn.tanh(z) * dn.reshape(r, (n, 1)) + z)
        return dn.esum([_weighted(o, rng) for o in outs]), leaves, outs

    _check(build)


# ---------------------------------------------------------------------------------------------
# softmax, contractions, transposes, affine sums


@pytest.mark.parametrize("scale", [1.0, 300.0, 1e-8])
def test_softmax_vectors_and_matrices_of_huge_and_tiny_scores(scale):
    def build(g, rng):
        leaves, outs = [], []
        for n in (1, 2, 3, 3, 4, 7, 5):
            v = g.leaf(rng.normal(size=n) * scale - 500.0 * (scale > 100))
            m = g.leaf(rng.normal(size=(n, 3)) * scale + 500.0 * (scale > 100))
            leaves += [v, m]
            outs += [dn.softmax(v), dn.softmax(m), dn.log(dn.softmax(v * 1.0) + 1e-3)]
        return dn.esum([_weighted(o, rng) for o in outs]), leaves, outs

    _check(build)


def test_contractions_with_vector_and_matrix_right_operands():
    def build(g, rng):
        leaves, outs = [], []
        for n in (1, 2, 3, 4, 6, 8, 5):
            raw = [g.leaf(rng.normal(size=s)) for s in ((3, n), (n,), (n, 2))]
            leaves += raw
            a = dn.tanh(raw[0])      # (computed: a per-example left operand)
            bv = dn.logistic(raw[1])
            bm = dn.tanh(raw[2])
            outs += [a @ bv, a @ bm, a @ dn.transpose(a), a, bv, bm]
        return dn.esum([_weighted(o, rng) for o in outs]), leaves, outs

    got = _run(build, "late")
    _check(build, want_padded=False)
    contractions = [b for b in got["batches"] if b.op.name == "batched_matmul"]
    assert any(len(b.nodes) > 1 and any(p[0] == "padded" for p in b.plans if type(p) is tuple)
               for b in contractions)


def test_transposes_of_vectors_and_matrices():
    def build(g, rng):
        leaves, outs = [], []
        for n in (1, 2, 3, 3, 5, 7):
            v = g.leaf(rng.normal(size=n))
            m = g.leaf(rng.normal(size=(2, n)))
            leaves += [v, m]
            tv = dn.transpose(dn.tanh(v))
            tm = dn.transpose(dn.tanh(m))
            outs += [tv, tm, dn.transpose(tm), dn.softmax(tm), tv @ dn.tanh(v)]
        return dn.esum([_weighted(o, rng) for o in outs]), leaves, outs

    _check(build)


_PC = dn.ParameterCollection(seed=8)
_W = _PC.add_parameters((3, 4))
_V = _PC.add_parameters((3, 2))
_B = _PC.add_parameters(3)


def _affine(g, rng, lengths=(1, 2, 3, 5, 6, 7, 7)):
    w, v, b = dn.parameter(_W), dn.parameter(_V), dn.parameter(_B)
    leaves, outs = [w, v, b], []
    for n in lengths:
        x = g.leaf(rng.normal(size=(4, n)))
        y = g.leaf(rng.normal(size=(2, n)))
        leaves += [x, y]
        outs += [dn.logistic(w @ x + v @ y), dn.tanh(w @ x + v @ y + dn.reshape(b, (3, 1))),
                 w @ x]
    return dn.esum([_weighted(o, rng) for o in outs]), leaves, outs


@pytest.mark.parametrize("settings", [{}, {"fuse": False}, {"pad": False}])
def test_affine_over_matrices_with_parameters(settings):
    _check(_affine, want_padded=not settings, **settings)


def test_affine_nodes_really_are_affine_and_padded():
    got = _run(_affine, "late")
    names = {b.op.name for b in _padded(got["batches"])}
    assert {"affine_transform", "matmul"} <= names


# ---------------------------------------------------------------------------------------------
# JVP and gradcheck


def test_jvp_and_gradcheck_through_readers():
    rng = np.random.default_rng(2)

    def f(w, x1, x2, x3, x4):
        ms = [w @ x for x in (x1, x2, x3, x4)]
        probs = [dn.softmax(dn.transpose(dn.pick_range(dn.tanh(m), 0, 1, dim=0))) for m in ms]
        out = [dn.sum_elems(m @ p) for m, p in zip(ms, probs)]
        out.append(dn.sum_elems(dn.log(ms[2] * ms[2] + 1.0)))
        return dn.esum(out + [dn.sum_elems(dn.concatenate_cols([ms[0], ms[3]]))])

    arrays = [rng.normal(size=(2, 3))] + [rng.normal(size=(3, n)) for n in (1, 2, 3, 5)]
    for mode in MODES:
        assert dn.gradcheck(f, *arrays, autobatch=mode)
    tangents = [rng.normal(size=a.shape) for a in arrays]
    results = []
    for mode in [False] + MODES:
        with dn.Graph(dtype=np.float64, autobatch=mode) as g:
            xs = [g.leaf(a) for a in arrays]
            out = f(*xs)
            out.backward()
            results.append((dn.jvp(out, dict(zip(xs, tangents))),
                            [x.gradient() for x in xs]))
            if mode:
                assert _padded(_batches(g))
    for value, grads in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-12)
        for x, y in zip(grads, results[0][1]):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# recipes and the DyNet layer: their own tests (run in the suite) cover them


def test_a_lone_elementwise_op_batches_across_lengths():
    with dn.Graph(dtype=np.float64) as g:
        xs = [g.leaf(np.full((3, n), 0.5)) for n in (2, 3)]
        outs = [dn.tanh(x) for x in xs] + [x * x for x in xs] + [dn.log(x) for x in xs]
        g.forward(outs)
        for out, x in zip(outs, xs * 3):
            assert out.npvalue().shape == x.shape
        ran = [b.op.name for b in _batches(g)]
    assert len(ran) == 3, ran  # one batch per op, not one per op and length


def test_affine_rejects_a_matrix_bias_of_another_length_when_built():
    with dn.Graph(dtype=np.float64) as g:
        b, w, x = g.leaf(np.ones((2, 4))), g.leaf(np.ones((2, 3))), g.leaf(np.ones((3, 3)))
        with pytest.raises(dn.ShapeError):
            dn.affine_transform([b, w, x])
