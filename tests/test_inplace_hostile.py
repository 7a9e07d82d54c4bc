"""The composed in-place ops (dynlp/inplace.py over `fusion.composed`) attacked through their
users: the RNN builders' first layer over table rows, the LSTM's masked steps, Tree-LSTM leaves,
`dn.dropout` of a row or of slices of states, and the DyNet layer's LSTM. Each model is built
with the composed nodes and again with the plain nodes they stand for (lookup, `mul`, pick_range
or concatenate_ranges nodes beside the step or the dropout), and must agree in float64 under every
autobatch strategy, fuse mode and padding setting: losses, JVPs, values and gradients of
intermediate expressions, dense and sparse parameter gradients (rows used twice, rows of two
tables). Also node counts, batching, the composed-op caches, determinism and shape errors,
and three bugs this file found (fixed): a cache clear split one structure's batches, and the
DyNet layer's LSTM read a row or a state of an ended graph in the new one."""

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import dynlp as dn
import dynlp.dynet as dy
from dynlp import fusion, inplace
from dynlp.dynet import config
from dynlp.nn import (MLP, BiRNNBuilder, CharacterEncoder, GRUBuilder, LSTMBuilder,
                      SimpleRNNBuilder, TreeLSTMBuilder)
from dynlp.ops import TABLE

STRATEGIES = [False, "agenda", "depth", "late", True]
FUSES = [True, False, "regions"]
RECURRENT = [LSTMBuilder, GRUBuilder, SimpleRNNBuilder]
SENTENCES = [[1, 4, 1, 2], [6], [0, 0, 5, 3, 1], [2, 2]]  # rows repeat in a sentence and a batch
LSTM, LOOKUP = TABLE["lstm_step"], TABLE["lookup"]


def _collection(seed):
    return dn.ParameterCollection(seed=seed, dtype=np.float64)


@contextmanager
def _forms(plain):
    """Under plain, the LSTM multiplies its dropout masks in `mul` nodes of their own."""
    saved = LSTMBuilder.masks_in_node
    LSTMBuilder.masks_in_node = not plain and saved
    try:
        yield
    finally:
        LSTMBuilder.masks_in_node = saved


def _in(plain, x):
    """x as the model reads it: in place (a deferred Row or Slice) or, under plain, its node."""
    return x.plain() if plain else x


def _measure(pc, build, plain, fuse, autobatch, pad=True, dtype=np.float64, seed=5):
    """Run build(g, plain) -> (loss, {name: expression}, [jvp seeds]) in one graph: the loss, its
    JVP along fixed tangents of the seeds, the values and gradients of the expressions, every
    parameter's gradient, and the graph's op names and stats."""
    pc.clear_grads()
    got = {}
    with _forms(plain):
        with dn.Graph(dtype=dtype, fuse=fuse, autobatch=autobatch, pad=pad, seed=seed) as g:
            loss, reads, seeds = build(g, plain)
            rng = np.random.default_rng(7)
            if seeds:
                got["jvp"] = dn.jvp(loss, {k: rng.normal(size=k.shape) for k in seeds})
            got["loss"] = loss.scalar_value()
            loss.backward()
            for name, e in reads.items():
                got[name] = e.npvalue()
                got[name + ".gradient"] = e.gradient()
            names = [op.name for op in g.ops]
            stats = g.stats()
    for p in pc.parameters():
        got["grad " + p.name] = p.grad_as_array()
    pc.clear_grads()
    return got, names, stats


def _same(want, got, rtol=1e-10, atol=1e-12, what=""):
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{what} {k}")


def _against_plain(pc, build, strategies=STRATEGIES, fuses=FUSES, pads=(True, False)):
    """The composed forms under every strategy, fuse mode and pad setting against the plain
    nodes, unfused and unbatched; returns the composed forms' op names (fuse=True)."""
    want, _, _ = _measure(pc, build, True, False, False)
    names = None
    for autobatch in strategies:
        for fuse in fuses:
            for pad in pads:
                got, ops, _ = _measure(pc, build, False, fuse, autobatch, pad)
                _same(want, got, what=f"autobatch={autobatch} fuse={fuse} pad={pad}:")
                if fuse is True:
                    names = ops
    return names


def _weighted(e, rng):
    return dn.dot_product(dn.tanh(e), dn.inputs(rng.normal(size=e.shape)))


