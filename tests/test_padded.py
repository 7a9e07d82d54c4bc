"""Nodes whose shapes differ only in a length (attention over sentences of different lengths)
batch together, padded to the longest: values, gradients and JVPs equal unbatched ones in
float64 under every strategy; intermediate values and gradients stay readable; padding never
leaks (a softmax pads with -inf, a contraction with zeros, the rest repeats the last entry, so
that a log or a division in a padded entry stays finite)."""

import numpy as np
import pytest

import dynlp as dn
from dynlp import autobatch
from dynlp.autobatch import PaddedBatch

MODES = ["depth", "agenda", "late"]
LENGTHS = [1, 2, 3, 3, 5, 7, 8, 13]


def _batches(g):
    """The batches that ran, each once (a padded batch stands at each node's entry)."""
    seen, out = set(), []
    for b in g.engine.batches:
        if b is not None and id(b) not in seen:
            seen.add(id(b))
            out.append(b)
    return out


def _attention(autobatch, lengths=LENGTHS):
    """MLP attention over each sequence's columns, 1 to 3 decoder steps per sequence (so that
    a step's batch reads some of the sequences' columns)."""
    rng = np.random.default_rng(3)
    a, h = 4, 3
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        w1 = g.leaf(rng.normal(size=(a, h)))
        w2 = g.leaf(rng.normal(size=(a, h)))
        v = g.leaf(rng.normal(size=(1, a)))
        leaves = [w1, w2, v]
        terms, probs, inner, scores = [], [], [], []
        for k, length in enumerate(lengths):
            cols = [g.leaf(rng.normal(size=h)) for _ in range(length)]
            state = g.leaf(rng.normal(size=h))
            leaves += cols + [state]
            mat = dn.concatenate_cols(cols)
            w1dt = w1 @ mat
            for _ in range(1 + k % 3):
                summed = w1dt + dn.reshape(w2 @ state, (a, 1))   # read inside tanh's node
                e = dn.tanh(summed)
                score = dn.transpose(v @ e)
                att = dn.softmax(score)
                context = dn.reshape(mat @ att, (h,))
                state = dn.tanh(context + state)
                probs.append(att)
                inner.append(summed)
                scores.append(score)
            terms.append(dn.dot_product(state, dn.inputs(rng.normal(size=h))))
        loss = dn.esum(terms)
        loss.backward()
        return {"loss": loss.scalar_value(),
                "grads": [x.gradient() for x in leaves],
                "probs": [p.npvalue() for p in probs],
                "prob_grads": [p.gradient() for p in probs],
                "inner_grads": [s.gradient() for s in inner],
                "score_values": [s.npvalue() for s in scores],
                "batches": _batches(g)}


def _same(got, want):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
    for key in ("grads", "probs", "prob_grads", "inner_grads", "score_values"):
        assert len(got[key]) == len(want[key])
        for x, y in zip(got[key], want[key]):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_attention_over_sequences_of_every_length_batches_padded(mode):
    want = _attention(False)
    got = _attention(mode)
    _same(got, want)
    padded = [b for b in got["batches"] if type(b) is PaddedBatch]
    assert {b.op.name for b in padded} >= {"softmax", "transpose", "matmul"}
    softmaxes = [b for b in got["batches"] if b.op.name == "softmax"]
    # lengths in one power-of-two range pad together: 1 | 2, 3, 3 | 5, 7 | 8, 13, at each step
    assert len(softmaxes) <= 4 * 3 < sum(1 + k % 3 for k in range(len(LENGTHS)))
    contractions = [b for b in got["batches"] if b.op.name == "batched_matmul"]
    assert len(contractions) <= 4 * 3


def test_attention_jvp_and_gradcheck_through_padded_batches():
    rng = np.random.default_rng(0)

    def f(w, v, m1, m2, m3):
        total = []
        for m in (m1, m2, m3):
            att = dn.softmax(dn.transpose(v @ dn.tanh(w @ m)))
            total.append(dn.sum_elems(dn.log(m @ att * m @ att + 1.0)))
        return dn.esum(total)

    arrays = [rng.normal(size=(4, 3)), rng.normal(size=(1, 4)), rng.normal(size=(3, 2)),
              rng.normal(size=(3, 5)), rng.normal(size=(3, 3))]
    assert dn.gradcheck(f, *arrays, autobatch="late")
    tangents = [rng.normal(size=a.shape) for a in arrays]
    results = []
    for mode in (False, "late"):
        with dn.Graph(dtype=np.float64, autobatch=mode) as g:
            xs = [g.leaf(a) for a in arrays]
            out = f(*xs)
            results.append(dn.jvp(out, {x: t for x, t in zip(xs, tangents)}))
            if mode:
                assert any(type(b) is PaddedBatch for b in _batches(g))
    assert results[1] == pytest.approx(results[0], rel=1e-12)


