"""Callbacks that repair a run as it goes: clip gradients, roll back non-finite steps, re-initialise."""
from __future__ import annotations

import math

from .. import init as initializers
from ..clip import clip_grad_norm
from ..errors import ConfigError, NonFiniteError
from ..state import TrainingState
from ..validation import positive, real, whole
from .base import Callback, _finite, _Monitored, _set_lr, arrays_of, snapshot_from


class GradientClipping(Callback):
    """``clip_grad_norm(model, max_norm)`` after every backward pass, before the step.

    The global norm *before* clipping is put in the step's logs as
    ``"grad_norm"`` (callbacks after this one can read it) and appended to
    ``norms``; ``clipped`` counts the steps where clipping acted.
    """

    state_keys = ("norms", "clipped")

    def __init__(self, max_norm: float):
        self.max_norm = positive(max_norm, "GradientClipping(max_norm=...)")
        self.norms: list = []
        self.clipped = 0

    def on_backward_end(self, batch, logs=None):
        if self.model.skip_step:          # the step is vetoed (e.g. loss-scale overflow)
            return
        norm = clip_grad_norm(self.model, self.max_norm)     # the master gradients under mixed precision
        self.norms.append(norm)
        self.clipped += int(norm > self.max_norm)
        if logs is not None:
            logs["grad_norm"] = norm


