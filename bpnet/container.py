"""``LayerStack``: layers applied in order, backward in reverse, parameters in one flat buffer.

This is the container half of :class:`bpnet.Sequential` (the other half,
``compile``/``fit``/``evaluate``/``predict``, is in :mod:`bpnet.model` and
:mod:`bpnet.training`): building, the flat parameter buffer, the explicit
forward and backward passes, and moving between backends.

Observers.  ``observers`` (empty by default, so the plain loop runs) are
told about every step of the forward and backward pass::

    observer.after_forward(model, path, step, x, y)     # y = step.forward(x)
    observer.before_backward(model, path, dy)           # dy from the loss (or the outer container)
    observer.after_backward(model, path, step, dy, dx)  # dx = step.backward(dy)

where ``path`` is the tuple of step positions from the outermost container
inwards.  Anomaly mode is such an observer; it sees the fused steps too.
"""
from __future__ import annotations

import numpy as np

from . import state
from .backends import default_backend_name, get_backend, numba_pays
from .errors import ConfigError, NotBuiltError, ShapeError
from .layers.base import BuildContext, Layer, layer_from_config, layer_to_config
from .layers.fused import fuse_dense_activation

_ALIGN = 16   # parameter views start on 16-element boundaries of the flat buffer (SIMD-friendly)
_PATH: list = []   # positions of the steps being run, outermost container first (only while observed)