def _op_graph(build, autobatch, lengths=(1, 2, 3, 4, 6, 9, 9)):
    """build(g, rng, length) -> (output, its stacked inputs) for each length; a weighted sum."""
    rng = np.random.default_rng(11)
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        shared = {}
        leaves, terms = [], []
        for length in lengths:
            out, xs = build(g, rng, length, shared)
            leaves += xs
            terms.append(dn.sum_elems(dn.cmult(out, dn.inputs(rng.normal(size=out.shape)))))
        loss = dn.esum(terms)
        loss.backward()
        grads = [x.gradient() for x in leaves + list(shared.values())]
        return loss.scalar_value(), grads, _batches(g)


def _weight(g, shared, name, shape, rng):
    if name not in shared:
        shared[name] = g.leaf(rng.normal(size=shape))
    return shared[name]


def _pointwise(g, rng, n, shared):
    """log and division over entries that zero padding would make infinite, times a column
    broadcast along the length (whose gradient sums over it); a reshape."""
    x = g.leaf(rng.uniform(0.5, 2.0, size=(3, n)))
    y = g.leaf(rng.normal(size=3))
    z = g.leaf(rng.normal(size=(3, n)))
    out = dn.log(x) / (x * 2.0) * dn.reshape(y, (3, 1)) + dn.tanh(z)
    return out, [x, y, z]


def _column(g, rng, n, shared):
    """An elementwise program over (L, 1) columns (a sequence's scores) pads along the rows; a
    (1,) operand broadcasts along them (its gradient sums over them)."""
    x = g.leaf(rng.uniform(0.5, 2.0, size=(n, 1)))
    y = g.leaf(rng.normal(size=1))
    return dn.tanh(x) * 2.0 + dn.log(x) * y, [x, y]


def _lone(g, rng, n, shared):
    """A lone elementwise op is a primitive node; it pads as well."""
    x = g.leaf(rng.uniform(0.5, 2.0, size=(2, n)))
    return dn.log(x), [x]


def _matmul(g, rng, n, shared):
    x = g.leaf(rng.normal(size=(4, n)))
    return _weight(g, shared, "w", (2, 4), rng) @ x, [x]


_PC = dn.ParameterCollection(seed=4)
AFFINE = {"w": _PC.add_parameters((2, 4)), "v": _PC.add_parameters((2, 3))}


def _affine(g, rng, n, shared):
    """logistic(W X + V Y) over matrices: one affine_transform node with its activation."""
    x = g.leaf(rng.normal(size=(4, n)))
    y = g.leaf(rng.normal(size=(3, n)))
    if not shared:
        shared.update({name: dn.parameter(p) for name, p in AFFINE.items()})
    out = dn.logistic(shared["w"] @ x + shared["v"] @ y)
    assert g.ops[out.i].name == "affine_transform"
    return out, [x, y]


def _transpose_vector(g, rng, n, shared):
    x = g.leaf(rng.normal(size=n))
    return dn.transpose(x), [x]


def _transpose_matrix(g, rng, n, shared):
    x = g.leaf(rng.normal(size=(2, n)))
    return dn.transpose(x), [x]


def _softmax_vector(g, rng, n, shared):
    x = g.leaf(rng.normal(size=n) * 3)
    return dn.softmax(x), [x]


def _softmax_matrix(g, rng, n, shared):
    x = g.leaf(rng.normal(size=(n, 2)) * 3)
    return dn.softmax(x), [x]


def _contract_vector(g, rng, n, shared):
    m = dn.tanh(g.leaf(rng.normal(size=(3, n))))   # (computed: a per-example left matrix)
    x = g.leaf(rng.normal(size=n))
    return m @ x, [x]


def _contract_matrix(g, rng, n, shared):
    raw = g.leaf(rng.normal(size=(3, n)))
    x = g.leaf(rng.normal(size=(n, 2)))
    return dn.tanh(raw) @ x, [raw, x]


BUILDS = [_pointwise, _column, _lone, _matmul, _affine, _transpose_vector, _transpose_matrix,
          _softmax_vector, _softmax_matrix, _contract_vector, _contract_matrix]


