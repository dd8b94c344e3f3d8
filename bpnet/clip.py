"""Gradient clipping, with PyTorch's names and semantics."""
from __future__ import annotations

import math

from .backends import get_backend
from .errors import ConfigError, NonFiniteError


def _grad_arrays(target):
    """(backend, list of gradient arrays) for a model, a layer or a list of arrays.

    Under mixed precision a model's ``flat_grads`` hold the *scaled* float16
    gradients; the optimizer reads the unscaled float32 ``master_grads``, so
    those are what clipping measures and rescales.
    """
    if getattr(target, "flat_grads", None) is not None:
        return target.backend, [target.step_grads]
    if hasattr(target, "named_parameters"):
        grads = [owner.grads[key] for _, owner, key in target.named_parameters()]
        return (target.backend or get_backend("numpy")), grads
    grads = list(target.values()) if isinstance(target, dict) else list(target)
    return get_backend("numpy"), grads


def clip_grad_norm(target, max_norm: float, error_if_nonfinite: bool = False) -> float:
    r"""Rescale all gradients together so their global L2 norm is at most ``max_norm``.

    ‖g‖ = √(Σ_tensors Σ g²);  f = max_norm / (‖g‖ + 1e-6);  if f < 1: g ← f · g
    (PyTorch's rule).  The direction of the update is kept; only its length is
    capped.  A NaN/Inf norm leaves the gradients as they are.  Returns the norm
    *before* clipping (log it: a rising norm is the early sign of exploding
    gradients).  ``target`` is a model, a layer, or a list/dict of arrays.
    """
    if not max_norm >= 0:
        raise ConfigError(f"clip_grad_norm(max_norm={max_norm}): max_norm must be >= 0 "
                          "(a negative factor would flip the gradients into an ascent step)")
    bk, grads = _grad_arrays(target)
    if len(grads) == 1:                       # the flat buffer: norm and clip in one pass
        norm = bk.clip_norm_(grads[0], float(max_norm))
    else:
        norm = math.sqrt(sum(bk.sum_squares(g) for g in grads))
        factor = max_norm / (norm + 1e-6)
        if math.isfinite(norm) and factor < 1.0:
            for g in grads:
                bk.scale_(g, factor)
    if not math.isfinite(norm) and error_if_nonfinite:
        raise NonFiniteError(
            f"the total gradient norm is {norm}; clipping cannot repair NaN/Inf gradients. "
            "Run with detect_anomaly=True to find the layer that produced them")
    return float(norm)


def clip_grad_value(target, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    if not clip_value >= 0:
        raise ConfigError(f"clip_grad_value(clip_value={clip_value}): clip_value must be >= 0 "
                          "(the gradients are clamped to [-clip_value, clip_value])")
    bk, grads = _grad_arrays(target)
    for g in grads:
        bk.clip_value_(g, float(clip_value))
