"""DyNet's trainers by their names and arguments, over dynlp's trainers: the same update rules,
global-norm clipping (threshold 5 by default) and sparse lookup-table updates; plus AMSGrad and
the cyclical learning rate, and the collection's weight decay.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from .. import trainers as T
from .expr import STATE


class _DyNetTrainer:
    """What DyNet's trainers add: its method names, status to stderr, weight decay."""

    def update(self) -> None:
        super().update()  # type: ignore[misc]
        decay = getattr(self.pc, "weight_decay", 0.0) or STATE.weight_decay
        if decay:
            for p in self.pc.parameters():
                if p.updated:
                    p.value *= 1.0 - decay

    def update_subset(self, updated_params: Any, updated_lookups: Any = ()) -> None:
        self.update()

    def status(self) -> None:
        print(T.Trainer.status(self), file=sys.stderr)  # type: ignore[arg-type]

    def set_learning_rate(self, lr: float) -> None:
        self.learning_rate = float(lr)

    def get_sparse_updates(self) -> bool:
        return bool(self.sparse_updates)


class SimpleSGDTrainer(_DyNetTrainer, T.SimpleSGDTrainer):
    def __init__(self, m: Any, learning_rate: float = 0.1) -> None:
        super().__init__(m, learning_rate)


class CyclicalSGDTrainer(_DyNetTrainer, T.SimpleSGDTrainer):
    """SGD whose rate moves between learning_rate_min and learning_rate_max in triangles of
    2 * step_size updates, times gamma ** updates."""

    def __init__(self, m: Any, learning_rate_min: float = 0.01, learning_rate_max: float = 0.1,
                 step_size: float = 2000, gamma: float = 1.0, edecay: float = 0.0) -> None:
        super().__init__(m, learning_rate_min)
        self.e_min, self.e_max = float(learning_rate_min), float(learning_rate_max)
        self.step_size, self.gamma = float(step_size), float(gamma)
        self.it = 0

    def update(self) -> None:
        super().update()
        self.it += 1
        cycle = math.floor(1 + self.it / (2 * self.step_size))
        x = abs(self.it / self.step_size - 2 * cycle + 1)
        self.learning_rate = (self.e_min + (self.e_max - self.e_min) * max(0.0, 1 - x)
                              * self.gamma ** self.it)


class MomentumSGDTrainer(_DyNetTrainer, T.MomentumSGDTrainer):
    def __init__(self, m: Any, learning_rate: float = 0.01, mom: float = 0.9) -> None:
        super().__init__(m, learning_rate, momentum=mom)


class AdagradTrainer(_DyNetTrainer, T.AdagradTrainer):
    def __init__(self, m: Any, learning_rate: float = 0.1, eps: float = 1e-20) -> None:
        super().__init__(m, learning_rate, eps=eps)


class AdadeltaTrainer(_DyNetTrainer, T.AdadeltaTrainer):
    def __init__(self, m: Any, eps: float = 1e-6, rho: float = 0.95) -> None:
        super().__init__(m, eps=eps, rho=rho)


class RMSPropTrainer(_DyNetTrainer, T.RMSPropTrainer):
    def __init__(self, m: Any, learning_rate: float = 0.001, eps: float = 1e-8,
                 rho: float = 0.9) -> None:
        super().__init__(m, learning_rate, eps=eps, rho=rho)


class AdamTrainer(_DyNetTrainer, T.AdamTrainer):
    def __init__(self, m: Any, alpha: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(m, alpha, beta_1=beta_1, beta_2=beta_2, eps=eps)


class AmsgradTrainer(_DyNetTrainer, T.AdamTrainer):
    """Adam whose second moment is the running maximum: v_hat = max(v_hat, v)."""

    name = "amsgrad"
    slots = ("m", "v", "v_hat")

    def __init__(self, m: Any, alpha: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(m, alpha, beta_1=beta_1, beta_2=beta_2, eps=eps)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        m, v, v_hat = state
        b1, b2, t = self.beta_1, self.beta_2, self.updates
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * np.square(g)
        np.maximum(v_hat, v, out=v_hat)
        step = self.learning_rate * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        w -= step * m / (np.sqrt(v_hat) + self.eps)