@pytest.mark.parametrize("build", BUILDS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("mode", MODES)
def test_every_op_that_pads(build, mode):
    want_loss, want_grads, plain = _op_graph(build, False)
    got_loss, got_grads, batches = _op_graph(build, mode)
    assert np.isfinite(got_loss)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for got, want in zip(got_grads, want_grads):
        assert got.shape == want.shape and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert len(batches) < len(plain)
    assert any(type(b) is PaddedBatch for b in batches) or \
        any(b.op.name == "batched_matmul" and len(b.nodes) > 1 for b in batches)


def test_lengths_far_apart_run_in_batches_of_their_own():
    """1 and 40 do not pad together (at most half of a padded batch is padding)."""
    want_loss, want_grads, _ = _op_graph(_matmul, False, lengths=(1, 40, 2, 3))
    got_loss, got_grads, batches = _op_graph(_matmul, "late", lengths=(1, 40, 2, 3))
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    products = [b for b in batches if b.op.name == "matmul"]
    assert sorted(len(b.nodes) for b in products) == [1, 1, 2]


def test_many_nodes_of_one_length_run_as_a_batch_of_their_own(monkeypatch):
    lengths = (3,) * 5 + (4, 5, 6)
    want_loss, want_grads, _ = _op_graph(_matmul, False, lengths=lengths)
    monkeypatch.setattr(autobatch, "PAD_ALONE", 5)
    got_loss, got_grads, batches = _op_graph(_matmul, "late", lengths=lengths)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    products = [b for b in batches if b.op.name == "matmul"]
    assert sorted((len(b.nodes), type(b) is PaddedBatch) for b in products) == \
        [(3, True), (5, False)]


@pytest.mark.parametrize("settings", [{"fuse": "regions"}, {"pad": False}])
def test_regions_fusion_and_pad_false_keep_exact_signatures(settings):
    """fuse="regions" groups regions by their members' signatures: no padding there."""
    with dn.Graph(dtype=np.float64, **settings) as g:
        w = g.leaf(np.ones((2, 3)))
        outs = [dn.tanh(w @ g.leaf(np.ones((3, n)))) for n in (2, 3)]
        assert g.sigs[outs[0].i] != g.sigs[outs[1].i]
        assert not g.mixed_ops
    with pytest.raises(dn.SettingError, match="pad must be True or False"):
        dn.Graph(pad="yes")


def test_lengths_share_a_signature():
    with dn.Graph(dtype=np.float64) as g:
        w = g.leaf(np.ones((2, 3)))
        outs = [dn.tanh(w @ g.leaf(np.ones((3, n)))) for n in (2, 3)]
        assert g.sigs[outs[0].i] == g.sigs[outs[1].i]
        assert g.mixed_ops


def _steps_over_matrices(autobatch, lengths, steps=3):
    """Each step reads every sequence's matrix (a leaf, so each is copied into a padded batch
    node by node): tanh(M + x) and a softmax over its columns' sums."""
    rng = np.random.default_rng(5)
    h = 3
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        mats = [g.leaf(rng.normal(size=(h, n))) for n in lengths]
        starts = [g.leaf(rng.normal(size=(h, 1))) for _ in mats]
        outs = []
        for k, (m, x) in enumerate(zip(mats, starts)):
            for _ in range(steps):  # (each step's x from the one before: one level a step)
                e = dn.tanh(m + x)
                outs.append(dn.sum_elems(dn.softmax(dn.transpose(dn.sum_dim(e, [0])))))
                x = dn.reshape(dn.tanh(dn.sum_dim(e, [1])), (h, 1))
        loss = dn.esum(outs) + dn.esum([dn.sum_elems(dn.square(m)) for m in mats])
        loss.backward()
        return ({"loss": loss.scalar_value(), "grads": [m.gradient() for m in mats + starts]},
                _batches(g))


@pytest.mark.parametrize("mode", MODES)
def test_the_same_nodes_padded_again_reuse_one_copy_and_give_the_same_numbers(mode):
    """At every step the batch over the sequences' matrices pads the same nodes alike: it
    reuses the copy the first step made (one array in each step's batch), with the values and
    gradients of unbatched graphs."""
    lengths = [2, 3, 3, 5, 6, 7]
    want, _ = _steps_over_matrices(False, lengths)
    got, batches = _steps_over_matrices(mode, lengths)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
    for x, y in zip(got["grads"], want["grads"]):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    padded = [b for b in batches if type(b) is PaddedBatch]
    seen = [id(x) for b in padded for x in b.xs]
    assert len(seen) > len(set(seen))  # (one padded copy read by the batches of every step)
