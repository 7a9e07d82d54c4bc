"""dynlp: dynamic computation graphs with automatic operation batching, for NLP, on numpy.

    import dynlp as dn
    pc = dn.ParameterCollection()
    W = pc.add_parameters((8, 4))
    with dn.Graph() as g:
        loss = dn.pick_neg_log_softmax(dn.tanh(W @ dn.inputs(np.ones(4))), 2)
        loss.backward()
"""

import os

# Dynamic graphs multiply many small matrices: BLAS threads cost more than they save there, and
# spin-waiting threads collapse throughput on a loaded machine. Effective only if numpy is not
# imported yet; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .autobatch import Engine  # noqa: E402
from .autodiff import grad, jvp, value_and_grad
from .functions import *  # noqa: F401,F403
from .functions import __all__ as _functions
from .functions import absolute
from .gradcheck import GradcheckError, gradcheck
from .graph import (Deferred, Expression, Graph, GraphError, Row, ShapeError, Slice,
                    current_graph, renew_cg)
from .nn import (MLP, BiRNNBuilder, CharacterEncoder, Embedding, GRUBuilder, LSTMBuilder,
                 SimpleRNNBuilder, TreeLSTMBuilder)
from .params import (LookupParameter, ModelFileError, Parameter, ParameterCollection,
                     read_metadata)
from .trainers import (TRAINERS, AdadeltaTrainer, AdagradTrainer, AdamTrainer,
                       MomentumSGDTrainer, RMSPropTrainer, SimpleSGDTrainer, Trainer, make_trainer)

Graph.engine_class = Engine
abs = absolute

__version__ = "0.1.0"

__all__ = list(_functions) + [
    "abs", "grad", "jvp", "value_and_grad", "gradcheck", "GradcheckError", "Expression",
    "Deferred", "Row", "Slice", "Graph",
    "GraphError", "ShapeError", "current_graph", "renew_cg", "LookupParameter", "ModelFileError",
    "Parameter", "ParameterCollection", "read_metadata", "__version__", "TRAINERS",
    "AdadeltaTrainer", "AdagradTrainer", "AdamTrainer", "MomentumSGDTrainer", "RMSPropTrainer",
    "SimpleSGDTrainer", "Trainer", "make_trainer", "MLP", "BiRNNBuilder", "CharacterEncoder",
    "Embedding", "GRUBuilder", "LSTMBuilder", "SimpleRNNBuilder", "TreeLSTMBuilder",
]
