"""`Communicator.shard_batch` attacked (dynlp/distributed.py, `_cut` and `_deal`): every
example in exactly one share for any number of ranks and any batch, the same answer whichever
rank asks and however often, positions sorted, the contiguous cut the best there is (brute
force on small cases), the chosen deal exactly the better of the best cut and the greedy deal,
costs given as numpy ints or integral floats, trees and sentences costed by their words, bad
step costs and costs refused; and, for every recipe, the shares of 2, 3 and more ranks than
examples add up to the whole minibatch's loss and gradients."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

import dynlp as dn
from dynlp import train
from dynlp.data import read_conllu, read_trees
from dynlp.distributed import STEP_COST, Communicator, _cut, _deal, example_cost

from test_distributed import DATA, FakeComm, _gradients, _parser, _tagger, _treelstm


def _identity(c):
    return c


def _shares(batch, size, **options):
    """Every rank's answer, rank by rank (each from a communicator of its own)."""
    return [Communicator(FakeComm(rank, size)).shard_batch(batch, **options)
            for rank in range(size)]


def _price(costs, share, step_cost):
    return sum(costs[i] for i in share) + step_cost * max((costs[i] for i in share), default=0)


def _worst(costs, shares, step_cost):
    return max(_price(costs, share, step_cost) for share in shares)


def _assert_partition(shares, n):
    assert all(isinstance(i, int) and not isinstance(i, bool) for s in shares for i in s)
    assert all(share == sorted(share) for share in shares)
    assert sorted(i for share in shares for i in share) == list(range(n))


