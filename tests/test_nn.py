"""Builders of dynlp.nn: whole-model gradient checks (inputs and parameters), stacking, BiRNN
sizes, variational dropout masks, and autobatched against unbatched runs of mixed minibatches."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.nn import (MLP, BiRNNBuilder, CharacterEncoder, Embedding, GRUBuilder, LSTMBuilder,
                      SimpleRNNBuilder, TreeLSTMBuilder)

RECURRENT = [LSTMBuilder, GRUBuilder, SimpleRNNBuilder]


def collection(seed=0):
    return dn.ParameterCollection(seed=seed, dtype=np.float64)


def weighted_sum(outputs, rng):
    """A scalar that depends on every element of every output: sum_t w_t . out_t."""
    return dn.esum([dn.dot_product(o, dn.inputs(rng.normal(size=o.shape))) for o in outputs])


def check_parameter_gradients(pc, build_loss, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Backward's parameter gradients against central differences over each parameter entry.

    build_loss() builds a scalar in the current graph; graphs are float64.
    """
    def loss_value():
        with dn.Graph(dtype=np.float64):
            return build_loss().scalar_value()

    pc.clear_grads()
    with dn.Graph(dtype=np.float64):
        build_loss().backward()
    for p in pc.parameters():
        got = p.grad_as_array()
        want = np.zeros_like(p.value)
        for j in range(p.value.size):
            old = p.value.flat[j]
            p.value.flat[j] = old + eps
            plus = loss_value()
            p.value.flat[j] = old - eps
            minus = loss_value()
            p.value.flat[j] = old
            want.flat[j] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=p.name)
        assert np.any(got != 0.0), f"{p.name} got no gradient"


# -- gradient checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("builder_class", RECURRENT)
def test_recurrent_builder_gradcheck_inputs(builder_class):
    builder = builder_class(2, 2, 3, collection())

    def f(*xs):
        return dn.concatenate(builder.transduce(xs))

    rng = np.random.default_rng(1)
    dn.gradcheck(f, *[rng.normal(size=2) for _ in range(3)])


@pytest.mark.parametrize("builder_class", RECURRENT)
def test_recurrent_builder_parameter_gradients(builder_class):
    pc = collection()
    builder = builder_class(2, 2, 2, pc)
    xs = np.random.default_rng(2).normal(size=(3, 2))

    def loss():
        return weighted_sum(builder.transduce([dn.inputs(x) for x in xs]),
                            np.random.default_rng(3))

    check_parameter_gradients(pc, loss)


def test_birnn_gradients():
    pc = collection()
    birnn = BiRNNBuilder(2, 2, 4, pc)
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(3, 2))
    dn.gradcheck(lambda *es: dn.concatenate(birnn.transduce(es)), *xs)
    check_parameter_gradients(
        pc, lambda: weighted_sum(birnn.transduce([dn.inputs(x) for x in xs]),
                                 np.random.default_rng(5)))


@pytest.mark.parametrize("kind", ["binary", "childsum"])
def test_treelstm_gradients(kind):
    pc = collection()
    tree = TreeLSTMBuilder(2, 2, pc, kind=kind)

    def build(a, b, c):
        left = tree.node([tree.leaf(a), tree.leaf(b)])
        root = tree.node([left, tree.leaf(c)], x=a if kind == "childsum" else None)
        return dn.concatenate([root.h(), root.c(), left.h()])

    rng = np.random.default_rng(6)
    words = rng.normal(size=(3, 2))
    dn.gradcheck(build, *words)
    check_parameter_gradients(
        pc, lambda: weighted_sum([build(*[dn.inputs(w) for w in words])],
                                 np.random.default_rng(7)))


def test_binary_treelstm_leaves_use_the_leaf_op():
    from dynlp.graph import apply

    tree = TreeLSTMBuilder(3, 4, collection())
    words = np.random.default_rng(9).normal(size=(2, 3))
    with dn.Graph(dtype=np.float64) as g:
        xs = [dn.inputs(w) for w in words]
        root = tree.node([tree.leaf(xs[0]), tree.node((), xs[1])])
        names = [op.name for op in g.ops]
        zero = dn.zeros(8)
        leaves = [apply("treelstm_binary", tree.W, tree.b, x, zero, zero) for x in xs]
        want = apply("treelstm_binary_nox", tree.W, tree.b, *leaves)
        np.testing.assert_allclose(root.state.npvalue(), want.npvalue(), rtol=1e-12)
    assert names.count("treelstm_binary_leaf") == 2 and "treelstm_binary" not in names


def _tree_losses(read, autobatch=True, dropout=0.0, training=True):
    """A binary Tree-LSTM over embedding lookups with an MLP loss at every node, where read(state)
    gives the classifier's input: (loss, gradients of every parameter, op names, stats)."""
    pc = collection(seed=3)
    embed = Embedding(pc, 7, 3)
    tree = TreeLSTMBuilder(3, 4, pc)
    mlp = MLP(pc, [4, 5, 3], dropout=dropout)
    with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=1, training=training) as g:
        losses = []
        for words in ([1, 4, 4], [6, 0]):
            states = [tree.leaf(embed(w)) for w in words]
            while len(states) > 1:
                states = [tree.node([states[0], states[1]])] + states[2:]
                losses.append(mlp.pick_neg_log_softmax(read(states[0]), len(losses) % 3))
            losses.append(dn.sum_elems(mlp(read(states[0]))))
        loss = dn.esum(losses)
        loss.backward()
        return (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                [op.name for op in g.ops], g.stats())


@pytest.mark.parametrize("autobatch", [True, False, "agenda"])
def test_tree_state_h_is_read_in_place_by_the_mlp(autobatch):
    def explicit(state):
        return dn.pick_range(state.state, 4, 8)

    want, want_grads, names, _ = _tree_losses(explicit, autobatch)
    assert names.count("pick_range") == 5
    got, got_grads, names, _ = _tree_losses(lambda state: state.h(), autobatch)
    assert "pick_range" not in names
    assert names.count("mlp_pick_neg_log_softmax") == 3 and names.count("mlp") == 2
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    # dropout while training: the MLP's dropout forms read the slices in place too
    want, want_grads, _, _ = _tree_losses(explicit, autobatch, dropout=0.5)
    got, got_grads, names, _ = _tree_losses(lambda state: state.h(), autobatch, dropout=0.5)
    assert "pick_range" not in names
    # (a single loss under dropout: the mlp_dropout node and a pick_neg_log_softmax node)
    assert names.count("mlp_dropout") == 5 and names.count("pick_neg_log_softmax") == 3
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_a_tree_state_h_slice_becomes_a_node_when_read_as_one():
    tree = TreeLSTMBuilder(3, 4, collection())
    mlp = MLP(collection(seed=1), [4, 2])
    with dn.Graph(dtype=np.float64) as g:
        state = tree.leaf(dn.inputs(np.arange(3.0)))
        h = state.h()
        assert h is state.h() and h.shape == (4,) and h.dim() == (4,)
        before = len(g)
        scores = mlp(h)
        assert [op.name for op in g.ops[before:]][-1] == "mlp" and "pick_range" not in [
            op.name for op in g.ops]
        np.testing.assert_array_equal(h.npvalue(), state.state.npvalue()[4:])  # now a node
        assert [op.name for op in g.ops].count("pick_range") == 1
        doubled = h * 2.0
        np.testing.assert_allclose(doubled.npvalue(), 2 * state.state.npvalue()[4:])
        assert [op.name for op in g.ops].count("pick_range") == 1  # made once
        np.testing.assert_array_equal(mlp(h).npvalue(), scores.npvalue())
    with pytest.raises(dn.GraphError):
        h.npvalue()