# -- recurrent builders over rows -----------------------------------------------------------------
def _rnn(cls, layers, dropout, two_tables=True):
    pc = _collection(1)
    E = pc.add_lookup_parameters((7, 3), name="E")
    F = pc.add_lookup_parameters((7, 3), name="F")
    builder = cls(layers, 3, 4, pc)
    if dropout is not None:
        builder.set_dropout(*dropout)

    def build(g, plain):
        rng = np.random.default_rng(3)
        losses, reads = [], {}
        for k, words in enumerate(SENTENCES):
            table = F if two_tables and k % 2 else E
            outs = builder.transduce([_in(plain, dn.lookup(table, w)) for w in words])
            losses += [_weighted(o, rng) for o in outs]
            reads[f"last {k}"] = outs[-1]
        W, b = builder.params[0]
        return dn.esum(losses), reads, [E, F, W, b]
    return pc, build


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [None, (0.3, 0.4), (0.0, 0.5), (0.5, 0.0)])
@pytest.mark.parametrize("cls", RECURRENT)
def test_rnn_builders_over_rows_equal_lookup_and_step_nodes(cls, dropout, layers):
    names = _against_plain(*_rnn(cls, layers, dropout), pads=(True,))
    step = cls.step_op
    if layers == 1 and dropout is None:
        assert names.count(f"lookup+{step}") == 12 and "lookup" not in names
    elif cls is LSTMBuilder and dropout is not None:
        assert f"mul+mul+{step}" in names and f"lookup+{step}" not in names


@pytest.mark.parametrize("cls", RECURRENT)
def test_rnn_builders_over_rows_without_padding(cls):
    _against_plain(*_rnn(cls, 1, None), strategies=["late", True], pads=(False,))


@pytest.mark.parametrize("dropout", [None, (0.3, 0.2)])
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("cls", RECURRENT)
def test_birnn_levels_over_rows_read_by_an_mlp(cls, levels, dropout):
    pc = _collection(7)
    E = pc.add_lookup_parameters((7, 3), name="E")
    birnn = BiRNNBuilder(levels, 3, 6, pc, cls)
    if dropout is not None:
        birnn.set_dropout(*dropout)
    mlp = MLP(pc, [6, 4, 3])

    def build(g, plain):
        losses = []
        for k, words in enumerate(SENTENCES):
            hs = birnn.transduce([_in(plain, dn.lookup(E, w)) for w in words])
            losses += [mlp.pick_neg_log_softmax(h, (j + k) % 3) for j, h in enumerate(hs)]
        return dn.esum(losses), {}, [E]
    _against_plain(pc, build, pads=(True,))


def test_incremental_steps_with_values_read_between_them():
    """A decoder's pattern: one add_input at a time, its output read before the next (a
    forward between steps), a row read in place and then made a node after a forward, and a
    dropout of a row read by a node built after a forward."""
    for cls in RECURRENT:
        pc = _collection(6)
        E = pc.add_lookup_parameters((6, 3), name="E")
        builder = cls(1, 3, 4, pc)

        def build(g, plain, builder=builder, cls=cls, E=E):
            rng = np.random.default_rng(1)
            losses, reads = [], {}
            start = [dn.inputs(rng.normal(size=4))] * (2 if cls is LSTMBuilder else 1)
            for k, words in enumerate(([1, 3, 3], [2, 0])):
                state = builder.initial_state(start if k == 0 else None)
                for j, w in enumerate(words):
                    x = dn.lookup(E, w)
                    state = state.add_input(_in(plain, x))
                    out = state.output()
                    out.value()
                    losses.append(_weighted(out, rng))
                    if j == 1:
                        x.value()
                        losses.append(dn.sum_elems(x * 2.0))
                    reads[f"out {k} {j}"] = out
            d = dn.dropout(_in(plain, dn.lookup(E, 4)), 0.5)
            t = dn.tanh(d)
            t.value()
            losses.append(dn.sum_elems(d * 3.0) + dn.sum_elems(t))
            reads["dropout"] = d
            return dn.esum(losses), reads, [E]
        _against_plain(pc, build, pads=(True,))


