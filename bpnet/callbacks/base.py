"""The callback protocol, the progress bar, and the helpers of callbacks that watch one logged number.

A callback is told about the run at fixed points; it can read and change the
model (``self.model``), e.g. set ``model.optimizer.lr`` or
``model.stop_training = True``.  ``logs`` is a dict of the current numbers
(``loss``, ``accuracy``, ``val_loss``, ... ; ``on_batch_end`` gets the batch loss)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..state import TrainingState
from ..validation import did_you_mean, real


EVENTS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
          "on_batch_end", "on_loss_end", "on_backward_end", "on_update_begin", "on_update_end")


class Callback:
    """Told about the run at the training loop's points (see :mod:`bpnet.training`).

    ``self.model`` is the model; ``self.loop`` the :class:`~bpnet.training.TrainingLoop`
    running it (``epoch``, ``start_epoch``, ``step``, ``batch``), or None outside ``fit``.

    A callback whose decisions depend on what it has seen (counters, the best
    value so far) lists those attributes in ``state_keys``; ``state_dict()``
    and ``load_state_dict()`` save and restore them (JSON-able values, NumPy
    arrays allowed), so checkpoints and :class:`~bpnet.callbacks.BackupAndRestore`
    resume it exactly.  ``runs_last = True`` callbacks (the ones that write
    checkpoints) are told about each event after all the others, so what they
    save includes every other callback's reaction to the epoch.
    """
    model = None
    loop = None
    state_keys: tuple = ()
    tuple_lists: tuple = ()     # state_keys holding lists of tuples (JSON turns tuples into lists)
    runs_last = False

    def state_dict(self) -> dict:
        """The callback's state: ``{name: value}`` for each of ``state_keys``."""
        return {key: _plain(getattr(self, key, None)) for key in self.state_keys}

    def load_state_dict(self, state: dict):
        """Restore what :meth:`state_dict` returned (missing keys are left as they are)."""
        for key in self.state_keys:
            if key in state:
                value = state[key]
                setattr(self, key, [tuple(v) for v in value] if key in self.tuple_lists else value)

    def set_model(self, model):
        self.model = model

    def set_loop(self, loop):
        self.loop = loop

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass

    def on_loss_end(self, batch, logs=None):
        """After the loss, before backward; ``logs`` has ``loss``, ``output`` and ``target``."""

    def on_backward_end(self, batch, logs=None):
        """After gradients are computed, before the optimizer step (clipping goes here)."""

    def on_update_begin(self, batch, logs=None):
        """Just before the update (not called when the step was vetoed)."""

    def on_update_end(self, batch, logs=None):
        """Just after the update."""


class CallbackList(Callback):
    """Fans every event out to a list of callbacks, in order.

    Each event calls only the callbacks that override it, so an unused
    point costs a loop over an empty list.
    """

    def __init__(self, callbacks=()):
        given = [c for c in callbacks if c is not None]
        last = [c for c in given if getattr(c, "runs_last", False)]
        self.callbacks = [c for c in given if c not in last] + last
        self._listeners = {event: [getattr(c, event) for c in self.callbacks
                                   if _overrides(c, event)] for event in EVENTS}

    def set_model(self, model):
        for c in self.callbacks:
            c.set_model(model)

    def set_loop(self, loop):
        for c in self.callbacks:
            c.set_loop(loop)

    def _call(self, event, *args):
        for method in self._listeners[event]:
            method(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_batch_begin(self, batch, logs=None): self._call("on_batch_begin", batch, logs)
    def on_batch_end(self, batch, logs=None): self._call("on_batch_end", batch, logs)
    def on_loss_end(self, batch, logs=None): self._call("on_loss_end", batch, logs)
    def on_backward_end(self, batch, logs=None): self._call("on_backward_end", batch, logs)
    def on_update_begin(self, batch, logs=None): self._call("on_update_begin", batch, logs)
    def on_update_end(self, batch, logs=None): self._call("on_update_end", batch, logs)


def _plain(value):
    """``value`` with tuples as lists and NumPy scalars as Python numbers (arrays stay arrays)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def arrays_of(snapshot, model):
    """A :class:`~bpnet.state.TrainingState`'s arrays as host copies (None for none), for ``state_dict``."""
    if snapshot is None:
        return None
    out = {name: np.array(model.backend.to_numpy(a)) for name, a in snapshot.arrays.items()}
    out["opt_t"] = np.asarray(snapshot.opt_t)
    return out


def snapshot_from(arrays, model, optimizer: bool = True):
    """Inverse of :func:`arrays_of`: a TrainingState of ``model`` holding the saved arrays."""
    if arrays is None:
        return None
    snap = TrainingState(model, optimizer=optimizer)
    for name, live in snap.arrays.items():
        if name in arrays:
            live[...] = model.backend.asarray(arrays[name], dtype=live.dtype)
    snap.opt_t = int(arrays.get("opt_t", 0))
    return snap


def _overrides(callback, event) -> bool:
    """True unless ``callback``'s ``event`` is the base class's no-op (nested lists always count)."""
    if isinstance(callback, CallbackList) or event in vars(callback):
        return True
    return getattr(type(callback), event, None) is not getattr(Callback, event)


class ProgressBar(Callback):
    """A tqdm bar per epoch showing the running loss (``verbose=1`` in ``fit``)."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                        leave=True, dynamic_ncols=True)

    def on_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch % 10 == 0 and logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items() if k != "time"},
                                 refresh=False)
            self.bar.close()


# --------------------------------------------------------------------------- training control


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"mode={mode!r}{did_you_mean(mode, ('auto', 'min', 'max'))}: use 'auto', 'min' or 'max'")
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class _Monitored(Callback):
    """Shared logic of callbacks that watch one number of the epoch logs."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"{type(self).__name__}(monitor={monitor!r}) must name a logged number, e.g. 'val_loss'")
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = abs(real(min_delta, f"{type(self).__name__}(min_delta=...)"))
        self.best = None
        self.label = None       # the owner's name in error messages, when used as a helper

    def _reset_best(self):
        self.best = math.inf if self.mode == "min" else -math.inf

    def _current(self, logs):
        logs = logs or {}
        if self.monitor not in logs:
            hint = " (pass validation_data or validation_split to fit)" if self.monitor.startswith("val_") else ""
            raise ConfigError(f"{self.label or type(self).__name__} monitors {self.monitor!r}"
                              f"{did_you_mean(self.monitor, logs)} but the epoch logs only have {sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def _improved(self, current) -> bool:
        if not _finite(current):
            return False
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


def _set_lr(model, lr: float):
    model.optimizer.lr = float(lr)