@pytest.mark.parametrize("autobatch", [True, False, "depth"])
def test_leaves_over_lookups_read_the_table_in_the_leaf_node(autobatch):
    # a lookup read through another node (times 1) keeps the leaf and the lookup apart
    want, want_grads, names, _ = _tree_losses(lambda state: state.h(), autobatch)
    assert names.count("lookup+treelstm_binary_leaf") == 5
    assert "treelstm_binary_leaf" not in names and "lookup" not in names

    pc = collection(seed=3)
    embed = Embedding(pc, 7, 3)
    tree = TreeLSTMBuilder(3, 4, pc)
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        word = embed(2)
        leaf = tree.leaf(word)
        other = tree.leaf(embed(2) * 1.0)
        names = [op.name for op in g.ops]
        assert names.count("lookup+treelstm_binary_leaf") == 1 and names.count("lookup") == 1
        assert names.count("treelstm_binary_leaf") == 1
        np.testing.assert_array_equal(leaf.state.npvalue(), other.state.npvalue())
        # the fused leaf's row becomes a lookup node when read as a node, once
        np.testing.assert_array_equal(word.npvalue(), embed.table.value[2])
        assert word.i == word.i and [op.name for op in g.ops].count("lookup") == 2


def test_fused_tree_leaves_have_the_unfused_value_and_gradients():
    pc = collection(seed=3)
    embed = Embedding(pc, 7, 3)
    tree = TreeLSTMBuilder(3, 4, pc)

    def losses(fused):
        pc.clear_grads()
        with dn.Graph(dtype=np.float64):
            xs = [embed(w) if fused else embed(w) * 1.0 for w in (1, 4, 1)]
            root = tree.node([tree.node([tree.leaf(xs[0]), tree.leaf(xs[1])]), tree.leaf(xs[2])])
            loss = weighted_sum([root.state], np.random.default_rng(4))
            loss.backward()
            return loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()]

    want, want_grads = losses(False)
    got, got_grads = losses(True)
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    check_parameter_gradients(
        pc, lambda: weighted_sum([tree.node([tree.leaf(embed(3)), tree.leaf(embed(5))]).state],
                                 np.random.default_rng(5)))


def test_tree_nodes_after_the_first_are_made_like_it_and_still_checked():
    pc = collection()
    embed = Embedding(pc, 5, 3)
    tree = TreeLSTMBuilder(3, 4, pc)
    with dn.Graph(dtype=np.float64) as g:
        leaves = [tree.leaf(embed(k)) for k in (1, 2, 1)]
        inner = [tree.node([leaves[0], leaves[1]]), tree.node([leaves[1], leaves[2]])]
        for group in ([s.state.i for s in leaves], [s.state.i for s in inner]):
            assert len({(g.ops[n], g.args[n][:2], g.shapes[n], g.sigs[n]) for n in group}) == 1
        assert [g.battrs[s.state.i] for s in leaves] == [(1,), (2,), (1,)]
        with pytest.raises(dn.ShapeError, match="treelstm_binary_nox"):
            tree.node([dn.inputs(np.ones(6)), dn.inputs(np.ones(6))])
        with pytest.raises(ValueError, match="input of shape"):
            tree.leaf(Embedding(pc, 5, 2, name="narrow")(1))
        np.testing.assert_allclose(inner[0].state.npvalue(), tree.node(
            [leaves[0].state * 1.0, leaves[1].state * 1.0]).state.npvalue(), rtol=1e-13)


def _summed_losses(fuse, autobatch=True, dims=(4, 5, 3), windows=False):
    """Per-sentence sums of MLP losses over inputs (or halves of BiLSTM-like pairs, windows=True)
    for three sentences of different lengths: (loss, gradients of inputs and parameters, op
    names). fuse=False reads every term as a node first."""
    pc = collection(seed=9)
    mlp = MLP(pc, list(dims))
    rng = np.random.default_rng(10)
    width = 2 * dims[0] if windows else dims[0]
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        leaves, sums = [], []
        for length in (3, 1, 4):
            xs = [dn.inputs(rng.normal(size=width)) for _ in range(length)]
            leaves += xs
            if windows:  # the second half of x and of the next x (the last: of itself)
                half = dims[0] // 2
                hs = [dn.graph.Slice(g, (a.i, b.i), half, 2 * half)
                      for a, b in zip(xs, xs[1:] + xs[-1:])]
            else:
                hs = xs
            terms = [mlp.pick_neg_log_softmax(h, (k * 7 + length) % dims[-1])
                     for k, h in enumerate(hs)]
            if not fuse:
                terms = [dn.Expression(g, t.i) for t in terms]
            sums.append(dn.esum(terms))
        loss = dn.esum([w * total for w, total in zip([1.0, -0.5, 2.0], sums)])
        loss.backward()
        grads = [x.gradient() for x in leaves] + [p.grad_as_array() for p in pc.parameters()]
        return loss.scalar_value(), grads, [op.name for op in g.ops]


@pytest.mark.parametrize("autobatch", [True, False, "agenda", "depth"])
@pytest.mark.parametrize("dims,windows", [((4, 5, 3), False), ((4, 3), False),
                                          ((4, 6, 5, 3), True)])
def test_a_sum_of_mlp_losses_is_one_node_with_the_values_and_gradients_of_the_terms(
        autobatch, dims, windows):
    want, want_grads, names = _summed_losses(False, autobatch, dims, windows)
    assert names.count("mlp_pick_neg_log_softmax") == 8
    got, got_grads, names = _summed_losses(True, autobatch, dims, windows)
    assert names.count(f"mlp_loss_sum_{len(dims) - 1}") == 3
    assert "mlp_pick_neg_log_softmax" not in names and "pick_range" not in names
    assert got == pytest.approx(want, rel=1e-12)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_sums_of_different_numbers_of_loss_terms_run_as_one_batch():
    mlp = MLP(collection(), [3, 4, 2])
    rng = np.random.default_rng(4)
    with dn.Graph(dtype=np.float64) as g:
        sums = [dn.esum([mlp.pick_neg_log_softmax(dn.inputs(rng.normal(size=3)), k % 2)
                         for k in range(length)]) for length in (1, 5, 2)]
        dn.esum(sums).backward()
        runs = [b for b in g.engine.batches if b is not None and b.op.name == "mlp_loss_sum_2"]
        assert len(runs) == 1 and sorted(runs[0].nodes) == sorted(s.i for s in sums)
        assert list(runs[0].attrs["counts"]) == [1, 5, 2]


def test_loss_terms_become_nodes_when_read_as_nodes():
    pc = collection(seed=2)
    mlp = MLP(pc, [3, 4, 2])
    other = MLP(pc, [3, 2], name="other")
    x = np.random.default_rng(3).normal(size=3)
    with dn.Graph(dtype=np.float64) as g:
        h = dn.inputs(x)
        term = mlp.pick_neg_log_softmax(h, 1)
        assert term.shape == () and "mlp_pick_neg_log_softmax" not in [op.name for op in g.ops]
        z = mlp(h).npvalue()
        want = np.log(np.exp(z).sum()) - z[1]
        assert term.value() == pytest.approx(want, rel=1e-12)  # now a node
        assert [op.name for op in g.ops].count("mlp_pick_neg_log_softmax") == 1
        # a made term, terms of another MLP, or another kind of expression: a plain esum
        mixed = [dn.esum([term, mlp.pick_neg_log_softmax(h, 0)]),
                 dn.esum([mlp.pick_neg_log_softmax(h, 0), other.pick_neg_log_softmax(h, 1)]),
                 dn.esum([mlp.pick_neg_log_softmax(h, 0), dn.sum_elems(h)])]
        names = [op.name for op in g.ops]
        assert names.count("esum") == 3 and not any(n.startswith("mlp_loss_sum") for n in names)
        single = mlp.pick_neg_log_softmax(h, 1)
        single.backward()  # a term is a loss of its own
        assert single.scalar_value() == pytest.approx(want, rel=1e-12)
        assert mixed[0].scalar_value() == pytest.approx(
            want + np.log(np.exp(z).sum()) - z[0], rel=1e-12)
        with pytest.raises(dn.ShapeError, match="mlp_pick_neg_log_softmax"):
            mlp.pick_neg_log_softmax(dn.inputs(np.ones(4)), 0)
    with pytest.raises(dn.GraphError):
        term.value()


def test_deferred_expressions_read_in_place_have_no_gradient_of_their_own():
    pc = collection(seed=5)
    embed = Embedding(pc, 6, 3)
    tree = TreeLSTMBuilder(3, 4, pc)
    birnn = BiRNNBuilder(1, 3, 4, pc)
    lstm = LSTMBuilder(1, 3, 2, pc)
    mlp = MLP(pc, [4, 3])
    with dn.Graph(dtype=np.float64):
        row, kept = embed(1), embed(2).plain()  # plain(): a node of its own
        leaf, other = tree.leaf(row), tree.leaf(kept)
        run = [embed(3), embed(4)]
        outputs = birnn.transduce(run)  # a BiRNN's first layer reads the rows in place
        step = [embed(5)]
        state = lstm.initial_state().add_input(step[0])  # (a step reads its row in place too)
        unfused = [embed(0).plain()]
        later = lstm.initial_state().add_input(dn.tanh(unfused[0]))
        term = mlp.pick_neg_log_softmax(leaf.h(), 2)
        loss = dn.esum([term, mlp.pick_neg_log_softmax(other.h(), 0)]) + dn.esum(
            [dn.sum_elems(o) for o in outputs + [state.output(), later.output()]])
        loss.backward()
        for x in (row, run[0], step[0], leaf.h(), term):
            with pytest.raises(dn.GraphError, match="read this expression in place"):
                x.gradient()
        assert np.any(kept.gradient() != 0.0) and np.any(unfused[0].gradient() != 0.0)
        assert np.any(embed.table.grad_as_array()[1] != 0.0)  # the table's rows still learn


def test_esum_takes_any_iterable_and_loss_terms_survive_a_later_dropout_setting():
    mlp = MLP(collection(), [3, 4, 2])
    with dn.Graph(dtype=np.float64, seed=1):
        x = dn.inputs(np.ones(3))
        terms = [mlp.pick_neg_log_softmax(x, k) for k in (0, 1)]
        total = dn.esum(t for t in terms)
        mlp.set_dropout(0.5)  # after the terms were made: they stay what they were
        late = mlp.pick_neg_log_softmax(x, 1)
        assert terms[1].masks is None and late.masks is not None  # made now, with dropout
        assert terms[1].value() == pytest.approx(total.value() - terms[0].value(), rel=1e-12)
    mlp.disable_dropout()


def test_loss_terms_are_not_made_with_an_unfused_activation_or_too_many_layers():
    pc = collection()
    for mlp in (MLP(pc, [3, 4, 2], activation="elu", name="elu"),
                MLP(pc, [3, 4, 4, 4, 4, 2], name="deep")):
        with dn.Graph(dtype=np.float64, seed=1):
            term = mlp.pick_neg_log_softmax(dn.inputs(np.ones(3)), 1)
            assert type(term) is dn.Expression
    mlp = MLP(pc, [3, 4, 2], dropout=0.5, name="eval")
    for training, op in ((False, "mlp_loss_sum_2"), (True, "mlp_loss_sum_1")):
        with dn.Graph(dtype=np.float64, training=training, seed=1) as g:
            total = dn.esum([mlp.pick_neg_log_softmax(dn.inputs(np.ones(3)), k)
                             for k in (0, 1)])
            assert g.ops[total.i].name == op  # no dropout outside training


def test_mlp_embedding_and_character_encoder_gradients():
    pc = collection()
    mlp = MLP(pc, [3, 4, 2])
    dn.gradcheck(mlp, np.random.default_rng(8).normal(size=3))
    embedding = Embedding(pc, 5, 3)
    chars = CharacterEncoder(pc, 6, 2, 4)

    def loss():
        word = dn.concatenate([embedding(4), embedding(1)])
        return weighted_sum([mlp(embedding(2)), word, chars([1, 3, 3, 0])],
                            np.random.default_rng(9))

    check_parameter_gradients(pc, loss)


def test_embedding_gradient_is_sparse():
    pc = collection()
    embedding = Embedding(pc, 6, 3)
    with dn.Graph(dtype=np.float64):
        dn.sum_elems(embedding(2) + embedding(4) + embedding(2)).backward()
    rows, values = embedding.table.sparse_grad()
    assert sorted(rows.tolist()) == [2, 4]
    np.testing.assert_allclose(values[list(rows).index(2)], 2.0)


# -- structure -----------------------------------------------------------------------------------
@pytest.mark.parametrize("builder_class", RECURRENT)
def test_stacked_layers_equal_chained_single_layers(builder_class):
    pc = collection()
    deep = builder_class(2, 3, 4, pc)
    bottom, top = builder_class(1, 3, 4, pc), builder_class(1, 4, 4, pc)
    for single, layer in ((bottom, 0), (top, 1)):
        for mine, theirs in zip(single.params[0], deep.params[layer]):
            mine.set_value(theirs.value)
    xs = np.random.default_rng(10).normal(size=(4, 3))
    with dn.Graph(dtype=np.float64):
        inputs = [dn.inputs(x) for x in xs]
        state = deep.initial_state().add_inputs(inputs)[-1]
        chained = top.transduce(bottom.transduce(inputs))
        np.testing.assert_allclose(state.output().npvalue(), chained[-1].npvalue(), rtol=1e-12)
        assert len(state.h()) == 2
        cells = 2 if builder_class is LSTMBuilder else 0
        assert len(state.s()) == 2 + cells
        np.testing.assert_allclose(state.s()[-1].npvalue(), state.output().npvalue())


