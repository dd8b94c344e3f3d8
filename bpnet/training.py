"""The one training loop: epochs of steps, with extension points.

``Sequential.fit``, the MPI trainer, the failure lab and the repair loop all
run :class:`TrainingLoop`.  One step, and the points where others join in::

    callbacks.on_batch_begin(i)
    out  = model.forward(xb, training=True)         # observers see every layer step
    loss = model.loss.forward(out, yb)
    callbacks.on_loss_end(i, logs)                  # logs: loss, output, target
    model.backward(model.loss.backward())
    strategy.combine(loop, stats)                   # MPI: all-reduce the gradients and numbers
    callbacks.on_backward_end(i, logs)              # clipping, NaN guards, the doctor's monitor
    callbacks.on_update_begin(i, logs)
    update(model, optimizer, step)                  # optimizer.step(), or a lab's own rule
    callbacks.on_update_end(i, logs)
    callbacks.on_batch_end(i, logs)

and per epoch ``on_epoch_begin``/``on_epoch_end`` (after validation), per run
``on_train_begin``/``on_train_end``.  A callback or the loss scaler may veto
the update (``model.skip_step``) or end the run (``model.stop_training``).

What is not the loop's own business plugs in from above: a :class:`Strategy`
says where the batches come from and how the per-step numbers of several
processes combine (:mod:`bpnet.distributed` supplies one for MPI), and
``fit``'s options ``doctor=``, ``detect_anomaly=`` and ``distributed=`` are
plugins that the modules built on the engine register with
:func:`register_fit_option` (importing ``bpnet`` registers them all).  The
engine never imports them.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

from . import arguments, memory
from .callbacks import CallbackList, ProgressBar
from .data import DataLoader
from .errors import ConfigError
from .history import History

_FIT_OPTIONS: dict = {}
FIT_OPTION_ORDER = ("distributed", "detect_anomaly", "doctor")   # the strategy first: the others read it


def register_fit_option(name: str, plugin):
    """Make ``fit(..., name=value)`` call ``plugin(loop, value, X, y)`` before training.

    The plugin may add callbacks (``loop.callbacks``), observers
    (``loop.model.observers``), replace ``loop.strategy``, and register undo
    functions in ``loop.cleanups`` (run when training ends, also on error).
    """
    _FIT_OPTIONS[name] = plugin


def _apply_fit_options(loop, X, y, options: dict, names=FIT_OPTION_ORDER):
    for name in names:
        value = options.get(name)
        if not value:
            continue
        plugin = _FIT_OPTIONS.get(name)
        if plugin is None:
            raise ConfigError(f"fit({name}=...) is provided by a bpnet module that is not loaded; "
                              "`import bpnet` loads them all")
        plugin(loop, value, X, y)


@dataclass
class StepStats:
    """One step's numbers: its loss, and what the epoch's averages add up."""
    loss: float
    loss_sum: float = 0.0    # loss × weight
    weight: float = 0.0      # what the loss divided by: the batch size, or Σ class weights
    correct: float = 0.0
    count: int = 0
    stop: bool = False       # a stop asked for in the previous step (agreed between processes)


class Strategy:
    """One process: batches from a shuffled :class:`~bpnet.data.DataLoader`, numbers as they are."""
    is_root = True           # the process that prints and writes files
    stops_at_once = True     # ``model.stop_training`` ends the epoch after the current batch

    def prepare(self, loop, X, y):
        """Called once the data are validated, before ``on_train_begin``."""
        loop.loader = DataLoader(X, y, batch_size=loop.batch_size, shuffle=loop.shuffle,
                                 rng=loop.model.data_rng)

    def steps_per_epoch(self, loop) -> int:
        return len(loop.loader)

    def batches(self, loop, epoch):
        return iter(loop.loader)

    def begin_step(self, loop):
        pass

    def combine(self, loop, stats: StepStats) -> StepStats:
        return stats

    def end_epoch(self, loop):
        pass

    def evaluate(self, loop, X, y) -> dict:
        return loop.model.evaluate(X, y, batch_size=max(loop.batch_size, 256))

    def agree_to_stop(self, stop: bool) -> bool:
        return stop

    @contextmanager
    def guard(self, loop):
        """Around the whole of ``fit`` (the MPI strategy aborts every rank on an error)."""
        yield


def train_step(model, xb, yb, callbacks=None, batch: int = 0):
    """Forward, loss and backward on one batch; returns (loss, output).

    Under a loss scaler (mixed precision) the loss is taken in float32, its
    gradient scaled and cast to the compute dtype, and the float32 master
    gradients unscaled afterwards (an overflow sets ``model.skip_step``).
    """
    out = model.forward(xb, training=True)
    scaler = model.loss_scaler
    loss = model.loss.forward(out if scaler is None else out.astype(scaler.master_dtype, copy=False), yb)
    if callbacks is not None:
        callbacks.on_loss_end(batch, {"loss": loss, "output": out, "target": yb})
    d_out = model.loss.backward()
    if scaler is None:
        model.backward(d_out)
    else:
        model.backward(scaler.scale_loss_grad(d_out))
        scaler.unscale_grads()
    return loss, out


def optimizer_step(model, optimizer, step):
    optimizer.step()


class TrainingLoop:
    """Train a compiled model for epochs of steps; see the module docstring for the points.

    ``callbacks`` : the user's callbacks (a progress bar is added when ``verbose``).
    ``strategy`` : where batches come from and how processes combine (default: one process).
    ``update(model, optimizer, step)`` : the update rule (default ``optimizer.step()``).
    ``evaluate(X, y) -> dict`` : validation (default ``model.evaluate``).
    ``trust_targets`` : the targets were validated up front (``fit`` does), so
    the loss skips its per-batch label checks; False for data nobody checked.
    Callbacks see the loop as ``callback.loop``: ``epoch``, ``start_epoch``
    (which ``on_train_begin`` may move, e.g. to resume), ``step`` and ``batch``.
    """

    def __init__(self, model, callbacks=None, *, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
                 verbose: int = 0, initial_epoch: int = 0, strategy: Strategy | None = None,
                 update=optimizer_step, evaluate=None, trust_targets: bool = True):
        self.model = model
        self.user_callbacks = list(callbacks or [])
        self.epochs, self.batch_size, self.shuffle = int(epochs), batch_size, bool(shuffle)
        self.verbose = verbose
        self.start_epoch = self.epoch = int(initial_epoch)
        self.strategy = strategy or Strategy()
        self.update = update
        self.evaluate = evaluate
        self.trust_targets = bool(trust_targets)
        self.cleanups: list = []
        self.callbacks = CallbackList()
        self.step = 0
        self.batch = None        # the (xb, yb) of the current step
        self.loader = None
        self.validation_data = None   # as fit was given it, for plugins that check it (the doctor)

    # -- the run ------------------------------------------------------------------------
    def run(self, X, y, validation_data=None) -> History:
        """Train on (X, y), already validated and cast, and return the History."""
        model, strategy = self.model, self.strategy
        with self._session():
            strategy.prepare(self, X, y)
            bar = [ProgressBar(self.epochs, strategy.steps_per_epoch(self))] \
                if self.verbose and strategy.is_root else []
            cbs = self.callbacks = CallbackList(self.user_callbacks + bar)
            cbs.set_model(model)
            cbs.set_loop(self)
            model.history = history = History()
            model.stop_training = False
            model.skip_step = False
            cbs.on_train_begin()
            model.optimizer.check_dtype()      # float16 Adam without a loss scaler: after the doctor's first look
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                cbs.on_epoch_begin(epoch)
                logs = self._epoch(epoch)
                strategy.end_epoch(self)
                if validation_data is not None:
                    val = (self.evaluate or (lambda Xv, yv: strategy.evaluate(self, Xv, yv)))(*validation_data)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                history.append(epoch, logs)
                cbs.on_epoch_end(epoch, logs)
                model.stop_training = strategy.agree_to_stop(model.stop_training)
                if model.stop_training:
                    break
            cbs.on_train_end()
        return history

    @contextmanager
    def _session(self):
        """What training sets up, undone afterwards (also on error): the first layer skips
        dL/dX (nobody reads it), the loss trusts targets validated once up front (unless
        ``trust_targets`` is False), ``model.training_loop`` is this loop, and every plugin's
        cleanup runs."""
        model = self.model
        first = model.layers[0]
        first_needs_dx = getattr(first, "needs_input_grad", None)
        if first_needs_dx is not None:
            first.needs_input_grad = False
        trusted, model.loss.trusted = model.loss.trusted, self.trust_targets
        model.training_loop = self          # model.save during the run also saves the run's state
        try:
            yield
        finally:
            model.training_loop = None
            model.loss.trusted = trusted
            if first_needs_dx is not None:
                first.needs_input_grad = first_needs_dx
            for undo in reversed(self.cleanups):
                undo()
            self.cleanups.clear()

    def _epoch(self, epoch) -> dict:
        model, cbs, strategy = self.model, self.callbacks, self.strategy
        total_loss = weight = correct = seen = 0.0
        want_acc = "accuracy" in model.metrics
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(strategy.batches(self, epoch)):
            cbs.on_batch_begin(i)
            strategy.begin_step(self)
            self.batch = (xb, yb)
            stats = strategy.combine(self, self._local_step(i, xb, yb, want_acc))
            if stats.stop:                       # another process asked to stop in the previous step
                model.stop_training = True
                break
            logs = {"loss": stats.loss}
            cbs.on_backward_end(i, logs)
            skipped, model.skip_step = model.skip_step, False
            if not skipped:
                cbs.on_update_begin(i, logs)
                self.update(model, model.optimizer, self.step)
                cbs.on_update_end(i, logs)
            if not (skipped and not math.isfinite(stats.loss)):   # a rolled-back bad batch is not counted
                total_loss += stats.loss_sum
                weight += stats.weight
                correct += stats.correct
                seen += stats.count
            cbs.on_batch_end(i, {"loss": stats.loss, "size": int(stats.count), "skipped": skipped})
            self.step += 1
            if model.stop_training and strategy.stops_at_once:
                break
        logs = {"loss": total_loss / weight if weight else (math.nan if seen else 0.0)}
        if want_acc:
            logs["accuracy"] = correct / max(seen, 1)
        logs["lr"] = float(model.optimizer.lr)
        logs["time"] = time.perf_counter() - start
        return logs

    def _local_step(self, i, xb, yb, want_acc) -> StepStats:
        """This process's forward, loss and backward on its batch (which may be empty)."""
        model = self.model
        count = len(xb)
        if not count:                            # a short last batch left this process nothing
            model.step_grads[...] = 0
            return StepStats(loss=math.nan)
        yb = model.backend.asarray(yb)
        loss, out = train_step(model, xb, yb, self.callbacks, i)
        w = model._batch_weight(count)     # what the loss divided by: the count, or Σ class weights
        correct = float(model.loss.count_correct(out, yb)) if want_acc else 0.0
        return StepStats(loss=loss, loss_sum=loss * w, weight=w, correct=correct, count=count)


