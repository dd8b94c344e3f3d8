"""The callback protocol, and the progress bar.

A callback is told about the run at fixed points; it can read and change the
model (``self.model``), e.g. set ``model.optimizer.lr`` or
``model.stop_training = True``.  ``logs`` is a dict of the current numbers
(``loss``, ``accuracy``, ``val_loss``, ... ; ``on_batch_end`` gets the batch loss).
"""
from __future__ import annotations

import inspect
import math

from .errors import ConfigError, NonFiniteError


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass
    def on_backward_end(self, batch, logs=None):
        """After gradients are computed, before the optimizer step (clipping goes here)."""


class CallbackList(Callback):
    """Fans every event out to a list of callbacks, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = [c for c in callbacks if c is not None]

    def set_model(self, model):
        for c in self.callbacks:
            c.set_model(model)

    def _call(self, event, *args):
        for c in self.callbacks:
            getattr(c, event)(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_batch_begin(self, batch, logs=None): self._call("on_batch_begin", batch, logs)
    def on_batch_end(self, batch, logs=None): self._call("on_batch_end", batch, logs)
    def on_backward_end(self, batch, logs=None): self._call("on_backward_end", batch, logs)


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
        raise ConfigError(f"mode={mode!r}: use 'auto', 'min' or 'max'")
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class _Monitored(Callback):
    """Shared logic of callbacks that watch one number of the epoch logs."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = abs(float(min_delta))
        self.best = None
        self.label = None       # the owner's name in error messages, when used as a helper

    def _reset_best(self):
        self.best = math.inf if self.mode == "min" else -math.inf

    def _current(self, logs):
        logs = logs or {}
        if self.monitor not in logs:
            hint = " (pass validation_data or validation_split to fit)" if self.monitor.startswith("val_") else ""
            raise ConfigError(f"{self.label or type(self).__name__} monitors {self.monitor!r} but the epoch logs only "
                              f"have {sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def _improved(self, current) -> bool:
        if not _finite(current):
            return False
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


def _copy_into(dst, src):
    """Copy ``src`` into ``dst`` when shapes and dtypes agree (no allocation), else a fresh copy."""
    if dst is not None and dst.shape == src.shape and dst.dtype == src.dtype:
        dst[...] = src
        return dst
    return src.copy()


class TrainingState:
    """An in-memory copy of what a training step changes, restorable bit for bit.

    Holds the flat parameter buffer, every buffer (BatchNorm running
    statistics), and, with ``optimizer=True``, the optimizer's step count and
    state arrays (and the float32 master weights under mixed precision).
    Capturing again reuses the arrays, so a snapshot per step costs one memcpy
    of the parameters and optimizer state, no allocation.
    """

    def __init__(self, model, optimizer: bool = True):
        self.with_optimizer = optimizer
        self.params = self.master = None
        self.buffers: list = []
        self.opt_state: dict = {}
        self.opt_t = 0
        self.capture(model)

    def capture(self, model):
        self.params = _copy_into(self.params, model.flat_params)
        bufs = [owner.buffers[key] for _, owner, key in model.named_buffers()]
        if len(bufs) != len(self.buffers):
            self.buffers = [None] * len(bufs)
        self.buffers = [_copy_into(d, s) for d, s in zip(self.buffers, bufs)]
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None and scaler.master_params is not None and scaler.separate_master:
            self.master = _copy_into(self.master, scaler.master_params)
        if self.with_optimizer and model.optimizer is not None:
            self.opt_t = model.optimizer.t
            self.opt_state = {k: _copy_into(self.opt_state.get(k), v) for k, v in model.optimizer.state.items()
                              if v is not None}
        return self

    def restore(self, model):
        model.flat_params[...] = self.params
        for (_, owner, key), saved in zip(model.named_buffers(), self.buffers):
            owner.buffers[key][...] = saved
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None:
            if self.master is not None and scaler.master_params is not None:
                scaler.master_params[...] = self.master
            else:
                scaler.sync_from_model()
        if self.with_optimizer and model.optimizer is not None:
            model.optimizer.t = self.opt_t
            for k, state in model.optimizer.state.items():
                if state is not None:       # state created after the capture started out as zeros
                    state[...] = self.opt_state[k] if k in self.opt_state else 0
        return model


def _set_lr(model, lr: float):
    model.optimizer.lr = float(lr)


class EarlyStopping(_Monitored):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    An epoch improves when the value beats the best so far by more than
    ``min_delta`` (lower for ``mode="min"``, higher for ``"max"``; ``"auto"``
    picks max for accuracies).  With ``restore_best_weights=True`` the weights
    (and buffers) of the best epoch are put back when training ends.
    ``stopped_epoch`` and ``best_epoch`` say what happened (0-based; -1 if never).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)

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
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"ReduceLROnPlateau(factor={factor}) must be in (0, 1)")
        super().__init__(monitor, mode, min_delta)
        self.factor, self.patience = float(factor), int(patience)
        self.min_lr, self.cooldown = float(min_lr), int(cooldown)
        self.reductions: list = []

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