def test_not_training_reads_rows_in_place_and_drops_nothing():
    pc = _collection(2)
    E = pc.add_lookup_parameters((5, 3))
    lstm = LSTMBuilder(1, 3, 4, pc)
    lstm.set_dropout(0.5, 0.5)
    values = []
    for plain in (False, True):
        with dn.Graph(dtype=np.float64, training=False) as g:
            outs = lstm.transduce([_in(plain, dn.lookup(E, w)) for w in (1, 2, 1)])
            d = dn.dropout(_in(plain, dn.lookup(E, 3)), 0.5)
            values.append([o.npvalue() for o in outs] + [d.npvalue()])
            names = [op.name for op in g.ops]
        if not plain:
            assert names.count("lookup+lstm_step") == 3 and "mul+mul+lstm_step" not in names
    for a, b in zip(*values):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(values[0][-1], E.value[3])


# -- dropout of rows and of slices of states ------------------------------------------------------
def _dropouts(rate):
    pc = _collection(2)
    E = pc.add_lookup_parameters((6, 4), name="E")
    F = pc.add_lookup_parameters((5, 4), name="F")
    tree = TreeLSTMBuilder(4, 4, pc)
    birnn = BiRNNBuilder(2, 4, 8, pc, LSTMBuilder)
    chars = CharacterEncoder(pc, 9, 3, 4)
    chars_dropped = CharacterEncoder(pc, 9, 3, 4, name="chars_dropped")
    chars_dropped.set_dropout(0.3, 0.2)
    three = [LSTMBuilder(1, 4, 2, pc, name=f"three{k}") for k in range(3)]

    def build(g, plain):
        rng = np.random.default_rng(11)
        losses, reads = [], {}

        def drop(name, x):
            e = dn.dropout(_in(plain, x), rate)
            losses.append(dn.dot_product(dn.tanh(e) * 2.0 + e,
                                         dn.inputs(rng.normal(size=e.shape))))
            reads[name] = e
        for k, w in enumerate((1, 3, 1, 5)):
            drop(f"row E {k}", dn.lookup(E, w))
            drop(f"row F {k}", dn.lookup(F, w % 5))
        leaves = [tree.leaf(dn.lookup(E, w)) for w in (2, 4)]
        root = tree.node(leaves)
        drop("root h", root.h())
        drop("leaf h", leaves[0].h())
        for k, h in enumerate(birnn.transduce([dn.lookup(E, w) for w in (0, 2, 2)])):
            drop(f"birnn {k}", h)
        for k, word in enumerate(([1, 2, 3], [4], [2, 2])):
            drop(f"chars {k}", chars(word))
            drop(f"chars dropped {k}", chars_dropped(word))
        xs = [dn.lookup(E, w) for w in (3, 1)]
        # three directions' h, concatenated: one deferred slice over three states
        drop("three", dn.concatenate([b.transduce(xs)[-1] for b in three]))
        return dn.esum(losses), reads, [E, F, tree.W]
    return pc, build


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_of_rows_and_slices_equals_lookup_or_slice_nodes_and_dropout(rate):
    names = _against_plain(*_dropouts(rate))
    assert names.count("lookup+dropout") == 8 and names.count("concatenate_ranges+dropout") == 12
    # (the concatenate_ranges nodes: the BiLSTM's second level reading its first's outputs)
    assert "pick_range" not in names and names.count("concatenate_ranges") == 3


def test_a_row_read_in_place_by_several_readers_and_as_a_node():
    """One Row read by an LSTM's first layer, a Tree-LSTM leaf and a dropout (each in place),
    then as a node: the table's gradient is the sum of all four; the row has no gradient of
    its own, but a value."""
    pc = _collection(4)
    E = pc.add_lookup_parameters((6, 3), name="E")
    lstm, tree = LSTMBuilder(1, 3, 4, pc), TreeLSTMBuilder(3, 4, pc)

    def build(g, plain):
        rng = np.random.default_rng(2)
        rows = [dn.lookup(E, w) for w in (2, 5, 2)]
        inputs = [_in(plain, r) for r in rows]
        losses = [_weighted(o, rng) for o in lstm.transduce(inputs)]
        losses.append(dn.sum_elems(tree.node([tree.leaf(x) for x in inputs[:2]]).h()))
        losses.append(_weighted(dn.dropout(inputs[0], 0.25), rng))
        losses.append(dn.sum_elems(rows[1] * 3.0))
        return dn.esum(losses), {}, [E, lstm.params[0][0]]
    _against_plain(pc, build, pads=(True,))
    with dn.Graph(dtype=np.float64) as g:
        row = dn.lookup(E, 2)
        loss = dn.sum_elems(dn.tanh(lstm.transduce([row])[0]))
        loss.backward()
        assert "lookup+lstm_step" in [op.name for op in g.ops]
        with pytest.raises(dn.GraphError, match="in place"):
            row.gradient()
        np.testing.assert_array_equal(row.npvalue(), E.value[2])


