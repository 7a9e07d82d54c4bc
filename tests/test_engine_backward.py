"""Backward's gradients when a cotangent becomes a batch's gradient as the rule returned it
(borrowed): the same array given for two arguments, a read-only broadcast, a second cotangent
added to a borrowed one, and gradients read after backward, twice."""

from __future__ import annotations

import numpy as np
import pytest

import dynlp as dn

STRATEGIES = [False, True, "agenda", "depth"]


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_one_array_for_both_arguments(autobatch):
    """add's VJP gives its gradient for both arguments: x + x, then y read again."""
    v = np.array([0.5, -1.0, 2.0], np.float32)
    with dn.Graph(autobatch=autobatch, fuse=False):
        x = dn.inputs(v)
        y = x + x                       # dy/dx = 2
        loss = dn.sum_elems(y * y)      # dloss/dy = 2y
        loss.backward()
        gy = 2 * (2 * v)
        np.testing.assert_allclose(y.gradient(), gy)
        np.testing.assert_allclose(x.gradient(), 2 * gy)
        np.testing.assert_allclose(y.gradient(), gy)  # (not changed by x's sum)


@pytest.mark.parametrize("autobatch", STRATEGIES)
def test_read_only_cotangent_then_more(autobatch):
    """sum_elems's VJP is a read-only broadcast: the node it reaches first takes it as its
    gradient, and what reaches it next is added to a copy."""
    v = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    with dn.Graph(autobatch=autobatch, fuse=False):
        x = dn.inputs(v)
        h = dn.tanh(x)
        a = dn.sum_elems(h)
        b = dn.sum_elems(h * 3.0)
        c = dn.sum_elems(dn.exp(h))
        loss = a + b + c
        loss.backward()
        th = np.tanh(v)
        gh = 1.0 + 3.0 + np.exp(th)
        np.testing.assert_allclose(h.gradient(), gh, rtol=1e-6)
        np.testing.assert_allclose(x.gradient(), gh * (1 - th * th), rtol=1e-6)
        np.testing.assert_allclose(a.gradient(), 1.0)
        first = x.gradient()
        loss.backward()  # (again: the same gradients, nothing written into the last ones)
        np.testing.assert_array_equal(x.gradient(), first)
        np.testing.assert_allclose(h.gradient(), gh, rtol=1e-6)


def test_parameter_gradient_from_borrowed_cotangents():
    """A parameter reached first by a whole cotangent, then by more: its gradient sums them."""
    pc = dn.ParameterCollection()
    p = pc.add_parameters((3,))
    v = p.as_array()
    with dn.Graph(autobatch=False, fuse=False):
        w = dn.parameter(p)
        loss = dn.sum_elems(w * 2.0) + dn.sum_elems(w * w)
        loss.backward()
    np.testing.assert_allclose(p.grad_as_array(), 2.0 + 2 * v, rtol=1e-6)