class GradientClipping(Callback):
    """``clip_grad_norm(model, max_norm)`` after every backward pass, before the step.

    The global norm *before* clipping is put in the step's logs as
    ``"grad_norm"`` (callbacks after this one can read it) and appended to
    ``norms``; ``clipped`` counts the steps where clipping acted.
    """

    def __init__(self, max_norm: float):
        if not max_norm > 0:
            raise ConfigError(f"GradientClipping(max_norm={max_norm}) must be positive")
        self.max_norm = float(max_norm)
        self.norms: list = []
        self.clipped = 0

    def on_backward_end(self, batch, logs=None):
        if self.model.skip_step:          # the step is vetoed (e.g. loss-scale overflow)
            return
        from .clip import clip_grad_norm
        norm = clip_grad_norm(self.model, self.max_norm)     # the master gradients under mixed precision
        self.norms.append(norm)
        self.clipped += norm > self.max_norm
        if logs is not None:
            logs["grad_norm"] = norm


class NaNGuard(Callback):
    """Roll back to the last good state when a step goes non-finite, cut the lr, and go on.

    After every backward pass (before the optimizer step) the batch loss and
    the gradients are checked.  If either holds a NaN or Inf:

    1. the last good state (weights, buffers, optimizer state) is restored bit
       for bit; "good" means its forward and backward passes were finite;
    2. the learning rate is multiplied by ``factor`` (and a schedule's base lr,
       ``optimizer.initial_lr``, with it);
    3. the bad batch's update is skipped (``model.skip_step``) and training continues.

    The good state is copied (in memory, into reused arrays) every
    ``snapshot_every`` good steps.  The ``max_restarts + 1``-th failure raises
    :class:`bpnet.NonFiniteError`: by then the cause is not the step size.
    ``events`` records each restart as a dict.

    A run that diverges grows for tens of steps before it reaches Inf, so the
    last finite state is already ruined.  ``loss_spike=k`` also counts a
    finite batch loss above k × the lowest smoothed loss so far (an
    exponential moving average, β = 0.9) as a failure, which rolls back while
    the damage is still small.  It is off by default: a well-fit model's
    loss can legitimately swing by large factors between batches.
    """

    def __init__(self, factor: float = 0.5, max_restarts: int = 3, snapshot_every: int = 1,
                 loss_spike: float | None = None):
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"NaNGuard(factor={factor}) must be in (0, 1)")
        if int(snapshot_every) < 1:
            raise ConfigError(f"NaNGuard(snapshot_every={snapshot_every}) must be >= 1")
        if loss_spike is not None and not loss_spike > 1:
            raise ConfigError(f"NaNGuard(loss_spike={loss_spike}) must be > 1 (or None)")
        self.factor, self.max_restarts = float(factor), int(max_restarts)
        self.snapshot_every = int(snapshot_every)
        self.loss_spike = None if loss_spike is None else float(loss_spike)
        self.snapshot = None
        self.events: list = []
        self.restarts = 0
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.restarts, self.events, self._good = 0, [], 0
        self._ema = self._ema_min = None
        self.snapshot = TrainingState(self.model)

    def _spiked(self, loss: float) -> bool:
        """Fold a finite loss into the moving average; True if it is a spike."""
        if self.loss_spike is None:
            return False
        if self._ema_min is not None and loss > self.loss_spike * self._ema_min:
            return True
        self._ema = loss if self._ema is None else 0.9 * self._ema + 0.1 * loss
        self._ema_min = self._ema if self._ema_min is None else min(self._ema_min, self._ema)
        return False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _grads_finite(self, logs) -> bool:
        if "grad_norm" in logs:
            return _finite(logs["grad_norm"])
        return self.model.backend.all_finite(self.model.step_grads)

    def on_backward_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        model = self.model
        loss = logs.get("loss")
        if model.skip_step and _finite(loss):
            return                    # already vetoed, e.g. a loss-scale overflow the scaler handles
        finite = _finite(loss) and self._grads_finite(logs)
        if finite and not self._spiked(float(loss)):
            if self._good % self.snapshot_every == 0:
                self.snapshot.capture(model)
            self._good += 1
            return
        self.restarts += 1
        opt = model.optimizer
        if self.restarts > self.max_restarts:
            what = "loss spiked" if finite else ("loss" if not _finite(loss) else "gradient") + " became non-finite"
            raise NonFiniteError(
                f"NaNGuard: the {what} again "
                f"(epoch {self.epoch}, batch {batch}) after {self.max_restarts} rollbacks that cut the "
                f"learning rate to {opt.lr:.3g}. A smaller step did not help, so look elsewhere: NaN/Inf "
                "in the data, log(0) in the loss, an exploding initialisation, or fp16 overflow. "
                "Run fit(..., detect_anomaly=True) to find the first layer that produces it")
        self.snapshot.restore(model)
        old = float(opt.lr)
        _set_lr(model, old * self.factor)
        if getattr(opt, "initial_lr", None) is not None:
            opt.initial_lr = float(opt.initial_lr) * self.factor
        model.skip_step = True
        self._good = 0
        self.events.append({"epoch": self.epoch, "batch": batch, "reason": "spike" if finite else "non-finite",
                            "loss": float(loss) if loss is not None else None,
                            "old_lr": old, "new_lr": float(opt.lr), "restored_step": self.snapshot.opt_t})


