"""Checks of what ``fit``, ``evaluate`` and ``predict`` are given, before the first step.

Every bad argument is a bpnet error raised up front, not a silent no-op
(``epochs=-1`` trained nothing), a NaN (``evaluate(batch_size=-1)``), or an
error after a whole epoch (bad ``validation_data`` used to surface only when
the first validation ran, reported as if the training X were wrong).
"""
from __future__ import annotations

from .errors import BpnetError, ConfigError, DataError
from .validation import batch_size as _batch_size
from .validation import real, whole


def fit_arguments(epochs, batch_size, initial_epoch, validation_split):
    """(epochs, batch_size, initial_epoch) checked and converted."""
    epochs = whole(epochs, "fit(epochs=...)", minimum=1)
    batch_size = _batch_size(batch_size, "fit(batch_size=...)")
    initial_epoch = whole(initial_epoch, "fit(initial_epoch=...)", minimum=0)
    if initial_epoch >= epochs:
        raise ConfigError(f"fit(initial_epoch={initial_epoch}) must be below epochs={epochs}: epochs is the "
                          "index of the last epoch to train (Keras's rule), so nothing would train")
    split = real(validation_split, "fit(validation_split=...)")
    if not 0.0 <= split < 1.0:
        raise ConfigError(f"fit(validation_split={validation_split}) must be in [0, 1)")
    return epochs, batch_size, initial_epoch


def prepared_validation_data(model, validation_data):
    """``(X_val, y_val)`` validated like the training data and cast to the model's dtype.

    Messages say *validation data*, and they come before the first step.
    """
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)):
        raise DataError(f"fit(validation_data=...) must be a tuple (X_val, y_val), got "
                        f"{type(validation_data).__name__}")
    if len(validation_data) == 3:
        raise DataError("fit(validation_data=(X_val, y_val, sample_weight)): bpnet does not weight validation "
                        "samples; pass (X_val, y_val) (class weights of the loss apply to validation too)")
    if len(validation_data) != 2:
        raise DataError(f"fit(validation_data=...) must be a pair (X_val, y_val), got {len(validation_data)} items")
    X_val, y_val = validation_data
    try:
        return model._prepare(X_val, y_val, names=("validation data X_val", "validation data y_val"))
    except BpnetError as exc:
        text = str(exc)
        message = text if "validation data" in text else f"validation data: {text}"
        raise type(exc)(message) from exc


def eval_batch_size(batch_size, what: str) -> int:
    return _batch_size(batch_size, f"{what}(batch_size=...)")
