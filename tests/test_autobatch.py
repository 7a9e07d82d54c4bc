"""Autobatched values and gradients equal per-example ones: for every batchable op of the table,
and for random graphs (sequences, trees, DAGs with shared parameters and lookups, intermediate
values), under every scheduling strategy."""

import numpy as np
import pytest

import dynlp as dn
from dynlp.gradcheck import case_inputs
from dynlp.graph import apply
from dynlp.ops import LEAVES, SHARED, TABLE

MODES = [False, "depth", "agenda", "late"]
BATCHABLE = [(name, k) for name, op in sorted(TABLE.items()) if name not in LEAVES
             and op.batch is not None for k in range(len(op.cases))]


def _op_graph(name, k, autobatch, examples=4):
    """`examples` copies of the op on their own inputs (shared args shared), summed and weighted."""
    op = TABLE[name]
    case = op.cases[k]
    rng = np.random.default_rng(7)
    shared_rng = np.random.default_rng(8)
    mask = op.mask(len(case.shapes))
    shared_values = case_inputs(op, case, 1, shared_rng)[0]
    with dn.Graph(fuse=False, dtype=np.float64, autobatch=autobatch) as g:
        shared = [g.leaf(x) if m == SHARED else None for x, m in zip(shared_values, mask)]
        leaves, terms, outs = [], [], set()
        for _ in range(examples):
            xs, attrs = case_inputs(op, case, 1, rng)
            args = [s if s is not None else g.leaf(x[0]) for s, x in zip(shared, xs)]
            leaves.extend(a for a, s in zip(args, shared) if s is None)
            static = tuple((a, v) for a, v in attrs.items() if a not in op.batched_attrs)
            battrs = tuple(attrs[a][0] for a in op.batched_attrs) or None
            out = apply(name, *args, attrs=static, battrs=battrs)
            outs.add(out.i)
            terms.append(dn.dot_product(out, dn.inputs(rng.normal(size=out.shape))))
        loss = dn.esum(terms)
        loss.backward()
        grads = [x.gradient() for x in leaves + [s for s in shared if s is not None]]
        runs = [len(b.nodes) for b in g.engine.batches if b is not None and outs & set(b.nodes)]
        return loss.scalar_value(), grads, runs


@pytest.mark.parametrize("name,k", BATCHABLE)
def test_every_batchable_op(name, k):
    want_loss, want_grads, unbatched = _op_graph(name, k, False)
    got_loss, got_grads, runs = _op_graph(name, k, True)
    assert got_loss == pytest.approx(want_loss, rel=1e-10, abs=1e-12)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the op's four nodes ran as one batch (and as four without autobatching)
    assert runs == [4] and unbatched == [1, 1, 1, 1]


class RandomModel:
    """Parameters for random structures: a recurrent cell, a binary and an n-ary composition,
    a lookup table, an output layer."""

    def __init__(self, dtype=np.float64, dim=5, vocab=20, labels=3):
        self.pc = pc = dn.ParameterCollection(seed=3, dtype=dtype)
        self.W = pc.add_parameters((dim, dim))
        self.U = pc.add_parameters((dim, dim))
        self.b = pc.add_parameters(dim, init="normal", scale=0.1)
        self.L = pc.add_parameters((dim, dim))
        self.R = pc.add_parameters((dim, dim))
        self.E = pc.add_lookup_parameters((vocab, dim))
        self.O = pc.add_parameters((labels, dim))
        self.vocab, self.labels = vocab, labels

    def sequence(self, words, label, peek):
        h = dn.zeros(self.W.shape[0])
        for i, w in enumerate(words):
            h = dn.tanh(self.W @ self.E[w] + self.U @ h + self.b)
            if peek and i == len(words) // 2:
                h.value()  # an intermediate value in the middle of building
        return dn.pick_neg_log_softmax(self.O @ h, label)

    def tree(self, rng, depth, nary):
        if depth == 0 or rng.random() < 0.3:
            return self.E[int(rng.integers(self.vocab))]
        if nary:
            kids = [self.tree(rng, depth - 1, nary) for _ in range(int(rng.integers(1, 4)))]
            return dn.tanh(dn.esum([self.L @ k for k in kids]) + self.b)
        left, right = self.tree(rng, depth - 1, nary), self.tree(rng, depth - 1, nary)
        return dn.tanh(dn.affine_transform([self.b, self.L, left, self.R, right]))

    def dag(self, rng, size):
        nodes = [self.E[int(rng.integers(self.vocab))] for _ in range(3)]
        for _ in range(size):
            a, b = (nodes[int(i)] for i in rng.integers(len(nodes), size=2))
            kind = rng.integers(4)
            if kind == 0:
                nodes.append(dn.tanh(self.W @ a + b))
            elif kind == 1:
                nodes.append(dn.cmult(a, dn.logistic(self.U @ b)))
            elif kind == 2:
                nodes.append(dn.concatenate([a, b])[1:6])
            else:
                nodes.append(dn.rectify(a - b) + self.b)
        return dn.squared_norm(nodes[-1]) + dn.pick_neg_log_softmax(self.O @ nodes[-2], 1)


