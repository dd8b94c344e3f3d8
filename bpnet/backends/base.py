"""What every array backend shares: device questions, checks and small pieces.

:class:`Backend` answers the questions about arrays that nothing outside the
backends may ask itself (is this a host array, copy it to the host, where does
its buffer start, how large is it), and holds the pieces the NumPy, Numba and
CuPy backends would otherwise each write again: the label check of the
softmax cross-entropy, the inverted-dropout mask, Adam's bias-correction
coefficients, gradient clipping's rule and a scratch-buffer cache.

Everything here is written with ``self.xp`` (``numpy`` or ``cupy``), so it
runs unchanged on every backend; a backend overrides a method only where a
kernel does the same job faster.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import LabelError, ShapeError


class AdamCoefficients(NamedTuple):
    """The per-step scalars of Adam, computed once in Python floats.

    With m̂ = m/(1-β1ᵗ) and √v̂ = √v/√(1-β2ᵗ) the update p -= lr·m̂/(√v̂ + ε)
    reads p -= step · m / (√v · inv_sqrt_bias2 + ε).
    """
    step: float             # lr / (1 - β1ᵗ)
    inv_sqrt_bias2: float   # 1 / √(1 - β2ᵗ)
    decay_factor: float     # 1 - lr·λ, AdamW's shrink of p


class Backend:
    """Base of every backend; ``xp`` is the array namespace it computes with."""
    name = "base"
    xp = np

    # -- matrix products ----------------------------------------------------
    def matmul(self, a, b, out=None):
        """a @ b, into ``out`` when it is given: every Dense layer's products."""
        return self.xp.matmul(a, b, out=out)

    # -- arrays and devices -------------------------------------------------
    def asarray(self, x, dtype=None):
        """Move ``x`` (any array-like) onto this backend's device."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """Return ``x`` as a host NumPy array (``x`` itself when it is one)."""
        return np.asarray(x)

    def to_host(self, a, out=None):
        """``a`` (a device or host array, or a list) as a host NumPy array.

        With ``out`` (a host array of ``a``'s shape) the values are copied into
        ``out``, which is returned, so a caller can reuse one buffer per step.
        Without it the result may be ``a`` itself when ``a`` is on the host.
        """
        host = self.to_numpy(a)
        if out is None:
            return host
        np.copyto(out, host)
        return out

    def is_host(self, a) -> bool:
        """True when ``a`` is a host NumPy array (not a device array or a list)."""
        return isinstance(a, np.ndarray)

    def address(self, a) -> int:
        """The address of ``a``'s first element: equal for views of one buffer
        at the same offset, so it tells whether two arrays are the same memory."""
        iface = getattr(a, "__array_interface__", None) or a.__cuda_array_interface__
        return int(iface["data"][0])

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def scratch(self, shape, dtype):
        """A reusable work array (contents undefined), one per shape and dtype."""
        cache = self.__dict__.setdefault("_scratch", {})
        key = (tuple(shape), str(dtype))
        if key not in cache:
            cache[key] = self.empty(shape, dtype)
        return cache[key]

    def synchronize(self):
        """Wait for queued device work (a no-op on the CPU)."""

    # -- randomness -------------------------------------------------------------
    def uniform(self, rng, shape):
        """float32 draws from [0, 1) on this device, from the host generator ``rng``."""
        return rng.random(shape, dtype=np.float32)

    def dropout_mask(self, rng, shape, keep_prob, dtype):
        """Inverted-dropout mask: 1/keep_prob with probability keep_prob, else 0."""
        keep = self.uniform(rng, shape) < keep_prob
        mask = keep.astype(dtype)
        mask *= mask.dtype.type(1.0 / keep_prob)
        return mask

    # -- checks ---------------------------------------------------------------------
    def check_labels(self, z, y):
        """Raise a bpnet error unless ``y`` holds one integer label in 0..C-1 per row of z (N, C).

        A negative label would otherwise index from the end and give a wrong
        loss without a word."""
        if z.ndim != 2:
            raise ShapeError(
                f"softmax_cross_entropy_labels: logits must be (N, C), got shape {z.shape}")
        n, c = z.shape
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise LabelError(
                f"softmax_cross_entropy_labels: labels must be integers of shape ({n},), "
                f"got dtype {y.dtype} and shape {y.shape}; pass class indices 0..{c - 1}")
        bad = self.xp.flatnonzero((y < 0) | (y >= c))
        if bad.size:
            i = int(bad[0])
            raise LabelError(
                f"softmax cross-entropy: label {int(y[i])} at row {i} is outside 0..{c - 1} "
                f"for {c} classes; check the labels or the size of the output layer")

    # -- optimizer pieces ---------------------------------------------------------
    @staticmethod
    def adam_coefficients(lr, beta1, beta2, weight_decay, t) -> AdamCoefficients:
        """Adam's scalars for step ``t`` (1-based); see :class:`AdamCoefficients`."""
        return AdamCoefficients(lr / (1 - beta1 ** t), 1 / (1 - beta2 ** t) ** 0.5,
                                1 - lr * weight_decay)

    # -- reductions used by clipping and diagnostics ------------------------------
    def sum_squares(self, a) -> float:
        """Σ a², accumulated in float64."""
        a64 = a.ravel().astype(np.float64, copy=False)
        return float(self.xp.dot(a64, a64))

    def all_finite(self, a) -> bool:
        """True when no element of ``a`` is NaN or ±Inf."""
        return bool(self.xp.isfinite(a).all())

    def clip_norm_(self, x, max_norm):
        """Scale x in place so that ||x||₂ ≤ max_norm; return the norm before clipping.

        Like PyTorch, the factor is max_norm / (norm + 1e-6) and is applied only
        when it is below 1.  A NaN/Inf norm leaves x untouched (a factor of 0
        would turn every Inf into NaN and every finite gradient into 0)."""
        norm = self.sum_squares(x) ** 0.5
        factor = max_norm / (norm + 1e-6)
        if math.isfinite(norm) and factor < 1.0:
            self.scale_(x, factor)
        return norm

    def scale_(self, x, factor):
        """x *= factor in place."""
        x *= x.dtype.type(factor)

    def clip_value_(self, x, limit):
        """Clamp x to [-limit, limit] in place."""
        self.xp.clip(x, -limit, limit, out=x)
