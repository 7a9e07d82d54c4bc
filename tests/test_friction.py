"""The small things a newcomer tries first: indexing like numpy, axes given as lists, softmax
along either axis, parameters read like expressions, builders' parameters, duplicate names,
custom ops built from outside the package, reshape order and broadcasting."""

import numpy as np
import pytest

import dynlp as dn

A = np.arange(12.0).reshape(3, 4)


@pytest.mark.parametrize("index", [
    (slice(None), 1), (1, slice(None)), (2, 3), (slice(0, 2), slice(1, 3)), [0, 2],
    ([0, 2], slice(None)), (slice(None), [1, 3]), (-1, -2), ([2, 0], 1), (1, [3, 0]),
    slice(1, None), 1,
])
def test_matrix_indexing_like_numpy(index):
    with dn.Graph():
        np.testing.assert_array_equal(dn.inputs(A)[index].npvalue(), A[index])


def test_indexing_gradients_and_errors():
    dn.gradcheck(lambda m: m[:, [1, 3]][1:], A)
    dn.gradcheck(lambda m: m[1, 1:3] * m[:, 0][0:2], A)
    with dn.Graph():
        M = dn.inputs(A)
        with pytest.raises(IndexError, match="step 1"):
            M[::2]
        with pytest.raises(IndexError, match="too many"):
            M[0, 0, 0]
        with pytest.raises(IndexError, match="out of range"):
            M[[0, 5]]
        with pytest.raises(IndexError):
            M[[0, 1], [0, 1]]


def test_lookup_of_several_rows_is_a_matrix_with_sparse_gradient():
    pc = dn.ParameterCollection(seed=1)
    E = pc.add_lookup_parameters((5, 3))
    with dn.Graph():
        m = E[[1, 3, 1]]
        assert m.shape == (3, 3)
        np.testing.assert_allclose(m.npvalue(), E.value[[1, 3, 1]])
        dn.sum_elems(m).backward()
    rows, grads = E.sparse_grad()
    assert list(rows) == [1, 3]
    np.testing.assert_allclose(grads, [[2.0] * 3, [1.0] * 3])


def test_sum_dim_takes_a_list_of_axes():
    with dn.Graph():
        M = dn.inputs(A)
        np.testing.assert_allclose(dn.sum_dim(M, [0]).npvalue(), A.sum(axis=0))
        np.testing.assert_allclose(dn.sum_dim(M, (0, 1)).npvalue(), A.sum())
        np.testing.assert_allclose(dn.mean_dim(M, [1]).npvalue(), A.mean(axis=1))
        np.testing.assert_allclose(dn.sum_dim(M, -1).npvalue(), A.sum(axis=1))
        with pytest.raises(ValueError, match="not an axis"):
            dn.sum_dim(M, [2])
        with pytest.raises(ValueError, match="not an axis"):
            dn.sum_dim(M, "0")


