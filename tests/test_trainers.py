"""Trainers against hand-written numpy references, clipping, L2, decay, frozen and sparse updates,
exact resume from a state dict, and end-to-end training of a tiny model with each trainer."""

import io
import math

import numpy as np
import pytest

import dynlp as dn
from dynlp.trainers import (TRAINERS, AdadeltaTrainer, AdagradTrainer, AdamTrainer,
                            MomentumSGDTrainer, RMSPropTrainer, SimpleSGDTrainer, Trainer,
                            make_trainer)

ROWS = np.array([4, 1, 4, 0])  # row 4 twice: the table must sum its chunks


def make_collection(dtype=np.float64, seed=0):
    pc = dn.ParameterCollection(seed=seed, dtype=dtype)
    pc.add_parameters((3, 4), init="normal", name="W")
    pc.add_parameters(3, init="normal", name="b")
    pc.add_lookup_parameters((6, 4), init="normal", name="enc/E")
    return pc


def gradients(step, scale=1.0):
    """Gradients for W, b and the lookup rows (dense view of the table's gradient too)."""
    rng = np.random.default_rng(100 + step)
    gW = rng.normal(size=(3, 4)) * scale
    gb = rng.normal(size=3) * scale
    chunk = rng.normal(size=(len(ROWS), 4)) * scale
    gE = np.zeros((6, 4))
    np.add.at(gE, ROWS, chunk)
    return {"W": gW, "b": gb, "enc/E": gE}, chunk


def feed(pc, step, scale=1.0, rows=ROWS):
    grads, chunk = gradients(step, scale)
    pc["W"].accumulate_grad(grads["W"].astype(pc["W"].value.dtype))
    pc["b"].accumulate_grad(grads["b"].astype(pc["b"].value.dtype))
    E = pc["enc/E"]
    E.accumulate_sparse(rows[:2], chunk[:2].astype(E.value.dtype))
    E.accumulate_sparse(rows[2:], chunk[2:].astype(E.value.dtype))
    return grads


def values(pc):
    return {p.name: p.value.copy() for p in pc.parameters()}


# -- numpy references: one step on full arrays, out of place ----------------------------------
def ref_sgd(w, g, s, t, lr=0.1):
    return w - lr * g, s


def ref_momentum(w, g, s, t, lr=0.01, mu=0.9):
    v = mu * s.get("v", 0 * w) - lr * g
    return w + v, {"v": v}


def ref_adagrad(w, g, s, t, lr=0.1, eps=1e-20):
    acc = s.get("s", 0 * w) + g * g
    return w - lr * g / np.sqrt(acc + eps), {"s": acc}


def ref_adadelta(w, g, s, t, eps=1e-6, rho=0.95):
    sq = rho * s.get("s", 0 * w) + (1 - rho) * g * g
    u = s.get("u", 0 * w)
    d = g * np.sqrt(u + eps) / np.sqrt(sq + eps)
    return w - d, {"s": sq, "u": rho * u + (1 - rho) * d * d}


def ref_rmsprop(w, g, s, t, lr=0.001, eps=1e-8, rho=0.9):
    sq = rho * s.get("s", 0 * w) + (1 - rho) * g * g
    return w - lr * g / np.sqrt(sq + eps), {"s": sq}


def ref_adam(w, g, s, t, lr=0.001, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    m = b1 * s.get("m", 0 * w) + (1 - b1) * g
    v = b2 * s.get("v", 0 * w) + (1 - b2) * g * g
    w = w * (1 - lr * wd)
    return w - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps), {"m": m, "v": v}


REFERENCES = {"sgd": ref_sgd, "momentum": ref_momentum, "adagrad": ref_adagrad,
              "adadelta": ref_adadelta, "rmsprop": ref_rmsprop, "adam": ref_adam}