def test_lstm_initial_state_and_state_order():
    pc = collection()
    lstm = LSTMBuilder(2, 2, 3, pc)
    vecs = [np.full(3, float(k)) for k in range(4)]  # c0, c1, h0, h1
    with dn.Graph(dtype=np.float64):
        state = lstm.initial_state([dn.inputs(v) for v in vecs])
        for got, want in zip(state.s(), vecs):
            np.testing.assert_array_equal(got.npvalue(), want)
        only_h = lstm.initial_state([dn.inputs(vecs[2]), dn.inputs(vecs[3])])
        np.testing.assert_array_equal(only_h.s()[0].npvalue(), np.zeros(3))
        np.testing.assert_array_equal(only_h.h()[1].npvalue(), vecs[3])
        assert state.add_input(dn.inputs(np.ones(2))).prev() is state
        with pytest.raises(ValueError, match="initial_state"):
            lstm.initial_state([dn.inputs(vecs[0])])
        with pytest.raises(ValueError, match="expected \\(2,\\)"):
            state.add_input(dn.inputs(np.ones(3)))


def test_lstm_forget_bias_starts_at_one_and_names_are_unique():
    pc = collection()
    first, second = LSTMBuilder(1, 2, 3, pc), LSTMBuilder(1, 2, 3, pc)
    names = [p.name for p in pc.parameters()]
    assert names == ["lstm/layer0/W", "lstm/layer0/b", "lstm_1/layer0/W", "lstm_1/layer0/b"]
    np.testing.assert_array_equal(first.params[0][1].value, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert second.params[0][0].shape == (12, 5)


def test_birnn_output_sizes_and_directions():
    pc = collection()
    birnn = BiRNNBuilder(2, 3, 6, pc, builder_class=GRUBuilder)
    assert [b.hidden_dim for pair in birnn.builder_layers for b in pair] == [3, 3, 3, 3]
    assert birnn.builder_layers[1][0].input_dim == 6
    with dn.Graph(dtype=np.float64):
        xs = [dn.inputs(x) for x in np.random.default_rng(11).normal(size=(4, 3))]
        outputs = birnn.transduce(xs)
        assert [o.shape for o in outputs] == [(6,)] * 4
        # the first output's backward half has read the last input, its forward half has not
        dn.sum_elems(dn.pick_range(outputs[0], 3, 6)).backward()
        assert np.any(xs[-1].gradient() != 0.0)
    with dn.Graph(dtype=np.float64):
        xs = [dn.inputs(x) for x in np.random.default_rng(11).normal(size=(4, 3))]
        single = BiRNNBuilder(1, 3, 6, collection())
        dn.sum_elems(dn.pick_range(single.transduce(xs)[0], 0, 3)).backward()
        assert np.all(xs[-1].gradient() == 0.0)
    with pytest.raises(ValueError, match="even"):
        BiRNNBuilder(1, 3, 5, pc)


@pytest.mark.parametrize("autobatch", [True, False])
def test_birnn_outputs_are_read_in_place_by_the_mlp(autobatch):
    pc = collection(seed=8)
    birnn = BiRNNBuilder(1, 3, 4, pc)
    mlp = MLP(pc, [4, 5, 3])
    rng = np.random.default_rng(12)
    words = rng.normal(size=(3, 3))

    def losses(in_place):
        pc.clear_grads()
        with dn.Graph(fuse=False, dtype=np.float64, autobatch=autobatch) as g:
            hs = birnn.transduce([dn.inputs(w) for w in words])
            if not in_place:  # the values as ordinary nodes
                hs = [dn.concatenate([dn.pick_range(h, 0, 2), dn.pick_range(h, 2, 4)])
                      for h in hs]
            loss = dn.esum([mlp.pick_neg_log_softmax(h, k) for k, h in enumerate(hs)]
                           + [dn.sum_elems(mlp(hs[1]))])
            loss.backward()
            names = [op.name for op in g.ops]
            return loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()], names

    want, want_grads, names = losses(False)
    assert names.count("concatenate_ranges") == 3
    got, got_grads, names = losses(True)
    assert "concatenate_ranges" not in names and names.count("mlp_pick_neg_log_softmax") == 3
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    with dn.Graph(fuse=False, dtype=np.float64) as g:
        xs = [dn.inputs(w) for w in words]
        hs = birnn.transduce(xs)
        forward = birnn.builder_layers[0][0].transduce(xs)
        backward = birnn.builder_layers[0][1].transduce(xs[::-1])[::-1]
        doubled = hs[0] * 2.0  # an ordinary op makes the node, once
        assert hs[0].shape == (4,) and dn.esum([hs[0], hs[0]]).shape == (4,)
        assert [op.name for op in g.ops].count("concatenate_ranges") == 1
        np.testing.assert_allclose(
            doubled.npvalue(),
            2 * np.concatenate([forward[0].npvalue(), backward[0].npvalue()]), rtol=1e-13)