# -- Tree-LSTM leaves over rows -------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [None, 0.3])
@pytest.mark.parametrize("kind", ["binary", "childsum"])
def test_tree_leaves_over_rows_equal_lookup_and_leaf_nodes(kind, dropout):
    pc = _collection(3)
    E = pc.add_lookup_parameters((6, 3), name="E")
    F = pc.add_lookup_parameters((6, 3), name="F")
    tree = TreeLSTMBuilder(3, 4, pc, kind=kind)

    def build(g, plain):
        rng = np.random.default_rng(5)
        losses, reads = [], {}
        for k, words in enumerate(([1, 2, 1], [3], [5, 5, 0, 1])):
            table = F if k == 1 else E
            states = [tree.leaf(_in(plain, dn.lookup(table, w))) for w in words]
            reads[f"leaf {k}"] = states[0].state
            while len(states) > 1:
                states = [tree.node(states[:2])] + states[2:]
            h = states[0].h()
            if dropout is not None:
                h = dn.dropout(_in(plain, h), dropout)
            losses.append(_weighted(h, rng))
        return dn.esum(losses), reads, [E, F, tree.W]
    names = _against_plain(pc, build)
    assert ("lookup+treelstm_binary_leaf" in names) == (kind == "binary")
    assert ("lookup" in names) == (kind == "childsum")


# -- float32, constant tables, central differences, gradcheck, jvp --------------------------------
@pytest.mark.parametrize("model", ["lstm", "lstm dropout", "gru", "dropouts"])
def test_float32_composed_forms_agree_with_the_plain_nodes(model):
    pc, build = {"lstm": lambda: _rnn(LSTMBuilder, 1, None),
                 "lstm dropout": lambda: _rnn(LSTMBuilder, 2, (0.3, 0.3)),
                 "gru": lambda: _rnn(GRUBuilder, 1, None),
                 "dropouts": lambda: _dropouts(0.4)}[model]()
    want, _, _ = _measure(pc, build, True, False, False, dtype=np.float32)
    for autobatch in STRATEGIES:
        for fuse in FUSES:
            got, _, _ = _measure(pc, build, False, fuse, autobatch, dtype=np.float32)
            for k, v in got.items():
                if not k.startswith("grad ") and isinstance(v, np.ndarray):
                    assert v.dtype == np.float32, k
            _same(want, got, rtol=2e-5, atol=1e-6, what=f"{autobatch} {fuse}")


@pytest.mark.parametrize("table", ["constant", "computed"])
def test_composed_ops_over_a_table_that_is_not_a_parameter(table):
    """A step and a dropout over rows of a constant (or computed) matrix, rows used twice in a
    batch: the matrix's gradient (dense, not sparse rows of a parameter), JVP along it, and the
    weights' gradients equal those of lookup nodes."""
    pc = _collection(3)
    W, b = pc.add_parameters((8, 5)), pc.add_parameters(8)
    matrix = np.random.default_rng(0).normal(size=(6, 3))

    def run(composed, autobatch, fuse):
        pc.clear_grads()
        with dn.Graph(dtype=np.float64, autobatch=autobatch, fuse=fuse, seed=2) as g:
            leaf = dn.inputs(matrix)
            T = leaf if table == "constant" else dn.tanh(leaf)
            w, bias = g.param_node(W), g.param_node(b)
            losses = []
            for words in ((1, 1, 4), (1,), (5, 1)):
                s = dn.zeros(4)
                for i in words:
                    if composed:
                        s = g.add(inplace.over_row(LSTM, 4, 2), (w, bias, T.i, s.i), (), (i,))
                    else:
                        x = g.add(LOOKUP, (T.i,), (), (i,))
                        s = g.add(LSTM, (w, bias, x.i, s.i))
                losses.append(dn.sum_elems(dn.tanh(s)))
                for i in words:
                    if composed:
                        d = g.add(inplace.dropout_row(0.3), (T.i,), (), (i, g.uniform((3,))))
                    else:
                        d = dn.dropout(g.add(LOOKUP, (T.i,), (), (i,)), 0.3)
                    losses.append(dn.sum_elems(d * d))
            loss = dn.esum(losses)
            tangent = dn.jvp(loss, {leaf: np.ones((6, 3)), W: np.ones((8, 5))})
            value = loss.scalar_value()
            loss.backward()
            return [value, tangent, leaf.gradient(), T.gradient(), W.grad_as_array()]
    for autobatch in STRATEGIES:
        for fuse in FUSES:
            for a, c in zip(run(True, autobatch, fuse), run(False, autobatch, fuse)):
                np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["dropouts", "tree", "lstm", "lstm dropout", "gru", "rnn"])
