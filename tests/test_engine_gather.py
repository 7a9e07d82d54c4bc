"""Gathers of a batch's argument from several source batches: row by row, source by source (many
rows a source) and by one copy of the sources, against the unbatched engine."""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn


def _run(autobatch, count: int, sources: int):
    """exp over rows that alternate between `sources` batches (tanh, logistic, ...), summed."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(count, 5)).astype(np.float32)
    makers = [dn.tanh, dn.logistic, dn.rectify, dn.square][:sources]
    with dn.Graph(autobatch=autobatch, fuse=False) as g:
        xs = [dn.inputs(v) for v in values]
        made = [makers[k % sources](x) for k, x in enumerate(xs)]
        outs = [dn.exp(m) for m in made]
        loss = dn.sum_elems(dn.esum(outs))
        loss.forward()
        loss.backward()
        stats = g.stats()
        return ([o.npvalue() for o in outs], [x.gradient() for x in xs],
                [m.gradient() for m in made], stats)


@pytest.mark.parametrize("count,sources", [(8, 2), (60, 2), (100, 3), (90, 4), (300, 2)])
def test_gathers_match_the_unbatched_engine(count, sources):
    values, grads, inner, stats = _run(True, count, sources)
    assert stats["forward_batches"] < count  # (batched: the exp nodes gather from the sources)
    values_1, grads_1, inner_1, _ = _run(False, count, sources)
    for a, b in zip(values + grads + inner, values_1 + grads_1 + inner_1):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