def test_character_encoder_is_forward_and_backward_final_states():
    pc = collection()
    encoder = CharacterEncoder(pc, 7, 3, 4)
    with dn.Graph(dtype=np.float64):
        word = encoder([2, 5, 1])
        chars = [encoder.embedding(c) for c in (2, 5, 1)]
        forward = encoder.forward.transduce(chars)[-1]
        backward = encoder.backward.transduce(chars[::-1])[-1]
        assert word.shape == (4,)
        np.testing.assert_allclose(word.npvalue(),
                                   np.concatenate([forward.npvalue(), backward.npvalue()]))
    with pytest.raises(ValueError, match="at least one character"):
        encoder([])
    # its steps read the character rows in place, and its gradient is the unfused graph's
    grads = []
    for fused in (True, False):
        pc2 = collection()
        enc = CharacterEncoder(pc2, 7, 3, 4)
        with dn.Graph(dtype=np.float64) as g:
            if fused:
                word = enc([2, 5, 1, 5])
            else:
                chars = [enc.embedding(c).plain() for c in (2, 5, 1, 5)]
                word = dn.concatenate([enc.forward.transduce(chars)[-1],
                                       enc.backward.transduce(chars[::-1])[-1]])
            dn.sum_elems(dn.tanh(word)).backward()
            names = [op.name for op in g.ops]
        assert ("lookup" in names) != fused and ("lookup+lstm_step" in names) == fused
        grads.append([p.grad_as_array().copy() for p in pc2.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_mlp_layers_and_dropout():
    pc = collection()
    mlp = MLP(pc, [3, 5, 4, 2], activation="relu", dropout=0.5)
    assert [p.shape for p in pc.parameters()] == [(5, 3), (5,), (4, 5), (4,), (2, 4), (2,)]
    x = np.random.default_rng(12).normal(size=3)
    with dn.Graph(dtype=np.float64, training=False):
        plain = mlp(dn.inputs(x)).npvalue()
    W0, b0, W1, b1, W2, b2 = (p.value for p in pc.parameters())
    want = W2 @ np.maximum(W1 @ np.maximum(W0 @ x + b0, 0) + b1, 0) + b2
    np.testing.assert_allclose(plain, want, rtol=1e-12)
    with dn.Graph(dtype=np.float64, seed=1) as g:  # training: one node with the masks
        dropped = mlp(dn.inputs(x)).npvalue()
        assert [op.name for op in g.ops].count("mlp_dropout") == 1
    u = np.random.default_rng(1).random(9)  # the graph's numbers: layer 1's, then layer 2's
    m0, m1 = (u[:5] >= 0.5) / 0.5, (u[5:] >= 0.5) / 0.5
    want = W2 @ (np.maximum(W1 @ (np.maximum(W0 @ x + b0, 0) * m0) + b1, 0) * m1) + b2
    np.testing.assert_allclose(dropped, want, rtol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        MLP(pc, [2, 2], activation="swish")


MLP_BODIES = [([4, 5, 3], "tanh", "tanh"), ([4, 6, 5, 3], "relu", "rectify"),
              ([3, 5, 4, 2], "sigmoid", "logistic")]


def _mlp_scores(dims, activation, fused, one_node, autobatch):
    """Scores of five examples through a fresh MLP, `mlp(x)` or the chain of affine nodes built
    by hand: (scores, gradients of a weighted sum of them for the inputs and every parameter,
    op names of the graph)."""
    pc = collection(seed=9)
    mlp = MLP(pc, dims, activation=activation)
    rng = np.random.default_rng(4)
    for p in pc.parameters():  # nonzero biases too, so that no layer is its weights alone
        p.value[...] = rng.normal(size=p.shape)
    with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
        xs = [dn.inputs(rng.normal(size=dims[0])) for _ in range(5)]
        if one_node:
            scores = [mlp(x) for x in xs]
        else:
            scores = []
            for h in xs:
                for k, (W, b) in enumerate(mlp.layers):
                    hidden = k < len(mlp.layers) - 1
                    h = dn.affine_transform([b, W, h], activation=fused if hidden else None)
                scores.append(h)
        weighted_sum(scores, rng).backward()
        grads = [x.gradient() for x in xs] + [p.grad_as_array() for p in pc.parameters()]
        return [s.npvalue() for s in scores], grads, [op.name for op in g.ops]


@pytest.mark.parametrize("autobatch", [True, False])
@pytest.mark.parametrize("dims,activation,fused", MLP_BODIES)
def test_mlp_is_one_node_with_the_chain_value_and_gradients(dims, activation, fused, autobatch):
    want, want_grads, chain_names = _mlp_scores(dims, activation, fused, False, autobatch)
    got, got_grads, names = _mlp_scores(dims, activation, fused, True, autobatch)
    assert chain_names.count("affine_transform") == 5 * (len(dims) - 1)
    assert names.count("mlp") == 5 and "affine_transform" not in names
    for a, b in zip(got, want):
        assert a.shape == (dims[-1],)
        np.testing.assert_array_equal(a, b)
    assert len(got_grads) == 5 + 2 * (len(dims) - 1)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_mlp_node_count_dropout_and_unfused_activations():
    pc = collection()
    x = np.random.default_rng(2).normal(size=3)
    for dims, nodes in (([3, 2], ["affine_transform"]), ([3, 4, 2], ["mlp"]),
                        ([3, 4, 5, 2], ["mlp"])):
        mlp = MLP(pc, dims, dropout=0.5)
        with dn.Graph(dtype=np.float64, training=False) as g:
            h = dn.inputs(x)
            mlp(h)  # the parameter nodes, once
            start = len(g)
            out = mlp(h)
            assert [op.name for op in g.ops[start:]] == nodes and out.shape == (2,)
        with dn.Graph(dtype=np.float64, seed=0) as g:  # dropout while training: one node
            mlp(dn.inputs(x))
            names = [op.name for op in g.ops]
            assert "dropout" not in names and "mlp" not in names
            assert names.count("mlp_dropout") == (len(dims) > 2)
    with dn.Graph(dtype=np.float64) as g:
        MLP(pc, [3, 4, 2], activation="elu")(dn.inputs(x))
        assert [op.name for op in g.ops].count("affine_transform") == 2
        assert "mlp" not in [op.name for op in g.ops]


def test_mlp_nodes_after_the_first_are_made_like_it_and_still_checked():
    pc = collection()
    mlp = MLP(pc, [3, 4, 2])
    other = MLP(pc, [3, 4, 2], name="other")
    with dn.Graph(dtype=np.float64) as g:
        xs = [dn.inputs(np.full(3, k)) for k in range(3)]
        nodes = [mlp.pick_neg_log_softmax(x, 1).i for x in xs] + [mlp(x).i for x in xs]
        theirs = other.pick_neg_log_softmax(xs[0], 1).i
        for group in (nodes[:3], nodes[3:]):
            assert len({(g.ops[n], g.attrs[n], g.shapes[n], g.sigs[n]) for n in group}) == 1
        assert g.sigs[theirs] != g.sigs[nodes[0]]  # other weights: another signature
        assert g.args[nodes[1]] == (xs[1].i,) + g.args[nodes[0]][1:]
        with pytest.raises(dn.ShapeError, match="mlp_pick_neg_log_softmax"):
            mlp.pick_neg_log_softmax(dn.inputs(np.ones(4)), 0)
        with pytest.raises(dn.ShapeError, match="mlp"):
            mlp(dn.inputs(np.ones((3, 1))))
        want = [np.tanh(x.npvalue() @ mlp.layers[0][0].value.T + mlp.layers[0][1].value)
                @ mlp.layers[1][0].value.T + mlp.layers[1][1].value for x in xs]
        for node, w in zip(nodes[3:], want):
            np.testing.assert_allclose(dn.Expression(g, node).npvalue(), w, rtol=1e-12)
    with dn.Graph(dtype=np.float64) as g:  # a new graph starts afresh
        assert mlp(dn.inputs(np.ones(3))).shape == (2,)


MLP_HEADS = [([4, 3], "tanh"), ([4, 5, 3], "tanh"), ([4, 6, 5, 3], "relu"),
             ([4, 5, 3], "logistic")]


def _mlp_losses(dims, activation, fused, autobatch=True, dropout=0.0, training=True):
    """Losses of four examples of different labels through a fresh MLP: (value, gradients of
    the inputs and of every parameter, op names of the graph)."""
    pc = collection(seed=5)
    mlp = MLP(pc, dims, activation=activation, dropout=dropout)
    rng = np.random.default_rng(6)
    with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=2, training=training) as g:
        xs = [dn.inputs(rng.normal(size=dims[0])) for _ in range(4)]
        labels = [0, 2, 1, 2]
        if fused:
            losses = [mlp.pick_neg_log_softmax(x, y) for x, y in zip(xs, labels)]
        else:
            losses = [dn.pick_neg_log_softmax(mlp(x), y) for x, y in zip(xs, labels)]
        loss = dn.esum([w * item for w, item in zip([1.0, 0.5, 2.0, -1.5], losses)])
        loss.backward()
        grads = [x.gradient() for x in xs] + [p.grad_as_array() for p in pc.parameters()]
        return loss.scalar_value(), grads, [op.name for op in g.ops]


@pytest.mark.parametrize("dims,activation", MLP_HEADS)
def test_mlp_pick_neg_log_softmax_is_one_node_with_the_chain_value_and_gradients(dims,
                                                                                activation):
    want, want_grads, _ = _mlp_losses(dims, activation, fused=False)
    got, got_grads, names = _mlp_losses(dims, activation, fused=True)
    assert names.count("mlp_pick_neg_log_softmax") == 4
    assert "affine_transform" not in names and "pick_neg_log_softmax" not in names
    assert got == pytest.approx(want, rel=1e-13)
    assert len(got_grads) == 4 + 2 * (len(dims) - 1)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    unbatched, unbatched_grads, _ = _mlp_losses(dims, activation, fused=True, autobatch=False)
    assert unbatched == pytest.approx(want, rel=1e-13)
    for a, b in zip(unbatched_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_mlp_pick_neg_log_softmax_parameter_gradients():
    pc = collection(seed=7)
    mlp = MLP(pc, [3, 4, 4, 3], activation="tanh")
    x = np.random.default_rng(3).normal(size=3)
    check_parameter_gradients(pc, lambda: mlp.pick_neg_log_softmax(dn.inputs(x), 1))


def test_mlp_pick_neg_log_softmax_falls_back_to_the_chain():
    dims = [4, 5, 3]
    for activation, dropout in (("elu", 0.0), ("elu", 0.5)):
        want, want_grads, _ = _mlp_losses(dims, activation, False, dropout=dropout)
        got, got_grads, names = _mlp_losses(dims, activation, True, dropout=dropout)
        assert "mlp_pick_neg_log_softmax" not in names and "pick_neg_log_softmax" in names
        assert ("dropout" in names) == (dropout > 0.0)
        assert got == pytest.approx(want, rel=1e-13)
        for a, b in zip(got_grads, want_grads):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    # dropout is the identity outside training: one node again
    want, _, _ = _mlp_losses(dims, "tanh", False, dropout=0.5, training=False)
    got, _, names = _mlp_losses(dims, "tanh", True, dropout=0.5, training=False)
    assert names.count("mlp_pick_neg_log_softmax") == 4
    assert got == pytest.approx(want, rel=1e-13)


def test_mlp_pick_neg_log_softmax_label_out_of_range():
    mlp = MLP(collection(), [2, 4, 3])
    with dn.Graph():
        x = dn.inputs(np.ones(2))
        for label in (3, -1):
            with pytest.raises(IndexError, match=r"pick_neg_log_softmax: label -?\d out of range "
                                                  r"for scores of shape \(3,\)"):
                mlp.pick_neg_log_softmax(x, label)
        with pytest.raises(dn.ShapeError, match="mlp_pick_neg_log_softmax"):
            mlp.pick_neg_log_softmax(dn.inputs(np.ones(3)), 0)


def _tagged_losses(rows, autobatch=True, dropout=0.0, layers=1):
    """A BiLSTM over embedding rows (or, rows=False, rows read through another node) with a loss
    at every word, two sentences: (loss, parameter gradients, op names)."""
    pc = collection(seed=4)
    embed = Embedding(pc, 9, 3)
    bilstm = BiRNNBuilder(layers, 3, 4, pc, LSTMBuilder)
    bilstm.set_dropout(dropout)
    mlp = MLP(pc, [4, 3])
    with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=3) as g:
        losses = []
        for words in ([1, 5, 5, 8], [0, 2]):
            xs = [embed(w) if rows else embed(w) * 1.0 for w in words]
            for k, h in enumerate(bilstm.transduce(xs)):
                losses.append(mlp.pick_neg_log_softmax(h, (k + words[k]) % 3))
        loss = dn.esum(losses)
        loss.backward()
        return (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                [op.name for op in g.ops])


@pytest.mark.parametrize("autobatch", [True, False, "agenda"])
@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_over_embedding_rows_reads_them_in_its_first_layer(autobatch, layers):
    want, want_grads, names = _tagged_losses(False, autobatch, layers=layers)
    assert names.count("lstm_step") == 12 * layers and names.count("lookup") == 6
    got, got_grads, names = _tagged_losses(True, autobatch, layers=layers)
    assert names.count("lookup+lstm_step") == 12 and "lookup" not in names
    assert names.count("lstm_step") == 12 * (layers - 1)
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_lstm_over_rows_with_dropout_or_mixed_inputs_takes_the_lookup_nodes():
    want, want_grads, _ = _tagged_losses(False, dropout=0.3)
    got, got_grads, names = _tagged_losses(True, dropout=0.3)
    assert "lookup+lstm_step" not in names and names.count("lookup") == 6
    assert got == pytest.approx(want, rel=1e-13)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    pc = collection()
    embed, other = Embedding(pc, 5, 2), Embedding(pc, 5, 2, name="other")
    lstm = LSTMBuilder(1, 2, 3, pc)
    with dn.Graph(dtype=np.float64) as g:
        lstm.transduce([embed(1), other(1)])  # rows of two tables
        lstm.transduce([embed(1), dn.inputs(np.ones(2))])
        names = [op.name for op in g.ops]
        assert "lookup+lstm_step" not in names and names.count("lookup") == 3
        with pytest.raises(ValueError, match="input of shape"):
            LSTMBuilder(1, 3, 3, pc).transduce([embed(1)])


# -- dropout ---------------------------------------------------------------------------------------
def test_input_dropout_mask_is_shared_across_time_and_not_across_sequences():
    lstm = LSTMBuilder(1, 16, 3, collection())
    lstm.set_dropout(0.5, recurrent_rate=0.0)
    rng = np.random.default_rng(13)
    with dn.Graph(dtype=np.float64, seed=5):
        sequences = [[dn.inputs(rng.normal(size=16)) for _ in range(4)] for _ in range(2)]
        outputs = [o for seq in sequences for o in lstm.transduce(seq)]
        dn.esum([dn.sum_elems(o) for o in outputs]).backward()
        kept = [[x.gradient() != 0.0 for x in seq] for seq in sequences]
    for seq in kept:
        assert 0 < seq[0].sum() < 16
        for step in seq[1:]:
            np.testing.assert_array_equal(step, seq[0])
    assert np.any(kept[0][0] != kept[1][0])


@pytest.mark.parametrize("builder_class", [LSTMBuilder, SimpleRNNBuilder])
def test_recurrent_dropout_mask_is_shared_across_time_and_not_across_sequences(builder_class):
    hidden = 12
    builder = builder_class(1, 2, hidden, collection())
    builder.set_dropout(0.0, recurrent_rate=0.5)
    with dn.Graph(dtype=np.float64, seed=6) as g:
        for _ in range(2):
            builder.transduce([dn.inputs(np.ones(2)) for _ in range(5)])
        uses = {}
        for i, op in enumerate(g.ops):
            if op.name == "mul":  # the simple RNN: a `mul` node per step
                mask = [a for a in g.args[i] if g.ops[a].name == "input"][0]
            elif op.name == "mul+mul+lstm_step":  # the LSTM: the state's mask inside the step
                mask = g.args[i][5]
                if np.all(dn.Expression(g, mask).npvalue() == 1.0):
                    continue  # the first step, from the zero state, is not masked
            else:
                continue
            uses[mask] = uses.get(mask, 0) + 1
        masks = [dn.Expression(g, node).npvalue() for node in uses]
    # one mask per sequence, used at every step after the first (whose state is zero)
    assert list(uses.values()) == [4, 4]
    h_masks = [m[-hidden:] for m in masks]
    assert np.any(h_masks[0] != h_masks[1])
    assert set(np.unique(h_masks[0])) == {0.0, 2.0}
    if builder_class is LSTMBuilder:  # the state is [c; h]: c is not dropped
        np.testing.assert_array_equal(masks[0][:hidden], np.ones(hidden))


def test_no_dropout_when_not_training_or_disabled():
    lstm = LSTMBuilder(2, 2, 3, collection())
    lstm.set_dropout(0.3)
    with dn.Graph(training=False) as g:
        lstm.transduce([dn.inputs(np.ones(2))] * 3)
        assert not any(op.name == "mul" for op in g.ops)
    lstm.disable_dropout()
    with dn.Graph() as g:
        lstm.transduce([dn.inputs(np.ones(2))] * 3)
        assert not any(op.name == "mul" for op in g.ops)
    with pytest.raises(ValueError):
        lstm.set_dropout(1.0)


# -- autobatching ----------------------------------------------------------------------------------
def _binary_tree(tree, words, builder):
    if isinstance(tree, int):
        return builder.leaf(words[tree])
    return builder.node([_binary_tree(t, words, builder) for t in tree])


def _childsum_tree(tree, words, builder):
    word, children = tree
    return builder.node([_childsum_tree(t, words, builder) for t in children], x=words[word])


BINARY_TREES = [((0, 1), 2), (0, (1, (2, 3))), 1, ((0, 1), (2, 3))]
CHILDSUM_TREES = [(0, [(1, []), (2, [(3, [])])]), (2, []), (1, [(0, []), (2, []), (3, [])])]


def _minibatch_model(seed):
    pc = collection(seed)
    models = {
        "lstm": LSTMBuilder(2, 3, 4, pc), "gru": GRUBuilder(2, 3, 4, pc),
        "rnn": SimpleRNNBuilder(1, 3, 4, pc), "birnn": BiRNNBuilder(2, 3, 4, pc),
        "binary": TreeLSTMBuilder(3, 4, pc, kind="binary"),
        "childsum": TreeLSTMBuilder(3, 4, pc, kind="childsum"),
        "chars": CharacterEncoder(pc, 5, 3, 4), "mlp": MLP(pc, [4, 5, 2], dropout=0.2),
    }
    for name in ("lstm", "gru", "rnn", "birnn", "chars"):
        models[name].set_dropout(0.25)
    return pc, models


def _minibatch_loss(models, rng):
    words = [dn.inputs(w) for w in rng.normal(size=(4, 3))]
    outputs = []
    for length in (3, 1, 5, 2):
        seq = [dn.inputs(x) for x in rng.normal(size=(length, 3))]
        for name in ("lstm", "gru", "rnn", "birnn"):
            outputs.extend(models[name].transduce(seq))
    for tree in BINARY_TREES:
        outputs.append(_binary_tree(tree, words, models["binary"]).h())
    for tree in CHILDSUM_TREES:
        outputs.append(_childsum_tree(tree, words, models["childsum"]).c())
    for word in ([1, 2], [4], [0, 3, 3]):
        outputs.append(models["mlp"](models["chars"](word)))
    return weighted_sum(outputs, rng)


def test_autobatched_equals_unbatched_on_a_mixed_minibatch():
    results = []
    for autobatch in (False, True):
        pc, models = _minibatch_model(seed=3)
        with dn.Graph(fuse=False, dtype=np.float64, autobatch=autobatch, seed=11) as g:
            loss = _minibatch_loss(models, np.random.default_rng(14))
            loss.backward()
            results.append((loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                            g.stats()))
    (loss_off, grads_off, stats_off), (loss_on, grads_on, stats_on) = results
    assert stats_on["forward_batches"] < stats_off["forward_batches"] / 3
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-10)
    for on, off in zip(grads_on, grads_off):
        assert np.any(off != 0.0)
        np.testing.assert_allclose(on, off, rtol=1e-10, atol=1e-14)


def test_lstm_steps_batch_across_sequences():
    lengths = range(3, 11)
    counts = {}
    for autobatch in (False, True):
        lstm = LSTMBuilder(1, 4, 5, collection())
        rng = np.random.default_rng(15)
        with dn.Graph(fuse=False, dtype=np.float64, autobatch=autobatch) as g:
            outputs = [lstm.transduce([dn.inputs(x) for x in rng.normal(size=(n, 4))])[-1]
                       for n in lengths]
            dn.esum([dn.sum_elems(o) for o in outputs]).forward()
            steps = sum(b.op.name == "lstm_step" for b in g.engine.batches if b is not None)
            counts[autobatch] = (steps, g.stats())
    assert counts[False][0] == sum(lengths)
    steps, stats = counts[True]
    assert steps <= max(lengths) + 1
    assert stats["forward_batches"] < counts[False][1]["forward_batches"] / 4
    assert stats["mean_batch_size"] > 4


@pytest.mark.parametrize("builder_class", [dn.LSTMBuilder, dn.GRUBuilder, dn.SimpleRNNBuilder])
@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.4), (0.3, 0.4)])
def test_transduce_builds_what_add_input_builds(builder_class, rates):
    """The direct path of add_inputs (dropout masks included) gives the nodes, values and
    gradients of add_input called step by step."""
    pc = dn.ParameterCollection(seed=4, dtype=np.float64)
    rnn = builder_class(2, 3, 4, pc)
    rnn.set_dropout(*rates)
    xs = np.random.default_rng(5).normal(size=(5, 3))

    def run(direct):
        with dn.Graph(dtype=np.float64, seed=9) as g:
            inputs = [dn.inputs(x) for x in xs]
            state = rnn.initial_state()
            if direct:
                states = state.add_inputs(inputs)
            else:
                states = []
                for x in inputs:
                    state = state.add_input(x)
                    states.append(state)
            loss = dn.esum([dn.sum_elems(dn.tanh(s.output())) for s in states])
            loss.backward()
            # the same nodes in the same order (parameters may enter the graph earlier)
            ops = [op.name for op in g.ops if op.name != "parameter"]
            return (len(g), ops, loss.scalar_value(),
                    [p.grad_as_array().copy() for p in pc.parameters()])

    n1, ops1, v1, g1 = run(True)
    for p in pc.parameters():
        p.clear_grad()
    n2, ops2, v2, g2 = run(False)
    assert (n1, ops1) == (n2, ops2)
    assert v1 == pytest.approx(v2, rel=1e-14)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_birnn_draws_its_dropout_masks_once_on_either_path():
    """Arrays as inputs take the general path, expressions the direct one: the same masks
    (one draw per direction and sequence), so the same outputs."""
    pc = dn.ParameterCollection(seed=2, dtype=np.float64)
    birnn = BiRNNBuilder(2, 3, 8, pc, LSTMBuilder)
    birnn.set_dropout(0.5, 0.5)
    xs = np.random.default_rng(1).normal(size=(4, 3))

    def outputs(as_expressions):
        with dn.Graph(dtype=np.float64, seed=3):
            inputs = [dn.inputs(x) for x in xs] if as_expressions else list(xs)
            return [h.npvalue() for h in birnn.transduce(inputs)]

    for a, b in zip(outputs(True), outputs(False)):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_mlp_from_parameters_is_the_mlp_of_those_weights():
    pc = dn.ParameterCollection(seed=2)
    mlp = MLP(pc, [4, 3, 5], activation="tanh")
    wrapped = MLP.from_parameters(mlp.layers, activation="tanh")
    assert wrapped.dims == [4, 3, 5] and wrapped.layers == mlp.layers
    x = np.arange(4.0) / 4
    with dn.Graph(dtype=np.float64) as g:
        a = mlp.pick_neg_log_softmax(dn.inputs(x), 2).scalar_value()
        b = wrapped.pick_neg_log_softmax(dn.inputs(x), 2).scalar_value()
        scores = wrapped(dn.inputs(x)).npvalue()
        assert len([op for op in g.ops if op.name == "mlp_pick_neg_log_softmax"]) == 2
    assert a == b and scores.shape == (5,)
    W, b0 = mlp.layers[0]
    with pytest.raises(ValueError, match="layer 1 has W"):
        MLP.from_parameters([(W, b0), (W, b0)])
    with pytest.raises(ValueError, match="no layers"):
        MLP.from_parameters([])


