"""`Graph.before_evaluation` and the training loop that builds step k + 1's graph before it
makes step k's update (as a data-parallel run does while the gradients travel): building reads
no parameter value, so both orders train to the same bits, for the recipes and for models
written with plain ops (scripts/bench_autobatch.py's workloads, fusion and padding on and off).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp import train
from dynlp.graph import GraphError
from tiny_recipes import parser_case, tagger_case, treelstm_case

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SCRIPT = ROOT / "scripts" / "bench_autobatch.py"


# -- the hook ------------------------------------------------------------------------------------
def _graph_with_hook(dtype=np.float32):
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((2, 3), name="W")
    calls = []

    def hook():
        calls.append(W.value.copy())
        W.value += 1.0  # an update in place, as trainers make
    g = dn.Graph(dtype=dtype)
    g.__enter__()
    x = dn.inputs(np.array([1.0, 2.0, 3.0]))
    g.before_evaluation(hook)
    y = dn.parameter(W) @ x
    return pc, W, g, y, calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("read", ["npvalue", "forward", "backward", "graph.forward",
                                  "parameter value"])
def test_the_function_runs_once_before_the_first_value_and_the_graph_sees_its_update(dtype,
                                                                                     read):
    pc, W, g, y, calls = _graph_with_hook(dtype)
    try:
        before = W.value.copy()
        assert calls == []  # building called nothing
        if read == "npvalue":
            y.npvalue()
        elif read == "forward":
            y.forward()
        elif read == "backward":
            dn.sum_elems(y).backward()
        elif read == "graph.forward":
            g.forward([y])
        else:
            np.testing.assert_array_equal(dn.parameter(W).npvalue(), before + 1.0)
        assert len(calls) == 1
        np.testing.assert_array_equal(calls[0], before)
        expected = (before + 1.0).astype(dtype) @ np.array([1.0, 2.0, 3.0], dtype=dtype)
        np.testing.assert_allclose(y.npvalue(), expected, rtol=1e-6)
        pc.clear_grads()
        dn.sum_elems(y * 2.0).backward()
        assert len(calls) == 1
        np.testing.assert_allclose(W.grad_as_array(), 2.0 * np.tile([1.0, 2.0, 3.0], (2, 1)))
    finally:
        g.__exit__(None, None, None)


def test_functions_run_in_order_and_a_closed_graph_takes_none():
    order = []
    with dn.Graph() as g:
        g.before_evaluation(lambda: order.append(1))
        g.before_evaluation(lambda: order.append(2))
        x = dn.inputs(np.ones(2))
        assert order == []
        (x * 2.0).npvalue()
        (x * 3.0).npvalue()
        assert order == [1, 2]
        g.before_evaluation(lambda: order.append(3))  # (the next evaluation calls it)
        (x * 4.0).npvalue()
        assert order == [1, 2, 3]
    with pytest.raises(GraphError):
        g.before_evaluation(lambda: order.append(4))
    with dn.Graph() as g:  # a graph that evaluates nothing calls nothing
        g.before_evaluation(lambda: order.append(5))
    assert order == [1, 2, 3]


def test_a_graph_opened_inside_calls_the_function_first():
    pc = dn.ParameterCollection(seed=1)
    W = pc.add_parameters((2,), init=1.0, name="W")
    with dn.Graph() as g:
        g.before_evaluation(lambda: W.value.__iadd__(1.0))
        y = dn.parameter(W) * 1.0
        with dn.Graph():  # (deciding something with the model while building)
            np.testing.assert_array_equal(dn.parameter(W).npvalue(), [2.0, 2.0])
        np.testing.assert_array_equal(y.npvalue(), [2.0, 2.0])


def test_an_error_of_the_function_comes_out_of_the_evaluation_and_it_is_not_called_again():
    calls = []

    def failing():
        calls.append(1)
        raise FloatingPointError("the update failed")
    with dn.Graph() as g:
        g.before_evaluation(failing)
        x = dn.inputs(np.ones(2))
        with pytest.raises(FloatingPointError, match="the update failed"):
            (x * 2.0).npvalue()
        np.testing.assert_array_equal((x * 2.0).npvalue(), [2.0, 2.0])
    assert calls == [1]


# -- both orders train to the same bits ----------------------------------------------------------
class _LaterUpdate:
    """What `_share_loss` reads of a PendingSum: the update of the step before, made when the
    next graph first evaluates (`finish`), moved on while it is built (`progress`)."""

    def __init__(self, trainer: dn.Trainer) -> None:
        self.trainer, self.done, self.progressed = trainer, False, 0

    def progress(self) -> bool:
        self.progressed += 1
        return False

    def finish(self) -> float:
        if not self.done:
            self.done = True
            self.trainer.update()
        return 0.0


def _tagger():
    return tagger_case(12, lstm_layers=2)


def _treelstm():
    return treelstm_case(12)


def _parser():
    return parser_case(12)


def _recipe_training(make, later: bool) -> dict[str, np.ndarray]:
    Model, config, examples = make()
    pc = dn.ParameterCollection(seed=3)
    model = Model(pc, config, Model.build_vocabs(examples, config))
    trainer = dn.AdamTrainer(pc, learning_rate=0.05)
    pending = None
    for step in range(4):
        batch = examples[3 * step:3 * step + 3]
        train._share_loss(model, batch, [0, 1, 2], 1, 0, step, "late", pending)
        if later:
            if pending is not None:
                assert pending.done
                assert pending.progressed or hasattr(model, "batch_loss")
            pending = _LaterUpdate(trainer)
        else:
            trainer.update()
    if pending is not None:
        pending.finish()
    return {p.name: p.value.copy() for p in pc.parameters()}


@pytest.mark.parametrize("make", [_tagger, _treelstm, _parser],
                         ids=["tagger", "treelstm", "parser"])
def test_a_recipe_trains_to_the_same_bits_with_its_updates_made_while_building(make):
    now, later = _recipe_training(make, False), _recipe_training(make, True)
    assert now.keys() == later.keys()
    for name, value in now.items():
        np.testing.assert_array_equal(later[name], value, err_msg=name)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_autobatch_update", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _workload_training(bench, name: str, strategy: str, later: bool) -> list[np.ndarray]:
    data = bench.load_data([name], None, np.random.default_rng(0), tiny=True)
    workload = bench.make_workload(name, data, None, tiny=True, seed=0)
    model = workload.dynlp
    trainer = dn.AdamTrainer(model.pc, clip_threshold=model.clip_threshold)
    autobatch, fuse, pad = bench._settings(bench.STRATEGIES[strategy])
    for step in range(3):
        batch = workload.examples[3 * step:3 * step + 3]
        with dn.Graph(autobatch=autobatch, fuse=fuse, pad=pad) as g:
            if later and step:
                g.before_evaluation(trainer.update)
            total = model.batch_loss(batch)
            total.backward()
        if not later:
            trainer.update()
    if later:
        trainer.update()
    return [p.value.copy() for p in model.pc.parameters()]


@pytest.mark.parametrize("strategy", ["late", "off", "late-unfused", "late-regions",
                                      "late-unpadded"])
@pytest.mark.parametrize("name", ["tagger", "treelstm", "parser", "treenn-user", "tagger-user",
                                  "rnnlm-user", "attention-user", "treenn-cells",
                                  "attention-cells"])
def test_a_model_of_plain_ops_trains_to_the_same_bits_with_its_updates_made_while_building(
        bench, name, strategy):
    now = _workload_training(bench, name, strategy, False)
    later = _workload_training(bench, name, strategy, True)
    assert len(now) == len(later)
    for a, b in zip(now, later):
        np.testing.assert_array_equal(b, a)