def _dense_layers(model, layers):
    """The Dense layers named by ``layers`` (None: all; ints index ``model.layers``; strs are names)."""
    resettable = lambda layer: hasattr(layer, "reset_parameters")  # noqa: E731
    if layers is None:
        return [layer for layer in model.walk() if resettable(layer) and layer is not model]
    if isinstance(layers, (int, str)):
        layers = [layers]
    chosen = []
    for spec in layers:
        if isinstance(spec, int):
            try:
                top = model.layers[spec]
            except IndexError:
                raise ConfigError(f"Reinitialize: layer index {spec} is out of range; the model has "
                                  f"{len(model.layers)} layers") from None
            found = [layer for layer in top.walk() if resettable(layer)]
        else:
            found = [layer for layer in model.walk() if layer.name == spec and resettable(layer)]
        if not found:
            raise ConfigError(f"Reinitialize: {spec!r} names no Dense layer of the model")
        chosen += [layer for layer in found if layer not in chosen]
    return chosen


def _address(a):
    iface = getattr(a, "__array_interface__", None) or a.__cuda_array_interface__
    return iface["data"][0]


def flat_slice(model, array):
    """The slice of ``model.flat_params`` that the parameter view ``array`` occupies."""
    start = (_address(array) - _address(model.flat_params)) // array.dtype.itemsize
    return slice(start, start + array.size)


class Reinitialize(Callback):
    """Re-draw the weights of all (or chosen) Dense layers, zero their biases and optimizer state.

    ``layers``: None for every Dense layer, or indices into ``model.layers`` /
    layer names.  ``when``:

    * ``"plateau"`` -- when ``monitor`` has not improved for ``patience`` epochs;
    * an int -- at the start of that epoch;
    * a callable ``f(epoch, logs) -> bool`` -- checked at the end of every epoch;
    * None -- only when :meth:`reinitialize` is called.

    At most ``max_times`` automatic re-initialisations happen; each is listed
    in ``events``.  Weights are drawn from the model's seeded generator, so
    runs stay reproducible.
    """

    def __init__(self, scheme: str = "he_normal", layers=None, when="plateau", monitor: str = "loss",
                 patience: int = 3, min_delta: float = 1e-4, max_times: int = 1):
        from . import init as initializers
        initializers.get_initializer(scheme)
        self.scheme, self.layers, self.when = scheme, layers, when
        self.plateau = _Monitored(monitor, "auto", min_delta)
        self.plateau.label = "Reinitialize(when='plateau')"
        self.patience, self.max_times = int(patience), int(max_times)
        self.events: list = []
        self.epoch = 0

    def set_model(self, model):
        super().set_model(model)
        self.plateau.set_model(model)

    def on_train_begin(self, logs=None):
        self.plateau._reset_best()
        self.wait = 0

    def _auto_allowed(self):
        return len(self.events) < self.max_times

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if isinstance(self.when, int) and not isinstance(self.when, bool) and epoch == self.when \
                and self._auto_allowed():
            self.reinitialize()

    def on_epoch_end(self, epoch, logs=None):
        if callable(self.when):
            if self._auto_allowed() and self.when(epoch, logs or {}):
                self.reinitialize()
        elif self.when == "plateau":
            current = self.plateau._current(logs)
            if self.plateau._improved(current):
                self.plateau.best, self.wait = current, 0
                return
            self.wait += 1
            if self.wait >= self.patience and self._auto_allowed():
                self.reinitialize()
                self.plateau._reset_best()
                self.wait = 0

    def reinitialize(self, model=None) -> list:
        """Re-initialise now; returns the names of the parameters that were reset."""
        model = model or self.model
        reset = []
        opt = model.optimizer
        for layer in _dense_layers(model, self.layers):
            layer.reset_parameters(model.init_rng, self.scheme)
            for key, view in layer.params.items():
                reset.append(next(n for n, owner, k in model.named_parameters() if owner is layer and k == key))
                if opt is not None and model.flat_params is not None:
                    sl = flat_slice(model, view)
                    for state in opt.state.values():
                        if state is not None:
                            state[sl] = 0
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None:
            scaler.sync_from_model()
        self.events.append({"epoch": self.epoch, "params": reset})
        return reset


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
