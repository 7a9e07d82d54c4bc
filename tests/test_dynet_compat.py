"""dynlp.dynet: DyNet 2.1's API and semantics, checked against numpy, against DyNet's equations
reimplemented in numpy, and against outputs recorded from DyNet (tests/dynet_programs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
import dynlp.dynet as dy
from dynlp.dynet import config, runner

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "dynet_programs"


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- expressions ----------------------------------------------------------------------------------
def test_dims_and_values_follow_dynet():
    dy.renew_cg()
    a = np.arange(6.0).reshape(2, 3)
    x = dy.inputTensor(a)
    assert x.dim() == ((2, 3), 1)
    assert isinstance(x.value(), np.ndarray)
    s = dy.sum_elems(x)
    assert s.dim() == ((1,), 1) and s.value() == 15.0 and s.npvalue().shape == (1,)
    v = dy.inputVector([1, 2, 3])
    assert v.dim() == ((3,), 1) and v.value() == [1.0, 2.0, 3.0]
    assert x.vec_value() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]  # column-major
    assert dy.transpose(v).dim() == ((1, 3), 1)
    assert dy.pick(x, 1).dim() == ((3,), 1) and dy.pick(x, 1, 1).dim() == ((2,), 1)
    assert dy.dot_product(v, v).value() == 14.0


def test_star_is_a_matrix_product_and_reshape_is_column_major():
    dy.renew_cg()
    a = np.arange(6.0).reshape(2, 3)
    x = dy.inputTensor(a)
    np.testing.assert_allclose((x * dy.inputVector([1, 2, 3])).npvalue(), a @ [1, 2, 3])
    np.testing.assert_allclose((dy.inputVector([1, 2]) * dy.inputTensor([[1, 2, 3]])).npvalue(),
                               np.outer([1, 2], [1, 2, 3]))
    np.testing.assert_allclose((dy.inputVector([1, 2]) * dy.scalarInput(3)).npvalue(), [3, 6])
    np.testing.assert_allclose(dy.reshape(x, (3, 2)).npvalue(), a.reshape((3, 2), order="F"))
    np.testing.assert_allclose(dy.reshape(x, (6,)).npvalue(), a.ravel(order="F"))
    np.testing.assert_allclose(dy.cmult(x, x).npvalue(), a * a)
    np.testing.assert_allclose((x / 2).npvalue(), a / 2)
    np.testing.assert_allclose((1 - x).npvalue(), 1 - a)
    np.testing.assert_allclose(dy.cdiv(x, dy.inputVector([1, 2])).npvalue(),
                               a / np.array([[1], [2]]))


def test_reductions_and_structure_against_numpy():
    dy.renew_cg()
    a = np.random.default_rng(0).normal(size=(3, 4))
    x = dy.inputTensor(a)
    np.testing.assert_allclose(dy.sum_dim(x, [0]).npvalue(), a.sum(0), rtol=1e-6)
    np.testing.assert_allclose(dy.mean_dim(x, [1], False).npvalue(), a.mean(1), rtol=1e-6)
    np.testing.assert_allclose(dy.max_dim(x, 1).npvalue(), a.max(1), rtol=1e-6)
    np.testing.assert_allclose(dy.softmax(x, d=1).npvalue(),
                               np.exp(a) / np.exp(a).sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(dy.concatenate([x, x], d=1).npvalue(), np.hstack([a, a]))
    np.testing.assert_allclose(dy.concatenate_cols([dy.inputVector([1, 2]),
                                                    dy.inputVector([3, 4])]).npvalue(),
                               [[1, 3], [2, 4]])
    np.testing.assert_allclose(dy.std_elems(x).value(), a.std(), rtol=1e-5)
    np.testing.assert_allclose(dy.transpose(dy.inputTensor(np.ones((2, 3, 4))),
                                            [2, 0, 1]).dim()[0], (4, 2, 3))
    np.testing.assert_allclose(dy.select_cols(x, [3, 0]).npvalue(), a[:, [3, 0]], rtol=1e-6)
    np.testing.assert_allclose(dy.pickrange(x, 1, 3).npvalue(), a[1:3], rtol=1e-6)
    np.testing.assert_allclose(x[1:3, ::2].npvalue(), a[1:3, ::2], rtol=1e-6)
    np.testing.assert_allclose(dy.fold_rows(dy.inputTensor(np.arange(8.0).reshape(4, 2)),
                                            2).npvalue(), [[2, 4], [10, 12]])
    np.testing.assert_allclose(dy.kmax_pooling(x, 2).npvalue(),
                               [r[np.sort(np.argsort(-r)[:2])] for r in a], rtol=1e-6)
    w = np.random.default_rng(1).normal(size=(3, 2))
    want = np.stack([np.correlate(a[i], w[i], mode="valid") for i in range(3)])
    np.testing.assert_allclose(dy.filter1d_narrow(x, dy.inputTensor(w)).npvalue(), want,
                               rtol=1e-5)


def test_layer_norm_and_losses_against_numpy():
    dy.renew_cg()
    x, g, b = np.arange(10.0), np.arange(10.0) * 0.5, np.ones(10)
    y = dy.layer_norm(dy.inputTensor(x), dy.inputTensor(g), dy.inputTensor(b))
    np.testing.assert_allclose(y.npvalue(), g * (x - x.mean()) / x.std() + b, rtol=1e-5)
    s = np.array([0.5, 2.0, -1.0])
    v = dy.inputTensor(s)
    np.testing.assert_allclose(dy.pickneglogsoftmax(v, 1).value(),
                               -np.log(np.exp(s[1]) / np.exp(s).sum()), rtol=1e-6)
    assert dy.hinge(v, 0).value() == pytest.approx(max(0, 1 - 0.5 + 2.0) + max(0, 1 - 0.5 - 1))
    assert dy.l1_distance(v, v * 2).value() == pytest.approx(np.abs(s).sum())
    assert dy.squared_distance(v, v * 2).value() == pytest.approx((s * s).sum())
    lse = dy.logsumexp([dy.scalarInput(1.0), dy.scalarInput(2.0)]).value()
    assert lse == pytest.approx(np.logaddexp(1.0, 2.0))


def test_conv2d_and_maxpooling_against_numpy():
    rng = np.random.default_rng(2)
    img, f = rng.normal(size=(5, 6, 2)), rng.normal(size=(3, 2, 2, 4))
    dy.renew_cg()
    out = dy.conv2d(dy.inputTensor(img), dy.inputTensor(f), [1, 2]).npvalue()
    want = np.zeros((3, 3, 4))
    for i in range(3):
        for j in range(3):
            want[i, j] = np.einsum("uvc,uvco->o", img[i:i + 3, 2 * j:2 * j + 2], f)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    same = dy.conv2d(dy.inputTensor(img), dy.inputTensor(f), [1, 1], is_valid=False)
    assert same.dim() == ((5, 6, 4), 1)
    pooled = dy.maxpooling2d(dy.inputTensor(img), [2, 2], [2, 2]).npvalue()
    np.testing.assert_allclose(pooled, img[:4, :6].reshape(2, 2, 3, 2, 2).max(axis=(1, 3)),
                               rtol=1e-6)


def _through(f, *arrays):
    """gradcheck a function of DyNet expressions through the layer."""
    def g(*exprs):
        return f(*[dy.Expression([e]) for e in exprs]).es[0]
    dn.gradcheck(g, *arrays, atol=1e-6)


@pytest.mark.parametrize("name,f,shapes", [
    ("layer_norm", lambda x, g, b: dy.layer_norm(x, g, b), [(5,), (5,), (5,)]),
    ("reshape", lambda x: dy.reshape(x, (3, 4)), [(2, 6)]),
    ("transpose_dims", lambda x: dy.transpose(x, [2, 0, 1]), [(2, 3, 2)]),
    ("concatenate_d1", lambda x, y: dy.concatenate([x, y], d=1), [(2, 3), (2, 2)]),
    ("softmax_d1", lambda x: dy.softmax(x, d=1), [(2, 3)]),
    ("std_elems", lambda x: dy.std_elems(x), [(4,)]),
    ("conv2d", lambda x, f: dy.conv2d(x, f, [1, 1], is_valid=False), [(4, 3, 2), (2, 2, 2, 3)]),
    ("maxpooling2d", lambda x: dy.maxpooling2d(x, [2, 2], [1, 1]), [(3, 3, 1)]),
    ("kmax_pooling", lambda x: dy.kmax_pooling(x, 2), [(3, 4)]),
    ("filter1d_narrow", lambda x, f: dy.filter1d_narrow(x, f), [(2, 5), (2, 3)]),
    ("fold_rows", lambda x: dy.fold_rows(x, 2), [(4, 3)]),
    ("star", lambda a, b: a * b, [(2, 3), (3, 4)]),
    ("pow", lambda a, b: dy.pow(a, b), [(3,), (3,)]),
])
def test_gradients_through_the_layer(name, f, shapes):
    rng = np.random.default_rng(3)
    arrays = [rng.uniform(0.5, 1.5, size=s) * rng.choice([-1, 1], size=s) for s in shapes]
    if name == "pow":
        arrays = [np.abs(a) for a in arrays]
    _through(f, *arrays)


# -- explicit batches -----------------------------------------------------------------------------
def test_batched_inputs_ride_on_the_batch_axis():
    dy.renew_cg()
    a = np.arange(12.0).reshape(3, 4)
    xb = dy.inputTensor(a, batched=True)
    assert xb.dim() == ((3,), 4)
    np.testing.assert_allclose(xb.npvalue(), a)
    W = np.arange(6.0).reshape(2, 3)
    y = dy.inputTensor(W) * xb
    assert y.dim() == ((2,), 4)
    np.testing.assert_allclose(y.npvalue(), W @ a)
    np.testing.assert_allclose(dy.sum_batches(dy.sum_elems(y)).value(), (W @ a).sum())
    np.testing.assert_allclose(dy.mean_batches(y).npvalue(), (W @ a).mean(1))
    np.testing.assert_allclose(dy.pick_batch_elem(xb, 2).npvalue(), a[:, 2])
    np.testing.assert_allclose(dy.pick_batch_elems(xb, [3, 0]).npvalue(), a[:, [3, 0]])
    np.testing.assert_allclose(dy.pick(xb, [0, 1, 2, 0]).vec_value(), [0, 5, 10, 3])
    both = dy.concatenate_to_batch([dy.pick_batch_elem(xb, 0), dy.pick_batch_elem(xb, 1)])
    assert both.dim() == ((3,), 2)
    losses = dy.pickneglogsoftmax_batch(xb, [0, 1, 2, 0])
    assert losses.dim() == ((1,), 4)
    folded = dy.reshape(xb, (12,), batch_size=1)
    np.testing.assert_allclose(folded.npvalue(), a.ravel(order="F"))
    back = dy.reshape(folded, (3,), batch_size=4)
    np.testing.assert_allclose(back.npvalue(), a)


def test_batched_gradients_sum_over_the_batch():
    m = dy.ParameterCollection()
    E = m.add_lookup_parameters((4, 3), init=dy.NumpyInitializer(np.arange(12.0).reshape(4, 3)))
    W = m.add_parameters((2, 3), init=dy.ConstInitializer(0.5))
    dy.renew_cg()
    x = dy.lookup_batch(E, [1, 3, 1])
    loss = dy.sum_batches(dy.sum_elems(W * x))
    loss.backward()
    np.testing.assert_allclose(W.grad_as_array(), np.tile(E.as_array()[[1, 3, 1]].sum(0), (2, 1)))
    want = np.zeros((4, 3))
    want[1], want[3] = 2.0, 1.0  # each row of W is 0.5: d/dx sum(W x) = 1 per entry
    np.testing.assert_allclose(E.grad_as_array(), want)


# -- builders against numpy reimplementations of DyNet 2.1's equations ---------------------------
def _params(builder, seed=0):
    rng = np.random.default_rng(seed)
    for layer in builder.get_parameters():
        for p in layer:
            p.set_value(rng.normal(size=p.shape()) * 0.5)
    for layer in getattr(builder, "ln_params", []):
        for p in layer:
            p.set_value(rng.normal(size=p.shape()) * 0.5 + 1.0)
    return [[p.as_array() for p in layer] for layer in builder.get_parameters()]


def _ln(x, g, b):
    return g * (x - x.mean()) / (x.std() + 1e-8) + b


def _vanilla(ps, xs, hd, ln=None):
    h = c = None
    out = []
    for x in xs:
        wx, wh, b = ps
        if ln is None:
            t = b + wx @ x + (0 if h is None else wh @ h)
        else:
            gh, bh, gx, bx, gc, bc = ln
            t = b + _ln(wx @ x, gx, bx) + (0 if h is None else _ln(wh @ h, gh, bh))
        i, f, o = sigmoid(t[:hd]), sigmoid(t[hd:2 * hd] + 1.0), sigmoid(t[2 * hd:3 * hd])
        g = np.tanh(t[3 * hd:])
        c = i * g if c is None else f * c + i * g
        h = o * np.tanh(c if ln is None else _ln(c, gc, bc))
        out.append(h)
    return out


def _gru(ps, xs):
    x2z, h2z, bz, x2r, h2r, br, x2h, h2h, bh = ps
    h, out = None, []
    for x in xs:
        if h is None:
            z = sigmoid(bz + x2z @ x)
            h = z * np.tanh(bh + x2h @ x)
        else:
            z = sigmoid(bz + x2z @ x + h2z @ h)
            r = sigmoid(br + x2r @ x + h2r @ h)
            h = (1 - z) * h + z * np.tanh(bh + x2h @ x + h2h @ (r * h))
        out.append(h)
    return out


def _simple(ps, xs):
    x2h, h2h, b = ps
    h, out = None, []
    for x in xs:
        h = np.tanh(b + x2h @ x + (0 if h is None else h2h @ h))
        out.append(h)
    return out


def _coupled(ps, xs):
    x2i, h2i, c2i, bi, x2o, h2o, c2o, bo, x2c, h2c, bc = ps
    h = c = None
    out = []
    for x in xs:
        if h is None:
            i = sigmoid(bi + x2i @ x)
            c = i * np.tanh(bc + x2c @ x)
            o = sigmoid(bo + x2o @ x + c2o @ c)
        else:
            i = sigmoid(bi + x2i @ x + h2i @ h + c2i @ c)
            c = (1 - i) * c + i * np.tanh(bc + x2c @ x + h2c @ h)
            o = sigmoid(bo + x2o @ x + h2o @ h + c2o @ c)
        h = o * np.tanh(c)
        out.append(h)
    return out


@pytest.mark.parametrize("kind", ["vanilla", "ln", "compact", "gru", "simple", "coupled"])
def test_builders_follow_dynet_equations(kind):
    m = dy.ParameterCollection()
    make = {"vanilla": lambda: dy.VanillaLSTMBuilder(1, 3, 4, m),
            "ln": lambda: dy.VanillaLSTMBuilder(1, 3, 4, m, ln_lstm=True),
            "compact": lambda: dy.CompactVanillaLSTMBuilder(1, 3, 4, m),
            "gru": lambda: dy.GRUBuilder(1, 3, 4, m),
            "simple": lambda: dy.SimpleRNNBuilder(1, 3, 4, m),
            "coupled": lambda: dy.CoupledLSTMBuilder(1, 3, 4, m)}[kind]
    builder = make()
    ps = _params(builder)[0]
    xs = list(np.random.default_rng(5).normal(size=(4, 3)))
    if kind in ("vanilla", "compact"):
        want = _vanilla(ps, xs, 4)
    elif kind == "ln":
        want = _vanilla(ps, xs, 4, [p.as_array() for p in builder.ln_params[0]])
    else:
        want = {"gru": _gru, "simple": _simple, "coupled": _coupled}[kind](ps, xs)
    dy.renew_cg()
    got = builder.initial_state().transduce([dy.inputTensor(x) for x in xs])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.npvalue(), w, rtol=1e-4, atol=1e-6)
    # a batch of two sequences gives each sequence's outputs
    batched = builder.initial_state().transduce(
        [dy.inputTensor(np.stack([x, -x], axis=-1), batched=True) for x in xs])
    other = {"vanilla": lambda: _vanilla(ps, [-x for x in xs], 4),
             "compact": lambda: _vanilla(ps, [-x for x in xs], 4)}.get(kind)
    np.testing.assert_allclose(batched[-1].npvalue()[:, 0], want[-1], rtol=1e-4, atol=1e-6)
    if other is not None:
        np.testing.assert_allclose(batched[-1].npvalue()[:, 1], other()[-1], rtol=1e-4,
                                   atol=1e-6)


def test_state_api_and_stacked_layers():
    m = dy.ParameterCollection()
    rnn = dy.VanillaLSTMBuilder(2, 3, 4, m)
    dy.renew_cg()
    s0 = rnn.initial_state()
    s1 = s0.add_input(dy.inputVector([1, 2, 3]))
    s2 = s1.add_input(dy.inputVector([0, 1, 0]))
    assert s2.prev() is s1 and len(s2.h()) == 2 and len(s2.s()) == 4
    assert s2.output() is s2.h()[-1]
    np.testing.assert_allclose(s2.h()[0].npvalue(),
                               _vanilla([p.as_array() for p in rnn.get_parameters()[0]],
                                        [np.array([1, 2, 3.]), np.array([0, 1, 0.])], 4)[-1],
                               rtol=1e-4, atol=1e-6)
    assert len(s0.add_inputs([dy.inputVector([1, 2, 3])] * 3)) == 3
    init = rnn.initial_state([dy.ones(4)] * 4)
    assert init.add_input(dy.inputVector([1, 2, 3])).output().dim() == ((4,), 1)
    with pytest.raises(ValueError):
        dy.GRUBuilder(1, 2, 2, m).get_parameter_expressions()
    bi = dy.BiRNNBuilder(2, 3, 6, m, dy.LSTMBuilder)
    outs = bi.transduce([dy.inputVector([1, 2, 3])] * 3)
    assert [o.dim() for o in outs] == [((6,), 1)] * 3
    assert len(bi.add_inputs([dy.inputVector([1, 2, 3])] * 2)) == 2


def test_variational_dropout_masks_are_shared_over_time():
    m = dy.ParameterCollection()
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    rnn.set_dropouts(0.5, 0.0)
    dy.renew_cg()
    state = rnn.initial_state().add_input(dy.inputVector([1, 1, 1]))
    (mask_x, _), = state.masks
    assert set(np.round(mask_x.npvalue(), 5)) <= {0.0, 2.0}
    assert state.add_input(dy.inputVector([1, 1, 1])).masks is state.masks
    rnn.disable_dropout()
    assert rnn.initial_state().add_input(dy.inputVector([1, 1, 1])).masks is None


# -- parameters, files ----------------------------------------------------------------------------
def test_names_initializers_and_accessors():
    m = dy.ParameterCollection()
    p = m.add_parameters((2, 3))
    e = m.add_lookup_parameters((4, 2), name="emb")
    sub = m.add_subcollection("sub")
    q = sub.add_parameters(3, init=dy.ConstInitializer(2.0))
    assert (p.name(), e.name(), q.name(), sub.name()) == ("/_0", "/emb", "/sub/_0", "/sub/")
    assert m.parameters_list() == [p, q] and sub.parameters_list() == [q]
    np.testing.assert_allclose(q.as_array(), [2, 2, 2])
    assert m.add_parameters((3, 3), init="identity").as_array().trace() == 3
    t = m.add_lookup_parameters((5, 2, 3), init=np.arange(30.0).reshape(5, 2, 3))
    dy.renew_cg()
    np.testing.assert_allclose(t[4].npvalue(), np.arange(24.0, 30.0).reshape(2, 3))
    e.init_row(1, [7, 8])
    np.testing.assert_allclose(e.row_as_array(1), [7, 8])
    p.scale(0.0)
    assert not p.as_array().any()
    np.testing.assert_allclose(dy.const_parameter(q).npvalue(), [2, 2, 2])


def test_save_populate_round_trip(tmp_path):
    m = dy.ParameterCollection()
    rnn = dy.GRUBuilder(1, 3, 4, m)
    E = m.add_lookup_parameters((5, 3))
    W = m.add_parameters((2, 4))
    path = str(tmp_path / "model")
    m.save(path)
    m2 = dy.ParameterCollection()
    rnn2 = dy.GRUBuilder(1, 3, 4, m2)
    E2 = m2.add_lookup_parameters((5, 3))
    W2 = m2.add_parameters((2, 4))
    m2.populate(path)
    for a, b in [(E, E2), (W, W2)] + list(zip(rnn.get_parameters()[0], rnn2.get_parameters()[0])):
        np.testing.assert_array_equal(a.as_array(), b.as_array())
    W.save(path + ".w", "/W")
    W2.set_value(np.zeros((2, 4)))
    W2.populate(path + ".w", "/W")
    np.testing.assert_array_equal(W2.as_array(), W.as_array())
    with open(path, "rb") as f:
        assert f.read(2) == b"PK"  # dynlp's npz format, no pickle


def test_dy_save_and_load_objects(tmp_path):
    m = dy.ParameterCollection()
    bi = dy.BiRNNBuilder(1, 3, 4, m, dy.LSTMBuilder)
    p = m.add_parameters(3)
    path = str(tmp_path / "objects")
    dy.save(path, [bi, p])
    m2 = dy.ParameterCollection()
    bi2, p2 = dy.load(path, m2)
    np.testing.assert_array_equal(p2.as_array(), p.as_array())
    dy.renew_cg()
    xs = [dy.inputVector([1, 2, 3])] * 2
    np.testing.assert_allclose(bi2.transduce(xs)[-1].npvalue(), bi.transduce(xs)[-1].npvalue())


DYNET_TEXT = """#Parameter# /_0 {2,3} 97 ZERO_GRAD
+0.00000000e+00 +3.00000000e+00 +1.00000000e+00 +4.00000000e+00 +2.00000000e+00 +5.00000000e+00
#Parameter# /sub/_0 {3} 49 FULL_GRAD
+0.00000000e+00 +1.00000000e+00 +2.00000000e+00
+0.00000000e+00 +0.00000000e+00 +0.00000000e+00
#LookupParameter# /emb {2,4} 129 ZERO_GRAD
+1.0e+00 +2.0e+00 +3.0e+00 +4.0e+00 +5.0e+00 +6.0e+00 +7.0e+00 +8.0e+00
"""


def test_reads_dynet_text_model_files(tmp_path):
    path = tmp_path / "dynet.model"
    path.write_text(DYNET_TEXT)  # as DyNet 2.1 writes (values column-major)
    m = dy.ParameterCollection()
    p = m.add_parameters((2, 3))
    e = m.add_lookup_parameters((4, 2), name="emb")
    q = m.add_subcollection("sub").add_parameters(3)
    m.populate(str(path))
    np.testing.assert_array_equal(p.as_array(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(q.as_array(), [0, 1, 2])
    np.testing.assert_array_equal(e.as_array(), np.arange(1.0, 9.0).reshape(4, 2))


# -- trainers -------------------------------------------------------------------------------------
def _one_step(make, steps=2):
    m = dy.ParameterCollection()
    p = m.add_parameters(3, init=dy.NumpyInitializer(np.array([1.0, -2.0, 0.5])))
    trainer = make(m)
    values = []
    for _ in range(steps):
        dy.renew_cg()
        dy.dot_product(p.expr(), dy.inputVector([3.0, 4.0, 12.0])).backward()
        trainer.update()
        values.append(p.as_array())
    return values


def test_trainers_follow_dynet_rules():
    g = np.array([3.0, 4.0, 12.0])
    w0 = np.array([1.0, -2.0, 0.5])
    scale = 5.0 / 13.0  # the gradient's norm is 13: clipped to DyNet's default threshold 5
    got = _one_step(lambda m: dy.SimpleSGDTrainer(m, learning_rate=0.1))
    np.testing.assert_allclose(got[0], w0 - 0.1 * g * scale, rtol=1e-6)
    got = _one_step(lambda m: dy.MomentumSGDTrainer(m, learning_rate=0.1, mom=0.5))
    v1 = -0.1 * g * scale
    np.testing.assert_allclose(got[1], w0 + v1 + (0.5 * v1 - 0.1 * g * scale), rtol=1e-5)
    got = _one_step(lambda m: dy.AdamTrainer(m, alpha=0.01))
    gs = g * scale
    mom, v = 0.1 * gs, 0.001 * gs * gs
    np.testing.assert_allclose(got[0], w0 - 0.01 * np.sqrt(0.001) / 0.1 * mom
                               / (np.sqrt(v) + 1e-8), rtol=1e-5)
    got = _one_step(lambda m: dy.AmsgradTrainer(m, alpha=0.01), steps=1)
    np.testing.assert_allclose(got[0], w0 - 0.01 * np.sign(g), rtol=1e-4)
    got = _one_step(lambda m: dy.AdagradTrainer(m, learning_rate=0.1), steps=1)
    np.testing.assert_allclose(got[0], w0 - 0.1 * np.sign(g), rtol=1e-5)
    got = _one_step(lambda m: dy.RMSPropTrainer(m, learning_rate=0.1), steps=1)
    np.testing.assert_allclose(got[0], w0 - 0.1 * gs / np.sqrt(0.1 * gs * gs + 1e-8), rtol=1e-5)
    for make in (dy.AdadeltaTrainer, dy.CyclicalSGDTrainer):
        assert np.all(_one_step(make)[1] < w0)


def test_trainer_settings():
    m = dy.ParameterCollection()
    p = m.add_parameters(2, init=dy.ConstInitializer(1.0))
    frozen = m.add_parameters(2, init=dy.ConstInitializer(1.0))
    trainer = dy.SimpleSGDTrainer(m, learning_rate=0.5)
    trainer.set_clip_threshold(-1)
    assert trainer.get_clip_threshold() == 0.0
    frozen.set_updated(False)
    dy.renew_cg()
    dy.sum_elems(p.expr() * 10 + frozen.expr()).backward()
    trainer.update()
    np.testing.assert_allclose(p.as_array(), [-4, -4])
    np.testing.assert_allclose(frozen.as_array(), [1, 1])
    trainer.learning_rate = 0.25
    trainer.restart()
    assert trainer.learning_rate == 0.25
    cyclical = dy.CyclicalSGDTrainer(m, 0.01, 0.1, step_size=2)
    rates = []
    for _ in range(4):
        dy.renew_cg()
        dy.sum_elems(p.expr()).backward()
        cyclical.update()
        rates.append(cyclical.learning_rate)
    np.testing.assert_allclose(rates, [0.055, 0.1, 0.055, 0.01])


def test_settable_inputs_recompute_the_graph_after_updates():
    m = dy.ParameterCollection()
    w = m.add_parameters(2, init=dy.ConstInitializer(1.0))
    trainer = dy.SimpleSGDTrainer(m, learning_rate=0.1)
    dy.renew_cg()
    x = dy.vecInput(2)
    loss = dy.dot_product(w.expr(), x)
    x.set([1.0, 2.0])
    assert loss.scalar_value() == pytest.approx(3.0)
    loss.backward()
    trainer.update()
    assert loss.scalar_value() == pytest.approx(3.0)  # computed values stay, as in DyNet
    x.set([1.0, 2.0])  # setting an input invalidates the graph
    assert loss.scalar_value() == pytest.approx(3.0 - 0.1 * 5.0)
    trainer.update()
    assert loss.scalar_value(recalculate=True) == pytest.approx(2.5)


def test_ended_graphs_and_missing_gradients_raise_runtime_errors():
    dy.renew_cg()
    x = dy.inputTensor(np.arange(3.0))
    loss = dy.dot_product(x, x)
    loss.forward()
    with pytest.raises(RuntimeError):
        x.gradient()
    dy.renew_cg()
    with pytest.raises(RuntimeError):
        x.npvalue()


# -- configuration and the runner -----------------------------------------------------------------
def test_flags_and_config():
    assert config.from_argv(["prog", "--dynet-seed", "3", "--dynet-mem=512",
                             "--dynet-autobatch", "1", "x"]) == {
        "random_seed": "3", "mem": "512", "autobatch": "1"}
    config.set(random_seed=7, autobatch=0)
    try:
        a = dy.ParameterCollection().add_parameters(4).as_array()
        graph = dy.renew_cg()
        assert graph is dy.cg() and dn.current_graph().engine.strategy is None
        config.set(random_seed=7)
        np.testing.assert_array_equal(dy.ParameterCollection().add_parameters(4).as_array(), a)
    finally:
        config.set()
        dy.renew_cg()


def _run(program, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "dynlp.dynet", str(PROGRAMS / program), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _numbers(line):
    return [float(t) for t in line.replace("(", " ").replace(")", " ").replace(",", " ").split()
            if t.replace(".", "", 1).replace("-", "", 1).isdigit()]


RECORDED = json.loads((PROGRAMS / "recorded_dynet.json").read_text())["outputs"]


@pytest.mark.parametrize("program", sorted(RECORDED))
def test_dynet_programs_give_dynets_recorded_outputs(program):
    """Each program runs unchanged through the runner and prints what DyNet printed."""
    got = _run(f"{program}.py", "5")
    want = RECORDED[program]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.split()[0] == w.split()[0]
        np.testing.assert_allclose(_numbers(g), _numbers(w), rtol=2e-5, atol=2e-5)


def test_runner_binds_dynet_and_dynet_config(tmp_path, capsys, monkeypatch):
    script = tmp_path / "prog.py"
    script.write_text("import sys\nimport dynet_config\ndynet_config.set(random_seed=3)\n"
                      "import dynet as dy\nprint(dy.__name__, sys.argv[1:])\n"
                      "sys.exit(3)\n")
    saved = {k: sys.modules.get(k) for k in ("dynet", "_dynet", "dynet_config")}
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert runner.main([str(script), "--dynet-seed", "3"]) == 3
        assert runner.main(["--dynet-autobatch", "0", str(script), "--dynet-seed", "3"]) == 3
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        config.set()
    assert capsys.readouterr().out == "dynlp.dynet ['--dynet-seed', '3']\n" * 2
    assert runner.main([str(tmp_path / "missing.py")]) == 2


def test_sparse_lstm_is_the_vanilla_lstm_under_its_masks():
    m = dy.ParameterCollection()
    sparse = dy.SparseLSTMBuilder(1, 3, 4, m)
    ps = _params(sparse)[0]
    for mask in sparse.get_parameters()[0][3:]:
        mask.set_value(np.ones(mask.shape()))
    xs = list(np.random.default_rng(6).normal(size=(3, 3)))
    dy.renew_cg()
    got = sparse.initial_state().transduce([dy.inputTensor(x) for x in xs])
    np.testing.assert_allclose(got[-1].npvalue(), _vanilla(ps[:3], xs, 4)[-1], rtol=1e-4)
    masks = [np.ones((16, 3)), np.ones((16, 4))]
    masks[0][:, 1] = 0.0
    sparse.get_parameters()[0][3].set_value(masks[0])
    dy.renew_cg()
    got = sparse.initial_state().transduce([dy.inputTensor(x) for x in xs])
    want = _vanilla([ps[0] * masks[0], ps[1], ps[2]], xs, 4)
    np.testing.assert_allclose(got[-1].npvalue(), want[-1], rtol=1e-4)


def test_parameters_stand_for_their_expressions():
    m = dy.ParameterCollection()
    p = m.parameters_from_numpy(np.arange(5.0))
    dy.renew_cg()
    x = dy.inputTensor(np.arange(5.0).reshape(1, 5))
    (x * p).backward()
    np.testing.assert_allclose(p.grad_as_array(), np.arange(5.0))
    np.testing.assert_allclose(p.npvalue(), np.arange(5.0))
    assert dy.sum_elems(p).value() == 10.0


def test_lstm_dropout_masks_enter_dynets_equations():
    """Variational dropout: x * mask_x and h * mask_h in every step (the fused step's masks)."""
    m = dy.ParameterCollection()
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    ps = _params(rnn)[0]
    rnn.set_dropouts(0.5, 0.5)
    xs = list(np.random.default_rng(7).normal(size=(3, 3)))
    dy.renew_cg()
    states = rnn.initial_state().add_inputs([dy.inputTensor(x) for x in xs])
    mx, mh = [e.npvalue() for e in states[0].masks[0]]
    wx, wh, b = ps
    h = c = None
    for x, state in zip(xs, states):
        t = b + wx @ (x * mx) + (0 if h is None else wh @ (h * mh))
        i, f, o = sigmoid(t[:4]), sigmoid(t[4:8] + 1.0), sigmoid(t[8:12])
        c = i * np.tanh(t[12:]) if c is None else f * c + i * np.tanh(t[12:])
        h = o * np.tanh(c)
        np.testing.assert_allclose(state.output().npvalue(), h, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda m: dy.VanillaLSTMBuilder(2, 2, 3, m), lambda m: dy.GRUBuilder(1, 2, 3, m),
    lambda m: dy.CoupledLSTMBuilder(1, 2, 3, m), lambda m: dy.SimpleRNNBuilder(1, 2, 3, m),
    lambda m: dy.VanillaLSTMBuilder(1, 2, 3, m, ln_lstm=True)])
