"""Trainers: SGD, momentum SGD, Adagrad, Adadelta, RMSProp and Adam over a ParameterCollection,
with sparse lookup-table updates, global-norm gradient clipping, L2 and learning-rate decay.
They read the gradients that backward left in parameters, update values in place and checkpoint
as plain dicts of arrays and numbers. Must not import nn or data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .graph import SettingError
from .params import Parameter, ParameterCollection

STATE_FORMAT_VERSION = 1
def _checked(name: str, value: Any, positive: bool = False) -> float:
    """value as a finite float, > 0 (positive) or >= 0; else a SettingError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise SettingError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, "
                           f"not {value!r}")
    return number


_SCALARS = ("learning_rate", "initial_learning_rate", "learning_rate_decay", "epoch", "updates",
            "clips")


def _squared_norm(g: np.ndarray) -> float:
    flat = g.reshape(-1)
    with np.errstate(over="ignore"):
        total = float(np.dot(flat, flat))
    if not math.isfinite(total):  # float32 overflows long before float64 does
        flat = flat.astype(np.float64)
        total = float(np.dot(flat, flat))
    return total


class Trainer:
    """Base of all trainers: one `update()` per minibatch after `backward()`.

    learning_rate: the current rate (DyNet's name); set it freely between updates.
    learning_rate_decay: each `update_epoch(r)` adds r to `epoch` and, when the decay is not 0,
        sets learning_rate = initial_learning_rate / (1 + learning_rate_decay * epoch)
        (DyNet's eta_decay schedule). With decay 0, `update_epoch` only counts epochs.
    l2: coupled weight decay: l2 * w is added to each gradient after clipping.
    clip_threshold: when the L2 norm of all gradients together (dense and sparse, of updated
        parameters) exceeds it, every gradient is scaled by threshold / norm before any rule sees
        it (DyNet's default 5.0); None or 0 disables. A non-finite norm raises FloatingPointError
        and leaves parameters and gradients as they were.
    sparse_updates: a lookup table updates only the rows touched since the last update; its
        moments, L2 and weight decay also apply to those rows only (DyNet's sparse updates).
        False treats tables like dense parameters: every row steps and every moment decays.
    """

    name = ""
    slots: tuple[str, ...] = ()  # names of the per-parameter state arrays, each of its shape

    def __init__(self, pc: ParameterCollection, learning_rate: float, *,
                 learning_rate_decay: float = 0.0, l2: float = 0.0,
                 clip_threshold: float | None = 5.0, sparse_updates: bool = True) -> None:
        self.pc = pc
        learning_rate = _checked("learning_rate", learning_rate, positive=True)
        learning_rate_decay = _checked("learning_rate_decay", learning_rate_decay)
        l2 = _checked("l2", l2)
        self.learning_rate = learning_rate
        self.initial_learning_rate = learning_rate
        self.learning_rate_decay = float(learning_rate_decay)
        self.l2 = float(l2)
        self.clip_threshold: float | None = None
        self.set_clip_threshold(clip_threshold)
        self.sparse_updates = bool(sparse_updates)
        self.epoch = 0.0
        self.updates = 0  # steps taken; Adam's bias correction counts these
        self.clips = 0
        self._since_status = [0, 0]  # updates, clips
        self._state: dict[str, list[np.ndarray]] = {}

    # -- DyNet-style settings --------------------------------------------------------------------
    def set_clip_threshold(self, threshold: float | None) -> None:
        """Clip gradients to this global norm; None or a value <= 0 disables clipping."""
        self.clip_threshold = float(threshold) if threshold and threshold > 0 else None

    def get_clip_threshold(self) -> float:
        return self.clip_threshold or 0.0

    def set_sparse_updates(self, sparse: bool) -> None:
        self.sparse_updates = bool(sparse)

    def update_epoch(self, r: float = 1.0) -> None:
        """Count r more epochs and apply the learning-rate decay schedule."""
        self.epoch += r
        if self.learning_rate_decay:
            self.learning_rate = self.initial_learning_rate / (
                1.0 + self.learning_rate_decay * self.epoch)

    def status(self) -> str:
        """`[lr=... clips=... updates=...]` since the previous call (DyNet's status line)."""
        updates, clips = self._since_status
        self._since_status = [0, 0]
        return f"[lr={self.learning_rate:.6g} clips={clips} updates={updates}]"

    def restart(self, learning_rate: float | None = None) -> None:
        """Forget all moments and the step count; optionally set a new learning rate."""
        self._state.clear()
        self.updates = 0
        if learning_rate is not None:
            self.learning_rate = self.initial_learning_rate = _checked(
                "learning_rate", learning_rate, positive=True)

    # -- the step --------------------------------------------------------------------------------
    def update(self) -> None:
        """One step on every updated parameter, then clear every gradient in the collection."""
        work: list[tuple[Parameter, np.ndarray | None, np.ndarray]] = []
        squares = 0.0
        clipping = self.clip_threshold is not None
        for p in self.pc.parameters():
            if not p.updated:
                continue
            if p.is_lookup:
                rows, g = p.sparse_grad()  # type: ignore[attr-defined]
                if not self.sparse_updates:
                    full = np.zeros_like(p.value)
                    full[rows] = g
                    rows, g = None, full
                elif not len(rows):
                    continue
            else:
                rows, g = None, p.grad
            work.append((p, rows, g))
            if clipping:
                squares += _squared_norm(g)
        scale = 1.0
        if clipping:
            norm = math.sqrt(squares)
            if not math.isfinite(norm):
                raise FloatingPointError(f"update: the gradient norm is {norm}; nothing updated")
            if norm > self.clip_threshold:  # type: ignore[operator]
                scale = self.clip_threshold / norm  # type: ignore[operator]
                self.clips += 1
                self._since_status[1] += 1
        self.updates += 1
        self._since_status[0] += 1
        for p, rows, g in work:
            # g is the parameter's own gradient buffer (or a copy), cleared below: rules reuse it
            if scale != 1.0:
                g *= scale
            state = self._state_of(p)
            if rows is None:
                if self.l2:
                    g += self.l2 * p.value
                self._rule(p.value, g, state)
                continue
            w = p.value[rows]
            moments = [s[rows] for s in state]
            if self.l2:
                g += self.l2 * w
            self._rule(w, g, moments)
            p.value[rows] = w
            for s, m in zip(state, moments):
                s[rows] = m
        self.pc.clear_grads()

    def _state_of(self, p: Parameter) -> list[np.ndarray]:
        state = self._state.get(p.name)
        if state is None:
            state = self._state[p.name] = [np.zeros_like(p.value) for _ in self.slots]
        return state

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        """Step w (a parameter, or the gathered rows of a table) in place from gradient g
        (clipped, L2 added; the rule may overwrite it) and its moments, also updated in place."""
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: counters, the learning rate and its schedule, and
        copies of the moments under keys `<slot>/<parameter name>`. Plain numbers, strings and
        arrays only, so `np.savez(f, **trainer.state_dict())` stores it without pickling.
        Hyperparameters (momentum, betas, l2, ...) come from the constructor, not from here."""
        d: dict[str, Any] = {"trainer": self.name, "version": STATE_FORMAT_VERSION}
        for key in _SCALARS:
            d[key] = getattr(self, key)
        for pname, arrays in self._state.items():
            for slot, a in zip(self.slots, arrays):
                d[f"{slot}/{pname}"] = a.copy()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a `state_dict` (also as read back by `np.load`), replacing all current state."""
        trainer = str(d.get("trainer"))
        if trainer != self.name:
            raise ValueError(f"load_state_dict: the state is of trainer {trainer!r}, "
                             f"this is {self.name!r}")
        if int(d.get("version", -1)) != STATE_FORMAT_VERSION:
            raise ValueError(f"load_state_dict: trainer state version {d.get('version')}, "
                             f"expected {STATE_FORMAT_VERSION}")
        params = {p.name: p for p in self.pc.parameters()}
        state: dict[str, list[np.ndarray | None]] = {}
        for key, value in d.items():
            slot, sep, pname = key.partition("/")
            if not sep:
                continue
            if slot not in self.slots or pname not in params:
                raise ValueError(f"load_state_dict: {key!r} names no {self.name} moment of a "
                                 "parameter of this collection")
            p = params[pname]
            value = np.asarray(value)
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {key!r} has shape {value.shape}, the "
                                 f"parameter {p.shape}")
            arrays = state.setdefault(pname, [None] * len(self.slots))
            arrays[self.slots.index(slot)] = value.astype(p.value.dtype, copy=True)
        for pname, arrays in state.items():
            if any(a is None for a in arrays):
                raise ValueError(f"load_state_dict: moments of {pname!r} are incomplete")
        for key in _SCALARS:
            if key not in d:
                raise ValueError(f"load_state_dict: {key!r} is missing")
        self.learning_rate = float(d["learning_rate"])
        self.initial_learning_rate = float(d["initial_learning_rate"])
        self.learning_rate_decay = float(d["learning_rate_decay"])
        self.epoch = float(d["epoch"])
        self.updates = int(d["updates"])
        self.clips = int(d["clips"])
        self._state = state  # type: ignore[assignment]