def reference_run(pc0, ref, steps, sparse, l2=0.0):
    """Values after `steps` reference steps from the values of pc0."""
    ws = values(pc0)
    states = {n: {} for n in ws}
    for t in range(1, steps + 1):
        grads, _ = gradients(t)
        for n, w in ws.items():
            g = grads[n] + l2 * w
            if n == "enc/E" and sparse:
                rows = np.unique(ROWS)
                sub = {k: v[rows] for k, v in states[n].items()}
                new_rows, sub = ref(w[rows], g[rows], sub, t)
                ws[n] = w.copy()
                ws[n][rows] = new_rows
                full = {k: states[n].get(k, np.zeros_like(w)).copy() for k in sub}
                for k in sub:
                    full[k][rows] = sub[k]
                states[n] = full
            else:
                ws[n], states[n] = ref(w, g, states[n], t)
    return ws


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_two_steps_match_reference(name, sparse):
    pc = make_collection()
    expected = reference_run(pc, REFERENCES[name], 2, sparse)
    trainer = make_trainer(name, pc, clip_threshold=None, sparse_updates=sparse)
    for t in (1, 2):
        feed(pc, t)
        trainer.update()
    for n, w in values(pc).items():
        np.testing.assert_allclose(w, expected[n], rtol=1e-10, atol=1e-12, err_msg=n)
    assert trainer.updates == 2


def test_adam_weight_decay_is_decoupled():
    pc = make_collection()
    ref = lambda w, g, s, t: ref_adam(w, g, s, t, lr=0.01, wd=0.5)  # noqa: E731
    expected = reference_run(pc, ref, 2, sparse=True)
    trainer = AdamTrainer(pc, learning_rate=0.01, weight_decay=0.5, clip_threshold=None)
    for t in (1, 2):
        feed(pc, t)
        trainer.update()
    for n, w in values(pc).items():
        np.testing.assert_allclose(w, expected[n], rtol=1e-10, atol=1e-12, err_msg=n)


def test_float32_collection_matches_float64_reference_closely():
    pc = make_collection(np.float32)
    expected = reference_run(pc, ref_adam, 2, sparse=True)
    trainer = AdamTrainer(pc, clip_threshold=None)
    for t in (1, 2):
        feed(pc, t)
        trainer.update()
    for n, w in values(pc).items():
        assert w.dtype == np.float32
        np.testing.assert_allclose(w, expected[n], rtol=1e-5, atol=1e-6, err_msg=n)


# -- clipping ---------------------------------------------------------------------------------
def test_huge_gradient_is_scaled_to_norm_five():
    pc = make_collection()
    before = values(pc)
    trainer = SimpleSGDTrainer(pc, learning_rate=1.0)
    assert trainer.clip_threshold == 5.0
    grads = feed(pc, 1, scale=1000.0)
    trainer.update()
    after = values(pc)
    steps = {n: before[n] - after[n] for n in before}
    norm = math.sqrt(sum(float(np.sum(s * s)) for s in steps.values()))
    assert norm == pytest.approx(5.0, rel=1e-9)
    full_norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    for n in before:  # the same factor for dense and sparse gradients
        np.testing.assert_allclose(steps[n], grads[n] * 5.0 / full_norm, rtol=1e-9, atol=1e-15)
    assert trainer.clips == 1
    assert trainer.status() == "[lr=1 clips=1 updates=1]"
    assert trainer.status() == "[lr=1 clips=0 updates=0]"


def test_small_gradient_is_not_clipped():
    pc = make_collection()
    before = values(pc)
    trainer = SimpleSGDTrainer(pc, learning_rate=1.0)
    grads = feed(pc, 1, scale=0.5)
    trainer.update()
    for n, w in values(pc).items():
        np.testing.assert_allclose(before[n] - w, grads[n], rtol=1e-12, atol=1e-15)
    assert trainer.clips == 0


@pytest.mark.parametrize("disable", ["none", "zero"])
def test_clipping_can_be_disabled(disable):
    pc = make_collection()
    before = values(pc)
    if disable == "none":
        trainer = SimpleSGDTrainer(pc, learning_rate=1.0, clip_threshold=None)
    else:
        trainer = SimpleSGDTrainer(pc, learning_rate=1.0)
        trainer.set_clip_threshold(0)
    assert trainer.get_clip_threshold() == 0.0
    grads = feed(pc, 1, scale=1000.0)
    trainer.update()
    for n, w in values(pc).items():
        np.testing.assert_allclose(before[n] - w, grads[n], rtol=1e-12)