def _run(autobatch, build, dtype=np.float64):
    m = RandomModel(dtype=dtype)
    rng = np.random.default_rng(11)
    with dn.Graph(dtype=dtype, autobatch=autobatch) as g:
        loss = dn.esum([build(m, rng, i) for i in range(12)])
        value = loss.scalar_value()
        loss.backward()
        grads = {p.name: p.grad_as_array() for p in m.pc.parameters()}
        return value, grads, g.stats()


STRUCTURES = {
    "sequences": lambda m, rng, i: m.sequence(
        list(rng.integers(m.vocab, size=int(rng.integers(1, 9)))), i % 3, peek=i % 4 == 0),
    "binary_trees": lambda m, rng, i: dn.squared_norm(m.tree(rng, 4, nary=False)),
    "nary_trees": lambda m, rng, i: dn.pick_neg_log_softmax(m.O @ m.tree(rng, 3, nary=True), 0),
    "dags": lambda m, rng, i: m.dag(rng, int(rng.integers(3, 15))),
}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_random_graphs_agree(structure, dtype, rtol):
    want_value, want_grads, _ = _run(False, STRUCTURES[structure], dtype)
    for mode in MODES[1:]:
        value, grads, _ = _run(mode, STRUCTURES[structure], dtype)
        assert value == pytest.approx(want_value, rel=rtol), mode
        for name, want in want_grads.items():
            np.testing.assert_allclose(grads[name], want, rtol=rtol, atol=rtol, err_msg=mode)


def test_sequences_batch_by_time_step():
    m = RandomModel()
    with dn.Graph(dtype=np.float64) as g:
        losses = [m.sequence([1] * n, 0, peek=False) for n in range(3, 11)]
        dn.esum(losses).backward()
        stats = g.stats()
    # per step: lookup, two matmuls, add, add, tanh, spread over at most 10 time steps
    assert stats["forward_batches"] < 10 * 7
    assert stats["mean_batch_size"] > 4


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_ragged_sums_of_every_length_run_as_one_batch(shape):
    """esum nodes of 1..6 arguments: one batch for all of them, values and gradients as
    unbatched; the arguments come from two buffers, in shuffled order."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(21,) + shape)
    order = rng.permutation(21)

    def run(autobatch):
        with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
            xs = [dn.inputs(v) for v in values]
            ys = [dn.tanh(x) if i % 3 else dn.logistic(x) for i, x in enumerate(xs)]
            sums, pos = [], 0
            for n in range(1, 7):
                sums.append(dn.esum([ys[k] for k in order[pos:pos + n]]) * 2.0)
                pos += n
            loss = dn.sum_elems(dn.esum(sums)) if shape else dn.esum(sums)
            loss.backward()
            batches = g.engine.counts["forward_batches"]
            return loss.scalar_value(), [x.gradient() for x in xs], batches

    want, want_grads, _ = run(False)
    got, got_grads, batches = run(True)
    assert got == pytest.approx(want, rel=1e-12)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # leaves aside: tanh, logistic, the six sums, mul_const, the total (and sum_elems)
    assert batches == 5 + (1 if shape else 0)


def test_intermediate_values_never_recompute():
    m = RandomModel()
    with dn.Graph(fuse=False, dtype=np.float64) as g:
        losses = [m.sequence([1, 2, 3, 4, 5], 0, peek=True) for _ in range(4)]
        total = dn.esum(losses)
        total.backward()
        stats = g.stats()
        computed = g.engine.counts["forward_nodes"]
    leaves = sum(1 for op in g.ops if op.name in LEAVES)
    assert computed == stats["nodes"] - leaves


def test_dropout_masks_do_not_depend_on_batching():
    def masks(autobatch):
        with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=5) as g:
            xs = [dn.dropout(dn.ones(6) * float(i + 1), 0.5) for i in range(5)]
            g.forward(xs)
            return [x.npvalue() for x in xs]

    for a, b in zip(masks(False), masks(True)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a / (i + 1), b / (j + 1)) for i, a in enumerate(masks(True))
                   for j, b in enumerate(masks(True)) if i != j)


def test_dead_graph_is_a_clear_error():
    with dn.Graph():
        x = dn.inputs(np.ones(3))
    with pytest.raises(dn.GraphError, match="ended"):
        x.value()
    with pytest.raises(dn.GraphError, match="ended"):
        dn.tanh(x)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="autobatch"):
        dn.Graph(autobatch="fastest")


@pytest.mark.parametrize("mode", MODES[1:])
def test_gradients_reach_batches_read_by_unused_gathers(mode):
    """A batch read by a many-source gather of a value that the loss does not use (evaluated
    for a decision, as a parser does), and by the loss through other gathers, still passes its
    gradient back; so does a loss whose own batch is such a source."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(6, 4))

    def run(autobatch):
        with dn.Graph(dtype=np.float64, autobatch=autobatch) as g:
            xs = [dn.inputs(v) for v in values]
            a = [dn.tanh(x) for x in xs[:3]]
            b = [dn.logistic(x) for x in xs[3:]]
            g.forward(a + b)
            side = [dn.rectify(a[0]), dn.rectify(b[1])]  # one gather from two batches
            g.forward(side)
            total = dn.sum_elems(a[1] * 2.0)  # reads the tanh batch through a slice only
            total.backward()
            return total.scalar_value(), [x.gradient() for x in xs]

    want, want_grads = run(False)
    got, got_grads = run(mode)
    assert got == pytest.approx(want, rel=1e-12)
    for x, y in zip(got_grads, want_grads):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_a_closed_graph_frees_its_arrays_without_the_cyclic_collector():
    """Values and gradients go when the graph's block ends, by reference counting alone: no
    reference cycle keeps them (the collector is off for the whole test)."""
    import gc
    import weakref

    from dynlp.trace import to_dot
    pc = dn.ParameterCollection(seed=1)
    cell = dn.TreeLSTMBuilder(3, 4, pc)
    head = dn.MLP(pc, [4, 5, 2])
    gc.disable()
    try:
        with dn.Graph() as g:
            left, right = cell.leaf(dn.inputs(np.ones(3))), cell.leaf(dn.inputs(np.zeros(3)))
            root = cell.node([left, right])
            loss = dn.esum([head.pick_neg_log_softmax(s.h(), 1) for s in (left, right, root)])
            loss.backward()
            arrays = [a for a in g.engine.bufs + g.engine.grads if a is not None]
            refs = [weakref.ref(a) for a in arrays]
            del arrays, left, right, root, loss
        assert refs and all(r() is None for r in refs)
        # the structure stays; its per-node argument tuples cost the collector one look
        # (its first pass untracks them: they hold only ints)
        gc.collect(0)
        assert not any(gc.is_tracked(g.args[n]) for n in range(len(g)))
        assert len(g.args) == len(g) == g.stats()["nodes"]
        assert all(type(g.args[n]) is tuple for n in range(len(g)))
        assert "mlp_loss_sum_2" in to_dot(dn.Expression(g, len(g) - 1))
        with pytest.raises(dn.GraphError, match="ended"):
            g.add_as(len(g) - 1, g.args[len(g) - 1])
    finally:
        gc.enable()


