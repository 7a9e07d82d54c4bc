"""dynlp: dynamic computation graphs with automatic operation batching, for NLP, on numpy.

    import dynlp as dn
    pc = dn.ParameterCollection()
    W = pc.add_parameters((8, 4))
    with dn.Graph() as g:
        loss = dn.pick_neg_log_softmax(dn.tanh(W @ dn.inputs(np.ones(4))), 2)
        loss.backward()
"""

# first: one BLAS thread, before numpy loads if it has not (see dynlp/blas.py)
from .blas import blas_threads, set_blas_threads, use_default_threads  # isort: skip

from .autobatch import Engine
from .autodiff import grad, jvp, value_and_grad
from .functions import *  # noqa: F401,F403
from .functions import __all__ as _functions
from .functions import absolute
from .extend import SHARED, STACK, Case, Op, op_function
from .gradcheck import GradcheckError, check_rule, gradcheck
from .graph import (Deferred, Expression, Graph, GraphError, Row, SettingError, ShapeError,
                    Slice, current_graph, renew_cg)
from .nn import (MLP, BiRNNBuilder, CharacterEncoder, Embedding, GRUBuilder, LSTMBuilder,
                 SimpleRNNBuilder, TreeLSTMBuilder)
from . import distributed
from .traced import FusedFunction, Window, fused
from .params import (LookupParameter, ModelFileError, Parameter, ParameterCollection,
                     read_metadata)
from .seeding import get_seed, seed
from .trainers import (TRAINERS, AdadeltaTrainer, AdagradTrainer, AdamTrainer,
                       MomentumSGDTrainer, RMSPropTrainer, SimpleSGDTrainer, Trainer, make_trainer)

Graph.engine_class = Engine
abs = absolute
use_default_threads()

__version__ = "0.1.0"

__all__ = list(_functions) + [
    "abs", "seed", "get_seed", "grad", "jvp", "value_and_grad", "gradcheck", "GradcheckError",
    "check_rule", "op_function", "Op", "Case", "STACK", "SHARED",
    "Expression", "distributed", "fused", "FusedFunction", "Window",
    "blas_threads", "set_blas_threads",
    "Deferred", "Row", "Slice", "Graph",
    "GraphError", "SettingError", "ShapeError", "current_graph", "renew_cg", "LookupParameter",
    "ModelFileError",
    "Parameter", "ParameterCollection", "read_metadata", "__version__", "TRAINERS",
    "AdadeltaTrainer", "AdagradTrainer", "AdamTrainer", "MomentumSGDTrainer", "RMSPropTrainer",
    "SimpleSGDTrainer", "Trainer", "make_trainer", "MLP", "BiRNNBuilder", "CharacterEncoder",
    "Embedding", "GRUBuilder", "LSTMBuilder", "SimpleRNNBuilder", "TreeLSTMBuilder",
]
