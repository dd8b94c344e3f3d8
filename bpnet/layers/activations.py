"""Pointwise activation layers.

Every activation y = f(z) acts elementwise, so its Jacobian is diagonal and the
backward pass is ``dz = dy ⊙ f'(z)``.  Each derivative below is written in
terms of the *output* y, so the layer only keeps y from the forward pass:

=============  ==============================  ====================================
layer          f(z)                            f'(z) in terms of y
=============  ==============================  ====================================
Identity       z                               1
ReLU           max(z, 0)                       1 if y > 0 else 0
LeakyReLU(α)   z if z > 0 else α z             1 if y > 0 else α
ELU(α)         z if z > 0 else α (eᶻ - 1)      1 if y > 0 else y + α   (α eᶻ = y + α)
Sigmoid        σ(z) = 1 / (1 + e⁻ᶻ)            y (1 - y)               (σ' = σ(1-σ))
Tanh           tanh z                          1 - y²
=============  ==============================  ====================================

Reading f' from y needs y > 0 exactly when z > 0, so LeakyReLU and ELU take
α ≥ 0 only (with α < 0 a negative z gives y > 0 and the wrong branch).

The arithmetic lives in the backend (``act_forward`` / ``act_backward``), so
the same layer runs on the NumPy reference, the fused Numba kernels or CUDA.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import Layer


def _check_alpha(cls_name, alpha):
    if not alpha >= 0:
        raise ConfigError(
            f"{cls_name}(alpha={alpha}): alpha must be >= 0; the backward pass reads the branch "
            "from the output (y > 0 exactly when z > 0), which a negative alpha breaks")
    return float(alpha)


class Activation(Layer):
    """Base class of the pointwise activations; ``kind`` names the function."""
    kind = "identity"

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.alpha = 0.0
        self.y = None

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.y = self.backend.act_forward(self.kind, x, self.alpha)
        return self.y

    def backward(self, dy):
        self._require_forward("y")
        return self.backend.act_backward(self.kind, self.y, dy, self.alpha)


class Identity(Activation):
    """y = z; dz = dy."""
    kind = "identity"


class ReLU(Activation):
    """y = max(z, 0); dz = dy where y > 0, else 0 (the subgradient 0 is used at z = 0)."""
    kind = "relu"


class Sigmoid(Activation):
    """y = 1/(1+e^-z); dz = dy · y(1-y).  Saturates (y(1-y) → 0) for |z| ≳ 5."""
    kind = "sigmoid"


class Tanh(Activation):
    """y = tanh z; dz = dy · (1 - y²).  Saturates for |z| ≳ 3."""
    kind = "tanh"


class LeakyReLU(Activation):
    """y = z if z > 0 else α z; dz = dy if y > 0 else α dy (α > 0 keeps units alive)."""
    kind = "leaky_relu"

    def __init__(self, alpha: float = 0.01, name: str | None = None):
        super().__init__(name)
        self.alpha = _check_alpha("LeakyReLU", alpha)

    def get_config(self):
        return {"alpha": self.alpha, "name": self.name}


class ELU(Activation):
    """y = z if z > 0 else α(eᶻ-1); dz = dy if y > 0 else dy·(y + α)."""
    kind = "elu"

    def __init__(self, alpha: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.alpha = _check_alpha("ELU", alpha)

    def get_config(self):
        return {"alpha": self.alpha, "name": self.name}


ACTIVATION_LAYERS = {"identity": Identity, "linear": Identity, "relu": ReLU, "sigmoid": Sigmoid,
                     "tanh": Tanh, "leaky_relu": LeakyReLU, "elu": ELU}
