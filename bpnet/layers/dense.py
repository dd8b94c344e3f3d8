"""Fully connected (affine) layer."""
from __future__ import annotations

from .. import init as initializers
from ..errors import ConfigError
from ..validation import whole
from .base import Layer


class Dense(Layer):
    r"""Affine map ``y = x W + b``.

    Shapes: x (N, in), W (in, out), b (out,), y (N, out).

    Backward.  With upstream gradient dy = ∂L/∂y (N, out), each output is
    y_nj = Σ_i x_ni W_ij + b_j, so

    * ∂L/∂W_ij = Σ_n x_ni dy_nj            →  dW = xᵀ dy
    * ∂L/∂b_j  = Σ_n dy_nj                 →  db = dy summed over the batch
    * ∂L/∂x_ni = Σ_j dy_nj W_ij            →  dx = dy Wᵀ

    ``forward`` and ``backward`` below are these lines as code.  dW and db
    are written into ``grads`` in place (inside a model they are views into
    one flat gradient buffer); dx is skipped when ``needs_input_grad`` is
    False (the first layer: nothing upstream wants it).  Followed by an
    activation inside a model, the forward runs as one fused step instead
    (:class:`~bpnet.layers.fused.DenseActivation`).

    Parameters
    ----------
    units : number of outputs.
    in_features : number of inputs; inferred from the first input when omitted.
    init : initialiser for W, a name ("he_normal", "xavier_uniform",
        "orthogonal", ...) or a callable ``f(shape, rng, dtype)``.
    bias_init : initialiser for b (default zeros).
    """

    def __init__(self, units: int, in_features: int | None = None, init="xavier_uniform",
                 bias_init="zeros", name: str | None = None):
        super().__init__(name)
        self.units = whole(units, "Dense(units=...)", minimum=1)           # Dense(2.5) is not 2 units
        self.in_features = None if in_features is None else whole(in_features, "Dense(in_features=...)", minimum=1)
        self.init, self.bias_init = init, bias_init
        initializers.get_initializer(init)        # fail early on a bad name
        initializers.get_initializer(bias_init)
        self.x = None
        self.needs_input_grad = True

    def _create(self, input_shape, ctx):
        if len(input_shape) != 1:
            raise ConfigError(
                f"{self.name}: Dense expects inputs of shape (batch, features) but the "
                f"per-sample input shape is {input_shape}; put a Flatten() before it")
        if self.in_features is not None and self.in_features != input_shape[0]:
            raise ConfigError(
                f"{self.name}: declared in_features={self.in_features} but receives "
                f"{input_shape[0]} features from the previous layer")
        self.in_features = input_shape[0]
        shape = (self.in_features, self.units)
        self._add_param("W", initializers.get_initializer(self.init)(shape, ctx.rng, ctx.dtype))
        self._add_param("b", initializers.get_initializer(self.bias_init)((self.units,), ctx.rng, ctx.dtype))

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._check_features(x, self.in_features)
        self.x = x
        y = self.backend.matmul(x, self.params["W"])        # y = x W
        y += self.params["b"]                                 #   + b, in place
        return y

    def backward(self, dy):
        self._require_forward("x")
        dy.sum(axis=0, out=self.grads["b"])                   # db = Σ_n dy
        return self.weight_backward(dy)

    def weight_backward(self, dy):
        """The rest of backward, given db: writes dW and returns dx (None when not needed)."""
        backend, W = self.backend, self.params["W"]
        backend.matmul(self.x.T, dy, out=self.grads["W"])   # dW = xᵀ dy
        return backend.matmul(dy, W.T) if self.needs_input_grad else None   # dx = dy Wᵀ

    def reset_parameters(self, rng, init=None):
        """Draw fresh W (with ``init`` or the layer's own initialiser) and zero b."""
        init = init or self.init
        W = initializers.get_initializer(init)(self.params["W"].shape, rng, self.dtype)
        self.params["W"][...] = self.backend.asarray(W, dtype=self.dtype)
        self.params["b"][...] = 0

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "xavier_uniform"
        bias = self.bias_init if isinstance(self.bias_init, str) else "zeros"
        return {"units": self.units, "in_features": self.in_features, "init": init,
                "bias_init": bias, "name": self.name}
