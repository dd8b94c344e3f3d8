"""Training control: stop early, cut the learning rate on a plateau, stop at the first NaN."""
from __future__ import annotations

from ..errors import ConfigError
from ..state import TrainingState
from ..validation import non_negative, whole
from .base import Callback, _finite, _Monitored, _set_lr, arrays_of, snapshot_from


class EarlyStopping(_Monitored):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    An epoch improves when the value beats the best so far by more than
    ``min_delta`` (lower for ``mode="min"``, higher for ``"max"``; ``"auto"``
    picks max for accuracies).  With ``restore_best_weights=True`` the weights
    (and buffers) of the best epoch are put back when training ends.
    ``stopped_epoch`` and ``best_epoch`` say what happened (0-based; -1 if never).
    """

    state_keys = ("best", "wait", "stopped_epoch", "best_epoch")

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        self.patience = whole(patience, "EarlyStopping(patience=...)", minimum=0)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.stopped_epoch = self.best_epoch = -1
        self.best_state = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_state": arrays_of(self.best_state, self.model)}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.best_state = snapshot_from(state.get("best_state"), self.model, optimizer=False)

    def on_train_begin(self, logs=None):
        self._reset_best()
        self.wait = 0
        self.stopped_epoch = self.best_epoch = -1
        self.best_state = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        self.wait += 1
        if self._improved(current):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                if self.best_state is None:
                    self.best_state = TrainingState(self.model, optimizer=False)
                else:
                    self.best_state.capture(self.model)
            return
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_state is not None:
            self.best_state.restore(self.model)


class ReduceLROnPlateau(_Monitored):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls (Keras semantics).

    After ``patience`` epochs without an improvement larger than ``min_delta``:
    lr ← max(lr · factor, min_lr), then wait ``cooldown`` epochs before
    counting again.  Every cut is listed in ``reductions`` as
    ``(epoch, old_lr, new_lr)``; the lr of each epoch is in ``history["lr"]``.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.5, patience: int = 3,
                 min_lr: float = 0.0, cooldown: int = 0, min_delta: float = 1e-4, mode: str = "auto"):
        if not 0.0 < non_negative(factor, "ReduceLROnPlateau(factor=...)") < 1.0:
            raise ConfigError(f"ReduceLROnPlateau(factor={factor}) must be in (0, 1)")
        super().__init__(monitor, mode, min_delta)
        self.factor = float(factor)
        self.patience = whole(patience, "ReduceLROnPlateau(patience=...)", minimum=0)
        self.min_lr = non_negative(min_lr, "ReduceLROnPlateau(min_lr=...)")
        self.cooldown = whole(cooldown, "ReduceLROnPlateau(cooldown=...)", minimum=0)
        self.reductions: list = []
        self.wait = self.cooldown_counter = 0

    state_keys = ("best", "wait", "cooldown_counter", "reductions")
    tuple_lists = ("reductions",)

    def on_train_begin(self, logs=None):
        self._reset_best()
        self.wait = self.cooldown_counter = 0

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.model.optimizer.lr)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    _set_lr(self.model, new)
                    self.reductions.append((epoch, old, new))
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss is NaN or Inf (``stopped_at = (epoch, batch)``).

    Batches that another callback already rolled back (``NaNGuard``) do not count.
    """

    state_keys = ("stopped_at",)

    def __init__(self):
        self.stopped_at = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        if not logs.get("skipped") and not _finite(logs.get("loss")):
            self.stopped_at = (self.epoch, batch)
            self.model.stop_training = True
