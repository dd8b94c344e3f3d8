"""The lab's training loop: ``fit`` written out, with a step budget and every signal recorded.

Every scenario trains through :func:`train`, so a broken run and its repair
differ only in their configuration.  The loop is the one in the README's
"by hand" tour plus the doctor's :class:`~bpnet.doctor.monitor.Monitor` (one
record per step in ``history.steps``) and the per-epoch numbers ``fit`` logs
(``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``)::

    out  = model.forward(xb, training=True)
    loss = loss_fn.forward(out, yb)
    model.backward(loss_fn.backward())
    monitor.on_backward_end(step, {"loss": loss})     # gradients, weights, activations
    opt.step()                                         # or a scenario's own update rule
    monitor.on_batch_end(step)                         # the update that was taken

Unlike ``fit`` it does not validate the data first (a scenario may feed NaNs
on purpose), it stops ``stop_after_nonfinite`` steps after the first
non-finite loss, and it accepts ``update=`` to replace ``opt.step()`` (for
scenarios whose bug *is* the update rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..callbacks import Callback, CallbackList
from ..doctor._paths import leaf_layers
from ..doctor.anomaly import AnomalyCallback, enable
from ..doctor.monitor import Monitor
from ..errors import NonFiniteError
from ..history import History
from ..layers.activations import Activation
from ..training import Strategy, TrainingLoop, optimizer_step, train_step

PROBE_ROWS = 256          # samples used for the activation snapshot


@dataclass
class Run:
    """One training run of a scenario: what happened, in numbers.

    label : "broken", "repaired" or a variant's name.
    config : the configuration it ran with.
    history : per-epoch logs and per-step records (``history.steps``).
    step_loss : the loss of every step, in order (NaN/Inf kept).
    metrics : the run's numbers (``first_nonfinite_step``, ``val_accuracy``, ...).
    findings : what the doctor said about this run.
    activations : ``{"3 (ReLU)": values}``, each activation layer's outputs on a
        probe batch after training (for the histogram).
    initial_activations : the same before the first step.
    notes : lines of extra evidence (an anomaly report, a gradient-check table, an error).
    anomaly : the :class:`~bpnet.errors.NonFiniteError` from replaying the first
        non-finite step under ``detect_anomaly`` (None if every step was finite).
    """
    label: str
    config: dict
    history: History = field(default_factory=History)
    step_loss: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)
    activations: dict = field(default_factory=dict)
    initial_activations: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    anomaly: object = None
    model: object = field(default=None, repr=False)

    @property
    def codes(self) -> list[str]:
        return sorted({f.code for f in self.findings})


def first_nonfinite(values) -> int | None:
    """Index of the first NaN/Inf in ``values`` (None when all are finite)."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            return i
    return None