def test_parameter_gradients_of_composed_graphs_against_central_differences(model):
    def tree_model():
        pc = _collection(3)
        E = pc.add_lookup_parameters((4, 2), name="E")
        tree = TreeLSTMBuilder(2, 2, pc)

        def build(g, plain):
            leaves = [tree.leaf(dn.lookup(E, w)) for w in (1, 3, 1)]
            root = tree.node([tree.node(leaves[:2]), leaves[2]])
            return dn.sum_elems(dn.tanh(dn.dropout(root.h(), 0.3))), {}, []
        return pc, build

    def small_dropouts():
        pc = _collection(2)
        E = pc.add_lookup_parameters((3, 2), name="E")
        birnn = BiRNNBuilder(1, 2, 4, pc, LSTMBuilder)

        def build(g, plain):
            terms = [dn.sum_elems(dn.tanh(dn.dropout(dn.lookup(E, w), 0.4))) for w in (1, 2, 1)]
            terms += [dn.sum_elems(dn.tanh(dn.dropout(h, 0.3)))
                      for h in birnn.transduce([dn.lookup(E, w) for w in (0, 2, 2)])]
            return dn.esum(terms), {}, []
        return pc, build

    def small_rnn(cls, layers, dropout):
        pc = _collection(1)
        E = pc.add_lookup_parameters((3, 2), name="E")
        builder = cls(layers, 2, 2, pc)
        if dropout is not None:
            builder.set_dropout(*dropout)

        def build(g, plain):
            rng = np.random.default_rng(3)
            return dn.esum([_weighted(o, rng) for words in ([1, 2, 1], [0, 0])
                            for o in builder.transduce([dn.lookup(E, w) for w in words])]), {}, []
        return pc, build
    pc, build = {"dropouts": small_dropouts, "tree": tree_model,
                 "lstm": lambda: small_rnn(LSTMBuilder, 1, None),
                 "lstm dropout": lambda: small_rnn(LSTMBuilder, 2, (0.3, 0.3)),
                 "gru": lambda: small_rnn(GRUBuilder, 1, None),
                 "rnn": lambda: small_rnn(SimpleRNNBuilder, 1, None)}[model]()
    for fuse, autobatch in ((True, "late"), ("regions", "agenda")):
        def value():
            with dn.Graph(dtype=np.float64, seed=5, fuse=fuse, autobatch=autobatch) as g:
                return build(g, False)[0].scalar_value()
        pc.clear_grads()
        with dn.Graph(dtype=np.float64, seed=5, fuse=fuse, autobatch=autobatch) as g:
            build(g, False)[0].backward()
            assert any("+" in op.name for op in g.ops)
        eps = 1e-6
        for p in pc.parameters():
            got, want = p.grad_as_array(), np.zeros_like(p.value)
            for j in range(p.value.size):
                old = p.value.flat[j]
                p.value.flat[j] = old + eps
                plus = value()
                p.value.flat[j] = old - eps
                minus = value()
                p.value.flat[j] = old
                want.flat[j] = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=p.name)
        pc.clear_grads()


@pytest.mark.parametrize("cls", RECURRENT)
def test_gradcheck_through_builders_reading_rows_from_a_given_state(cls):
    pc = _collection(1)
    E = pc.add_lookup_parameters((5, 3))
    builder = cls(1, 3, 4, pc)
    tree = TreeLSTMBuilder(3, 4, pc)

    def f(h0):
        outs = builder.initial_state([h0]).transduce([dn.lookup(E, w) for w in (1, 3, 1)])
        assert f"lookup+{cls.step_op}" in [op.name for op in h0.g.ops]
        leaf = tree.leaf(dn.lookup(E, 2))
        root = tree.node([leaf, dn.concatenate([h0, h0 * 0.5])])
        return dn.concatenate(outs + [root.state, leaf.state * h0[0]])
    rng = np.random.default_rng(0)
    for autobatch in STRATEGIES:
        dn.gradcheck(f, rng.normal(size=4), autobatch=autobatch)


