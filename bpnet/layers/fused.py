"""The execution plan's fused steps: a Dense layer and the activation after it, run as one step."""
from __future__ import annotations

from .activations import Activation
from .dense import Dense


class DenseActivation:
    """A Dense layer and the activation after it, run as one step.

    Forward computes z = x W, then z ← f(z + b) in one fused pass
    (``backend.bias_activation_forward``: a kernel on the Numba and CuPy
    backends, the activation's own ``f`` on NumPy) instead of a bias pass and
    an activation pass; both layers keep what their own ``backward`` needs.
    Backward is the activation's backward followed by the Dense layer's, with
    the bias gradient db = Σ_n dz taken in the same pass that makes dz
    (``backend.activation_bias_backward``), then dW = xᵀ dz and dx = dz Wᵀ.
    """

    def __init__(self, dense, activation):
        self.dense, self.activation = dense, activation

    @property
    def name(self):
        """The two layers' names joined by "+", e.g. ``"dense_1+relu"``."""
        return f"{self.dense.name}+{self.activation.name}"

    def forward(self, x, training):
        dense, act = self.dense, self.activation
        dense._check_features(x, dense.in_features)
        dense.x = x
        z = dense.backend.matmul(x, dense.params["W"])                       # z = x W
        act.y = dense.backend.bias_activation_forward(act, z, dense.params["b"])   # y = f(z + b)
        return act.y

    def backward(self, dy):
        dense, act = self.dense, self.activation
        act._require_forward("y")
        dense._require_forward("x")
        dz = dense.backend.activation_bias_backward(act, act.y, dy, dense.grads["b"])   # dz = dy f'(z), db = Σ_n dz
        return dense.weight_backward(dz)

    def __repr__(self):
        return f"DenseActivation({self.name})"


def fuse_dense_activation(layers):
    """The execution plan: each exact Dense followed by a pointwise Activation becomes one step."""
    steps, i = [], 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if type(layers[i]) is Dense and isinstance(nxt, Activation) and \
                type(nxt).forward is Activation.forward and type(nxt).backward is Activation.backward:
            steps.append(DenseActivation(layers[i], nxt))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps
