"""Parameters: initializers, names, save/populate with format checks, sparse lookup gradients."""

import json

import numpy as np
import pytest

import dynlp as dn


def _model(seed=0):
    pc = dn.ParameterCollection(seed=seed)
    W = pc.add_parameters((8, 4), init="glorot", name="W")
    b = pc.add_parameters(8, init="zeros", name="b")
    E = pc.add_lookup_parameters((50, 8), name="E")
    sub = pc.add_subcollection("mlp")
    V = sub.add_parameters((3, 8), init="uniform", scale=0.2, name="V")
    return pc, W, b, E, V


def test_initializers():
    pc = dn.ParameterCollection(seed=1)
    assert np.all(pc.add_parameters(3, init="ones").value == 1)
    assert np.all(pc.add_parameters(3, init=0.5).value == 0.5)
    np.testing.assert_array_equal(pc.add_parameters(2, init=np.array([1.0, 2.0])).value, [1, 2])
    g = pc.add_parameters((30, 20), init="glorot").value
    assert np.abs(g).max() <= np.sqrt(6 / 50) and g.std() > 0.05
    u = pc.add_parameters((100,), init="uniform", scale=0.01).value
    assert np.abs(u).max() <= 0.01
    n = pc.add_parameters((2000,), init="normal", scale=2.0).value
    assert 1.8 < n.std() < 2.2
    assert pc.add_parameters(3).value.dtype == np.float32
    with pytest.raises(ValueError, match="unknown initializer"):
        pc.add_parameters(3, init="orthogonal-ish")
    with pytest.raises(ValueError, match="expected"):
        pc.add_parameters(3, init=np.ones(4))


def test_same_seed_same_values():
    a, b = _model(seed=5)[0], _model(seed=5)[0]
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
    c = _model(seed=6)[0]
    assert not np.array_equal(a["W"].value, c["W"].value)


def test_names_are_unique_and_prefixed():
    pc, W, b, E, V = _model()
    assert [p.name for p in pc.parameters()] == ["W", "b", "E", "mlp/V"]
    assert pc["mlp/V"] is V
    with pytest.raises(ValueError, match="exists"):
        pc.add_parameters(3, name="W")
    assert [p.name for p in pc.lookup_parameters_list()] == ["E"]


def test_save_and_populate_round_trip(tmp_path):
    pc, *_ = _model(seed=1)
    path = tmp_path / "model.npz"
    pc.save(path, metadata={"recipe": "demo", "vocab": ["a", "b"]})
    other, *_ = _model(seed=2)
    meta = other.populate(path)
    assert meta == {"recipe": "demo", "vocab": ["a", "b"]}
    assert dn.read_metadata(path)["recipe"] == "demo"
    for p, q in zip(pc.parameters(), other.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
    # the file is plain arrays: it loads without pickle
    with np.load(path, allow_pickle=False) as f:
        assert "header" in f.files


def test_populate_rejects_other_structures(tmp_path):
    pc, *_ = _model()
    path = tmp_path / "model.npz"
    pc.save(path)
    small = dn.ParameterCollection()
    small.add_parameters((8, 4), name="W")
    with pytest.raises(dn.ModelFileError, match="do not match"):
        small.populate(path)
    reshaped = dn.ParameterCollection()
    reshaped.add_parameters((8, 5), name="W")
    reshaped.add_parameters(8, name="b")
    reshaped.add_lookup_parameters((50, 8), name="E")
    reshaped.add_subcollection("mlp").add_parameters((3, 8), name="V")
    with pytest.raises(dn.ModelFileError, match=r"'W' is dense \(8, 4\) in the file"):
        reshaped.populate(path)


def test_populate_rejects_other_versions_and_junk(tmp_path):
    pc, *_ = _model()
    path = tmp_path / "model.npz"
    pc.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(bytes(arrays["header"]).decode())
    header["version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    old = tmp_path / "future.npz"
    np.savez(old, **arrays)
    with pytest.raises(dn.ModelFileError, match="version 99"):
        pc.populate(old)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(dn.ModelFileError, match="not a dynlp model file"):
        pc.populate(junk)
    with pytest.raises(dn.ModelFileError, match="no such model file"):
        pc.populate(tmp_path / "missing.npz")


def test_lookup_gradients_are_sparse_and_summed():
    pc, W, b, E, V = _model()
    with dn.Graph():
        loss = dn.sum_elems(E[3]) + dn.sum_elems(E[3] * 2.0) + dn.sum_elems(E[7])
        loss.backward()
    rows, grads = E.sparse_grad()
    np.testing.assert_array_equal(rows, [3, 7])
    np.testing.assert_allclose(grads, [[3.0] * 8, [1.0] * 8])
    dense = E.grad_as_array()
    assert dense[3, 0] == 3.0 and dense[7, 0] == 1.0 and dense.sum() == 32.0
    with pytest.raises(IndexError, match="out of range"):
        with dn.Graph():
            E[50]


def test_parameters_act_as_expressions():
    pc, W, b, E, V = _model()
    with dn.Graph():
        x = dn.inputs(np.ones(4))
        h = dn.tanh(W @ x + b)
        y = V @ h - 1.0
        np.testing.assert_allclose(y.npvalue(), V.value @ np.tanh(W.value @ np.ones(4)) - 1.0,
                                   rtol=1e-5)
        (2.0 * b).value()
        assert dn.parameter(W).shape == (8, 4)