def _best_cut(costs, size, step_cost):
    """The least costliest share over every cut of the costs sorted costliest first into
    `size` contiguous runs (brute force)."""
    ordered = sorted(costs, reverse=True)
    n = len(ordered)
    best = None
    for inner in itertools.combinations_with_replacement(range(n + 1), size - 1):
        bounds = (0, *inner, n)
        worst = max((sum(ordered[a:b]) + step_cost * ordered[a]) if b > a else 0
                    for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


def _greedy(costs, size, step_cost):
    """The greedy deal as the docstring tells it, written anew: costliest first (ties by
    position), each to the share it makes least costly (the lower rank on a tie)."""
    shares = [[] for _ in range(size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        prices = [_price(costs, share + [i], step_cost) for share in shares]
        shares[prices.index(min(prices))].append(i)
    return shares


def _batches(rng, size):
    """Batches to shard among `size` ranks: empty, one example, fewer, as many and more
    examples than ranks, zero costs, equal costs, huge costs, random costs."""
    out = [[], [5], [0], [rng.randint(1, 40) for _ in range(max(size - 1, 1))],
           [rng.randint(0, 40) for _ in range(size)], [rng.randint(0, 40) for _ in range(size + 1)],
           [0] * (size + 2), [7] * (2 * size + 1), [10 ** 30, 1, 10 ** 18, 3] * 2,
           [rng.choice((0, 1, 2, 50, 400)) for _ in range(min(3 * size, 70))],
           [rng.randint(1, 80) for _ in range(rng.randint(0, 70))]]
    return out


# -- every example once, the same on every rank --------------------------------------------------
@pytest.mark.parametrize("size", [*range(1, 34), 47, 64])
def test_every_example_in_exactly_one_share_whatever_the_batch(size):
    rng = random.Random(size)
    for costs in _batches(rng, size):
        for step_cost in (0, STEP_COST, 9):
            shares = _shares(costs, size, cost=_identity, step_cost=step_cost)
            _assert_partition(shares, len(costs))
            if size == 1:
                assert shares == [list(range(len(costs)))]


@pytest.mark.parametrize("size", [100, 257, 600])
def test_many_ranks_and_few_examples(size):
    """(each rank's answer costs time in the number of ranks: a few batches only)"""
    rng = random.Random(size)
    batches = [[], [0], [3, 1], [rng.randint(0, 30) for _ in range(40)], [2] * (size + 1)]
    if size > 200:
        batches = [[], [3, 1], [rng.randint(0, 30) for _ in range(12)]]
    for costs in batches:
        shares = _shares(costs, size, cost=_identity)
        _assert_partition(shares, len(costs))
        assert sum(1 for share in shares if share) <= max(len(costs), 0)


@pytest.mark.parametrize("start", range(1, 601, 100))
def test_the_helpers_cut_and_deal_every_size_up_to_600(start):
    """`_cut`'s bounds and `_deal`'s shares for every number of ranks 1..600 (each rank's
    answer for them all would take minutes)."""
    rng = random.Random(start)
    for size in range(start, start + 100):
        if size <= 64 or size % 25 == 0:
            n = rng.choice((size - 1, size, size + 1, rng.randint(0, 2 * size)))
        else:  # (more ranks than examples)
            n = rng.choice((0, 1, 2, rng.randint(0, 40)))
        costs = sorted((rng.choice((0, 1, 3, 17, 90)) for _ in range(n)), reverse=True)
        for step_cost in (size % 3,):
            bounds = _cut(costs, size, step_cost)
            assert len(bounds) == size + 1 and bounds[0] == 0 and bounds[-1] == n
            assert all(a <= b for a, b in zip(bounds, bounds[1:]))
            dealt = _deal(list(range(n)), costs, size, step_cost)
            assert len(dealt) == size
            assert sorted(i for share in dealt for i in share) == list(range(n))


def test_the_same_answer_whichever_rank_asks_and_however_often():
    rng = random.Random(5)
    for size in (2, 3, 7, 16):
        for costs in _batches(rng, size):
            first = _shares(costs, size, cost=_identity)
            again = [None] * size
            order = list(range(size))
            rng.shuffle(order)
            comms = {r: Communicator(FakeComm(r, size)) for r in order}
            for r in order:  # (ranks asking in another order, twice each, on one communicator)
                comms[r].shard_batch(costs, cost=_identity)
                again[r] = comms[r].shard_batch(costs, cost=_identity)
            assert again == first
            # the batch as a tuple, and a cost function returning numpy ints: the same shares
            if max(costs, default=0) < 2 ** 63:
                assert _shares(tuple(costs), size, cost=lambda c: np.int64(c)) == first
            assert _shares(costs, size, cost=lambda c: np.int32(min(c, 2 ** 31 - 1))) == \
                _shares([min(c, 2 ** 31 - 1) for c in costs], size, cost=_identity)
            assert _shares(costs, size, cost=lambda c: float(c) if c < 2 ** 53 else c) == first


def test_the_batch_is_not_changed_and_the_cost_is_asked_once_per_example():
    asked = []

    def cost(example):
        asked.append(example)
        return len(example)

    batch = ["aaaa", "b", "", "cc", "dddddd", "b"]
    kept = list(batch)
    shares = _shares(batch, 3, cost=cost)
    assert batch == kept
    assert sorted(asked) == sorted(batch * 3)  # (once per example on each rank)
    _assert_partition(shares, len(batch))


# -- the best cut, and the better of two deals ----------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_contiguous_cut_is_the_best_by_brute_force(size):
    rng = random.Random(size * 31)
    for _ in range(250):
        n = rng.randint(0, 7)
        pool = rng.choice(((0, 1, 2, 3), (1, 5, 9, 20), (0, 0, 7), (10 ** 12, 1, 3)))
        costs = sorted((rng.choice(pool) for _ in range(n)), reverse=True)
        step_cost = rng.choice((0, 1, 2, 3, 7, 50))
        bounds = _cut(costs, size, step_cost)
        got = max((sum(costs[a:b]) + step_cost * costs[a]) if b > a else 0
                  for a, b in zip(bounds, bounds[1:]))
        assert got == _best_cut(costs, size, step_cost), (costs, size, step_cost, bounds)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_the_chosen_deal_is_the_better_of_the_best_cut_and_the_greedy_deal(size):
    rng = random.Random(size)
    for _ in range(200):
        costs = [rng.choice((0, 1, 2, 4, 8, 30)) for _ in range(rng.randint(0, 8))]
        step_cost = rng.choice((0, 1, 2, 5))
        shares = _shares(costs, size, cost=_identity, step_cost=step_cost)
        _assert_partition(shares, len(costs))
        best_cut = _best_cut(costs, size, step_cost)
        greedy = _greedy(costs, size, step_cost)
        worst = _worst(costs, shares, step_cost)
        assert worst == min(best_cut, _worst(costs, greedy, step_cost)), (costs, step_cost)
        if _worst(costs, greedy, step_cost) < best_cut:  # (then it is the greedy deal itself)
            assert shares == [sorted(share) for share in greedy]


def test_ties_go_to_the_cut_and_equal_costs_spread():
    # equal costs: both deals cost the same, the cut (rank 0 first) is chosen
    shares = _shares([4] * 6, 3, cost=_identity, step_cost=2)
    assert shares == [[0, 1], [2, 3], [4, 5]]
    # all free: one share costs nothing, and every example is still dealt once
    shares = _shares([0] * 5, 2, cost=_identity)
    _assert_partition(shares, 5)
    assert _worst([0] * 5, shares, STEP_COST) == 0


def test_huge_costs_are_counted_exactly():
    """Costs beyond float precision and beyond int64: Python integers, no rounding."""
    big = 2 ** 70
    costs = [big + 3, big + 1, big + 2, 1, 1]
    shares = _shares(costs, 2, cost=_identity, step_cost=1)
    _assert_partition(shares, 5)
    # (two of the three big ones share a rank: the greedy deal beats the best cut by 2)
    assert _best_cut(costs, 2, 1) == 3 * big + 7
    assert _worst(costs, shares, 1) == _worst(costs, _greedy(costs, 2, 1), 1) == 3 * big + 5
    shares = _shares([np.int64(2 ** 62), np.int64(2 ** 62), 5], 2, cost=_identity, step_cost=3)
    assert sorted(map(len, shares)) == [1, 2]  # (summed as Python ints: no int64 overflow)


# -- costs -----------------------------------------------------------------------------------------
def test_trees_and_sentences_cost_their_words():
    trees = read_trees(DATA / "tiny-train.trees")
    sentences = read_conllu(DATA / "tiny-train.conllu")
    assert all(example_cost(t) == len(t.words()) >= 1 for t in trees)
    assert all(example_cost(s) == len(s.words) >= 1 for s in sentences)
    assert example_cost(object()) == 1 and example_cost("abc") == 3 and example_cost([]) == 0
    for batch, words in ((trees[:9], lambda t: len(t.words())), (sentences[:9],
                                                                 lambda s: len(s.words))):
        for size in (2, 3, 4):
            shares = _shares(batch, size)
            _assert_partition(shares, len(batch))
            assert shares == _shares(batch, size, cost=words)
            costs = [words(x) for x in batch]
            assert _worst(costs, shares, STEP_COST) == min(
                _best_cut(costs, size, STEP_COST), _worst(costs, _greedy(costs, size, STEP_COST),
                                                          STEP_COST))


def test_integral_floats_and_numpy_numbers_as_costs():
    costs = [9, 1, 4, 4, 7, 2, 3, 8, 5]
    want = _shares(costs, 3, cost=_identity)
    for convert in (float, np.int8, np.uint16, np.int64, np.float32, np.float64,
                    lambda c: np.array(c)):
        assert _shares(costs, 3, cost=lambda c: convert(c)) == want, convert


def test_bad_step_costs_and_costs_are_refused():
    with pytest.raises(ValueError, match="step_cost"):
        Communicator(FakeComm(1, 3)).shard_batch([1, 2, 3], cost=_identity, step_cost=-1)
    with pytest.raises(TypeError):
        Communicator(FakeComm(0, 2)).shard_batch([1, 2], cost=_identity, step_cost="2")
    with pytest.raises((TypeError, ValueError)):
        Communicator(FakeComm(0, 2)).shard_batch([1, None], cost=_identity)
    with pytest.raises((ValueError, OverflowError)):
        Communicator(FakeComm(0, 2)).shard_batch([1.0, math.inf], cost=_identity)
    with pytest.raises(ValueError):
        Communicator(FakeComm(0, 2)).shard_batch([1.0, math.nan], cost=_identity)


# -- training: the shares add up to the whole minibatch -------------------------------------------
@pytest.mark.parametrize("make", [_tagger, _treelstm, _parser], ids=["tagger", "treelstm",
                                                                     "parser"])
def test_shares_of_2_3_and_more_ranks_than_examples_add_up(make):
    Model, config, batch = make()
    pc = dn.ParameterCollection(seed=4)
    model = Model(pc, config, Model.build_vocabs(batch, config))
    whole, expected = _gradients(model, pc, batch, [list(range(len(batch)))])
    assert any(np.any(g) for g in expected.values())
    for size, step_cost in ((2, STEP_COST), (3, STEP_COST), (3, 0), (len(batch) + 2, STEP_COST)):
        shares = _shares(batch, size, step_cost=step_cost)
        _assert_partition(shares, len(batch))
        if size > len(batch):
            assert [] in shares
        else:
            assert all(shares), shares
        split, got = _gradients(model, pc, batch, shares)
        assert split == pytest.approx(whole, rel=1e-5), size
        for name, grad in expected.items():
            np.testing.assert_allclose(got[name], grad, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}, {size} ranks")


# -- bugs this file found (fixed) ------------------------------------------------------------------
@pytest.mark.parametrize("step_cost", [math.nan, math.inf])
def test_a_non_finite_step_cost_is_refused(step_cost):
    with pytest.raises(ValueError, match="step_cost"):
        Communicator(FakeComm(0, 2)).shard_batch([3, 2, 1], cost=_identity, step_cost=step_cost)


def test_a_negative_cost_is_refused():
    with pytest.raises(ValueError, match="cost"):
        Communicator(FakeComm(0, 2)).shard_batch([-2, 1, 1, 1], cost=_identity, step_cost=0)


def test_fractional_costs_are_not_truncated_to_nothing():
    costs = [0.5, 0.9, 0.7, 0.3]
    try:
        shares = _shares(costs, 2, cost=_identity)
    except (TypeError, ValueError):
        return  # (refused: acceptable)
    assert all(shares), shares


def test_a_fractional_step_cost_gets_the_best_cut_or_is_refused():
    try:
        Communicator(FakeComm(0, 2)).shard_batch([2, 1, 1, 1], cost=_identity, step_cost=0.5)
    except (TypeError, ValueError):
        return  # (refused: acceptable)
    costs = [2, 1, 1, 1]
    bounds = _cut(costs, 2, 0.5)
    got = max((sum(costs[a:b]) + 0.5 * costs[a]) if b > a else 0
              for a, b in zip(bounds, bounds[1:]))
    assert got == _best_cut(costs, 2, 0.5) == 3.5


def test_a_negative_step_cost_is_refused_in_one_process_too():
    with pytest.raises(ValueError, match="step_cost"):
        Communicator(None).shard_batch(["ab", "c"], step_cost=-1)


def _tagger_recurrent_dropout():
    Model, config, examples = _tagger()
    return Model, {**config, "recurrent_dropout": 0.25, "word_dropout": 0.5}, examples


@pytest.mark.parametrize("strategy", [False, "agenda", "depth"])
@pytest.mark.parametrize("make", [_tagger_recurrent_dropout, _treelstm, _parser],
                         ids=["tagger-recurrent-dropout", "treelstm", "parser"])
def test_shares_add_up_under_every_strategy(make, strategy):
    """Each example draws from its own generator (by its position), whichever share and
    whichever strategy: 3 shares of the batch add up to it, dropout and exploration too."""
    Model, config, batch = make()
    pc = dn.ParameterCollection(seed=6)
    model = Model(pc, config, Model.build_vocabs(batch, config))

    def gradients(shares):
        total = sum(train._share_loss(model, batch, positions, 5, 1, 7, strategy)
                    for positions in shares)
        grads = {p.name: p.grad_as_array() for p in pc.parameters()}
        pc.clear_grads()
        return total, grads

    whole, expected = gradients([list(range(len(batch)))])
    shares = _shares(batch, 3)
    assert all(shares)
    split, got = gradients(shares)
    assert split == pytest.approx(whole, rel=1e-5)
    for name, grad in expected.items():
        np.testing.assert_allclose(got[name], grad, rtol=1e-4, atol=1e-5, err_msg=name)