def test_gradients_through_builders(make):
    m = dy.ParameterCollection()
    builder = make(m)
    _through(lambda a, b: builder.initial_state().transduce([a, b])[-1],
             np.array([0.5, -1.0]), np.array([1.5, 0.3]))


def test_dynlp_run_dynet_command(tmp_path, capsys, monkeypatch):
    from dynlp import cli
    script = tmp_path / "prog.py"
    script.write_text("import dynet as dy\nprint(dy.esum([dy.scalarInput(1), dy.scalarInput(2)])"
                      ".value())\n")
    saved = {k: sys.modules.get(k) for k in ("dynet", "_dynet", "dynet_config")}
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert cli.main(["run-dynet", str(script)]) == 0
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert capsys.readouterr().out == "3.0\n"


def test_expressions_iterate_by_index_as_in_dynet():
    dy.renew_cg()
    weights = dy.softmax(dy.inputVector([1.0, 2.0, 3.0]))
    assert [w.dim() for w in weights] == [((1,), 1)] * 3
    vectors = [dy.inputVector([1.0, 1.0]), dy.inputVector([2.0, 2.0])]
    total = dy.esum([v * w for v, w in zip(vectors, weights)])  # DyNet's attention example
    p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(total.npvalue(), [p[0] + 2 * p[1]] * 2, rtol=1e-5)


