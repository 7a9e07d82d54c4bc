"""Ops written outside the package: `op_function(op)` turns an `Op` record (forward, VJP, JVP,
batching mask) into a function that builds its nodes from expressions, parameters or arrays.
The op is not added to dynlp's table; the engine batches and differentiates it like any other.
"""

from __future__ import annotations

from typing import Any, Callable

from .graph import Expression, as_node, current_graph
from .ops import SHARED, STACK, Case, Op

__all__ = ["op_function", "Op", "Case", "STACK", "SHARED"]


def op_function(op: Op) -> Callable[..., Expression]:
    """A function `f(*xs, **attrs) -> Expression` building one node of `op` per call.

    xs: expressions, parameters (a parameter is one shared node per graph) or arrays (constant
    leaves), one per argument of the op. attrs: keyword values for the rules. Those named in
    `op.batched_attrs` are per-example values (a label, an index): the engine stacks them into
    an array with a leading batch axis, and nodes with different values still batch together.
    The others are static: they must be hashable, they are part of the node's signature (nodes
    batch only with equal static attributes), and the rules receive them as they were given.

    How the rules see a batch: every argument the mask calls `stack` arrives with a leading
    batch axis (B, *shape); a `shared` argument (a weight) arrives once, without one, and its
    VJP must return the gradient summed over the batch, in the argument's own shape.
    """
    batched = op.batched_attrs

    def build(*xs: Any, **attrs: Any) -> Expression:
        missing = [name for name in batched if name not in attrs]
        if missing:
            raise TypeError(f"{op.name}: missing per-example attribute(s) {missing}")
        static = tuple(sorted((k, v) for k, v in attrs.items() if k not in batched))
        values = tuple(attrs[name] for name in batched) or None
        g = next((x.g for x in xs if isinstance(x, Expression)), None) or current_graph()
        nodes = g.param_nodes
        args = tuple(nodes.get(id(x)) if id(x) in nodes else as_node(g, x) for x in xs)
        return g.add(op, args, static, values)

    build.__name__ = op.name
    build.__doc__ = op.doc or f"A node of the custom op {op.name!r}."
    return build