class NaNGuard(Callback):
    """Roll back to the last healthy state when a step goes non-finite, cut the lr, and go on.

    After every backward pass (before the optimizer step) the batch loss and
    the gradient norm are checked.  If either is NaN or Inf:

    1. the last healthy state (weights, buffers, optimizer state) is restored
       bit for bit;
    2. the learning rate is multiplied by ``factor`` (and a schedule's base lr,
       ``optimizer.initial_lr``, with it);
    3. the bad batch's update is skipped (``model.skip_step``) and training continues.

    A run that diverges grows for tens of steps before it reaches Inf, so the
    last *finite* state is usually ruined already (weights of 1e11).  A state
    is therefore kept as the snapshot only when it is healthy: finite, with a
    batch loss and a gradient norm at most ``healthy_factor`` × their lowest
    moving averages so far (an exponential moving average, β = 0.9).  Steps
    above that are not failures, they are just not remembered, so rolling back
    goes to the state before the blow-up began.  ``healthy_factor=None``
    remembers every finite step.

    The healthy state is copied (in memory, into reused arrays) every
    ``snapshot_every`` healthy steps.  The ``max_restarts + 1``-th failure
    raises :class:`bpnet.NonFiniteError`: by then the cause is not the step
    size.  ``events`` records each restart as a dict.

    ``loss_spike=k`` also counts a finite batch loss above k × the lowest
    smoothed loss so far as a failure, which rolls back while the damage is
    still small.  It is off by default: a well-fit model's loss can
    legitimately swing by large factors between batches.
    """
    state_keys = ("restarts", "events", "_good", "_loss_ema", "_norm_ema")

    def __init__(self, factor: float = 0.5, max_restarts: int = 3, snapshot_every: int = 1,
                 loss_spike: float | None = None, healthy_factor: float | None = 10.0):
        if not 0.0 < real(factor, "NaNGuard(factor=...)") < 1.0:
            raise ConfigError(f"NaNGuard(factor={factor}) must be in (0, 1)")
        self.max_restarts = whole(max_restarts, "NaNGuard(max_restarts=...)", minimum=0)
        self.snapshot_every = whole(snapshot_every, "NaNGuard(snapshot_every=...)", minimum=1)
        for name, value in (("loss_spike", loss_spike), ("healthy_factor", healthy_factor)):
            if value is not None and not real(value, f"NaNGuard({name}=...)") > 1:
                raise ConfigError(f"NaNGuard({name}={value}) must be > 1 (or None)")
        self.factor = float(factor)
        self.loss_spike = None if loss_spike is None else float(loss_spike)
        self.healthy_factor = None if healthy_factor is None else float(healthy_factor)
        self.snapshot = None
        self.events: list = []
        self.restarts = self._good = 0
        self._loss_ema, self._norm_ema = _MinEMA(), _MinEMA()
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.restarts, self.events, self._good = 0, [], 0
        self._loss_ema = _MinEMA()
        self._norm_ema = _MinEMA()
        self.snapshot = TrainingState(self.model)

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["_loss_ema"], out["_norm_ema"] = vars(self._loss_ema), vars(self._norm_ema)
        return {**out, "snapshot": arrays_of(self.snapshot, self.model)}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self._loss_ema, self._norm_ema = _MinEMA(**self._loss_ema), _MinEMA(**self._norm_ema)
        self.snapshot = snapshot_from(state.get("snapshot"), self.model) or TrainingState(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _grad_norm(self, logs) -> float:
        if "grad_norm" in logs:                  # GradientClipping ran first and measured it
            return float(logs["grad_norm"])
        return math.sqrt(self.model.backend.sum_squares(self.model.step_grads))   # float64: no overflow

    def on_backward_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        model = self.model
        loss = logs.get("loss")
        if model.skip_step and _finite(loss):
            return                    # already vetoed, e.g. a loss-scale overflow the scaler handles
        norm = self._grad_norm(logs)
        finite = _finite(loss) and math.isfinite(norm)
        spiked = finite and self.loss_spike is not None and self._loss_ema.above(float(loss), self.loss_spike)
        if finite and not spiked:
            self._remember(float(loss), norm)
            return
        self._roll_back(batch, loss, finite, spiked)

    def _remember(self, loss: float, norm: float):
        """Snapshot the state if it is healthy (no loss or gradient-norm spike), every ``snapshot_every``."""
        k = self.healthy_factor
        healthy = k is None or not (self._loss_ema.above(loss, k) or self._norm_ema.above(norm, k))
        if self.loss_spike is not None or healthy:
            self._loss_ema.add(loss)
        if healthy:
            self._norm_ema.add(norm)
            if self._good % self.snapshot_every == 0:
                self.snapshot.capture(self.model)
            self._good += 1

    def _roll_back(self, batch, loss, finite: bool, spiked: bool):
        model, opt = self.model, self.model.optimizer
        self.restarts += 1
        if self.restarts > self.max_restarts:
            what = "loss spiked" if spiked else ("loss" if not _finite(loss) else "gradient") + " became non-finite"
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
        self.events.append({"epoch": self.epoch, "batch": batch, "reason": "spike" if spiked else "non-finite",
                            "loss": float(loss) if loss is not None else None,
                            "old_lr": old, "new_lr": float(opt.lr), "restored_step": self.snapshot.opt_t})


class _MinEMA:
    """An exponential moving average (β = 0.9) and the lowest value it has taken."""

    def __init__(self, ema=None, low=None):
        self.ema, self.low = ema, low

    def above(self, value: float, factor: float) -> bool:
        """True if ``value`` exceeds ``factor`` × the lowest average so far."""
        return self.low is not None and value > factor * self.low

    def add(self, value: float):
        self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        self.low = self.ema if self.low is None else min(self.low, self.ema)


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
        if not (when is None or when == "plateau" or callable(when)
                or (isinstance(when, int) and not isinstance(when, bool) and when >= 0)):
            raise ConfigError(f"Reinitialize(when={when!r}): use 'plateau', an epoch number, a callable "
                              "f(epoch, logs) -> bool, or None")
        self.scheme, self.layers, self.when = scheme, layers, when
        self.plateau = _Monitored(monitor, "auto", min_delta)
        self.plateau.label = "Reinitialize(when='plateau')"
        self.patience = whole(patience, "Reinitialize(patience=...)", minimum=1)
        self.max_times = whole(max_times, "Reinitialize(max_times=...)", minimum=0)
        self.events: list = []
        self.epoch = self.wait = 0

    state_keys = ("events", "wait")

    def set_model(self, model):
        super().set_model(model)
        self.plateau.set_model(model)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.plateau.best}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.plateau.best = state.get("best", self.plateau.best)

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