def test_special_functions_and_contractions_against_numpy():
    dy.renew_cg()
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    x = dy.inputTensor(a)
    np.testing.assert_allclose(dy.inverse(x).npvalue(), np.linalg.inv(a), rtol=1e-5)
    assert dy.logdet(x).value() == pytest.approx(np.log(5.0), rel=1e-5)
    assert dy.trace_of_product(x, x).value() == pytest.approx(np.trace(a @ a.T))
    np.testing.assert_allclose(dy.cumsum(x, 1).npvalue(), np.cumsum(a, 1))
    np.testing.assert_allclose(dy.argmax(dy.inputVector([1, 3, 2])).npvalue(), [0, 1, 0])
    np.testing.assert_allclose(dy.floor(dy.inputVector([1.5, -0.5])).npvalue(), [1, -1])
    assert dy.erf(dy.scalarInput(0.5)).value() == pytest.approx(0.5204998778, rel=1e-5)
    t, y, z = np.arange(24.0).reshape(2, 3, 4), np.arange(4.0), np.arange(3.0)
    np.testing.assert_allclose(dy.contract3d_1d(dy.inputTensor(t), dy.inputTensor(y)).npvalue(),
                               np.einsum("ijk,k->ij", t, y))
    np.testing.assert_allclose(dy.contract3d_1d_1d(dy.inputTensor(t), dy.inputTensor(z),
                                                   dy.inputTensor(y)).npvalue(),
                               np.einsum("ijk,j,k->i", t, z, y))
    b = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(dy.std_batches(dy.inputTensor(b, batched=True)).npvalue(),
                               b.std(1), rtol=1e-5)
    assert dy.pairwise_rank_loss(dy.scalarInput(0.2), dy.scalarInput(0.5)).value() == \
        pytest.approx(1.3)


@pytest.mark.parametrize("f", [dy.inverse, dy.logdet, lambda x: dy.cumsum(x, 1),
                               lambda x: dy.contract3d_1d(dy.reshape(x, (2, 2, 1)),
                                                          dy.inputVector([2.0]))])
def test_gradients_of_matrix_functions(f):
    _through(f, np.array([[2.0, 0.5], [0.3, 1.5]]))


def test_a_model_trained_with_dynet_loads_and_computes_what_dynet_computed():
    """dynet_text.model: written by DyNet 2.1's ParameterCollection.save (its text format) for
    this model; DyNet computed [-0.14699179, 0.04634294] for this input."""
    m = dy.ParameterCollection()
    E = m.add_lookup_parameters((5, 3), name="emb")
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    gru = dy.GRUBuilder(1, 4, 2, m)
    W = m.add_parameters((2, 2), name="out")
    m.populate(str(PROGRAMS / "dynet_text.model"))
    dy.renew_cg()
    hs = rnn.initial_state().transduce([E[i] for i in [0, 3, 1, 4]])
    out = W * gru.initial_state().transduce(hs)[-1]
    np.testing.assert_allclose(out.npvalue(), [-0.1469917893409729, 0.046342939138412476],
                               rtol=1e-5)
