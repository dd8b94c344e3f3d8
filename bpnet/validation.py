"""Checks for settings at the entry points: numbers that must be finite, positive or whole, and names.

Each helper returns the value converted (a Python ``float`` or ``int``) or
raises :class:`~bpnet.errors.ConfigError` naming the setting, the bad value
and the allowed range.  ``what`` is how the message names the setting, e.g.
``"Adam(lr=...)"`` or ``"fit(epochs=...)"``.
"""
from __future__ import annotations

import difflib
import math
import numbers

import numpy as np

from .errors import ConfigError


def did_you_mean(name, choices) -> str:
    """' (did you mean 'adam'?)' for the closest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name, choices, hint: str = "") -> ConfigError:
    """The error for a name that is not one of ``choices``, with a suggestion."""
    return ConfigError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose one of "
                       f"{sorted(map(str, choices))}{hint}")


def real(value, what: str) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value}")
    return value


def positive(value, what: str) -> float:
    """A finite float > 0."""
    value = real(value, what)
    if not value > 0:
        raise ConfigError(f"{what} must be positive, got {value}")
    return value


def non_negative(value, what: str) -> float:
    """A finite float >= 0."""
    value = real(value, what)
    if value < 0:
        raise ConfigError(f"{what} must be >= 0, got {value}")
    return value


def whole(value, what: str, minimum: int | None = None) -> int:
    """An integer (2.0 is accepted, 2.5 and True are not), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or float(value) != int(value):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def batch_size(value, what: str = "batch_size") -> int:
    """A positive whole batch size."""
    return whole(value, what, minimum=1)


def weight_vector(values, what: str):
    """One finite, non-negative weight per class, not all zero, as a float64 array."""
    try:
        w = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers, one per class, got {values!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise ConfigError(f"{what} must be a 1-D list with one weight per class, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ConfigError(f"{what} holds NaN/Inf at classes {np.flatnonzero(~np.isfinite(w)).tolist()}")
    if (w < 0).any():
        raise ConfigError(f"{what} must be non-negative; class {int(np.argmax(w < 0))} has {w[w < 0][0]}")
    if not w.any():
        raise ConfigError(f"{what} are all zero: every sample would count for nothing (the loss is 0/0)")
    return w