def test_float32_overflowing_norm_still_clips():
    pc = make_collection(np.float32)
    before = values(pc)
    trainer = SimpleSGDTrainer(pc, learning_rate=1.0)
    feed(pc, 1, scale=1e30)  # squares overflow float32
    trainer.update()
    norm = math.sqrt(sum(float(np.sum((before[n].astype(np.float64) - w) ** 2))
                         for n, w in values(pc).items()))
    assert norm == pytest.approx(5.0, rel=1e-5)


def test_non_finite_gradient_raises_and_changes_nothing():
    pc = make_collection()
    before = values(pc)
    trainer = AdamTrainer(pc)
    feed(pc, 1)
    pc["b"].grad[0] = np.nan
    with pytest.raises(FloatingPointError):
        trainer.update()
    for n, w in values(pc).items():
        np.testing.assert_array_equal(w, before[n])
    assert np.isnan(pc["b"].grad[0]) and trainer.updates == 0


# -- L2, decay, frozen parameters -------------------------------------------------------------
@pytest.mark.parametrize("sparse", [True, False])
def test_l2_is_added_to_the_gradient(sparse):
    pc = make_collection()
    before = values(pc)
    expected = reference_run(pc, ref_sgd, 1, sparse, l2=0.3)
    trainer = SimpleSGDTrainer(pc, l2=0.3, clip_threshold=None, sparse_updates=sparse)
    feed(pc, 1)
    trainer.update()
    after = values(pc)
    for n in after:
        np.testing.assert_allclose(after[n], expected[n], rtol=1e-12, err_msg=n)
    untouched = [2, 3, 5]
    if sparse:
        np.testing.assert_array_equal(after["enc/E"][untouched], before["enc/E"][untouched])
    else:
        np.testing.assert_allclose(after["enc/E"][untouched],
                                   before["enc/E"][untouched] * (1 - 0.1 * 0.3), rtol=1e-12)


def test_learning_rate_decay_schedule():
    pc = make_collection()
    trainer = SimpleSGDTrainer(pc, learning_rate=0.1, learning_rate_decay=0.5,
                               clip_threshold=None)
    trainer.update_epoch()
    assert trainer.learning_rate == pytest.approx(0.1 / 1.5)
    trainer.update_epoch()
    assert trainer.learning_rate == pytest.approx(0.1 / 2.0)
    before = values(pc)
    grads = feed(pc, 1)
    trainer.update()
    np.testing.assert_allclose(before["W"] - pc["W"].value, 0.05 * grads["W"], rtol=1e-12)
    plain = SimpleSGDTrainer(pc, learning_rate=0.1)
    plain.learning_rate = 0.02
    plain.update_epoch()
    assert plain.learning_rate == 0.02 and plain.epoch == 1.0


def test_frozen_parameters_stay_and_lose_their_gradients():
    pc = make_collection()
    before = values(pc)
    pc["W"].set_updated(False)
    pc["enc/E"].set_updated(False)
    trainer = AdamTrainer(pc, learning_rate=0.1)
    feed(pc, 1, scale=1e6)  # frozen gradients do not count towards the clipping norm
    pc["b"].grad[...] = [0.3, -0.4, 0.0]
    trainer.update()
    np.testing.assert_array_equal(pc["W"].value, before["W"])
    np.testing.assert_array_equal(pc["enc/E"].value, before["enc/E"])
    assert trainer.clips == 0
    assert not pc["W"].grad.any() and not pc["b"].grad.any()
    assert len(pc["enc/E"].sparse_grad()[0]) == 0
    np.testing.assert_allclose(before["b"] - pc["b"].value, [0.1, -0.1, 0.0], atol=1e-6)
    assert set(k.split("/", 1)[1] for k in trainer.state_dict() if "/" in k) == {"b"}