@pytest.mark.parametrize("autobatch", [False, "late"])
def test_lstm_masked_steps_equal_mul_nodes_and_steps(autobatch, monkeypatch):
    # under dropout an LSTM step takes its masks itself (a `mul+mul+lstm_step` node); the values and
    # gradients are those of the `mul` nodes and plain steps it replaces
    def run(masked):
        if not masked:
            monkeypatch.setattr(LSTMBuilder, "masks_in_node", False)
        pc = collection()
        birnn = BiRNNBuilder(2, 3, 4, pc, LSTMBuilder)
        birnn.set_dropout(0.3, 0.4)
        rng = np.random.default_rng(2)
        with dn.Graph(dtype=np.float64, seed=8, autobatch=autobatch) as g:
            losses = [dn.sum_elems(dn.tanh(dn.esum(birnn.transduce(
                [dn.inputs(rng.normal(size=3)) for _ in range(n)])))) for n in (3, 1, 4)]
            total = dn.esum(losses)
            value = total.scalar_value()
            total.backward()
            names = [op.name for op in g.ops]
        monkeypatch.undo()
        return value, [p.grad_as_array().copy() for p in pc.parameters()], names

    value, grads, names = run(True)
    value2, grads2, names2 = run(False)
    assert "mul" not in names and "mul+mul+lstm_step" in names
    assert "mul" in names2 and "mul+mul+lstm_step" not in names2
    assert value == pytest.approx(value2, rel=1e-12)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def _chain(mlp, x):
    """The MLP as a chain of nodes (affine, activation, dropout per layer): the reference of its
    one-node forms, drawing the dropout numbers in the same order."""
    last = len(mlp.layers) - 1
    for k, (W, b) in enumerate(mlp.layers):
        x = dn.affine_transform([b, W, x])
        if k < last:
            x = dn.dropout(mlp.activation(x), mlp.dropout)
    return x