@pytest.mark.parametrize("repeats", [False, True])
def test_backward_scatter_adds_repeated_rows(repeats):
    from dynlp.autobatch import _scatter_add
    rng = np.random.default_rng(21)
    for count in (1, 7, 300):
        rows = (rng.integers(0, 5, count) if repeats else rng.permutation(400)[:count])
        values = rng.normal(size=(count, 3))
        target = rng.normal(size=(400, 3))
        want = target.copy()
        np.add.at(want, rows, values)
        _scatter_add(target, rows, values)
        np.testing.assert_allclose(target, want, rtol=1e-12, atol=1e-12)


def test_cheap_ops_over_computed_inputs_run_first_in_one_batch():
    """Word and tag embeddings concatenated as a BiLSTM's inputs: the late strategy places the
    cheap concatenations first (their inputs are computed or are such ops), one batch, rather
    than one batch per LSTM level as late as each step allows."""
    pc = dn.ParameterCollection(seed=3)
    words, tags = dn.Embedding(pc, 9, 3, name="w"), dn.Embedding(pc, 4, 2, name="t")
    birnn = dn.BiRNNBuilder(1, 5, 4, pc)
    rng = np.random.default_rng(5)
    with dn.Graph(fuse=False) as g:
        sums = []
        for length in (2, 5, 3):
            xs = [dn.concatenate([words(int(w)), tags(int(t))])
                  for w, t in zip(rng.integers(9, size=length), rng.integers(4, size=length))]
            sums.append(dn.esum([dn.sum_elems(h) for h in birnn.transduce(xs)]))
        dn.esum(sums).backward()
        ran = [b.op.name for b in g.engine.batches if b is not None]
        assert ran.count("concatenate") == 1 and ran.count("lookup") == 2
        assert ran.index("concatenate") < ran.index("lstm_step")


