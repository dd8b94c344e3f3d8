"""Batch normalisation over the batch axis of (N, D) inputs."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..validation import positive, real
from .base import Layer


class BatchNorm1d(Layer):
    r"""y = γ x̂ + β with x̂ = (x - μ) / √(σ² + ε), statistics per feature.

    Training uses the batch mean μ and biased variance σ²; it also updates the
    running statistics ``r ← (1-momentum) r + momentum · batch`` (running_var
    takes the unbiased variance, as PyTorch does).  Evaluation uses the running
    statistics, so the layer is then a fixed affine map.

    Backward (training).  Let s = 1/√(σ²+ε) and g = dy ⊙ γ = ∂L/∂x̂.  Then
    dγ = Σ_n dy ⊙ x̂ and dβ = Σ_n dy.  For dx, x_n reaches L directly through
    x̂_n and through μ and σ², which depend on every row (per feature):

        ∂L/∂σ² = Σ_n g_n (x_n - μ) · (-½) s³  = -(s²/2) Σ_n g_n x̂_n
        ∂L/∂μ  = -s Σ_n g_n     (the path through σ² adds -(2/N) Σ_n (x_n - μ) = 0)
        ∂L/∂x_n = s g_n + ∂L/∂σ² · 2(x_n - μ)/N + ∂L/∂μ / N

    and with x_n - μ = x̂_n / s the three terms collect into

        ∂L/∂x = (s / N) · (N g - Σ_n g - x̂ Σ_n (g ⊙ x̂))

    (the two sums remove the components of g along 1 and along x̂).
    Backward (evaluation): μ, σ² are constants, so ∂L/∂x = g · s.
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= real(momentum, "BatchNorm1d(momentum=...)") <= 1.0:
            raise ConfigError(f"BatchNorm1d(momentum={momentum}): need 0 <= momentum <= 1")
        self.momentum, self.eps = float(momentum), positive(eps, "BatchNorm1d(eps=...)")
        self.cache = None

    def _create(self, input_shape, ctx):
        if len(input_shape) != 1:
            raise ConfigError(f"{self.name}: BatchNorm1d expects (batch, features) inputs, got per-sample shape {input_shape}")
        d = input_shape[0]
        self._add_param("gamma", np.ones(d))
        self._add_param("beta", np.zeros(d))
        self.buffers["running_mean"] = self.backend.zeros((d,), self.dtype)
        self.buffers["running_var"] = self.backend.asarray(np.ones(d), dtype=self.dtype)

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._check_features(x, self.input_shape[0])
        xp = self.backend.xp
        if training:
            n = x.shape[0]
            if n < 2:
                raise ConfigError(
                    f"{self.name}: BatchNorm1d needs at least 2 samples per batch in training, got {n} "
                    "(a batch statistic of one sample normalises it to 0); use larger batches, and if this "
                    "is the last batch of an epoch, pick a batch_size that does not leave a single sample over")
            mu = x.mean(axis=0)
            var = x.var(axis=0)
            m = self.momentum
            self.buffers["running_mean"] *= 1 - m
            self.buffers["running_mean"] += m * mu
            self.buffers["running_var"] *= 1 - m
            self.buffers["running_var"] += m * var * (n / (n - 1))
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = (x - mu) * inv_std
        self.cache = (x_hat, inv_std, training)
        return x_hat * self.params["gamma"] + self.params["beta"]

    def backward(self, dy):
        self._require_forward("cache")
        x_hat, inv_std, training = self.cache
        dy.sum(axis=0, out=self.grads["beta"])
        (dy * x_hat).sum(axis=0, out=self.grads["gamma"])
        g = dy * self.params["gamma"]
        if not training:
            return g * inv_std
        n = dy.shape[0]
        return (inv_std / n) * (n * g - g.sum(axis=0) - x_hat * (g * x_hat).sum(axis=0))

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps, "name": self.name}