class SimpleSGDTrainer(Trainer):
    """w -= lr * g. options: the keyword arguments of `Trainer`."""

    name = "sgd"

    def __init__(self, pc: ParameterCollection, learning_rate: float = 0.1,
                 **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        g *= self.learning_rate
        w -= g


class MomentumSGDTrainer(Trainer):
    """v = momentum * v - lr * g; w += v (DyNet's form)."""

    name = "momentum"
    slots = ("velocity",)

    def __init__(self, pc: ParameterCollection, learning_rate: float = 0.01,
                 momentum: float = 0.9, **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)
        self.momentum = float(momentum)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        (v,) = state
        v *= self.momentum
        g *= self.learning_rate
        v -= g
        w += v


def _scaled_step(w: np.ndarray, g: np.ndarray, s: np.ndarray, eps: float, lr: float) -> None:
    """w -= lr * g / sqrt(s + eps), in place, with one temporary (Adagrad and RMSProp)."""
    d = s + eps
    np.sqrt(d, out=d)
    np.divide(g, d, out=d)
    d *= lr
    w -= d


class AdagradTrainer(Trainer):
    """s += g^2; w -= lr * g / sqrt(s + eps) (DyNet's form)."""

    name = "adagrad"
    slots = ("squares",)

    def __init__(self, pc: ParameterCollection, learning_rate: float = 0.1, eps: float = 1e-20,
                 **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)
        self.eps = float(eps)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        (s,) = state
        s += np.square(g)
        _scaled_step(w, g, s, self.eps, self.learning_rate)


class AdadeltaTrainer(Trainer):
    """Zeiler's Adadelta: s = rho s + (1 - rho) g^2; d = g sqrt(u + eps) / sqrt(s + eps);
    u = rho u + (1 - rho) d^2; w -= lr * d. DyNet has no learning rate here: the default 1.0
    keeps its behaviour and gives the decay schedule something to act on."""

    name = "adadelta"
    slots = ("squares", "deltas")

    def __init__(self, pc: ParameterCollection, eps: float = 1e-6, rho: float = 0.95,
                 learning_rate: float = 1.0, **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)
        self.eps = float(eps)
        self.rho = float(rho)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        s, u = state
        rho = self.rho
        s *= rho
        s += (1.0 - rho) * np.square(g)
        d = u + self.eps
        np.sqrt(d, out=d)
        d /= np.sqrt(s + self.eps)
        d *= g
        u *= rho
        u += (1.0 - rho) * np.square(d)
        d *= self.learning_rate
        w -= d


class RMSPropTrainer(Trainer):
    """s = rho s + (1 - rho) g^2; w -= lr * g / sqrt(s + eps) (DyNet's form)."""

    name = "rmsprop"
    slots = ("squares",)

    def __init__(self, pc: ParameterCollection, learning_rate: float = 0.001, eps: float = 1e-8,
                 rho: float = 0.9, **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)
        self.eps = float(eps)
        self.rho = float(rho)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        (s,) = state
        s *= self.rho
        s += (1.0 - self.rho) * np.square(g)
        _scaled_step(w, g, s, self.eps, self.learning_rate)


class AdamTrainer(Trainer):
    """Adam in DyNet's (and Kingma and Ba's efficient) form, at step t = `updates`:
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).

    t is the global step count, also for the touched rows of a sparsely updated table (as in
    DyNet), so a row first seen at step 100 gets almost no bias correction.
    weight_decay: decoupled (AdamW): w *= 1 - lr * weight_decay before the Adam step, on the
    rows being updated; `l2` is the coupled kind, added to the gradient.
    """

    name = "adam"
    slots = ("m", "v")

    def __init__(self, pc: ParameterCollection, learning_rate: float = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(pc, learning_rate, **options)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def _rule(self, w: np.ndarray, g: np.ndarray, state: list[np.ndarray]) -> None:
        m, v = state
        b1, b2, lr, t = self.beta_1, self.beta_2, self.learning_rate, self.updates
        if self.weight_decay:
            w *= 1.0 - lr * self.weight_decay
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        np.square(g, out=g)
        g *= 1.0 - b2
        v += g
        step = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        d = np.sqrt(v)
        d += self.eps
        np.divide(m, d, out=d)
        d *= step
        w -= d


TRAINERS: dict[str, type[Trainer]] = {
    cls.name: cls for cls in (SimpleSGDTrainer, MomentumSGDTrainer, AdagradTrainer,
                              AdadeltaTrainer, RMSPropTrainer, AdamTrainer)
}


def make_trainer(name: str, pc: ParameterCollection, **kwargs: Any) -> Trainer:
    """The trainer called `name` (sgd, momentum, adagrad, adadelta, rmsprop, adam) over pc."""
    cls = TRAINERS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown trainer {name!r}: use one of {', '.join(TRAINERS)}")
    return cls(pc, **kwargs)
