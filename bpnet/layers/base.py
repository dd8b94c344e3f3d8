"""The layer protocol every bpnet layer follows.

A layer owns ``params`` and ``grads`` (dicts with the same keys and shapes),
``forward(x, training)`` which keeps what backward needs, and ``backward(dy)``
which writes ``grads`` *in place* and returns the gradient with respect to its
input.  Writing in place matters: inside a model every parameter and gradient
is a view into one flat buffer, so that one kernel can update them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends import get_backend
from ..errors import ConfigError, NotBuiltError, ShapeError

LAYER_REGISTRY: dict[str, type] = {}


@dataclass
class BuildContext:
    """Everything a layer needs to create its parameters."""
    backend: object
    dtype: np.dtype
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @classmethod
    def for_input(cls, x, backend=None, seed=0):
        """Context for a layer used on its own (outside a model): dtype follows ``x``."""
        dtype = np.dtype(getattr(x, "dtype", np.float64))
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        return cls(get_backend(backend or "numpy"), dtype, np.random.default_rng(seed))


class Layer:
    """Base class: a differentiable function with parameters."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYER_REGISTRY[cls.__name__] = cls

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}       # non-trainable state (e.g. BatchNorm running stats)
        self.built = False
        self.backend = None
        self.dtype = None
        self.input_shape: tuple | None = None    # per sample, batch axis excluded
        self.output_shape: tuple | None = None

    # -- building -------------------------------------------------------------
    def build(self, input_shape, ctx: BuildContext):
        """Create parameters for inputs of per-sample shape ``input_shape``."""
        self.backend, self.dtype = ctx.backend, np.dtype(ctx.dtype)
        self.input_shape = tuple(input_shape)
        self._create(self.input_shape, ctx)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        self.built = True
        return self.output_shape

    def _create(self, input_shape, ctx):
        """Create ``params``/``grads``/``buffers`` (override in layers with parameters)."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def _ensure_built(self, x):
        if not self.built:
            self.build(tuple(x.shape[1:]), BuildContext.for_input(x))

    def _add_param(self, key, value):
        self.params[key] = self.backend.asarray(value, dtype=self.dtype)
        self.grads[key] = self.backend.zeros(value.shape, self.dtype)

    # -- computing ------------------------------------------------------------
    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, training: bool = False):
        return self.forward(x, training)

    # -- structure ------------------------------------------------------------
    def sublayers(self) -> list:
        """Child layers of a container (empty for a plain layer)."""
        return []

    def named_parameters(self, prefix: str = ""):
        """Yield ``(name, owner, key)`` for every parameter, children included."""
        for key in self.params:
            yield f"{prefix}{key}", self, key
        for i, child in enumerate(self.sublayers()):
            yield from child.named_parameters(f"{prefix}{i}.")

    def named_buffers(self, prefix: str = ""):
        for key in self.buffers:
            yield f"{prefix}{key}", self, key
        for i, child in enumerate(self.sublayers()):
            yield from child.named_buffers(f"{prefix}{i}.")

    def walk(self):
        """This layer and all its descendants, depth first."""
        yield self
        for child in self.sublayers():
            yield from child.walk()

    def count_params(self) -> int:
        return int(sum(owner.params[key].size for _, owner, key in self.named_parameters()))

    def zero_grad(self):
        for _, owner, key in self.named_parameters():
            owner.grads[key][...] = 0

    def get_config(self) -> dict:
        """Constructor arguments, JSON-serialisable (used by save/load)."""
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # -- errors ---------------------------------------------------------------
    def _check_features(self, x, expected: int, axis_name="features"):
        if x.ndim != 2 or x.shape[1] != expected:
            raise ShapeError(
                f"{self.name}: expected input of shape (batch, {expected}) but got "
                f"{tuple(x.shape)}; the layer was built for {expected} {axis_name}. "
                "Check the previous layer's output size or reshape your data.")

    def _require_forward(self, attr):
        if getattr(self, attr, None) is None:
            raise NotBuiltError(f"{self.name}: backward() called before forward(training=True)")


def layer_from_config(spec: dict) -> Layer:
    """Inverse of ``{"class": type(layer).__name__, "config": layer.get_config()}``."""
    cls = LAYER_REGISTRY.get(spec["class"])
    if cls is None:
        raise ConfigError(f"unknown layer class {spec['class']!r} in saved model")
    return cls.from_config(spec["config"]) if hasattr(cls, "from_config") else cls(**spec["config"])


def layer_to_config(layer: Layer) -> dict:
    return {"class": type(layer).__name__, "config": layer.get_config()}