# -- sparse updates ---------------------------------------------------------------------------
def test_sparse_and_dense_sgd_agree():
    pcs = [make_collection(), make_collection()]
    trainers = [SimpleSGDTrainer(pcs[0], learning_rate=0.5, sparse_updates=True),
                SimpleSGDTrainer(pcs[1], learning_rate=0.5, sparse_updates=False)]
    for t in (1, 2, 3):
        for pc, trainer in zip(pcs, trainers):
            feed(pc, t, scale=10.0 if t == 2 else 0.2)  # only step 2 clips
            trainer.update()
    assert trainers[0].clips == trainers[1].clips == 1
    for n, w in values(pcs[0]).items():
        np.testing.assert_allclose(w, pcs[1][n].value, rtol=1e-13, atol=1e-15, err_msg=n)


def test_sparse_adam_leaves_untouched_rows_exactly_unchanged():
    pc = make_collection(np.float32)
    E = pc["enc/E"]
    before = E.value.copy()
    trainer = AdamTrainer(pc, learning_rate=0.1)
    rng = np.random.default_rng(0)
    for rows in ([1, 4], [4], [1, 1]):
        E.accumulate_sparse(np.array(rows), rng.normal(size=(len(rows), 4)).astype(np.float32))
        trainer.update()
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(E.value[untouched], before[untouched])
    assert not (E.value[[1, 4]] == before[[1, 4]]).any()
    m = trainer.state_dict()["m/enc/E"]
    assert not m[untouched].any() and m[[1, 4]].all()
    # row 4 untouched at step 3: its value and moments kept exactly from step 2
    E.accumulate_sparse(np.array([4]), np.ones((1, 4), np.float32))
    trainer.update()
    row4 = E.value[4].copy()
    E.accumulate_sparse(np.array([1]), np.ones((1, 4), np.float32))
    trainer.update()
    np.testing.assert_array_equal(E.value[4], row4)


def test_dense_updates_keep_moving_untouched_rows():
    pc = make_collection()
    E = pc["enc/E"]
    trainer = AdamTrainer(pc, learning_rate=0.1, sparse_updates=False)
    E.accumulate_sparse(np.array([2]), np.ones((1, 4)))
    trainer.update()
    row2 = E.value[2].copy()
    E.accumulate_sparse(np.array([3]), np.ones((1, 4)))
    trainer.update()
    assert (E.value[2] < row2).all()  # the first moment keeps pushing row 2
    never = [0, 1, 4, 5]  # no gradient ever and no moments: these rows stay
    np.testing.assert_array_equal(E.value[never], make_collection()["enc/E"].value[never])


def test_lookup_used_as_a_whole_matrix():
    pc = dn.ParameterCollection(seed=1, dtype=np.float64)
    E = pc.add_lookup_parameters((4, 2), name="E")
    before = E.value.copy()
    trainer = SimpleSGDTrainer(pc, learning_rate=1.0, clip_threshold=None)
    with dn.Graph(dtype=np.float64):
        loss = dn.sum_elems(dn.parameter(E) @ dn.inputs([1.0, 2.0])) + dn.sum_elems(E[3])
        loss.backward()
    trainer.update()
    expected = before - np.array([[1.0, 2.0]] * 4) - np.array([[0, 0]] * 3 + [[1.0, 1.0]])
    np.testing.assert_allclose(E.value, expected, rtol=1e-12)


# -- checkpoints ------------------------------------------------------------------------------
def npz_round_trip(d):
    f = io.BytesIO()
    np.savez(f, **d)
    f.seek(0)
    return dict(np.load(f, allow_pickle=False))


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_state_dict_resume_is_exact(name):
    options = dict(learning_rate_decay=0.3, l2=0.01)
    pc = make_collection(np.float32)
    trainer = make_trainer(name, pc, **options)
    for t in (1, 2, 3):
        feed(pc, t, scale=4.0)
        trainer.update()
        trainer.update_epoch(0.5)
    saved_values = values(pc)
    saved_state = npz_round_trip(trainer.state_dict())
    for t in (4, 5):
        feed(pc, t, scale=4.0)
        trainer.update()
    resumed = make_collection(np.float32, seed=99)
    for n, w in saved_values.items():
        resumed[n].set_value(w)
    other = make_trainer(name, resumed, **options)
    other.load_state_dict(saved_state)
    for t in (4, 5):
        feed(resumed, t, scale=4.0)
        other.update()
    for n, w in values(pc).items():
        np.testing.assert_array_equal(resumed[n].value, w, err_msg=n)
    assert other.updates == trainer.updates and other.learning_rate == trainer.learning_rate


