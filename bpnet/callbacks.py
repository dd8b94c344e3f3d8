"""The callback protocol, and the progress bar.

A callback is told about the run at fixed points; it can read and change the
model (``self.model``), e.g. set ``model.optimizer.lr`` or
``model.stop_training = True``.  ``logs`` is a dict of the current numbers
(``loss``, ``accuracy``, ``val_loss``, ... ; ``on_batch_end`` gets the batch loss).
"""
from __future__ import annotations


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