@pytest.mark.parametrize("autobatch", [False, "late", "depth"])
@pytest.mark.parametrize("dims,activation", [([4, 5, 3], "tanh"), ([3, 5, 4, 3], "rectify"),
                                             ([3, 4, 3, 3, 3], "logistic")])
def test_mlp_dropout_forms_equal_the_chain_of_nodes(autobatch, dims, activation):
    # scores, single losses and a sentence's summed losses, with dropout while training
    def run(fused):
        pc = collection(seed=5)
        mlp = MLP(pc, dims, activation=activation, dropout=0.4)
        rng = np.random.default_rng(6)
        with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=2) as g:
            xs = [dn.inputs(rng.normal(size=dims[0])) for _ in range(5)]
            labels = [0, 2, 1, 2, 1]
            if fused:
                terms = [mlp.pick_neg_log_softmax(x, y) for x, y in zip(xs[:3], labels)]
                single = mlp.pick_neg_log_softmax(xs[3], labels[3]).plain()
                scores = mlp(xs[4])
            else:
                terms = [dn.pick_neg_log_softmax(_chain(mlp, x), y)
                         for x, y in zip(xs[:3], labels)]
                single = dn.pick_neg_log_softmax(_chain(mlp, xs[3]), labels[3])
                scores = _chain(mlp, xs[4])
            loss = dn.esum(terms) + 0.5 * single + dn.sum_elems(dn.tanh(scores))
            loss.backward()
            grads = [x.gradient() for x in xs] + [p.grad_as_array() for p in pc.parameters()]
            return loss.scalar_value(), grads, [op.name for op in g.ops]

    want, want_grads, _ = run(False)
    got, got_grads, names = run(True)
    hidden = len(dims) - 2
    # the summed losses: per term, its hidden layers and their dropout, and one mlp_loss_sum_1
    assert names.count("mlp_loss_sum_1") == 1
    assert names.count("affine_transform") == names.count("dropout") == 3 * hidden
    # the single loss: an mlp_dropout node and a pick_neg_log_softmax node
    assert names.count("mlp_dropout") == 2 and names.count("pick_neg_log_softmax") == 1
    assert got == pytest.approx(want, rel=1e-12)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("autobatch", [False, "late"])
