"""``TensorBoard``: write a run's scalars and histograms as TensorBoard event files (Keras's callback).

    model.fit(X, y, epochs=20, validation_split=0.1,
              callbacks=[TensorBoard("logs/run1", histogram_freq=1)])
    # then: tensorboard --logdir logs

The event files are written by `tensorboardX <https://github.com/lanpa/tensorboardX>`_
(``pip install "bpnet-framework[tensorboard]"``), which needs neither
TensorFlow nor PyTorch.  As in Keras, training values go to ``log_dir/train``
and validation values to ``log_dir/validation`` under the same tags, so
TensorBoard draws ``epoch_loss`` of both on one chart.

Scalars (step = epoch, or the global batch for ``batch_*`` tags):

* ``epoch_loss``, ``epoch_<metric>`` for every logged metric (``accuracy`` ...),
  in ``train`` and ``validation``; ``epoch_learning_rate`` in ``train``;
* ``epoch_gradient_norm/<layer>``: the mean over the epoch's batches of
  ‖∂L/∂θ‖₂ over the layer's parameters (``total`` for the whole model);
* with ``update_freq="batch"`` or an integer N: ``batch_loss`` (and the
  gradient norms as ``batch_gradient_norm/<layer>``) every N batches.

Histograms, every ``histogram_freq`` epochs (0: none): ``weights/<param>``
(e.g. ``weights/0.W``) at the end of the epoch, and ``activations/<layer>``,
the output of every activation layer on the epoch's first training batch.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import ConfigError, MissingDependencyError
from ..layers.activations import Activation
from .base import Callback


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            "the TensorBoard callback writes event files with tensorboardX, which is not installed; "
            "run: pip install \"bpnet-framework[tensorboard]\" (or pip install tensorboardX)") from exc
    return SummaryWriter


class TensorBoard(Callback):
    """Log scalars and histograms for TensorBoard (Keras's ``keras.callbacks.TensorBoard`` arguments).

    log_dir : folder of the event files (``train/`` and ``validation/`` inside).
    histogram_freq : every how many epochs to write weight and activation
        histograms; 0 writes none.
    write_graph : write the architecture (``model.summary()``) to the Text
        tab.  A computation graph proper needs a TensorFlow GraphDef, which a
        NumPy network does not have.
    update_freq : ``"epoch"`` (the default), ``"batch"`` or an integer N:
        also write ``batch_*`` scalars every N batches.
    """

    def __init__(self, log_dir="logs", histogram_freq: int = 0, write_graph: bool = True,
                 update_freq="epoch"):
        if int(histogram_freq) < 0:
            raise ConfigError(f"TensorBoard(histogram_freq={histogram_freq}): use 0 (none) or a positive number "
                              "of epochs")
        if update_freq not in ("epoch", "batch") and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ConfigError(f"TensorBoard(update_freq={update_freq!r}): use 'epoch', 'batch' or a positive "
                              "number of batches")
        self._writer_class = _summary_writer_class()      # fail here, not after the first epoch
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = int(histogram_freq)
        self.write_graph = write_graph
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._writers = {}
        self._epoch = 0
        self._global_batch = 0
        self._grad_sums: dict = {}
        self._grad_count = 0
        self._activations: dict = {}

    # -- writers ----------------------------------------------------------------------
    def _writer(self, which: str):
        if which not in self._writers:
            self._writers[which] = self._writer_class(logdir=os.path.join(self.log_dir, which))
        return self._writers[which]

    def _close(self):
        for w in self._writers.values():
            w.close()
        self._writers = {}

    # -- callback hooks ---------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.write_graph and getattr(self.model, "built", False):
            text = self.model.summary(print_fn=None)
            self._writer("train").add_text("model/summary", "    " + text.replace("\n", "\n    "), 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._grad_sums, self._grad_count = {}, 0

    def on_backward_end(self, batch, logs=None):
        norms = self._gradient_norms()
        for key, value in norms.items():
            self._grad_sums[key] = self._grad_sums.get(key, 0.0) + value
        self._grad_count += 1
        if self._histograms_due() and batch == 0:
            self._activations = self._activation_outputs()
        if self.update_freq != "epoch" and self._global_batch % self.update_freq == 0:
            writer = self._writer("train")
            for key, value in norms.items():
                writer.add_scalar(f"batch_gradient_norm/{key}", value, self._global_batch)

    def on_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and self._global_batch % self.update_freq == 0 and logs:
            if "loss" in logs:
                self._writer("train").add_scalar("batch_loss", float(logs["loss"]), self._global_batch)
        self._global_batch += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train, val = self._writer("train"), None
        for key, value in logs.items():
            if key == "time":
                continue
            if key == "lr":
                train.add_scalar("epoch_learning_rate", float(value), epoch)
            elif key.startswith("val_"):
                val = val or self._writer("validation")
                val.add_scalar(f"epoch_{key[4:]}", float(value), epoch)
            else:
                train.add_scalar(f"epoch_{key}", float(value), epoch)
        if "lr" not in logs and getattr(self.model, "optimizer", None) is not None:
            train.add_scalar("epoch_learning_rate", float(self.model.optimizer.lr), epoch)
        for key, total in self._grad_sums.items():
            train.add_scalar(f"epoch_gradient_norm/{key}", total / max(1, self._grad_count), epoch)
        if self._histograms_due():
            self._write_histograms(train, epoch)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        self._close()

    # -- what is measured -------------------------------------------------------------
    def _histograms_due(self) -> bool:
        return self.histogram_freq > 0 and self._epoch % self.histogram_freq == 0

    def _gradient_norms(self) -> dict:
        """‖∂L/∂θ‖₂ per layer (parameters named ``"<layer>.<param>"``) and in total."""
        bk = self.model.backend
        squares: dict = {}
        for name, grad in self.model.gradients().items():
            if grad is None:
                continue
            g = np.asarray(bk.to_numpy(grad), dtype=np.float64)
            layer = name.rsplit(".", 1)[0]
            squares[layer] = squares.get(layer, 0.0) + float(np.sum(g * g))
        norms = {f"layer_{k}": math.sqrt(v) for k, v in squares.items()}
        if squares:
            norms["total"] = math.sqrt(sum(squares.values()))
        return norms

    def _activation_outputs(self) -> dict:
        bk = self.model.backend
        out = {}
        for i, layer in enumerate(self.model.layers):
            y = getattr(layer, "y", None)
            if isinstance(layer, Activation) and y is not None:
                out[f"{i}_{layer.name}"] = np.asarray(bk.to_numpy(y), dtype=np.float64).ravel()
        return out

    def _write_histograms(self, writer, epoch):
        bk = self.model.backend
        for name, param in self.model.parameters().items():
            _histogram(writer, f"weights/{name}", np.asarray(bk.to_numpy(param), dtype=np.float64), epoch)
        for name, values in self._activations.items():
            _histogram(writer, f"activations/{name}", values, epoch)
        self._activations = {}


def _histogram(writer, tag, values, step):
    """A histogram of the finite values (TensorBoard cannot bin NaN/Inf); nothing when none are."""
    finite = values[np.isfinite(values)]
    if finite.size:
        writer.add_histogram(tag, finite, step)


__all__ = ["TensorBoard"]
