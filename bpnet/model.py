"""``Sequential``: a stack of layers with Keras's training API on an explicit backward pass."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np

from .backends import get_backend
from .callbacks import CallbackList, ProgressBar
from .data import DataLoader, validate_xy
from .errors import ConfigError, DataError, NotBuiltError, ShapeError
from .history import History
from .layers.base import BuildContext, Layer, layer_from_config, layer_to_config
from .layers.fused import fuse_dense_activation
from .losses import get_loss
from .optim import get_optimizer

_ALIGN = 16   # parameter views start on 16-element boundaries of the flat buffer (SIMD-friendly)


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    Parameters
    ----------
    layers : list of layers.
    seed : one seed for everything random (initial weights, shuffling, dropout).
    dtype : "float32" (default) or "float64" (for gradient checks and teaching).
    backend : "numpy", "numba", "cupy" or None for the default (``$BPNET_BACKEND``,
        else numba when installed, else numpy).

    After ``build`` every parameter is a view into one flat array,
    ``flat_params`` (likewise ``flat_grads``), so an optimizer updates the whole
    model with one kernel call.
    """

    _anomaly = None   # an AnomalyChecker while NaN/Inf detection is on (see bpnet.doctor.anomaly)

    def __init__(self, layers=None, seed: int = 0, dtype="float32", backend=None, name=None):
        super().__init__(name or "sequential")
        self.layers: list[Layer] = list(layers or [])
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential expects bpnet layers, got {layer!r} ({type(layer).__name__})")
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ConfigError(f"dtype={dtype!r}: use 'float32', 'float64' or 'float16'")
        self.backend = get_backend(backend)
        init_seq, data_seq = np.random.SeedSequence(self.seed).spawn(2)
        self.init_rng = np.random.default_rng(init_seq)
        self.data_rng = np.random.default_rng(data_seq)
        self.flat_params = None
        self.flat_grads = None
        self.loss = None
        self.optimizer = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.skip_step = False      # set during a step (by a callback or the loss scaler) to veto the update
        self.loss_scaler = None     # a mixed_precision.LossScaler when compiled with one
        self.history = None
        self.preprocessor = None    # e.g. a fitted Standardizer, saved with the model

    def add(self, layer: Layer):
        if self.built:
            raise ConfigError("cannot add layers to a model that is already built")
        self.layers.append(layer)

    def sublayers(self):
        return self.layers

    # -- building ---------------------------------------------------------------
    def build(self, input_shape, ctx: BuildContext | None = None):
        """Create every layer's parameters for per-sample inputs of ``input_shape``.

        Called with no context on the outermost model, it also lays all
        parameters out in the flat buffers.
        """
        root = ctx is None
        if root:
            ctx = BuildContext(self.backend, self.dtype, self.init_rng)
        if not self.layers:
            raise ConfigError("the model has no layers")
        self.backend, self.dtype = ctx.backend, np.dtype(ctx.dtype)
        shape = self.input_shape = tuple(int(d) for d in input_shape)
        for layer in self.layers:
            shape = layer.build(shape, ctx)
        self.output_shape = tuple(shape)
        self.built = True
        self._steps = fuse_dense_activation(self.layers)
        if root:
            self._pack_parameters()
        return self.output_shape

    def to(self, backend) -> "Sequential":
        """Move the model (parameters, buffers, optimizer and loss-scaler state) to ``backend``.

        ``backend`` is "numpy", "numba", "cupy" or a backend object; returns self.
        The values are unchanged: only where they live and which kernels run.
        """
        new, old = get_backend(backend), self.backend
        if new is old:
            return self
        move = lambda a: new.asarray(old.to_numpy(a))       # noqa: E731 - device -> host -> device
        params = {n: old.to_numpy(o.params[k]).copy() for n, o, k in self.named_parameters()}
        buffers = {n: move(o.buffers[k]) for n, o, k in self.named_buffers()}
        scaler = getattr(self, "loss_scaler", None)
        master = None if scaler is None or scaler.master_params is None or not scaler.separate_master \
            else old.to_numpy(scaler.master_params).copy()
        for layer in self.walk():
            layer.backend = new
        for name, owner, key in self.named_parameters():
            owner.params[key] = params[name]
        for name, owner, key in self.named_buffers():
            owner.buffers[key] = buffers[name]
        if self.built:
            self._pack_parameters()
        if self.optimizer is not None:
            self.optimizer.state = {k: move(v) for k, v in self.optimizer.state.items()}
        if self.loss is not None:
            self.loss.backend = new
        if scaler is not None and self.built:
            scaler.master_params = scaler.master_grads = None
            scaler._ensure_master()
            if master is not None:
                scaler.master_params[...] = new.asarray(master)
        return self

    def _pack_parameters(self):
        """Move every parameter (and gradient) into one contiguous buffer, as views."""
        entries = list(self.named_parameters())
        offsets, total = [], 0
        for _, owner, key in entries:
            offsets.append(total)
            total += -(-owner.params[key].size // _ALIGN) * _ALIGN
        bk = self.backend
        self.flat_params = bk.zeros((total,), self.dtype)
        self.flat_grads = bk.zeros((total,), self.dtype)
        for (_, owner, key), start in zip(entries, offsets):
            p = owner.params[key]
            stop = start + p.size
            view = self.flat_params[start:stop].reshape(p.shape)
            view[...] = bk.asarray(p)
            owner.params[key] = view
            owner.grads[key] = self.flat_grads[start:stop].reshape(p.shape)

    def _input_mismatch(self, shape) -> str:
        dims = ", ".join(map(str, self.input_shape))
        return (f"{self.name}: its first layer '{self.layers[0].name}' was built for inputs of shape "
                f"(batch, {dims}) but got {shape}; pass samples of shape {self.input_shape}, as in the "
                "data the model was built or trained on, or build a new model for this data")

    def _require_built(self):
        if not self.built:
            raise NotBuiltError("the model is not built yet: call model.build(input_shape), "
                                "fit, or one forward pass first")

    # -- the explicit forward and backward passes -------------------------------------
    def forward(self, x, training: bool = False):
        if not self.built:
            self.build(tuple(x.shape[1:]))
        x = self.backend.asarray(x, dtype=self.dtype)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(self._input_mismatch(tuple(x.shape)))
        if self._anomaly is not None:           # the same loop, checking each output for NaN/Inf
            return self._anomaly.forward(self, x, training)
        for step in self._steps:               # the layers, with Dense + activation fused
            x = step.forward(x, training)
        return x

    def backward(self, dy):
        if self._anomaly is not None:
            return self._anomaly.backward(self, dy)
        for step in reversed(self._steps):
            dy = step.backward(dy)
        return dy

    @property
    def step_grads(self):
        """The flat gradients the optimizer steps with: ``flat_grads``, or under a
        loss scaler the unscaled float32 master gradients (what clipping and
        all-reduce must act on)."""
        scaler = self.loss_scaler
        if scaler is not None and scaler.master_grads is not None:
            return scaler.master_grads
        return self.flat_grads

    def parameters(self) -> dict:
        """``{name: array}`` for every parameter, e.g. ``"0.W"`` for the first layer's W."""
        return {name: owner.params[key] for name, owner, key in self.named_parameters()}

    def gradients(self) -> dict:
        return {name: owner.grads[key] for name, owner, key in self.named_parameters()}

    def clear_cache(self):
        """Drop what forward kept for backward (frees activation memory)."""
        for layer in self.walk():
            for attr in ("x", "y", "mask", "cache", "x_shape"):
                if getattr(layer, attr, None) is not None and layer is not self:
                    setattr(layer, attr, None)

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
        for m in metrics:
            if m != "accuracy":
                raise ConfigError(f"unknown metric {m!r}; bpnet computes 'accuracy'")
            if self.loss.kind != "classification":
                raise ConfigError(f"metric 'accuracy' needs a classification loss, not {type(self.loss).__name__}")
        self.metrics = list(metrics)
        return self

    def _require_compiled(self):
        if self.loss is None or self.optimizer is None:
            raise ConfigError("call model.compile(loss=..., optimizer=...) before fit/evaluate")

    def _prepare(self, X, y):
        """Validate data, build the model for it, and check the targets fit the loss."""
        if y is None:
            raise DataError("training and evaluation need targets: pass y, one per sample of X "
                            "(model.predict(X) gives the outputs without targets)")
        X, y = validate_xy(X, y)
        X = X.astype(self.dtype, copy=False)
        if not self.built:
            self.build(X.shape[1:])
        if tuple(X.shape[1:]) != self.input_shape:
            raise ShapeError(self._input_mismatch(tuple(X.shape)))
        self.loss.check_target(y, int(np.prod(self.output_shape)))
        if self.loss.kind == "regression" or y.ndim == 2:
            y = y.astype(self.dtype, copy=False)
        return X, y

    def train_step(self, xb, yb) -> tuple[float, object]:
        """One step of gradient descent on a batch; returns (loss, output)."""
        out = self.forward(xb, training=True)
        scaler = self.loss_scaler
        if scaler is None:
            loss = self.loss.forward(out, yb)
            if self._anomaly is not None:
                self._anomaly.check_loss(self, loss, out, yb)
            self.backward(self.loss.backward())
            return loss, out
        # mixed precision: the loss in float32, its gradient scaled and cast to the compute dtype
        loss = self.loss.forward(out.astype(scaler.master_dtype, copy=False), yb)
        if self._anomaly is not None:
            self._anomaly.check_loss(self, loss, out, yb)
        self.backward(scaler.scale_loss_grad(self.loss.backward()))
        scaler.unscale_grads()          # float32 gradients; on overflow sets skip_step
        return loss, out

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, distributed=False, doctor=False, detect_anomaly=False) -> History:
        """Train for ``epochs`` passes over (X, y); returns the :class:`History`.

        ``doctor=True`` (or a :class:`bpnet.doctor.Doctor`) checks data and model
        before training and diagnoses the run after every epoch, printing each
        finding once and keeping them in ``history.findings``.
        ``detect_anomaly=True`` stops at the first NaN/Inf with a
        :class:`~bpnet.errors.NonFiniteError` naming the layer, phase and rows.

        ``distributed=True`` (or an mpi4py communicator) trains data-parallel over
        MPI ranks, with ``batch_size`` per rank: see :mod:`bpnet.distributed`.
        """
        if distributed:
            from .distributed import DistributedTrainer
            trainer = DistributedTrainer(self, comm=None if distributed is True else distributed)
            return trainer.fit(X, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                               validation_split=validation_split, shuffle=shuffle, callbacks=callbacks,
                               verbose=verbose, initial_epoch=initial_epoch, doctor=doctor,
                               detect_anomaly=detect_anomaly)
        self._require_compiled()
        if doctor:
            from .doctor.callback import attach_doctor
            callbacks = attach_doctor(self, doctor, X, y, callbacks)
        X, y = self._prepare(X, y)
        X, y, validation_data = _split_validation(X, y, validation_split, validation_data)
        loader = DataLoader(X, y, batch_size=batch_size, shuffle=shuffle, rng=self.data_rng)
        cbs = CallbackList(list(callbacks or []) + ([ProgressBar(epochs, len(loader))] if verbose else []))
        cbs.set_model(self)
        self.history = history = History()
        self.stop_training = False
        with self._training_session(detect_anomaly):
            cbs.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                cbs.on_epoch_begin(epoch)
                logs = self._train_epoch(loader, cbs)
                if validation_data is not None:
                    val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                    logs.update({f"val_{k}": v for k, v in val.items()})
                history.append(epoch, logs)
                cbs.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            cbs.on_train_end()
        return history

    @contextmanager
    def _training_session(self, detect_anomaly=False):
        """What a training loop sets up, undone afterwards (also on error).

        The first layer skips dL/dX (nobody reads it), the loss trusts targets
        that were validated once up front, and anomaly mode is switched on if asked.
        """
        first = self.layers[0]
        first_needs_dx = getattr(first, "needs_input_grad", None)
        if first_needs_dx is not None:
            first.needs_input_grad = False
        self.loss.trusted = True
        restore_anomaly = None
        if detect_anomaly:
            from .doctor.anomaly import enable
            restore_anomaly = enable(self)
        try:
            yield
        finally:
            self.loss.trusted = False
            if restore_anomaly is not None:
                restore_anomaly()
            if first_needs_dx is not None:
                first.needs_input_grad = first_needs_dx

    def _batch_weight(self, n) -> float:
        """The weight of the last batch's loss in a mean over batches: its size, or the
        sum of the sample weights a class-weighted loss divided by."""
        w = self.loss.batch_weight
        return n if w is None else w

    def _train_epoch(self, loader, cbs) -> dict:
        total_loss, weight, correct, seen = 0.0, 0.0, 0, 0
        want_acc = "accuracy" in self.metrics
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(loader):
            cbs.on_batch_begin(i)
            yb_dev = self.backend.asarray(yb)
            loss, out = self.train_step(xb, yb_dev)
            cbs.on_backward_end(i, {"loss": loss})
            skipped, self.skip_step = self.skip_step, False
            if not skipped:
                self.optimizer.step()
                if self._anomaly is not None:
                    self._anomaly.check_update(self)
            n = len(xb)
            if not (skipped and not math.isfinite(loss)):    # a rolled-back bad batch is not counted
                w = self._batch_weight(n)
                total_loss += loss * w
                weight += w
                seen += n
                if want_acc:
                    correct += self.loss.count_correct(out, yb_dev)
            cbs.on_batch_end(i, {"loss": loss, "size": n, "skipped": skipped})
            if self.stop_training:
                break
        logs = {"loss": total_loss / weight if weight else (math.nan if seen else 0.0)}
        if want_acc:
            logs["accuracy"] = correct / max(seen, 1)
        logs["lr"] = float(self.optimizer.lr)
        logs["time"] = time.perf_counter() - start
        return logs

    def evaluate(self, X, y, batch_size: int = 256) -> dict:
        """Mean loss (and metrics) over (X, y) in evaluation mode, as a dict."""
        self._require_compiled()
        X, y = self._prepare(X, y)
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
        X, _ = validate_xy(X)
        X = X.astype(self.dtype, copy=False)
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

    def trace(self, x, print_fn=print):
        """Per-layer table of one batch: shape, dtype, min, max, mean, std, NaN/Inf count."""
        from .doctor.trace import trace
        return trace(self, x, print_fn=print_fn)

    def profile(self, X, y, steps: int = 20, print_fn=print):
        """Per-layer forward/backward time and activation memory of a training step."""
        from .profiler import profile
        return profile(self, X, y, steps=steps, print_fn=print_fn)

    # -- saving -----------------------------------------------------------------------
    def save(self, path):
        """Write architecture (JSON), weights and optimizer state to one ``.npz``, atomically."""
        from .io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path, backend=None) -> "Sequential":
        from .io import load_model
        return load_model(path, backend=backend)

    def get_config(self):
        return {"layers": [layer_to_config(layer) for layer in self.layers], "seed": self.seed,
                "dtype": self.dtype.name, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls([layer_from_config(spec) for spec in config["layers"]], seed=config.get("seed", 0),
                   dtype=config.get("dtype", "float32"), name=config.get("name"))

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n], seed={self.seed}, dtype={self.dtype.name}, backend={self.backend.name!r})"


def _split_validation(X, y, validation_split, validation_data):
    """Hold out the last ``validation_split`` of (X, y) unless validation data is given (Keras's rule)."""
    if not validation_split or validation_data is not None:
        return X, y, validation_data
    if not 0.0 < validation_split < 1.0:
        raise ConfigError(f"validation_split={validation_split} must be in (0, 1)")
    n_val = max(1, int(round(len(X) * validation_split)))
    return X[:-n_val], y[:-n_val], (X[-n_val:], y[-n_val:])
