"""Ops that read their inputs in place, composed from the op table (`fusion.composed`): a step
over a table row that looks the row up itself, a step over inputs times masks that multiplies
them itself, a dropout over a row or over slices of states. Each is one node where the plain
graph has two or three, with the table's rules for every part. Used by the builders and by
`dn.dropout`; must not import params, trainers or the builders.
"""

from __future__ import annotations

from functools import lru_cache

from .fusion import composed
from .ops import SHARED, STACK, TABLE, Op

_LOOKUP = TABLE["lookup"]
_MUL = TABLE["mul"]
_DROPOUT = TABLE["dropout"]
_RANGES = TABLE["concatenate_ranges"]


def _mask_of(op: Op, nargs: int) -> tuple[str, ...]:
    return tuple(op.mask(nargs) or (STACK,) * nargs)


@lru_cache(maxsize=256)  # (looked up per sequence or per dropout: made once)
def over_row(op: Op, nargs: int, position: int) -> Op:
    """op(..., E[index], ...) over nargs arguments, its argument `position` a row of a table:
    one node whose argument there is the table E (shared) and whose batched attribute
    "index" is the row (the table's gradient is sparse). For op without batched attributes."""
    mask = _mask_of(op, nargs)
    refs = tuple(-1 if k == position else k for k in range(nargs))
    return composed([(_LOOKUP, {}, (position,), (("index", "index"),)), (op, {}, refs, ())],
                    mask[:position] + (SHARED,) + mask[position + 1:], ("index",),
                    doc=f"{op.name} over a row of a table, looked up in the same node")


@lru_cache(maxsize=256)  # (looked up per sequence or per dropout: made once)
def over_masked(op: Op, nargs: int, positions: tuple[int, ...]) -> Op:
    """op over nargs arguments with the arguments at `positions` times masks: one node whose
    arguments are op's, then one mask per position (each of the shape of its argument), as
    `mul` nodes and an op node would compute it. For op without batched attributes."""
    mask = _mask_of(op, nargs)
    steps: list[tuple] = []
    refs = list(range(nargs))
    for j, k in enumerate(positions):
        steps.append((_MUL, {}, (k, nargs + j), ()))
        refs[k] = -len(steps)
    steps.append((op, {}, tuple(refs), ()))
    return composed(steps, mask + (STACK,) * len(positions),
                    doc=f"{op.name} over inputs times masks, multiplied in the same node")


@lru_cache(maxsize=256)  # (looked up per sequence or per dropout: made once)
def dropout_row(rate: float) -> Op:
    """Dropout of a table's row in one node: argument the table (shared), batched attributes
    "index" (the row) and "uniform" (the dropout's numbers)."""
    return composed([(_LOOKUP, {}, (0,), (("index", "index"),)),
                     (_DROPOUT, {"rate": rate}, (-1,), (("uniform", "uniform"),))],
                    (SHARED,), ("index", "uniform"),
                    doc="dropout of a table's row, looked up in the same node")


@lru_cache(maxsize=256)  # (looked up per sequence or per dropout: made once)
def dropout_ranges(count: int, start: int, end: int, rate: float) -> Op:
    """Dropout of x1[start:end], ..., x_count[start:end] concatenated, in one node over the
    count states (batched attribute "uniform", the dropout's numbers)."""
    return composed([(_RANGES, {"start": start, "end": end}, tuple(range(count)), ()),
                     (_DROPOUT, {"rate": rate}, (-1,), (("uniform", "uniform"),))],
                    (STACK,) * count, ("uniform",),
                    doc="dropout of slices of states, read in the same node")
