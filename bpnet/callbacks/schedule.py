"""Learning-rate schedules as callbacks."""
from __future__ import annotations

import inspect
import math

from ..errors import ConfigError
from .base import Callback, _set_lr


def checked_lr(lr, source: str, t: int) -> float:
    """``lr`` from a schedule as a float, or a ConfigError: a negative lr ascends the loss, NaN poisons it."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ConfigError(f"{source} returned {lr!r} at t={t}; a schedule must return a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source} returned the learning rate {value} at t={t}; it must be a finite number "
                          ">= 0 (a negative lr climbs the loss instead of descending it)")
    return value


class ScheduleCallback(Callback):
    """Sets the lr through ``_apply(t)``: t is the epoch, or with ``per_step`` the
    number of optimizer steps taken so far (before every batch)."""
    per_step = False

    def _apply(self, t):
        raise NotImplementedError

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_step:
            self._apply(epoch)

    def on_batch_begin(self, batch, logs=None):
        if self.per_step:
            self._apply(self.model.optimizer.t)


class LearningRateScheduler(ScheduleCallback):
    """Set the lr from ``schedule(epoch, lr)`` at the start of each epoch (Keras).

    With ``per_step=True`` it is ``schedule(step, lr)`` before every batch,
    where ``step`` is the number of optimizer steps taken so far.  A schedule
    taking one argument is called as ``schedule(epoch)``.  ``lrs`` lists the
    values set.
    """

    state_keys = ("lrs",)

    def __init__(self, schedule, per_step: bool | None = None):
        if not callable(schedule):
            raise ConfigError(f"LearningRateScheduler needs a callable, got {schedule!r}")
        # a bpnet Schedule maps (t, base lr) to an lr; called as schedule(t, current lr) every epoch it
        # would compound (cosine of a cosine ... down to ~0), so it is run as the callback it is
        self._delegate = schedule if isinstance(schedule, ScheduleCallback) else None
        if per_step is None:
            per_step = self._delegate.per_step if self._delegate is not None else False
        elif self._delegate is not None and bool(per_step) != self._delegate.per_step:
            raise ConfigError(f"LearningRateScheduler(per_step={per_step}) disagrees with the schedule's own "
                              f"per_step={self._delegate.per_step}; pass the schedule itself as a callback")
        self.schedule, self.per_step = schedule, bool(per_step)
        try:
            params = inspect.signature(schedule).parameters.values()
            self._two_args = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 2 \
                or any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):
            self._two_args = True
        self.lrs: list = []

    def set_model(self, model):
        super().set_model(model)
        if self._delegate is not None:
            self._delegate.set_model(model)

    def on_train_begin(self, logs=None):
        if self._delegate is not None:
            self._delegate.on_train_begin(logs)

    def _apply(self, t):
        opt = self.model.optimizer
        if self._delegate is not None:
            self._delegate._apply(t)
            self.lrs.append(float(opt.lr))
            return
        lr = self.schedule(t, opt.lr) if self._two_args else self.schedule(t)
        name = getattr(self.schedule, "__name__", self.schedule)
        lr = checked_lr(lr, f"LearningRateScheduler's schedule {name!r}", t)
        _set_lr(self.model, lr)
        self.lrs.append(lr)