def test_jvp_along_the_dropout_masks_of_masked_steps():
    pc = _collection(1)
    lstm = LSTMBuilder(1, 3, 4, pc)
    lstm.set_dropout(0.3, 0.4)

    def run(plain, autobatch, fuse):
        rng = np.random.default_rng(0)
        with _forms(plain):
            with dn.Graph(dtype=np.float64, seed=3, autobatch=autobatch, fuse=fuse) as g:
                start = lstm.initial_state([dn.inputs(rng.normal(size=4))] * 2)
                outs = start.transduce([dn.inputs(rng.normal(size=3)) for _ in range(3)])
                loss = dn.sum_elems(dn.tanh(dn.esum(outs)))
                mx, mh = start.masks[0]
                names = [op.name for op in g.ops]
                r = np.random.default_rng(9)
                return names, [dn.jvp(loss, {mx: r.normal(size=3)}),
                               dn.jvp(loss, {mh: r.normal(size=8)}),
                               dn.jvp(loss, {lstm.params[0][1]: r.normal(size=16)})]
    _, want = run(True, False, False)
    for autobatch in STRATEGIES:
        for fuse in FUSES:
            names, got = run(False, autobatch, fuse)
            assert names.count("mul+mul+lstm_step") == 3  # (a given state: every step masked)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


# -- node counts and batching ---------------------------------------------------------------------
@pytest.mark.parametrize("model", ["lstm", "lstm dropout", "gru", "rnn", "dropouts"])
def test_nodes_before_fusion_are_the_unfused_graphs_nodes(model):
    pc, build = {"lstm": lambda: _rnn(LSTMBuilder, 1, None),
                 "lstm dropout": lambda: _rnn(LSTMBuilder, 2, (0.3, 0.3)),
                 "gru": lambda: _rnn(GRUBuilder, 1, None),
                 "rnn": lambda: _rnn(SimpleRNNBuilder, 1, None),
                 "dropouts": lambda: _dropouts(0.3)}[model]()
    counts = {}
    for plain in (False, True):
        _, _, unfused = _measure(pc, build, plain, False, "agenda")
        assert unfused["nodes_before_fusion"] == unfused["nodes"]
        counts[plain] = unfused["nodes"]
        for fuse in (True, "regions"):
            _, _, stats = _measure(pc, build, plain, fuse, "agenda")
            assert stats["nodes_before_fusion"] == unfused["nodes"], (plain, fuse)
    if model in ("gru", "rnn"):  # one node per step, where there were a lookup and a step
        assert counts[True] - counts[False] == sum(map(len, SENTENCES))


def _batches_by_op(g):
    seen, counts = set(), {}
    for batch in g.engine.batches:
        if batch is not None and id(batch) not in seen:
            seen.add(id(batch))
            counts[batch.op.name] = counts.get(batch.op.name, 0) + 1
    return counts


@pytest.mark.parametrize("autobatch", ["agenda", "depth", "late", True])
@pytest.mark.parametrize("cls", RECURRENT)
def test_composed_steps_of_one_structure_batch_as_the_plain_steps_do(cls, autobatch):
    for two_tables in (False, True):
        pc, build = _rnn(cls, 1, None, two_tables)
        counts = []
        for plain in (False, True):
            with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
                build(g, plain)[0].backward()
                counts.append(_batches_by_op(g))
        composed, plain = counts
        step = cls.step_op
        # one table: the steps at each position of the longest sentence; two tables: one batch
        # per table and position (the table is a shared argument), as the lookups were
        assert composed[f"lookup+{step}"] == max(map(len, SENTENCES)) + (2 if two_tables else 0)
        assert plain[step] == max(map(len, SENTENCES))
        assert plain["lookup"] == (2 if two_tables else 1) and "lookup" not in composed


def test_dropouts_of_one_table_and_rate_run_as_one_batch():
    pc = _collection(0)
    E, F = pc.add_lookup_parameters((5, 3)), pc.add_lookup_parameters((5, 3))
    for autobatch in ("agenda", "depth", "late"):
        with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=1) as g:
            xs = [dn.dropout(dn.lookup(T, w), p) for T in (E, F) for w in (1, 2, 1, 4)
                  for p in (0.5, 0.25)]
            dn.esum([dn.sum_elems(x) for x in xs]).backward()
            assert _batches_by_op(g)["lookup+dropout"] == 4  # 2 tables x 2 rates


