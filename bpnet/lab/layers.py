"""Layers and losses written for the failure lab: the broken ones on purpose.

* :class:`TiedRecurrence` -- an unrolled recurrence h_t = φ(x_t U + h_{t-1} W + b)
  with one weight matrix W applied at every step (correct, gradient-checked).
* :class:`NaiveSoftmax` and :class:`NaiveNLL` -- softmax as exp(z)/Σexp(z) with
  no max shift, followed by -log p: the textbook formula that overflows.
* :class:`NaiveBCE` -- binary cross-entropy as -t log σ(z) - (1-t) log(1-σ(z)):
  σ(z) rounds to 1 and log(0) = -inf.
* :class:`WrongSigmoid` -- a user's sigmoid whose backward uses σ' = σ
  instead of σ(1-σ): the kind of slip a gradient check catches.
"""
from __future__ import annotations

import numpy as np

from .. import init as initializers
from ..errors import ConfigError
from ..layers.base import Layer
from ..layers.softmax import Softmax
from ..losses import BCEWithLogits, _Categorical


class TiedRecurrence(Layer):
    r"""An unrolled Elman recurrence with tied weights, returning the last state.

    Input x of shape (N, T, D); output h_T of shape (N, H), with h_0 = 0 and

        a_t = x_t U + h_{t-1} W + b,    h_t = φ(a_t),    t = 1..T,

    φ = identity (``activation="linear"``) or tanh.  U (D, H), W (H, H), b (H,).

    Backward (backpropagation through time).  With g_T = dy = ∂L/∂h_T and,
    going back, δ_t = g_t ⊙ φ'(a_t) (φ' = 1, or 1 - h_t² for tanh):

        dU = Σ_t x_tᵀ δ_t,   dW = Σ_t h_{t-1}ᵀ δ_t,   db = Σ_t Σ_n δ_t,
        dx_t = δ_t Uᵀ,       g_{t-1} = δ_t Wᵀ.

    So the gradient reaching step T-k is g_T multiplied k times by
    diag(φ') Wᵀ: its size goes like ρ(W)^k, where ρ is the spectral radius.
    With ρ > 1 (and φ' ≈ 1) gradients explode exponentially in the sequence
    length; with ρ < 1 they vanish.  An orthogonal W (every |eigenvalue| = 1)
    keeps ‖g‖ constant in the linear case.
    """

    def __init__(self, units: int, activation: str = "linear", init="xavier_uniform",
                 recurrent_init="orthogonal", recurrent_gain: float = 1.0, name: str | None = None):
        super().__init__(name)
        if activation not in ("linear", "tanh"):
            raise ConfigError(f"TiedRecurrence(activation={activation!r}): use 'linear' or 'tanh'")
        self.units, self.activation = int(units), activation
        self.init, self.recurrent_init, self.recurrent_gain = init, recurrent_init, float(recurrent_gain)
        self.cache = None

    def _create(self, input_shape, ctx):
        if len(input_shape) != 2:
            raise ConfigError(f"{self.name}: expects inputs of shape (batch, steps, features), "
                              f"got per-sample shape {input_shape}")
        d, h = input_shape[1], self.units
        self._add_param("U", initializers.get_initializer(self.init)((d, h), ctx.rng, ctx.dtype))
        w = initializers.get_initializer(self.recurrent_init)((h, h), ctx.rng, np.float64)
        self._add_param("W", (self.recurrent_gain * w).astype(ctx.dtype))
        self._add_param("b", np.zeros(h, dtype=ctx.dtype))

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def forward(self, x, training=False):
        self._ensure_built(x)
        xp = self.backend.xp
        U, W, b = self.params["U"], self.params["W"], self.params["b"]
        n, steps = x.shape[0], x.shape[1]
        hs = [xp.zeros((n, self.units), dtype=x.dtype)]
        for t in range(steps):
            a = x[:, t] @ U + hs[-1] @ W + b
            hs.append(xp.tanh(a) if self.activation == "tanh" else a)
        self.cache = (x, hs)
        return hs[-1]

    def backward(self, dy):
        self._require_forward("cache")
        x, hs = self.cache
        xp = self.backend.xp
        U, W = self.params["U"], self.params["W"]
        dU, dW, db = (xp.zeros_like(U), xp.zeros_like(W), xp.zeros_like(self.params["b"]))
        dx = xp.zeros_like(x)
        g = dy
        for t in range(x.shape[1] - 1, -1, -1):
            delta = g * (1 - hs[t + 1] ** 2) if self.activation == "tanh" else g
            dU += x[:, t].T @ delta
            dW += hs[t].T @ delta
            db += delta.sum(axis=0)
            dx[:, t] = delta @ U.T
            g = delta @ W.T
        self.grads["U"][...] = dU
        self.grads["W"][...] = dW
        self.grads["b"][...] = db
        return dx

    def spectral_radius(self) -> float:
        """max |eigenvalue| of W: the factor by which each step scales a gradient."""
        W = np.asarray(self.params["W"], dtype=np.float64)
        return float(np.abs(np.linalg.eigvals(W)).max()) if np.isfinite(W).all() else float("nan")

    def get_config(self):
        return {"units": self.units, "activation": self.activation,
                "init": self.init if isinstance(self.init, str) else "xavier_uniform",
                "recurrent_init": self.recurrent_init if isinstance(self.recurrent_init, str) else "orthogonal",
                "recurrent_gain": self.recurrent_gain, "name": self.name}


