"""`Graph.cache`: a memo of a graph's expressions that ends with the graph, so that neither the
library's builders nor the recipes keep an ended graph alive (the cyclic collector would look
through every record of it, a few ms a step, while the next step runs)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
from dynlp import train
from recipes import parser
from tiny_recipes import parser_case, tagger_case, treelstm_case

DATA = Path(__file__).resolve().parent.parent / "data"


def test_the_cache_keeps_what_a_model_puts_in_it_until_the_graph_ends():
    with dn.Graph() as g:
        key = object()
        g.cache[key] = x = dn.inputs(np.ones(3))
        assert g.cache[key] is x
    assert g.cache == {}
    with dn.Graph() as h:
        assert h.cache == {}


def _ended_graph_is_freed(build) -> None:
    """build() in a graph; once the block and its expressions are gone, no reference keeps the
    graph (checked with the cyclic collector off: only reference counts free it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        with dn.Graph() as g:
            total = build()
            total.scalar_value()
            total.backward()
        ref = weakref.ref(g)
        del g, total
        assert ref() is None
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("kind", ["binary", "childsum"])
def test_an_lstm_and_a_tree_lstm_keep_no_ended_graph(kind):
    pc = dn.ParameterCollection(seed=1)
    lstm = dn.LSTMBuilder(1, 3, 4, pc)
    tree = dn.TreeLSTMBuilder(3, 4, pc, kind=kind)
    xs = [np.ones(3, dtype=np.float32) * k for k in range(3)]

    def sequence():
        return dn.sum_elems(lstm.initial_state().transduce([dn.inputs(x) for x in xs])[-1])

    def a_tree():
        left, right = tree.leaf(dn.inputs(xs[1])), tree.leaf(dn.inputs(xs[2]))
        return dn.sum_elems(tree.node([left, right]).h())
    for build in (sequence, a_tree, sequence, a_tree):
        _ended_graph_is_freed(build)


def _tagger():
    return tagger_case(4)


def _treelstm():
    return treelstm_case(4)


def _parser():
    return parser_case(4, exploration=parser.DEFAULTS["exploration"])


@pytest.mark.parametrize("make", [_tagger, _treelstm, _parser],
                         ids=["tagger", "treelstm", "parser"])
def test_a_recipe_keeps_no_ended_graph(make, monkeypatch):
    Model, config, examples = make()
    pc = dn.ParameterCollection(seed=2)
    model = Model(pc, config, Model.build_vocabs(examples, config))
    rngs = [np.random.default_rng(k) for k in range(len(examples))]

    def share():
        if hasattr(model, "batch_loss"):
            return model.batch_loss(examples, rngs)
        return dn.esum([model.loss(x, r) for x, r in zip(examples, rngs)])
    for _ in range(2):
        _ended_graph_is_freed(share)
    made = []

    class Recorded(dn.Graph):
        __slots__ = ()

        def __enter__(self):
            made.append(weakref.ref(self))
            return super().__enter__()
    monkeypatch.setattr(train.dn, "Graph", Recorded)
    was = gc.isenabled()
    gc.disable()
    try:
        train._share_loss(model, examples, list(range(len(examples))), 1, 0, 0, True)
    finally:
        if was:
            gc.enable()
    assert len(made) == 1 and made[0]() is None
