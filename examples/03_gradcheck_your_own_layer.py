"""Write your own layer, then let gradcheck tell you whether its backward is right.

A layer needs ``forward(x, training)`` (keep what backward needs) and
``backward(dy)`` (fill ``self.grads``, return dL/dx).  Here: a "scaled
softplus" y = log(1 + exp(a·x)) / a with a learnable per-feature a.

    ∂y/∂x = σ(a x)
    ∂y/∂a = x σ(a x) / a - log(1 + e^{a x}) / a²
"""
import numpy as np

import bpnet
from bpnet import Layer, gradcheck


class ScaledSoftplus(Layer):
    def _create(self, input_shape, ctx):
        self._add_param("a", np.full(input_shape, 1.5))

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.x = x
        a = self.params["a"]
        self.sig = 1 / (1 + np.exp(-a * x))
        return np.logaddexp(0, a * x) / a

    def backward(self, dy):
        a, x = self.params["a"], self.x
        self.grads["a"][...] = (dy * (x * self.sig / a - np.logaddexp(0, a * x) / a**2)).sum(axis=0)
        return dy * self.sig


class BuggySoftplus(ScaledSoftplus):
    def backward(self, dy):                    # forgot the 1/a² term's sign
        a, x = self.params["a"], self.x
        self.grads["a"][...] = (dy * (x * self.sig / a + np.logaddexp(0, a * x) / a**2)).sum(axis=0)
        return dy * self.sig


x = np.random.default_rng(0).standard_normal((6, 4))
report = gradcheck(ScaledSoftplus(), x)
print("correct layer:\n" + str(report))

try:
    gradcheck(BuggySoftplus(), x)
except bpnet.GradcheckError as err:
    print("\nbuggy layer is caught:\n" + str(err).splitlines()[0])
