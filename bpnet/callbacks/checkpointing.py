"""Saving the model during training."""
from __future__ import annotations

import string

from ..errors import ConfigError
from .base import _Monitored


class ModelCheckpoint(_Monitored):
    """Save the model after every epoch, or only when ``monitor`` improves.

    ``path`` may hold ``str.format`` fields from the epoch (1-based) and the
    logs, e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``; a field the logs do
    not have is a ConfigError listing the ones they do, raised before
    anything is written.  Each file is written atomically (temporary file,
    fsync, rename), so a crash mid-write leaves the previous checkpoint intact.
    Besides the model, each file holds the epoch, the history and every
    callback's state (as :class:`~bpnet.callbacks.BackupAndRestore` does).
    ``saved`` lists ``(epoch, path)``.
    """
    runs_last = True            # save after the other callbacks have reacted to the epoch
    state_keys = ("best", "saved")
    tuple_lists = ("saved",)

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = str(path)
        if not self.path:
            raise ConfigError("ModelCheckpoint(path=...) is empty; pass a file name such as 'ckpt-{epoch:02d}.npz'")
        self.fields = _template_fields(self.path)
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
        path = self._format(epoch, logs)
        self.model.save(path)            # during fit this includes the run's state (epoch, callbacks)
        self.saved.append((epoch, path))

    def _format(self, epoch, logs) -> str:
        values = {**logs, "epoch": epoch + 1}
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise ConfigError(f"ModelCheckpoint path {self.path!r} names {missing}, which the epoch logs do not "
                              f"have; the available fields are {sorted(values)}")
        return self.path.format(**values)


def _template_fields(path: str) -> list:
    """The field names of a ``str.format`` path, checked: named fields with valid format specs only."""
    try:
        parsed = list(string.Formatter().parse(path))
    except ValueError as exc:
        raise ConfigError(f"ModelCheckpoint path {path!r} is not a valid format string: {exc}") from None
    fields = []
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name.isidentifier():
            raise ConfigError(f"ModelCheckpoint path {path!r} has the field {{{field}}}; name it, e.g. {{epoch}} "
                              "or {val_loss:.3f}")
        if not any(_formats(sample, spec) for sample in (1, 1.0, "x")):
            raise ConfigError(f"ModelCheckpoint path {path!r}: the format {{{field}:{spec}}} is invalid")
        fields.append(name)
    return fields


def _formats(sample, spec) -> bool:
    try:
        format(sample, spec or "")
    except ValueError:
        return False
    return True
