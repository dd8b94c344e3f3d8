"""Softmax as a layer (for outputs that must be probabilities)."""
from __future__ import annotations

from .base import Layer


class Softmax(Layer):
    r"""y_i = e^{z_i} / Σ_k e^{z_k} along the last axis.

    Backward.  The Jacobian is ∂y_i/∂z_j = y_i (δ_ij - y_j), so the
    vector-Jacobian product never needs the C×C matrix:

        dz_j = Σ_i dy_i y_i (δ_ij - y_j) = y_j (dy_j - Σ_i dy_i y_i)

    Forward subtracts the row maximum first: e^{z-m} ≤ 1 cannot overflow and
    the ratio is unchanged.  To train a classifier, do not put this layer in
    front of ``CrossEntropy``: that loss applies log-softmax itself, and a
    second softmax squashes the logits into [0, 1] so learning crawls.
    """

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.y = None

    def forward(self, x, training=False):
        self._ensure_built(x)
        xp = self.backend.xp
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        self.y = e / e.sum(axis=-1, keepdims=True)
        return self.y

    def backward(self, dy):
        self._require_forward("y")
        y = self.y
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
