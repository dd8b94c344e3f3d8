"""Inverted dropout."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Layer


class Dropout(Layer):
    r"""Zero each input with probability p during training, scale the rest by 1/(1-p).

    Forward (training):  y = x ⊙ m,  m_i = 1/(1-p) with probability 1-p, else 0.
    Forward (evaluation): y = x (the 1/(1-p) scaling at training time keeps
    E[y] = x, so nothing needs rescaling at test time).

    Backward: y is linear in x with the mask fixed, so dx = dy ⊙ m.  (Applying
    the *same* mask in backward is the point; a gradient check catches a
    backward that forgets it.)
    """

    def __init__(self, p: float = 0.5, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"Dropout(p={p}): p is the drop probability and must be in [0, 1)")
        self.p = float(p)
        self.mask = None
        self.rng = None

    def _create(self, input_shape, ctx):
        self.rng = np.random.default_rng(ctx.rng.integers(2**63))

    def forward(self, x, training=False):
        self._ensure_built(x)
        if not training or self.p == 0.0:
            self.mask = None
            return x
        self.mask = self.backend.dropout_mask(self.rng, x.shape, 1.0 - self.p, x.dtype)
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask

    def get_config(self):
        return {"p": self.p, "name": self.name}
