"""Residual (skip) connection around a block of layers."""
from __future__ import annotations

from ..errors import ShapeError
from .base import LAYER_REGISTRY, Layer, layer_from_config, layer_to_config


class Residual(Layer):
    r"""y = x + F(x), where F is the wrapped block (a layer or a list of layers).

    Backward: ∂y/∂x = I + ∂F/∂x, so dx = dy + F.backward(dy).  The identity
    term carries the gradient past F unchanged, which is why deep residual
    networks do not suffer vanishing gradients the way plain stacks do.
    F must preserve the shape of its input.
    """

    def __init__(self, block, name: str | None = None):
        super().__init__(name)
        if isinstance(block, (list, tuple)):     # a list of layers becomes a Sequential block
            block = LAYER_REGISTRY["Sequential"](list(block))
        self.block = block

    def sublayers(self):
        return [self.block]

    def build(self, input_shape, ctx):
        out = self.block.build(tuple(input_shape), ctx)
        if tuple(out) != tuple(input_shape):
            raise ShapeError(
                f"{self.name}: the residual block maps per-sample shape {tuple(input_shape)} to "
                f"{tuple(out)}; y = x + F(x) needs F to keep the shape (make its last layer "
                f"output {input_shape[-1]} units)")
        return super().build(input_shape, ctx)

    def forward(self, x, training=False):
        self._ensure_built(x)
        return x + self.block.forward(x, training)

    def backward(self, dy):
        return dy + self.block.backward(dy)

    def get_config(self):
        return {"block": layer_to_config(self.block), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(layer_from_config(config["block"]), name=config.get("name"))
