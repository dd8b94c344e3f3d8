"""Callbacks that repair a run as it goes: clip gradients, roll back non-finite steps, re-initialise."""
from __future__ import annotations

from .. import init as initializers
from ..clip import clip_grad_norm
from ..errors import ConfigError, NonFiniteError
from ..state import TrainingState
from .base import Callback, _finite, _Monitored, _set_lr


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


def flat_slice(model, array):
    """The slice of ``model.flat_params`` that the parameter view ``array`` occupies."""
    address = model.backend.address
    start = (address(array) - address(model.flat_params)) // array.dtype.itemsize
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