# -- the composed-op caches -----------------------------------------------------------------------
def test_many_distinct_dropout_rates_keep_values_and_the_caches_bounded():
    pc = _collection(0)
    E = pc.add_lookup_parameters((5, 3))
    rates = [0.05 + 0.9 * k / (fusion.MAX_FUSED_OPS + 300)
             for k in range(fusion.MAX_FUSED_OPS + 300)]
    for plain in (False, True):
        with dn.Graph(dtype=np.float64, seed=4, autobatch="late"):
            xs = [dn.dropout(_in(plain, dn.lookup(E, k % 5)), p) for k, p in enumerate(rates)]
            loss = dn.esum([dn.sum_elems(dn.tanh(x)) for x in xs])
            loss.backward()
            if plain:
                want = (loss.scalar_value(), E.grad_as_array())
            else:
                got = (loss.scalar_value(), E.grad_as_array())
        E.clear_grad()
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-11, atol=1e-13)
    assert len(fusion._COMPOSED) <= fusion.MAX_FUSED_OPS
    info = getattr(inplace.dropout_row, "cache_info", None)  # (an lru_cache today)
    assert info is None or info().currsize <= info().maxsize


def test_nodes_of_one_rate_share_an_op_across_a_cache_clear():
    pc = _collection(0)
    E = pc.add_lookup_parameters((5, 3))
    with dn.Graph(dtype=np.float64, seed=1, autobatch="agenda") as g:
        first = dn.dropout(dn.lookup(E, 1), 0.5)
        for k in range(fusion.MAX_FUSED_OPS + 300):  # other rates, as a per-word rate gives
            dn.dropout(dn.lookup(E, 0), 0.1 + 0.3 * k / (fusion.MAX_FUSED_OPS + 300))
        second = dn.dropout(dn.lookup(E, 2), 0.5)
        dn.esum([dn.sum_elems(first), dn.sum_elems(second)]).backward()
        assert g.sigs[first.i] == g.sigs[second.i]
        batch, = {id(b): b for b in g.engine.batches if b is not None and first.i in b.nodes
                  }.values()
        assert second.i in batch.nodes


# -- determinism -----------------------------------------------------------------------------------
_DIGEST = """
import sys
sys.path.insert(0, {tests!r})
import hashlib
import numpy as np
import dynlp as dn
import test_inplace_hostile as t
dn.seed(1234)
digest = hashlib.sha256()
for pc, build in (t._dropouts(0.3), t._rnn(t.LSTMBuilder, 2, (0.3, 0.2))):
    for fuse in t.FUSES:
        for autobatch in t.STRATEGIES:
            got, _, _ = t._measure(pc, build, False, fuse, autobatch, seed=None)
            for k in sorted(got):
                digest.update(np.ascontiguousarray(got[k]).tobytes())
print(digest.hexdigest())
"""


def test_a_seeded_program_gives_the_same_numbers_in_every_run():
    """`dn.seed`: the same bits in two processes with different string hashing (sets and dicts
    of the engine and the fusion pass must not decide anything)."""
    root = Path(__file__).resolve().parent.parent
    code = _DIGEST.format(tests=str(Path(__file__).resolve().parent))
    digests = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64

    def numbers():
        pc, build = _dropouts(0.3)
        got, _, _ = _measure(pc, build, False, True, "late", seed=99)
        return hashlib.sha256(b"".join(np.ascontiguousarray(got[k]).tobytes()
                                       for k in sorted(got))).hexdigest()
    assert numbers() == numbers()


# -- the DyNet layer -------------------------------------------------------------------------------
def _dynet_lstm(through_nodes, layers=1, dropout=None, batched=False, const=False,
                autobatch=True):
    config.set(random_seed=3, autobatch=1 if autobatch else 0)
    try:
        m = dy.ParameterCollection()
        E = m.add_lookup_parameters((7, 3))
        rnn = dy.VanillaLSTMBuilder(layers, 3, 4, m)
        if dropout:
            rnn.set_dropouts(*dropout)
        dy.renew_cg()
        losses = []
        for words in ([1, 4, 1], [6, 6], [0, 2, 5, 3]):
            if batched:
                xs = [dy.lookup_batch(E, [w, (w + 1) % 7]) for w in words]
            else:
                xs = [dy.const_lookup(E, w) if const else dy.lookup(E, w) for w in words]
            if through_nodes:
                xs = [x * 1.0 for x in xs]
            outs = rnn.initial_state().transduce(xs)
            losses.append(dy.sum_batches(dy.sum_elems(dy.tanh(dy.esum(outs)))))
        loss = dy.esum(losses)
        value = loss.value()
        loss.backward()
        names = [op.name for op in dn.current_graph().ops]
        return value, [p.grad_as_array() for p in m.parameters_list()] + [E.grad_as_array()], \
            names
    finally:
        config.set()


