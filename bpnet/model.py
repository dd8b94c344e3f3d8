"""``Sequential``: a :class:`~bpnet.container.LayerStack` with Keras's training API.

The container (layers, building, the flat parameter buffer, forward and
backward, ``to``) is :mod:`bpnet.container`; the training loop is
:mod:`bpnet.training`.  This module joins them under the names Keras users
know: ``compile``, ``fit``, ``evaluate``, ``predict``, ``summary``, ``save``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import numpy as np

from . import arguments, memory, training
from .casting import as_dtype
from .container import LayerStack
from .data import validate_xy
from .errors import ConfigError, DataError, ShapeError
from .losses import get_loss
from .optim import get_optimizer
from .validation import did_you_mean

_TOOLS: dict = {}


def register_model_tool(name: str, function):
    """Let a module built on the engine provide ``Sequential.<name>`` (``trace``, ``profile``)."""
    _TOOLS[name] = function


def _tool(name: str):
    if name not in _TOOLS:
        raise ConfigError(f"model.{name} is provided by a bpnet module that is not loaded; "
                          "`import bpnet` loads them all")
    return _TOOLS[name]


class Sequential(LayerStack):
    """Layers applied in order, trained with ``compile`` and ``fit``.

    Parameters
    ----------
    layers : list of layers.
    seed : one seed for everything random (initial weights, shuffling, dropout).
    dtype : "float32" (default) or "float64" (for gradient checks and teaching).
    backend : "numpy", "numba", "cupy", "auto", or None for the default (``$BPNET_BACKEND``,
        else "auto" when Numba is installed, else numpy).  "auto" starts on NumPy and moves
        to Numba when ``fit`` sees a run long enough to repay loading it.

    After ``build`` every parameter is a view into one flat array,
    ``flat_params`` (likewise ``flat_grads``), so an optimizer updates the whole
    model with one kernel call.
    """

    def __init__(self, layers=None, seed: int = 0, dtype="float32", backend=None, name=None):
        super().__init__(layers, seed=seed, dtype=dtype, backend=backend, name=name)
        self.loss = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.skip_step = False      # set during a step (by a callback or the loss scaler) to veto the update
        self.history = None
        self.preprocessor = None    # e.g. a fitted Standardizer, saved with the model
        self.apply_preprocessor = False   # True: fit/evaluate/predict pass raw X through the preprocessor

    def to(self, backend) -> "Sequential":
        super().to(backend)
        if self.loss is not None:
            self.loss.backend = self.backend
        return self

    # -- Keras-style training ---------------------------------------------------------
    def compile(self, loss="cross_entropy", optimizer="adam", metrics=None, loss_scaler=None):
        """Choose the loss (name or instance), the optimizer and the metrics.

        ``metrics=None`` means ``["accuracy"]`` for classification losses, none otherwise.
        ``loss_scaler`` (a :class:`bpnet.mixed_precision.LossScaler`) turns on mixed
        precision: float16 compute, float32 master weights, dynamic loss scaling.
        """
        self.loss = get_loss(loss)
        self.loss.backend = self.backend
        self.optimizer = get_optimizer(optimizer).bind(self)
        self.loss_scaler = None if loss_scaler is None else loss_scaler.bind(self)
        if metrics is None:
            metrics = ["accuracy"] if self.loss.kind == "classification" else []
        if isinstance(metrics, str):           # metrics="accuracy" means one metric, not the letters of one
            metrics = [metrics]
        for m in metrics:
            if m != "accuracy":
                raise ConfigError(f"unknown metric {m!r}{did_you_mean(m, ['accuracy'])}; bpnet computes 'accuracy'")
            if self.loss.kind != "classification":
                raise ConfigError(f"metric 'accuracy' needs a classification loss, not {type(self.loss).__name__}")
        self.metrics = list(metrics)
        return self

    def _require_compiled(self):
        if self.loss is None or self.optimizer is None:
            raise ConfigError("call model.compile(loss=..., optimizer=...) before fit/evaluate")

    def _prepare(self, X, y, names=("X", "y")):
        """Validate data, build the model for it, and check the targets fit the loss."""
        if y is None:
            raise DataError("training and evaluation need targets: pass y, one per sample of X "
                            "(model.predict(X) gives the outputs without targets)")
        X, y = validate_xy(X, y, name=names[0], y_name=names[1])
        X = as_dtype(X, self.dtype, names[0])          # refuses values the model's dtype cannot hold
        if not self.built:
            self.build(X.shape[1:])
        if tuple(X.shape[1:]) != self.input_shape:
            raise ShapeError(self._input_mismatch(tuple(X.shape)))
        self.loss.check_target(y, int(np.prod(self.output_shape)))
        if self.loss.kind == "regression" or y.ndim == 2:
            y = y.astype(self.dtype, copy=False)
        return X, y

    def train_step(self, xb, yb) -> tuple[float, object]:
        """Forward, loss and backward on one batch (no update); returns (loss, output)."""
        return training.train_step(self, xb, yb)

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, distributed=False, doctor=False, detect_anomaly=False):
        """Train for ``epochs`` passes over (X, y); returns the :class:`~bpnet.history.History`.

        ``doctor=True`` (or a :class:`bpnet.doctor.Doctor`) checks data and model
        before training and diagnoses the run after every epoch, printing each
        finding once and keeping them in ``history.findings``.
        ``detect_anomaly=True`` stops at the first NaN/Inf with a
        :class:`~bpnet.errors.NonFiniteError` naming the layer, phase and rows.
        ``distributed=True`` (or an mpi4py communicator) trains data-parallel over
        MPI ranks, with ``batch_size`` per rank: see :mod:`bpnet.distributed`.
        The three are plugins of the training loop (:mod:`bpnet.training`).
        ``doctor="repair"`` hands the run to :func:`bpnet.doctor.repair`: it trains,
        diagnoses, fixes the root cause and restarts until the doctor is quiet; this model
        becomes the repaired one and ``history.repair`` holds the report.
        """
        if isinstance(doctor, str) and doctor == "repair":
            if distributed:
                raise ConfigError("fit(doctor='repair') retrains on one process; repair the model first, "
                                  "then train it with distributed=True")
            return _tool("repair")(self, X, y, epochs=epochs, batch_size=batch_size,
                                   validation_data=validation_data, validation_split=validation_split,
                                   callbacks=callbacks, verbose=verbose)
        detached = nullcontext()
        if self.apply_preprocessor and self.preprocessor is not None:
            X = self._preprocess(X)
            if validation_data is not None:
                validation_data = (self._preprocess(validation_data[0]), *validation_data[1:])
            detached = self._preprocessor_detached()
        with detached:
            return training.fit(self, X, y, epochs=epochs, batch_size=batch_size,
                                validation_data=validation_data, validation_split=validation_split,
                                shuffle=shuffle, callbacks=callbacks, verbose=verbose,
                                initial_epoch=initial_epoch, distributed=distributed, doctor=doctor,
                                detect_anomaly=detect_anomaly)

    def _preprocess(self, X):
        """Raw inputs through ``preprocessor`` when ``apply_preprocessor`` is set (else unchanged)."""
        if not self.apply_preprocessor or self.preprocessor is None:
            return X
        return self.preprocessor.transform(X)

    @contextmanager
    def _preprocessor_detached(self):
        """While fit trains on inputs it already transformed, its validation passes must not
        transform them again."""
        self.apply_preprocessor = False
        try:
            yield
        finally:
            self.apply_preprocessor = True

    def _batch_weight(self, n) -> float:
        """The weight of the last batch's loss in a mean over batches: its size, or the
        sum of the sample weights a class-weighted loss divided by."""
        w = self.loss.batch_weight
        return n if w is None else w

    def evaluate(self, X, y, batch_size: int = 256) -> dict:
        """Mean loss (and metrics) over (X, y) in evaluation mode, as a dict."""
        self._require_compiled()
        batch_size = arguments.eval_batch_size(batch_size, "evaluate")
        X, y = self._prepare(self._preprocess(X), y)
        memory.require_memory(self, min(batch_size, len(X)), "evaluate", training=False)
        total, weight, correct = 0.0, 0.0, 0
        trusted, self.loss.trusted = self.loss.trusted, True
        try:
            for i in range(0, len(X), batch_size):
                xb, yb = X[i:i + batch_size], self.backend.asarray(y[i:i + batch_size])
                out = self.forward(xb, training=False)
                if self.loss_scaler is not None:      # mixed precision: the loss in float32
                    out = out.astype(self.loss_scaler.master_dtype, copy=False)
                loss = self.loss.forward(out, yb)
                w = self._batch_weight(len(xb))
                total += loss * w
                weight += w
                if "accuracy" in self.metrics:
                    correct += self.loss.count_correct(out, yb)
        finally:
            self.loss.trusted = trusted
        self.clear_cache()
        result = {"loss": total / weight if weight else math.nan}
        if "accuracy" in self.metrics:
            result["accuracy"] = correct / len(X)
        return result

    def predict(self, X, batch_size: int = 256) -> np.ndarray:
        """Model outputs for X (evaluation mode) as a host NumPy array."""
        batch_size = arguments.eval_batch_size(batch_size, "predict")
        X, _ = validate_xy(self._preprocess(X))
        if not self.built:
            self.build(X.shape[1:])
        outputs = 2 * len(X) * math.prod(self.output_shape) * self.dtype.itemsize   # the batches, then one array
        cast = 0 if X.dtype == self.dtype else X.size * self.dtype.itemsize
        memory.require_memory(self, min(batch_size, len(X)), "predict", training=False,
                              extra_bytes=outputs + cast)
        X = as_dtype(X, self.dtype)
        outs = [self.backend.to_numpy(self.forward(X[i:i + batch_size], training=False)).copy()
                for i in range(0, len(X), batch_size)]
        self.clear_cache()
        return np.concatenate(outs, axis=0)

    def predict_classes(self, X, batch_size: int = 256) -> np.ndarray:
        """Class labels (argmax of the logits, or logit > 0 for one binary output)."""
        out = self.predict(X, batch_size)
        return (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)

    # -- inspection -----------------------------------------------------------------
    def memory_estimate(self, batch_size: int) -> dict:
        """Bytes needed for parameters (+ grads + optimizer state) and one batch's activations."""
        from .summary import memory_estimate
        return memory_estimate(self, batch_size)

    def summary(self, batch_size: int = 32, print_fn=print) -> str:
        """A table of layers, output shapes and parameter counts, plus memory needs."""
        from .summary import summary_table
        text = summary_table(self, batch_size)
        if print_fn is not None:
            print_fn(text)
        return text

    def trace(self, x, print_fn=None):
        """Per-layer table of one batch: shape, dtype, min, max, mean, std, NaN/Inf count.

        Returns the rows as a table that shows itself (in a REPL, or with ``print``);
        ``print_fn=print`` prints it as well."""
        return _tool("trace")(self, x, print_fn=print_fn)

    def profile(self, X, y, steps: int = 20, print_fn=print):
        """Per-layer forward/backward time and activation memory of a training step."""
        return _tool("profile")(self, X, y, steps=steps, print_fn=print_fn)

    # -- saving -----------------------------------------------------------------------
    def save(self, path):
        """Write architecture (JSON), weights and optimizer state to one ``.npz``, atomically."""
        from .io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path, backend=None) -> "Sequential":
        from .io import load_model
        return load_model(path, backend=backend)