def test_summed_mlp_losses_under_dropout_over_tree_states_equal_the_chain_of_nodes(autobatch):
    # a Tree-LSTM state's h() (a slice of [c; h]) under the summed losses of an MLP with dropout
    def run(fused):
        pc = collection(seed=3)
        embed = Embedding(pc, 7, 3)
        tree = TreeLSTMBuilder(3, 4, pc)
        mlp = MLP(pc, [4, 5, 3], dropout=0.5)
        with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=1) as g:
            sums = []
            for words in ([1, 4, 4], [6, 0]):
                states = [tree.leaf(embed(w)) for w in words]
                terms = []
                while len(states) > 1:
                    states = [tree.node([states[0], states[1]])] + states[2:]
                    label = len(terms) % 3
                    if fused:
                        terms.append(mlp.pick_neg_log_softmax(states[0].h(), label))
                    else:
                        h = dn.pick_range(states[0].state, 4, 8)
                        terms.append(dn.pick_neg_log_softmax(_chain(mlp, h), label))
                sums.append(dn.esum(terms))
            loss = dn.esum(sums)
            loss.backward()
            return (loss.scalar_value(), [p.grad_as_array() for p in pc.parameters()],
                    [op.name for op in g.ops])

    want, want_grads, _ = run(False)
    got, got_grads, names = run(True)
    assert names.count("mlp_loss_sum_1") == 2 and names.count("dropout") == 3
    assert got == pytest.approx(want, rel=1e-12)
    for a, b in zip(got_grads, want_grads):
        assert np.any(b != 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