class LayerStack(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    After ``build`` every parameter is a view into one flat array,
    ``flat_params`` (likewise ``flat_grads``), so an optimizer updates the whole
    model with one kernel call.  The execution plan ``steps`` is the layers
    with each Dense + activation pair fused into one step.
    """

    observers: tuple = ()       # see the module docstring; a class-wide tuple or a model's own

    def __init__(self, layers=None, seed: int = 0, dtype="float32", backend=None, name=None):
        super().__init__(name or "sequential")
        self.layers: list[Layer] = list(layers or [])
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential expects bpnet layers, got {layer!r} ({type(layer).__name__})")
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ConfigError(f"dtype={dtype!r}: use 'float32', 'float64' or 'float16'")
        # "auto" (the default with Numba installed): NumPy until fit sees a run long enough for Numba
        self.auto_backend = backend in (None, "auto") and default_backend_name() == "auto"
        self.backend = get_backend("numpy" if self.auto_backend else backend)
        init_seq, data_seq = np.random.SeedSequence(self.seed).spawn(2)
        self.init_rng = np.random.default_rng(init_seq)
        self.data_rng = np.random.default_rng(data_seq)
        self.flat_params = None
        self.flat_grads = None
        self.optimizer = None
        self.loss_scaler = None     # a mixed_precision.LossScaler when compiled with one
        self.steps: list = []
        self.step_index: list[int] = []    # position in ``layers`` of each step's first layer

    def add(self, layer: Layer):
        if self.built:
            raise ConfigError("cannot add layers to a model that is already built")
        self.layers.append(layer)

    def sublayers(self):
        return self.layers

    # -- building ---------------------------------------------------------------
    def build(self, input_shape, ctx: BuildContext | None = None):
        """Create every layer's parameters for per-sample inputs of ``input_shape``.

        Called with no context on the outermost model, it also lays all
        parameters out in the flat buffers.
        """
        root = ctx is None
        if root:
            ctx = BuildContext(self.backend, self.dtype, self.init_rng)
        if not self.layers:
            raise ConfigError("the model has no layers")
        self.backend, self.dtype = ctx.backend, np.dtype(ctx.dtype)
        shape = self.input_shape = tuple(int(d) for d in input_shape)
        for layer in self.layers:
            shape = layer.build(shape, ctx)
        self.output_shape = tuple(shape)
        self.built = True
        self.steps = fuse_dense_activation(self.layers)
        self.step_index = _first_layer_positions(self.steps)
        if root:
            self._pack_parameters()
        return self.output_shape

    def _pack_parameters(self):
        """Move every parameter (and gradient) into one contiguous buffer, as views."""
        entries = list(self.named_parameters())
        offsets, total = [], 0
        for _, owner, key in entries:
            offsets.append(total)
            total += -(-owner.params[key].size // _ALIGN) * _ALIGN
        bk = self.backend
        self.flat_params = bk.zeros((total,), self.dtype)
        self.flat_grads = bk.zeros((total,), self.dtype)
        for (_, owner, key), start in zip(entries, offsets):
            p = owner.params[key]
            stop = start + p.size
            view = self.flat_params[start:stop].reshape(p.shape)
            view[...] = bk.asarray(p)
            owner.params[key] = view
            owner.grads[key] = self.flat_grads[start:stop].reshape(p.shape)

    def to(self, backend) -> "LayerStack":
        """Move the model (every array of :func:`bpnet.state.array_slots`) to ``backend``; returns self.

        ``backend`` is "numpy", "numba", "cupy" or a backend object.  The values
        are unchanged: only where they live and which kernels run.
        """
        new, old = get_backend(backend), self.backend
        self.auto_backend = False            # an explicit choice
        if new is old:
            return self
        host = {name: old.to_numpy(holder[key]).copy() for name, holder, key in state.array_slots(self)}
        for layer in self.walk():
            layer.backend = new
        scaler = self.loss_scaler
        if scaler is not None:
            scaler.master_params = scaler.master_grads = None
        for name, holder, key in state.array_slots(self, kinds=("param", "buffer", "optimizer")):
            holder[key] = new.asarray(host[name])
        if self.built:
            self._pack_parameters()
            if scaler is not None:
                scaler.sync_from_model()
                if "loss_scaler/master" in host:
                    scaler.master_params[...] = new.asarray(host["loss_scaler/master"])
        return self

    def settle_backend(self, steps: int):
        """Under ``backend="auto"``: move to Numba if a run of ``steps`` steps repays loading it."""
        if not self.auto_backend or not self.built:
            return
        dense = sum(1 for layer in self.walk() if "W" in layer.params)
        if numba_pays(dense, self.count_params(), steps):
            self.to("numba")
            self.auto_backend = False

    def _input_mismatch(self, shape) -> str:
        dims = ", ".join(map(str, self.input_shape))
        return (f"{self.name}: its first layer '{self.layers[0].name}' was built for inputs of shape "
                f"(batch, {dims}) but got {shape}; pass samples of shape {self.input_shape}, as in the "
                "data the model was built or trained on, or build a new model for this data")

    def _require_built(self):
        if not self.built:
            raise NotBuiltError("the model is not built yet: call model.build(input_shape), "
                                "fit, or one forward pass first")

    # -- the explicit forward and backward passes -------------------------------------
    def forward(self, x, training: bool = False):
        if not self.built:
            self.build(tuple(x.shape[1:]))
        x = self.backend.asarray(x, dtype=self.dtype)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(self._input_mismatch(tuple(x.shape)))
        if self.observers:
            return self._observed_forward(x, training)
        for step in self.steps:               # the layers, with Dense + activation fused
            x = step.forward(x, training)
        return x

    def backward(self, dy):
        if self.observers:
            return self._observed_backward(dy)
        for step in reversed(self.steps):
            dy = step.backward(dy)
        return dy

    def _observed_forward(self, x, training):
        for position, step in zip(self.step_index, self.steps):
            _PATH.append(position)
            try:
                y = step.forward(x, training)
                for observer in self.observers:
                    observer.after_forward(self, tuple(_PATH), step, x, y)
            finally:
                _PATH.pop()
            x = y
        return x

    def _observed_backward(self, dy):
        for observer in self.observers:
            observer.before_backward(self, tuple(_PATH), dy)
        for position, step in zip(reversed(self.step_index), reversed(self.steps)):
            _PATH.append(position)
            try:
                dx = step.backward(dy)
                for observer in self.observers:
                    observer.after_backward(self, tuple(_PATH), step, dy, dx)
            finally:
                _PATH.pop()
            dy = dx
        return dy

    @property
    def step_grads(self):
        """The flat gradients the optimizer steps with: ``flat_grads``, or under a
        loss scaler the unscaled float32 master gradients (what clipping and
        all-reduce must act on)."""
        scaler = self.loss_scaler
        if scaler is not None and scaler.master_grads is not None:
            return scaler.master_grads
        return self.flat_grads

    def parameters(self) -> dict:
        """``{name: array}`` for every parameter, e.g. ``"0.W"`` for the first layer's W."""
        return {name: owner.params[key] for name, owner, key in self.named_parameters()}

    def gradients(self) -> dict:
        return {name: owner.grads[key] for name, owner, key in self.named_parameters()}

    def clear_cache(self):
        """Drop what forward kept for backward (frees activation memory)."""
        for layer in self.walk():
            for attr in ("x", "y", "mask", "cache", "x_shape"):
                if getattr(layer, attr, None) is not None and layer is not self:
                    setattr(layer, attr, None)

    # -- architecture as data -----------------------------------------------------------
    def get_config(self):
        return {"layers": [layer_to_config(layer) for layer in self.layers], "seed": self.seed,
                "dtype": self.dtype.name, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls([layer_from_config(spec) for spec in config["layers"]], seed=config.get("seed", 0),
                   dtype=config.get("dtype", "float32"), name=config.get("name"))

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return (f"{type(self).__name__}([\n  {inner}\n], seed={self.seed}, dtype={self.dtype.name}, "
                f"backend={self.backend.name!r})")


def _first_layer_positions(steps) -> list[int]:
    """Where each step of the plan starts in the layer list (a fused step covers two layers)."""
    positions, i = [], 0
    for step in steps:
        positions.append(i)
        i += 2 if hasattr(step, "activation") and hasattr(step, "dense") else 1
    return positions
