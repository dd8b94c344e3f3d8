"""Flatten (N, d1, d2, ...) inputs to (N, d1·d2·...)."""
from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    """y = x.reshape(N, -1).  Backward only undoes the reshape: dx = dy.reshape(x.shape)."""

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.x_shape = None

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        self._require_forward("x_shape")
        return dy.reshape(self.x_shape)