def split_validation(X, y, validation_split, validation_data):
    """Hold out the last ``validation_split`` of (X, y) unless validation data is given (Keras's rule).

    ``validation_split`` was checked to lie in [0, 1) with the other arguments; a split that
    would leave nothing to train on (0.999 of 100 rows holds out all 100) is refused here."""
    if not validation_split or validation_data is not None:
        return X, y, validation_data
    n_val = max(1, int(round(len(X) * validation_split)))
    if n_val >= len(X):
        raise ConfigError(f"fit(validation_split={validation_split}) holds out {n_val} of the {len(X)} "
                          "samples and leaves none to train on; use a smaller split")
    return X[:-n_val], y[:-n_val], (X[-n_val:], y[-n_val:])


def fit(model, X, y, epochs: int = 1, batch_size: int = 32, validation_data=None, validation_split: float = 0.0,
        shuffle: bool = True, callbacks=None, verbose: int = 1, initial_epoch: int = 0, strategy=None,
        **options):
    """``Sequential.fit``: validate the data, apply the plugins (``doctor=``, ...), run the loop."""
    model._require_compiled()
    epochs, batch_size, initial_epoch = arguments.fit_arguments(epochs, batch_size, initial_epoch, validation_split)
    loop = TrainingLoop(model, callbacks, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                        verbose=verbose, initial_epoch=initial_epoch, strategy=strategy)
    loop.validation_data = validation_data        # as given, for plugins that check it (the doctor)
    try:
        _apply_fit_options(loop, X, y, options, FIT_OPTION_ORDER[:1])     # may choose the strategy
        with loop.strategy.guard(loop):
            _apply_fit_options(loop, X, y, options, FIT_OPTION_ORDER[1:])
            X, y = model._prepare(X, y)
            X, y, validation_data = split_validation(X, y, validation_split, validation_data)
            validation_data = arguments.prepared_validation_data(model, validation_data)
            memory.require_memory(model, min(batch_size, len(X)), "fit")
            model.settle_backend((epochs - initial_epoch) * -(-len(X) // batch_size))
            return loop.run(X, y, validation_data)
    finally:
        for undo in reversed(loop.cleanups):     # plugins applied before the run began
            undo()
        loop.cleanups.clear()
