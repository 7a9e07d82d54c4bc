"""The op table: every primitive once, with forward, VJP, JVP, batching mask and test cases.

`TABLE` maps op names to `Op` records. Imports nothing from dynlp outside this package.
"""

from . import cells, elementwise, linalg, losses, structure  # noqa: F401  (each registers its ops)
from . import conv, special, tensor  # noqa: F401  (for DyNet's API)
from .core import SHARED, STACK, TABLE, Case, Op, OuterProduct, Parts, SparseRows
from .structure import LEAVES

__all__ = ["TABLE", "Op", "Case", "OuterProduct", "Parts", "SparseRows", "STACK", "SHARED",
           "LEAVES"]