class NaiveSoftmax(Softmax):
    r"""p = exp(z) / Σ_k exp(z_k), computed literally (no subtraction of max z).

    In float32 exp overflows to inf for z > 88.7, and inf/inf = NaN.  The
    maths is the same as :class:`bpnet.Softmax`, and so is the backward
    (inherited): only the forward arithmetic differs.
    """

    def forward(self, x, training=False):
        self._ensure_built(x)
        e = self.backend.xp.exp(x)
        self.y = e / e.sum(axis=-1, keepdims=True)
        return self.y


class NaiveNLL(_Categorical):
    r"""Negative log-likelihood of probabilities p (the output of a softmax layer):
    L = -(1/N) Σ_i log p_{i, y_i};  ∂L/∂p_ic = -[c = y_i] / (N p_ic).

    log(0) = -inf once a probability underflows to 0, and 1/p = inf.
    """
    name = "naive_nll"
    expects_logits = False

    def forward(self, output, target):
        xp = self._bk().xp
        target = self._validated(output, self._bk().asarray(target))
        y = target if target.ndim == 1 else target.argmax(axis=1)
        rows = xp.arange(output.shape[0])
        n = output.shape[0]
        p = output[rows, y]
        grad = xp.zeros_like(output)
        grad[rows, y] = -1.0 / (n * p)
        self.grad = grad
        return float(-xp.log(p).astype(np.float64).mean())


class NaiveBCE(BCEWithLogits):
    r"""Binary cross-entropy written as the formula reads, on logits z:

        s = σ(z),  ℓ = -[t log s + (1 - t) log(1 - s)],   ∂ℓ/∂z = (s - t)  (but computed as
        ∂ℓ/∂s · s(1-s) with ∂ℓ/∂s = -t/s + (1-t)/(1-s)).

    In float32, σ(z) rounds to exactly 1 for z > ~17 (and to 0 below ~-88), so a
    confident wrong answer gives log(0) = -inf, ∂ℓ/∂s = 1/0 = inf and then
    inf · 0 = NaN in the chain rule.  :class:`bpnet.BCEWithLogits` uses
    log σ(z) = -softplus(-z) instead, which never forms 1 - σ(z).
    """
    name = "naive_bce"

    def forward(self, output, target):
        bk, xp = self._bk(), self._bk().xp
        t = bk.asarray(target, dtype=output.dtype).reshape(output.shape)
        s = 1.0 / (1.0 + xp.exp(-output))
        m = output.size
        loss = -(t * xp.log(s) + (1 - t) * xp.log(1 - s))
        ds = (-t / s + (1 - t) / (1 - s)) / m
        self.grad = (ds * s * (1 - s)).astype(output.dtype, copy=False)
        return float(loss.astype(np.float64).mean())


class WrongSigmoid(Layer):
    r"""y = σ(z), with a backward that uses σ'(z) = σ(z) -- wrong: σ' = σ(1 - σ).

    The forward pass is right, so the model still runs and even learns a
    little; only a gradient check reveals that dz is off by the factor
    1/(1 - σ(z)) everywhere.
    """

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.y = None

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.y = self.backend.act_forward("sigmoid", x)
        return self.y

    def backward(self, dy):
        self._require_forward("y")
        return dy * self.y            # the bug: should be dy * y * (1 - y)