def _late_against_off(build):
    """The batches `late` runs for the graph that build(pc) makes in a float64 graph (returning
    its loss), after checking its loss and parameter gradients against node-by-node runs."""
    def run(autobatch):
        pc = dn.ParameterCollection(seed=4, dtype=np.float64)
        with dn.Graph(fuse=False, dtype=np.float64, autobatch=autobatch) as g:
            total = build(pc)
            value = total.scalar_value()
            total.backward()
            ran = [b.op.name for b in g.engine.batches if b is not None]
            return value, [p.grad_as_array().copy() for p in pc.parameters()], ran

    want, want_grads, _ = run(False)
    got, got_grads, ran = run("late")
    assert got == pytest.approx(want, rel=1e-12)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    return ran


def test_side_chains_that_batch_better_by_depth_run_early_under_late():
    """Character LSTMs feeding a word BiLSTM: late alone would run each word's character steps
    at the height of its position (one batch per position and character); they run first,
    aligned by character, one batch per character position and direction, with the loss and
    gradients of node-by-node execution."""
    def build(pc):
        chars = dn.CharacterEncoder(pc, 12, 3, 4)
        birnn = dn.BiRNNBuilder(1, 4, 6, pc)
        rng = np.random.default_rng(8)
        sums = []
        for length in (10, 3, 7):
            words = [chars([int(c) for c in rng.integers(12, size=rng.integers(1, 5))])
                     for _ in range(length)]
            sums.append(dn.esum([dn.sum_elems(dn.tanh(h)) for h in birnn.transduce(words)]))
        return dn.esum(sums)

    ran = _late_against_off(build)
    assert ran.count("lookup+lstm_step") == 2 * 4  # characters per word: at most 4


def test_the_first_level_of_a_stacked_bilstm_runs_aligned_by_position_under_late():
    """Level 1's steps feed level 2's two directions, at heights that depend on the sentence's
    length: by height they would not line up across sentences; they run early, by position, so
    each level and direction takes one batch per position of the longest sentence."""
    def build(pc):
        birnn = dn.BiRNNBuilder(2, 3, 4, pc)
        rng = np.random.default_rng(2)
        return dn.esum([dn.esum([dn.sum_elems(dn.tanh(h)) for h in birnn.transduce(
            [dn.inputs(rng.normal(size=3)) for _ in range(length)])])
            for length in (9, 3, 6, 8)])

    ran = _late_against_off(build)
    assert ran.count("lstm_step") == 2 * 2 * 9


@pytest.mark.parametrize("autobatch", [False, "depth", "agenda", "late"])
def test_dropout_of_a_row_or_a_state_range_reads_it_in_place(autobatch):
    # dn.dropout of an embedding row or of a deferred state slice makes one node (lookup+dropout,
    # concatenate_ranges+dropout), with the values and gradients of the two-node form
    def run(in_place):
        pc = dn.ParameterCollection(seed=3)
        E = pc.add_lookup_parameters((7, 4))
        W = pc.add_parameters((3, 4))
        with dn.Graph(dtype=np.float64, autobatch=autobatch, seed=11) as g:
            losses = []
            for k, index in enumerate([1, 5, 5, 0]):
                row = dn.lookup(E, index)
                a = dn.dropout(row if in_place else row.plain(), 0.5)
                state = dn.concatenate([dn.tanh(W @ a), dn.logistic(W @ a)])  # (6,)
                both = dn.Slice(g, (state.i, state.i), 1, 3) if k % 2 else dn.Slice(
                    g, (state.i,), 0, 3)
                h = dn.dropout(both if in_place else both.plain(), 0.3)
                losses.append(dn.sum_elems(h * h))
            total = dn.esum(losses)
            value = total.scalar_value()
            total.backward()
            names = [op.name for op in g.ops]
            return value, E.grad_as_array().copy(), W.grad_as_array().copy(), names

    value, gE, gW, names = run(True)
    value2, gE2, gW2, names2 = run(False)
    assert value == pytest.approx(value2, rel=1e-12)
    np.testing.assert_allclose(gE, gE2, rtol=1e-12)
    np.testing.assert_allclose(gW, gW2, rtol=1e-12)
    assert names.count("lookup+dropout") == 4 and "lookup" not in names
    assert names.count("concatenate_ranges+dropout") == 4
    assert "pick_range" not in names and "concatenate_ranges" not in names
    assert names2.count("dropout") == 8


def test_gradient_of_a_row_read_by_dropout_in_place_is_an_error():
    pc = dn.ParameterCollection(seed=0)
    E = pc.add_lookup_parameters((5, 3))
    with dn.Graph(seed=1):
        row = dn.lookup(E, 2)
        dn.sum_elems(dn.dropout(row, 0.5)).backward()
        with pytest.raises(dn.GraphError, match="in place"):
            row.gradient()
