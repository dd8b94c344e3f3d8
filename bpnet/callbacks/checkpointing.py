"""Saving the model during training."""
from __future__ import annotations

from .base import _Monitored


class ModelCheckpoint(_Monitored):
    """Save the model after every epoch, or only when ``monitor`` improves.

    ``path`` may hold ``str.format`` fields from the epoch (1-based) and the
    logs, e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.  Each file is written
    atomically (temporary file, fsync, rename), so a crash mid-write leaves the
    previous checkpoint intact.  ``saved`` lists ``(epoch, path)``.
    """

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = str(path)
        self.save_best_only = bool(save_best_only)
        self.saved: list = []

    def on_train_begin(self, logs=None):
        if self.best is None:
            self._reset_best()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self._current(logs)
            if not self._improved(current):
                return
            self.best = current
        path = self.path.format(epoch=epoch + 1, **logs)
        self.model.save(path)
        self.saved.append((epoch, path))
