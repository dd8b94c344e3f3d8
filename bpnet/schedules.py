"""Learning-rate schedules, with PyTorch's closed-form formulas, usable as callbacks.

A schedule maps a step count t and the base learning rate η₀ to a learning
rate.  As a callback it sets ``model.optimizer.lr`` before every epoch
(t = epoch) or, with ``per_step=True``, before every batch (t = optimizer
steps taken so far, which checkpoints save, so a resumed run continues the
schedule where it stopped).

η₀ is ``base_lr`` when given, else the optimizer's lr when training first
starts; it is kept on the optimizer as ``initial_lr`` (as PyTorch does) and
saved with it.  Schedules can also be called directly: ``sched(t)`` is the lr at t.

=====================  ===========================================================
StepLR                 η₀ · γ^⌊t / step_size⌋
ExponentialLR          η₀ · γ^t
CosineAnnealing        η_min + (η₀ - η_min) · (1 + cos(π t / T_max)) / 2
  warm_restarts=True   same with t → t mod T_i, T_i = T_max · T_mult^i (SGDR)
LinearWarmup           η₀ · (s + (1 - s) · min(t, W) / W), then ``after`` at t - W
=====================  ===========================================================
"""
from __future__ import annotations

import math

from .callbacks import ScheduleCallback
from .callbacks.schedule import checked_lr
from .errors import ConfigError
from .validation import non_negative, positive, real, whole


class Schedule(ScheduleCallback):
    """Base class: subclasses define ``lr_at(t, base_lr)``."""

    def __init__(self, per_step: bool = False, base_lr: float | None = None):
        self.per_step = bool(per_step)
        self.base_lr = None if base_lr is None else positive(base_lr, f"{type(self).__name__}(base_lr=...)")

    def lr_at(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def __call__(self, t: int, base_lr: float | None = None) -> float:
        base = base_lr if base_lr is not None else self.base_lr
        if base is None:
            raise ConfigError(f"{type(self).__name__}: no base lr yet; pass base_lr or attach it to a model")
        return checked_lr(self.lr_at(int(t), float(base)), type(self).__name__, int(t))

    # -- as a callback ---------------------------------------------------------------
    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        if self.base_lr is not None:
            opt.initial_lr = self.base_lr
        elif getattr(opt, "initial_lr", None) is None:
            opt.initial_lr = float(opt.lr)

    def _apply(self, t):
        opt = self.model.optimizer
        opt.lr = self(t, opt.initial_lr)

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if k not in ("model",) and not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class StepLR(Schedule):
    """η₀ · γ^⌊t / step_size⌋: multiply by γ every ``step_size`` epochs (or steps)."""

    def __init__(self, step_size: int, gamma: float = 0.1, per_step: bool = False, base_lr=None):
        super().__init__(per_step, base_lr)
        self.step_size = whole(step_size, "StepLR(step_size=...)", minimum=1)
        self.gamma = non_negative(gamma, "StepLR(gamma=...)")

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(Schedule):
    """η₀ · γ^t."""

    def __init__(self, gamma: float, per_step: bool = False, base_lr=None):
        super().__init__(per_step, base_lr)
        self.gamma = non_negative(gamma, "ExponentialLR(gamma=...)")

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** t


class CosineAnnealing(Schedule):
    """Cosine decay from η₀ to ``eta_min`` over ``T_max`` epochs (steps).

    With ``warm_restarts=True`` this is SGDR (Loshchilov & Hutter), PyTorch's
    ``CosineAnnealingWarmRestarts(T_0=T_max, T_mult)``: the cosine restarts
    from η₀ after each cycle, and cycle i lasts T_max · T_mult^i.  Without
    restarts it is the closed form of ``CosineAnnealingLR``.
    """

    def __init__(self, T_max: int, eta_min: float = 0.0, warm_restarts: bool = False, T_mult: int = 1,
                 per_step: bool = False, base_lr=None):
        super().__init__(per_step, base_lr)
        self.T_max = whole(T_max, "CosineAnnealing(T_max=...)", minimum=1)
        self.T_mult = whole(T_mult, "CosineAnnealing(T_mult=...)", minimum=1)
        self.eta_min = non_negative(eta_min, "CosineAnnealing(eta_min=...)")
        self.warm_restarts = bool(warm_restarts)

    def cycle(self, t: int) -> tuple[int, int]:
        """(T_cur, T_i): position inside the current cycle and that cycle's length."""
        if not self.warm_restarts:
            return t, self.T_max
        T0, m = self.T_max, self.T_mult
        if m == 1:
            return t % T0, T0
        n = int(math.log(t / T0 * (m - 1) + 1, m))
        start = T0 * (m ** n - 1) // (m - 1)
        if t < start:                       # guard against log rounding at a cycle boundary
            n -= 1
        elif t >= start + T0 * m ** n:
            n += 1
        start = T0 * (m ** n - 1) // (m - 1)
        return t - start, T0 * m ** n

    def lr_at(self, t, base_lr):
        t_cur, t_i = self.cycle(t)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


class LinearWarmup(Schedule):
    """Ramp linearly from ``start_factor`` · η₀ to η₀ over ``warmup_steps``, then hand over.

    During warm-up this is PyTorch's ``LinearLR(start_factor, 1.0, total_iters=warmup_steps)``:
    η₀ · (s + (1 - s) · min(t, W) / W).  After it, ``after`` (another schedule)
    runs from its own t = 0, like ``SequentialLR(..., milestones=[W])``; without
    ``after`` the lr stays at η₀.
    """

    def __init__(self, warmup_steps: int, after: Schedule | None = None, start_factor: float = 1 / 3,
                 per_step: bool = False, base_lr=None):
        super().__init__(per_step, base_lr)
        warmup_steps = whole(warmup_steps, "LinearWarmup(warmup_steps=...)", minimum=1)
        if not 0.0 <= real(start_factor, "LinearWarmup(start_factor=...)") <= 1.0:
            raise ConfigError(f"LinearWarmup(start_factor={start_factor}) must be in [0, 1]")
        if after is not None and not isinstance(after, Schedule):
            raise ConfigError(f"LinearWarmup(after=...) must be a bpnet schedule, got {after!r}")
        self.warmup_steps, self.after, self.start_factor = int(warmup_steps), after, float(start_factor)

    def lr_at(self, t, base_lr):
        W, s = self.warmup_steps, self.start_factor
        if t < W or self.after is None:
            return base_lr * (s + (1.0 - s) * min(t, W) / W)
        return self.after.lr_at(t - W, base_lr)


__all__ = ["Schedule", "StepLR", "ExponentialLR", "CosineAnnealing", "LinearWarmup"]
