"""Layers and losses written for the failure lab: the broken ones on purpose.

* :class:`NaiveSoftmax` and :class:`NaiveNLL` -- softmax as exp(z)/Σexp(z) with
  no max shift, followed by -log p: the textbook formula that overflows.
* :class:`NaiveBCE` -- binary cross-entropy as -t log σ(z) - (1-t) log(1-σ(z)):
  σ(z) rounds to 1 and log(0) = -inf.
* :class:`WrongSigmoid` -- a user's sigmoid whose backward uses σ' = σ
  instead of σ(1-σ): the kind of slip a gradient check catches.
"""
from __future__ import annotations

import numpy as np

from ..layers.activations import Sigmoid
from ..layers.base import Layer
from ..layers.softmax import Softmax
from ..losses import BCEWithLogits, _Categorical

_SIGMOID = Sigmoid()      # the correct forward, borrowed


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
        self.y = self.backend.activation_forward(_SIGMOID, x)
        return self.y

    def backward(self, dy):
        self._require_forward("y")
        return dy * self.y            # the bug: should be dy * y * (1 - y)