def test_state_dict_is_a_snapshot_of_plain_values():
    pc = make_collection()
    trainer = MomentumSGDTrainer(pc)
    feed(pc, 1)
    trainer.update()
    d = trainer.state_dict()
    kept = d["velocity/W"].copy()
    feed(pc, 2)
    trainer.update()
    np.testing.assert_array_equal(d["velocity/W"], kept)
    assert all(isinstance(v, (int, float, str, np.ndarray)) for v in d.values())


def test_load_state_dict_rejects_mismatches():
    pc = make_collection()
    adam = AdamTrainer(pc)
    feed(pc, 1)
    adam.update()
    state = adam.state_dict()
    with pytest.raises(ValueError, match="trainer"):
        RMSPropTrainer(pc).load_state_dict(state)
    small = dn.ParameterCollection()
    small.add_parameters((3, 4), name="W")
    with pytest.raises(ValueError, match="names no"):
        AdamTrainer(small).load_state_dict(state)
    wrong = dict(state, **{"m/W": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        AdamTrainer(pc).load_state_dict(wrong)
    partial = {k: v for k, v in state.items() if k != "v/b"}
    with pytest.raises(ValueError, match="incomplete"):
        AdamTrainer(pc).load_state_dict(partial)


def test_restart_forgets_moments():
    pc = make_collection()
    trainer = AdagradTrainer(pc)
    feed(pc, 1)
    trainer.update()
    trainer.restart(learning_rate=0.5)
    assert trainer.updates == 0 and trainer.learning_rate == 0.5
    assert [k for k in trainer.state_dict() if "/" in k] == []


def test_make_trainer():
    pc = make_collection()
    expected = {"sgd": SimpleSGDTrainer, "momentum": MomentumSGDTrainer,
                "adagrad": AdagradTrainer, "adadelta": AdadeltaTrainer,
                "rmsprop": RMSPropTrainer, "adam": AdamTrainer}
    for name, cls in expected.items():
        assert type(make_trainer(name, pc)) is cls
    adam = make_trainer("Adam", pc, learning_rate=0.01, beta_2=0.99)
    assert adam.learning_rate == 0.01 and adam.beta_2 == 0.99
    with pytest.raises(ValueError, match="unknown trainer"):
        make_trainer("lbfgs", pc)


def test_defaults_follow_dynet():
    pc = make_collection()
    assert SimpleSGDTrainer(pc).learning_rate == 0.1
    assert MomentumSGDTrainer(pc).momentum == 0.9
    assert AdamTrainer(pc).learning_rate == 0.001
    assert all(make_trainer(n, pc).sparse_updates for n in TRAINERS)
    assert isinstance(AdadeltaTrainer(pc), Trainer)


# -- end to end -------------------------------------------------------------------------------
RATES = {"sgd": 0.5, "momentum": 0.1, "adagrad": 0.3, "adadelta": 1.0, "rmsprop": 0.05,
         "adam": 0.05}


def logistic_regression_losses(name, steps=15):
    pc = dn.ParameterCollection(seed=3)
    E = pc.add_lookup_parameters((8, 4), name="E")
    W = pc.add_parameters((3, 4), name="W")
    b = pc.add_parameters(3, init="zeros", name="b")
    data = [(w, w % 3) for w in range(8)]
    trainer = make_trainer(name, pc, learning_rate=RATES[name])
    losses = []
    for _ in range(steps):
        with dn.Graph():
            loss = dn.esum([dn.pick_neg_log_softmax(W @ E[w] + b, y) for w, y in data])
            losses.append(loss.scalar_value())
            loss.backward()
        trainer.update()
    return losses


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_tiny_model_learns(name):
    losses = logistic_regression_losses(name)
    assert losses[-1] < 0.95 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= len(losses) - 3, losses