@pytest.mark.parametrize("settings", [
    {}, {"layers": 2}, {"batched": True}, {"const": True}, {"dropout": (0.3, 0.2)},
    {"autobatch": False}, {"batched": True, "autobatch": False}])
def test_dynet_lstm_over_lookups_equals_it_over_nodes(settings):
    value, grads, names = _dynet_lstm(False, **settings)
    value2, grads2, names2 = _dynet_lstm(True, **settings)
    reads_rows = not settings.get("const") and not settings.get("dropout")
    assert ("lookup+lstm_step" in names) == reads_rows and "lookup+lstm_step" not in names2
    assert value == pytest.approx(value2, rel=1e-5)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.any(grads[-1] != 0.0) != bool(settings.get("const"))


def test_dynet_lstm_refuses_a_row_of_an_ended_graph():
    m = dy.ParameterCollection()
    E = m.add_lookup_parameters((7, 3))
    F = m.add_lookup_parameters((5, 3))
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    dy.renew_cg()
    stale = dy.lookup(E, 1)
    dy.renew_cg()
    dy.lookup(F, 1)  # (F's table is the new graph's first node, as E's was in the old one)
    try:
        value = rnn.initial_state().add_input(stale).output().npvalue()
    except RuntimeError:
        value = None
    dy.renew_cg()
    assert value is None, "a row of an ended graph was read in the new graph"


def test_dynet_lstm_refuses_a_state_of_an_ended_graph():
    m = dy.ParameterCollection()
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    dy.renew_cg()
    state = rnn.initial_state().add_input(dy.inputVector([1.0, 2.0, 3.0]))
    dy.renew_cg()
    for _ in range(10):
        dy.inputVector(np.full(8, 7.0))
    try:
        value = state.add_input(dy.inputVector([1.0, 2.0, 3.0])).output().npvalue()
    except RuntimeError:
        value = None
    dy.renew_cg()
    assert value is None, "the LSTM stepped from a node of the new graph"


# -- shape errors ---------------------------------------------------------------------------------
def test_shape_errors_name_the_composed_op_or_the_builder():
    m = dy.ParameterCollection()
    narrow = m.add_lookup_parameters((7, 2))
    rnn = dy.VanillaLSTMBuilder(1, 3, 4, m)
    dy.renew_cg()
    with pytest.raises(dn.ShapeError, match=r"^lookup\+lstm_step\(.*W must be"):
        rnn.initial_state().add_input(dy.lookup(narrow, 1))
    dy.renew_cg()

    pc = _collection(0)
    W, b = pc.add_parameters((16, 7)), pc.add_parameters(16)
    E = pc.add_lookup_parameters((5, 2))
    with dn.Graph() as g:
        w, bias = g.param_node(W), g.param_node(b)
        x, s = dn.zeros(3).i, dn.zeros(8).i
        with pytest.raises(dn.ShapeError, match=r"^mul\+mul\+lstm_step\(.*broadcast"):
            g.add(inplace.over_masked(LSTM, 4, (2, 3)), (w, bias, x, s, dn.zeros(4).i, s))
        with pytest.raises(dn.ShapeError, match=r"^concatenate_ranges\+dropout\(.*out of"):
            g.add(inplace.dropout_ranges(2, 2, 9, 0.5), (s, s), (), (np.zeros(14),))
        with pytest.raises(dn.ShapeError, match=r"^lookup\+dropout\(.*matrix"):
            g.add(inplace.dropout_row(0.5), (s,), (), (1, np.zeros(8)))
        for cls in RECURRENT:
            with pytest.raises(ValueError, match=f"{cls.__name__}.add_input: input of shape"):
                cls(1, 3, 4, pc).transduce([dn.lookup(E, 1)])
        with pytest.raises(ValueError, match="TreeLSTMBuilder: input of shape"):
            TreeLSTMBuilder(3, 4, pc).leaf(dn.lookup(E, 1))
