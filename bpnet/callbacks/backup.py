"""``BackupAndRestore``: a run interrupted anywhere resumes bit for bit at its last finished epoch.

What a resumed run needs beyond the model's own state (weights, buffers,
optimizer and loss-scaler state, every random generator, which
:func:`bpnet.io.model_state` already saves) is the training loop's position
and what the callbacks have seen::

    "training":  {"epoch": last finished epoch, "step": optimizer steps so far, "history": ...}
    "callbacks": {"<index>:<class>": callback.state_dict(), ...}

Callback states are JSON, except NumPy arrays (EarlyStopping's best weights,
NaNGuard's snapshot), which go into the ``.npz`` as ``callbacks/<index>:<class>/<key>``
and are referenced from the JSON as ``{"__array__": name}``.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError, ConfigError
from .base import Callback


def _key(index: int, callback) -> str:
    return f"{index}:{type(callback).__name__}"


def _split_arrays(value, name: str, arrays: dict):
    """``value`` with every NumPy array replaced by a reference to ``arrays[name...]``."""
    if isinstance(value, np.ndarray):
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, dict):
        return {k: _split_arrays(v, f"{name}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_split_arrays(v, f"{name}/{i}", arrays) for i, v in enumerate(value)]
    return value


def _join_arrays(value, arrays: dict):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            if value["__array__"] not in arrays:
                raise CheckpointError(f"the checkpoint has no entry {value['__array__']!r} for a callback's "
                                      "state; the file is damaged")
            return arrays[value["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays) for v in value]
    return value


def training_state(loop) -> tuple[dict, dict]:
    """(config entries, arrays): the loop's position, the history, and every callback's state."""
    arrays: dict = {}
    states = {}
    for i, cb in enumerate(loop.user_callbacks):
        if type(cb).state_dict is not Callback.state_dict or cb.state_keys:
            states[_key(i, cb)] = _split_arrays(cb.state_dict(), f"callbacks/{_key(i, cb)}", arrays)
    config = {"training": {"epoch": int(loop.epoch), "step": int(loop.step),
                           "history": loop.model.history.to_dict()},
              "callbacks": states}
    return config, arrays


def _matching_callbacks(loop, config: dict, name) -> dict:
    """``{key: callback}`` of this run, checked to hold every callback whose state was saved."""
    mine = {_key(i, cb): cb for i, cb in enumerate(loop.user_callbacks)}
    missing = sorted(set(config.get("callbacks", {})) - set(mine))
    if missing:
        raise ConfigError(f"{name}: the backup holds the state of callbacks {missing} but this run's callbacks "
                          f"are {sorted(mine)}; resume with the callbacks the interrupted run had, or delete "
                          "the backup to start over")
    return mine


def restore_training_state(loop, config: dict, arrays: dict, name):
    """Put the saved position, history and callback states back into a loop about to start."""
    from ..history import History
    mine = _matching_callbacks(loop, config, name)
    for key, state in config.get("callbacks", {}).items():
        mine[key].load_state_dict(_join_arrays(state, arrays))
    training = config["training"]
    history = History.from_dict(training["history"])
    model_history = loop.model.history
    model_history.epoch, model_history.history = history.epoch, history.history
    model_history.steps = history.steps
    loop.start_epoch = loop.epoch = training["epoch"] + 1
    loop.step = training["step"]


class BackupAndRestore(Callback):
    """Back the whole run up after every epoch; a restarted run resumes from the backup (Keras's name).

    At the end of every epoch the model (weights, buffers, optimizer and
    loss-scaler state, random generators), the epoch, the step count, the
    history and every callback's state are written atomically to
    ``backup_dir/backup.npz``.  When ``fit`` starts and a backup exists, all of
    it is restored and training continues at the epoch after the backed-up
    one, so a run killed anywhere and restarted with the same script ends
    bit for bit as if it had not been interrupted (shuffling, dropout and
    learning-rate schedules included).  When training finishes, the backup is
    deleted (``delete_checkpoint=False`` keeps it).  Only the root process
    writes under MPI.

    The backup runs after the other callbacks at each point (``runs_last``),
    so it holds their reaction to the epoch and restores them after they
    have reset themselves in ``on_train_begin``.
    """
    runs_last = True

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint: bool = True):
        if backup_dir is None or os.fspath(backup_dir) == "":
            raise ConfigError("BackupAndRestore(backup_dir=...) needs a directory to keep the backup in")
        if save_freq != "epoch":
            raise ConfigError(f"BackupAndRestore(save_freq={save_freq!r}): bpnet backs up at the end of every "
                              "epoch (save_freq='epoch'); a run interrupted mid-epoch repeats that epoch exactly")
        self.backup_dir = os.fspath(backup_dir)
        self.path = os.path.join(self.backup_dir, "backup.npz")
        self.delete_checkpoint = bool(delete_checkpoint)
        self.restored_epoch = None      # the epoch the last restore resumed after, or None

    def on_train_begin(self, logs=None):
        self.restored_epoch = None
        if not os.path.exists(self.path):
            return
        from ..io import read_checkpoint, restore_state
        config, arrays = read_checkpoint(self.path)
        if "training" not in config:
            raise CheckpointError(f"{self.path} is a model checkpoint but not a BackupAndRestore backup "
                                  "(no training position); move it away or pick another backup_dir")
        _matching_callbacks(self.loop, config, self.path)         # before anything is changed
        restore_state(self.model, config, arrays)
        restore_training_state(self.loop, config, arrays, self.path)
        self.restored_epoch = config["training"]["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        if not self.loop.strategy.is_root:
            return
        from ..io import save_model
        save_model(self.model, self.path, extra=training_state(self.loop))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self.loop.strategy.is_root and os.path.exists(self.path):
            os.unlink(self.path)
