"""DyNet 2.1's Python API on dynlp's engine: `import dynlp.dynet as dy`, or run an unmodified
DyNet program with `python -m dynlp.dynet program.py` (or `dynlp run-dynet program.py`), which
binds the names `dynet` and `dynet_config` to this package. See docs/DYNET.md.
"""

from . import config as dynet_config
from .builders import (BiRNNBuilder, ClassFactoredSoftmaxBuilder, CompactVanillaLSTMBuilder,
                       CoupledLSTMBuilder, FastLSTMBuilder, GRUBuilder, LSTMBuilder, RNNState,
                       SimpleRNNBuilder, SoftmaxBuilder, SparseLSTMBuilder,
                       StandardSoftmaxBuilder, VanillaLSTMBuilder)
from . import expr as _expr
from .expr import *  # noqa: F401,F403
from .expr import STATE
from .model import (ConstInitializer, FromVectorInitializer, GlorotInitializer,
                    IdentityInitializer, LeCunUniformInitializer, LookupParameters, Model,
                    NormalInitializer, NumpyInitializer, ParameterCollection, Parameters,
                    PyInitializer, SaxeInitializer, UniformInitializer, const_lookup,
                    const_parameter, load, load_generator, lookup, lookup_batch, parameter, save)
from .training import (AdadeltaTrainer, AdagradTrainer, AdamTrainer, AmsgradTrainer,
                       CyclicalSGDTrainer, MomentumSGDTrainer, RMSPropTrainer, SimpleSGDTrainer)
from .training import _DyNetTrainer as Trainer

__version__ = "2.1"
HAVE_CUDA = False
StackedRNNState = RNNState


def reset_random_seed(seed: int) -> None:
    STATE.seed(seed)


def init(shared_parameters: bool | None = None) -> None:
    """Read the `--dynet-*` flags (done once on import already)."""
    dynet_config.init_from_argv()


class DynetParams:
    """DyNet's explicit initialization object; only the seed and autobatching matter here."""

    def __init__(self) -> None:
        self.settings = dynet_config.get()

    def from_args(self, shared_parameters: bool | None = None) -> None:
        self.settings.update(dynet_config.from_argv())

    def set_random_seed(self, seed: int) -> None:
        self.settings["random_seed"] = seed

    def set_autobatch(self, autobatch: int) -> None:
        self.settings["autobatch"] = autobatch

    def set_mem(self, mem: int) -> None:
        self.settings["mem"] = mem

    def set_weight_decay(self, decay: float) -> None:
        self.settings["weight_decay"] = decay

    def set_shared_parameters(self, shared: bool) -> None:
        pass

    def set_requested_gpus(self, gpus: int) -> None:
        pass

    def set_profiling(self, profiling: int) -> None:
        pass

    def init(self) -> None:
        dynet_config.apply(self.settings)


def init_from_params(params: DynetParams) -> None:
    params.init()


dynet_config.init_from_argv()

__all__ = [name for name, value in vars(_expr).items()
           if not name.startswith("_") and getattr(value, "__module__", None) == _expr.__name__]
__all__ += [
    "dynet_config", "BiRNNBuilder", "ClassFactoredSoftmaxBuilder", "CompactVanillaLSTMBuilder",
    "CoupledLSTMBuilder", "FastLSTMBuilder", "GRUBuilder", "LSTMBuilder", "RNNState",
    "SimpleRNNBuilder", "SoftmaxBuilder", "SparseLSTMBuilder", "StandardSoftmaxBuilder",
    "VanillaLSTMBuilder", "ConstInitializer", "FromVectorInitializer",
    "GlorotInitializer", "IdentityInitializer", "LeCunUniformInitializer", "LookupParameters",
    "Model", "NormalInitializer", "NumpyInitializer", "ParameterCollection", "Parameters",
    "PyInitializer", "SaxeInitializer", "UniformInitializer", "const_lookup", "const_parameter",
    "load", "load_generator", "lookup", "lookup_batch", "parameter", "save", "AdadeltaTrainer",
    "AdagradTrainer", "AdamTrainer", "AmsgradTrainer", "CyclicalSGDTrainer",
    "MomentumSGDTrainer", "RMSPropTrainer", "SimpleSGDTrainer", "Trainer", "StackedRNNState",
    "HAVE_CUDA", "reset_random_seed", "init", "DynetParams", "init_from_params", "np",
]
np = _expr.np