class _LabBatches(Strategy):
    """Batches from a permutation per epoch drawn from the scenario's own seed; no data checks."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))

    def prepare(self, loop, X, y):
        self.X, self.y = X, y

    def steps_per_epoch(self, loop) -> int:
        return -(-len(self.X) // loop.batch_size)

    def batches(self, loop, epoch):
        order = self.rng.permutation(len(self.X))
        for start in range(0, len(self.X), loop.batch_size):
            idx = order[start:start + loop.batch_size]
            yield self.X[idx], self.y[idx]


class _Recorder(Callback):
    """The lab's bookkeeping as a callback of the training loop.

    Records every step's loss; replays the first non-finite step under anomaly
    mode (``explain``); stops ``stop_after_nonfinite`` steps after the first
    non-finite loss, and at the end of the epoch that reaches the step budget.
    """

    def __init__(self, run: Run, steps: int, stop_after_nonfinite: int, explain: bool):
        self.run, self.steps = run, steps
        self.stop_after, self.explain = stop_after_nonfinite, explain
        self.bad_since = None

    def on_backward_end(self, batch, logs=None):
        model, run = self.model, self.run
        if self.explain and run.anomaly is None and not (math.isfinite(logs["loss"]) and
                                                         model.backend.all_finite(model.flat_grads)):
            run.anomaly = explain_nonfinite(model, *self.loop.batch)
            if run.anomaly is not None:
                run.notes.append(f"detect_anomaly at step {self.loop.step}: {run.anomaly}")

    def on_batch_end(self, batch, logs=None):
        value, step = float(logs["loss"]), self.loop.step
        self.run.step_loss.append(value)
        if not math.isfinite(value) and self.bad_since is None:
            self.bad_since = step
        if self.bad_since is not None and step + 1 - self.bad_since >= self.stop_after:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.loop.step >= self.steps:
            self.model.stop_training = True


def _lab_update(update):
    if update is None:
        return optimizer_step
    return lambda model, optimizer, step: update(model, optimizer, step)


def train(model, loss, optimizer, X, y, *, steps: int, batch_size: int = 64, seed: int = 0,
          validation_data=None, callbacks=(), update=None, monitor_every: int | None = None,
          stop_after_nonfinite: int = 3, loss_scaler=None, explain: bool | None = None, label: str = "run",
          config=None) -> Run:
    """Train ``model`` for at least ``steps`` optimizer steps on (X, y) and return a :class:`Run`.

    Training runs in whole epochs of bpnet's one training loop (the epoch that
    reaches ``steps`` is finished, so every logged epoch averages the same
    number of batches).
    ``update(model, optimizer, step)`` replaces ``optimizer.step()`` when given.
    With ``explain`` (default: only for the run labelled "broken") the first
    step whose loss or gradients are non-finite is replayed under the doctor's
    anomaly mode, and the error that names the layer and phase where NaN/Inf
    first appeared is kept in ``run.anomaly``.
    Batches are drawn from a permutation per epoch, from a generator seeded by
    ``seed``, so the same seed gives the same run.  The monitor records every
    ``monitor_every`` steps (default: often enough for about 100 records).
    """
    explain = (label == "broken") if explain is None else explain
    model.compile(loss=loss, optimizer=optimizer, loss_scaler=loss_scaler)
    Xc = np.asarray(X).astype(model.dtype, copy=False)
    if not model.built:
        model.build(Xc.shape[1:])
    run = Run(label, dict(config or {}), model=model)
    monitor = Monitor(every=monitor_every or max(1, steps // 100))
    recorder = _Recorder(run, steps, stop_after_nonfinite, explain)
    loop = TrainingLoop(model, [recorder, monitor, *callbacks], epochs=2 ** 62, batch_size=batch_size,
                        strategy=_LabBatches(seed), update=_lab_update(update),
                        evaluate=lambda Xv, yv: evaluate(model, Xv, yv), trust_targets=False)
    run.initial_activations = activation_snapshot(model, Xc[:PROBE_ROWS])
    with np.errstate(all="ignore"):
        run.history = loop.run(Xc, np.asarray(y), validation_data)
        run.activations = activation_snapshot(model, Xc[:PROBE_ROWS])
    run.metrics.update(steps_run=loop.step, epochs_run=len(run.history),
                       first_nonfinite_step=first_nonfinite(run.step_loss),
                       final_loss=run.step_loss[-1] if run.step_loss else math.nan)
    return run


def explain_nonfinite(model, xb, yb):
    """Replay one training step (forward, loss, backward) under anomaly mode.

    Returns the :class:`~bpnet.errors.NonFiniteError` that names where NaN/Inf
    first appeared, or None.  The replay recomputes the same gradients from the
    same weights, so the run goes on unchanged.
    """
    scaler = model.loss_scaler
    saved = (model.skip_step, None if scaler is None else (scaler.scale, scaler.good_steps, scaler.overflows))
    checker, restore = enable(model)
    try:
        checks = CallbackList([AnomalyCallback(checker)])
        checks.set_model(model)
        train_step(model, xb, yb, checks)          # the loop's own step, its loss checked too
    except NonFiniteError as err:
        return err
    finally:
        restore()
        model.skip_step = saved[0]
        if scaler is not None:
            scaler.scale, scaler.good_steps, scaler.overflows = saved[1]
    return None


def evaluate(model, X, y) -> dict:
    """``model.evaluate`` that reports NaN instead of raising on a broken model."""
    with np.errstate(all="ignore"):
        X = np.asarray(X).astype(model.dtype, copy=False)
        out = model.forward(X, training=False)
        if model.loss_scaler is not None:
            out = out.astype(model.loss_scaler.master_dtype)
        trusted, model.loss.trusted = model.loss.trusted, True
        try:
            result = {"loss": float(model.loss.forward(out, model.backend.asarray(y)))}
        finally:
            model.loss.trusted = trusted
        if "accuracy" in model.metrics:
            pred = model.backend.to_numpy(model.loss.predict_labels(out)).ravel()
            result["accuracy"] = float((pred == np.asarray(model.loss.true_labels(np.asarray(y))).ravel()).mean())
        model.clear_cache()
    return result


def predict_labels(model, X) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = model.forward(np.asarray(X).astype(model.dtype, copy=False), training=False)
        labels = model.backend.to_numpy(model.loss.predict_labels(out)).ravel()
    model.clear_cache()
    return labels


def activation_snapshot(model, x) -> dict:
    """Outputs of every activation layer on the probe batch ``x`` (evaluation mode)."""
    with np.errstate(all="ignore"):
        model.forward(x, training=False)
        out = {}
        for path, layer in leaf_layers(model):
            y = getattr(layer, "y", None)
            if isinstance(layer, Activation) and y is not None:
                out[f"{path} ({type(layer).__name__})"] = np.asarray(model.backend.to_numpy(y),
                                                                     dtype=np.float64).ravel()
        model.clear_cache()
    return out


def step_series(run: Run, key: str) -> np.ndarray:
    """One per-step signal (e.g. ``"grad_norm/0"``) as an array, NaN where missing."""
    return np.asarray([float(r.get(key, math.nan)) for r in run.history.steps], dtype=np.float64)


def recall(y_true, y_pred, cls) -> float:
    """Fraction of the samples of class ``cls`` predicted as ``cls``."""
    mask = np.asarray(y_true) == cls
    return float((np.asarray(y_pred)[mask] == cls).mean()) if mask.any() else math.nan