def test_softmax_along_either_axis():
    with dn.Graph():
        M = dn.inputs(A / 10)
        by_rows = dn.softmax(M, axis=1).npvalue()
        np.testing.assert_allclose(by_rows.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(dn.softmax(M).npvalue().sum(axis=0), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.exp(dn.log_softmax(M, axis=-1).npvalue()), by_rows,
                                   rtol=1e-5)
        with pytest.raises(ValueError, match="axis"):
            dn.softmax(dn.inputs(np.ones(3)), axis=1)
    dn.gradcheck(lambda m: dn.softmax(m, axis=1), A / 10)


def test_parameters_read_like_expressions():
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((2, 3))
    copy = W.npvalue()
    np.testing.assert_array_equal(copy, W.value)
    copy[0, 0] = 99.0
    assert W.value[0, 0] != 99.0
    assert isinstance(W.value, np.ndarray)   # the live array: an attribute, not a method


def test_builders_list_their_parameters():
    pc = dn.ParameterCollection(seed=1)
    builders = [dn.MLP(pc, [3, 4, 2]), dn.Embedding(pc, 5, 3), dn.CharacterEncoder(pc, 5, 3, 4),
                dn.BiRNNBuilder(1, 3, 4, pc), dn.TreeLSTMBuilder(3, 4, pc),
                dn.LSTMBuilder(1, 3, 4, pc), dn.GRUBuilder(1, 3, 4, pc)]
    seen = [p for b in builders for p in b.parameters()]
    assert len(seen) == len(set(map(id, seen))) == len(list(pc.parameters()))
    assert [p.name for p in builders[0].parameters()] == ["mlp/W0", "mlp/b0", "mlp/W1", "mlp/b1"]


def test_duplicate_names_builders_rename_parameters_raise():
    pc = dn.ParameterCollection(seed=1)
    first, second = dn.MLP(pc, [2, 2], name="head"), dn.MLP(pc, [2, 2], name="head")
    assert first.parameters()[0].name == "head/W0"
    assert second.parameters()[0].name == "head_1/W0"
    pc.add_parameters(2, name="w")
    with pytest.raises(ValueError, match="exists already"):
        pc.add_parameters(2, name="w")


def test_parameters_and_parameters_list():
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((2, 2))
    E = pc.add_lookup_parameters((4, 2))
    assert list(pc.parameters()) == [W, E]          # everything that is saved and trained
    assert pc.parameters_list() == [W]               # DyNet's: dense only
    assert pc.lookup_parameters_list() == [E]


def test_reshape_is_row_major_and_vectors_broadcast_as_columns():
    with dn.Graph():
        M = dn.inputs(np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(dn.reshape(M, (3, 2)).npvalue(),
                                      np.arange(6.0).reshape(3, 2))
        column = dn.inputs(np.array([10.0, 20.0]))
        np.testing.assert_array_equal((M + column).npvalue(),
                                      np.arange(6.0).reshape(2, 3) + [[10.0], [20.0]])


def test_custom_op_from_outside_the_package():
    """x^T W y with W shared: op_function builds its nodes, the engine batches them, and
    dn.check_rule checks its rules."""

    def forward(x, W, y):
        return np.einsum("bi,ij,bj->b", x, W, y)

    def vjp(g, out, x, W, y):
        return g[:, None] * (y @ W.T), np.einsum("b,bi,bj->ij", g, x, y), g[:, None] * (x @ W)

    def jvp(ts, out, x, W, y):
        tx, tW, ty = [np.zeros_like(a) if t is None else t for t, a in zip(ts, (x, W, y))]
        return forward(tx, W, y) + np.einsum("bi,ij,bj->b", x, tW, y) + forward(x, W, ty)

    op = dn.Op("test_bilinear", shape=lambda x, W, y: (), forward=forward, vjp=vjp, jvp=jvp,
               batch=(dn.STACK, dn.SHARED, dn.STACK), cases=[dn.Case([(3,), (3, 4), (4,)])])
    dn.check_rule(op, op.cases[0])
    bilinear = dn.op_function(op)
    assert "test_bilinear" not in dn.ops.TABLE
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((3, 4))
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    with dn.Graph() as g:
        total = dn.esum([bilinear(x, W, y) for x, y in zip(xs, ys)])
        value = total.value()
        total.backward()
        assert g.stats()["forward_batches"] <= 3
    assert value == pytest.approx(float(np.einsum("bi,ij,bj->", xs, W.value, ys)), rel=1e-5)
    np.testing.assert_allclose(W.grad, xs.T @ ys, rtol=1e-5)
    dn.gradcheck(lambda x, w, y: bilinear(x, w, y), xs[0], W.value, ys[0])


def test_custom_op_with_a_per_example_attribute():
    op = dn.Op("test_scaled_pick", shape=lambda x, scale: (),
               forward=lambda x, index, scale: scale * x[np.arange(len(x)), index],
               vjp=lambda g, out, x, index, scale: (_scatter(g * scale, x, index),),
               jvp=lambda ts, out, x, index, scale: scale * ts[0][np.arange(len(x)), index],
               batched_attrs=("index",),
               cases=[dn.Case([(4,)], {"scale": 2.0}, {"index": lambda rng: rng.integers(4)})])
    dn.check_rule(op, op.cases[0])
    scaled_pick = dn.op_function(op)
    with dn.Graph():
        v = dn.inputs(np.arange(4.0))
        assert scaled_pick(v, index=3, scale=2.0).value() == 6.0
        with pytest.raises(TypeError, match="index"):
            scaled_pick(v, scale=2.0)


def _scatter(g, x, index):
    out = np.zeros_like(x)
    out[np.arange(len(x)), index] = g
    return out
