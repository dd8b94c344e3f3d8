"""Pointwise activation layers: each class carries its f and f′ as code.

Every activation y = f(z) acts elementwise, so its Jacobian is diagonal and the
backward pass is ``dz = dy ⊙ f'(z)``.  Each derivative below is written in
terms of the *output* y, so the layer only keeps y from the forward pass:

=============  ==============================  ====================================
layer          f(z)  (method ``f``)            f'(z) from y  (method ``dz``)
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

Where the maths lives: in the class.  ``f(xp, z)`` returns y and
``dz(xp, y, dy)`` returns dy ⊙ f'(z), both written with ``xp``, the backend's
array namespace (``numpy`` or ``cupy``), right under the derivation.  The NumPy
backend runs exactly this code.  The Numba and CuPy backends run a fused
kernel instead when the class names one by its ``code`` (the table in
``kernels/activation_codes.py``); a class of your own that writes ``f`` and
``dz`` gets ``code = None`` and runs its own code on every backend.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..kernels.activation_codes import ACT_CODES
from .base import Layer


def _check_alpha(cls_name, alpha):
    if not alpha >= 0:
        raise ConfigError(
            f"{cls_name}(alpha={alpha}): alpha must be >= 0; the backward pass reads the branch "
            "from the output (y > 0 exactly when z > 0), which a negative alpha breaks")
    return float(alpha)


class Activation(Layer):
    """Base class of the pointwise activations.

    A subclass writes ``f(self, xp, z)`` (y = f(z)) and ``dz(self, xp, y, dy)``
    (dy ⊙ f'(z), with f' written from y = f(z)).  ``kind`` names the function
    and ``code`` selects a fused kernel from ``kernels/activation_codes.py``.
    A subclass that writes its own ``f`` or ``dz`` is its own kind (default:
    the class name in lower case) and has no kernel unless it names a code, so
    no kernel ever computes something other than the class's code.
    """
    kind = "activation"
    code = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "f" in own or "dz" in own:           # maths of its own: its own name, no kernel
            cls.kind = own.get("kind", cls.__name__.lower())
            cls.code = own.get("code")

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.alpha = 0.0          # the slope parameter the kernels receive (LeakyReLU, ELU)
        self.y = None

    def f(self, xp, z):
        """y = f(z), elementwise."""
        raise NotImplementedError(f"{type(self).__name__} must define f(self, xp, z)")

    def dz(self, xp, y, dy):
        """dz = dy ⊙ f'(z), with f' written in terms of y = f(z)."""
        raise NotImplementedError(f"{type(self).__name__} must define dz(self, xp, y, dy)")

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.y = self.backend.activation_forward(self, x)
        return self.y

    def backward(self, dy):
        self._require_forward("y")
        return self.backend.activation_backward(self, self.y, dy)


class Identity(Activation):
    """y = z; dz = dy."""
    kind, code = "identity", ACT_CODES["identity"]

    def f(self, xp, z):
        return z

    def dz(self, xp, y, dy):
        return dy


class ReLU(Activation):
    """y = max(z, 0); f'(z) = 1 where y > 0, else 0 (the subgradient 0 is used at z = 0)."""
    kind, code = "relu", ACT_CODES["relu"]

    def f(self, xp, z):
        return xp.maximum(z, 0)                 # keeps NaN, so the anomaly detector sees it

    def dz(self, xp, y, dy):
        return dy * (y > 0)


class Sigmoid(Activation):
    """y = 1/(1+e⁻ᶻ); σ' = σ(1-σ), so dz = dy · y(1-y).  Saturates (y(1-y) → 0) for |z| ≳ 5.

    Forward never lets exp overflow: with e = e^{-|z|} ≤ 1,
    z ≥ 0: y = 1/(1+e);  z < 0: y = e^z/(1+e^z) = e/(1+e).
    """
    kind, code = "sigmoid", ACT_CODES["sigmoid"]

    def f(self, xp, z):
        e = xp.exp(-xp.abs(z))
        return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)

    def dz(self, xp, y, dy):
        return dy * y * (1 - y)


class Tanh(Activation):
    """y = tanh z; tanh' = 1 - tanh², so dz = dy · (1 - y²).  Saturates for |z| ≳ 3."""
    kind, code = "tanh", ACT_CODES["tanh"]

    def f(self, xp, z):
        return xp.tanh(z)

    def dz(self, xp, y, dy):
        return dy * (1 - y * y)


class LeakyReLU(Activation):
    """y = z if z > 0 else α z; dz = dy if y > 0 else α dy (α > 0 keeps units alive)."""
    kind, code = "leaky_relu", ACT_CODES["leaky_relu"]

    def __init__(self, alpha: float = 0.01, name: str | None = None):
        super().__init__(name)
        self.alpha = _check_alpha("LeakyReLU", alpha)

    def f(self, xp, z):
        return xp.where(z > 0, z, self.alpha * z)

    def dz(self, xp, y, dy):
        return xp.where(y > 0, dy, self.alpha * dy)

    def get_config(self):
        return {"alpha": self.alpha, "name": self.name}


class ELU(Activation):
    """y = z if z > 0 else α(eᶻ-1); dz = dy if y > 0 else dy·(y + α).

    For z ≤ 0, f'(z) = α eᶻ = α(eᶻ - 1) + α = y + α.  Forward uses expm1 (accurate
    eᶻ-1 for small |z|) on min(z, 0) (no overflow in the branch not taken).
    """
    kind, code = "elu", ACT_CODES["elu"]

    def __init__(self, alpha: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.alpha = _check_alpha("ELU", alpha)

    def f(self, xp, z):
        return xp.where(z > 0, z, self.alpha * xp.expm1(xp.minimum(z, 0)))

    def dz(self, xp, y, dy):
        return xp.where(y > 0, dy, dy * (y + self.alpha))

    def get_config(self):
        return {"alpha": self.alpha, "name": self.name}


ACTIVATION_LAYERS = {"identity": Identity, "linear": Identity, "relu": ReLU, "sigmoid": Sigmoid,
                     "tanh": Tanh, "leaky_relu": LeakyReLU, "elu": ELU}
