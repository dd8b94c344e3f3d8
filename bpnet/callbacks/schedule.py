"""Learning-rate schedules as callbacks."""
from __future__ import annotations

import inspect

from ..errors import ConfigError
from .base import Callback, _set_lr


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

    def __init__(self, schedule, per_step: bool = False):
        if not callable(schedule):
            raise ConfigError(f"LearningRateScheduler needs a callable, got {schedule!r}")
        self.schedule, self.per_step = schedule, bool(per_step)
        try:
            params = inspect.signature(schedule).parameters.values()
            self._two_args = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 2 \
                or any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):
            self._two_args = True
        self.lrs: list = []

    def _apply(self, t):
        opt = self.model.optimizer
        lr = self.schedule(t, opt.lr) if self._two_args else self.schedule(t)
        _set_lr(self.model, lr)
        self.lrs.append(float(lr))
