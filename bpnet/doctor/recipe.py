"""``Recipe``: everything a repair may change about a training run, rebuildable and printable.

A recipe is the model's layer templates (unbuilt layers; each attempt gets
fresh copies), the loss, the optimizer's class and settings, the loss scaler,
the repair's callbacks, the batch size and epochs, and the data steps (drop
rows, standardise, convert labels).  ``recipe.build()`` makes a fresh compiled
:class:`~bpnet.Sequential`; ``recipe.code()`` writes the run as Python a user
can paste, so two recipes differ by a readable diff (:func:`code_diff`).
"""
from __future__ import annotations

import copy
import difflib
import functools
from dataclasses import dataclass, field

import numpy as np

from ..layers.base import layer_from_config, layer_to_config

_INIT_ATTRS = ("init", "recurrent_init", "bias_init")


def clone_layer(layer):
    """An unbuilt copy of ``layer`` (children included) with the same constructor arguments.

    ``get_config`` names a callable initialiser by a default string (it must be
    JSON), so the initialisers are copied from the original afterwards: a
    repair must never 'fix' an initialisation by forgetting it.
    """
    new = layer_from_config(layer_to_config(layer))
    for a, b in zip(layer.walk(), new.walk()):
        for attr in _INIT_ATTRS:
            if hasattr(a, attr):
                setattr(b, attr, getattr(a, attr))
    return new


def init_code(spec) -> str:
    """An initialiser as it would be written in code: 'he_normal' or partial(normal, std=0.05)."""
    if isinstance(spec, str):
        return repr(spec)
    if isinstance(spec, functools.partial):
        kw = ", ".join(f"{k}={v!r}" for k, v in spec.keywords.items())
        return f"partial({spec.func.__name__}{', ' + kw if kw else ''})"
    return getattr(spec, "__name__", repr(spec))


def layer_code(layer) -> str:
    """``Dense(64, init='he_normal')``: the constructor call, without default-valued arguments."""
    cls = type(layer).__name__
    if cls == "Residual":
        inner = ", ".join(layer_code(child) for child in layer.block.layers)
        return f"Residual([{inner}])"
    cfg = {k: v for k, v in layer.get_config().items() if k not in ("name", "in_features")}
    for attr in _INIT_ATTRS:
        if attr in cfg:
            cfg[attr] = getattr(layer, attr)
    defaults = _defaults(type(layer))
    parts = []
    for k, v in cfg.items():
        if k in defaults and defaults[k] == v and not callable(v):
            continue
        text = init_code(v) if k in _INIT_ATTRS else repr(v)
        parts.append(text if k == "units" else f"{k}={text}")
    return f"{cls}({', '.join(parts)})"


def _defaults(cls) -> dict:
    import inspect
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _call_code(obj, keep=()) -> str:
    """``SGD(lr=0.1)``: an object's class and the settings that differ from the defaults (and ``keep``)."""
    cfg = obj.get_config() if hasattr(obj, "get_config") else {}
    defaults = _defaults(type(obj))
    args = [f"{k}={v!r}" for k, v in cfg.items() if k in keep or not (k in defaults and _same(defaults[k], v))]
    return f"{type(obj).__name__}({', '.join(args)})"


def _same(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    return a == b


@dataclass
class DataStep:
    """One change to the data pipeline.

    ``train_only`` steps change the training split alone (dropping rows is never
    done to the data the model is judged or used on); the others (a scaler, a
    label conversion) apply to every split, and a fitted scaler travels with
    the model as ``model.preprocessor``.
    """
    kind: str                  # "drop_nonfinite", "drop_outliers", "clip_outliers", "standardize", "labels"
    code: str                  # the line a user would write
    train_only: bool = True
    params: dict = field(default_factory=dict)

    def apply_train(self, X, y, report: dict):
        """(X, y) of the training split after this step; ``report`` collects what it did."""
        if self.kind in ("drop_nonfinite", "drop_nonfinite_val"):
            keep = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
            if y is not None and np.asarray(y).dtype.kind == "f":
                keep &= np.isfinite(np.asarray(y).reshape(len(y), -1)).all(axis=1)
            report["rows_dropped_nonfinite"] = int((~keep).sum())
            return X[keep], y[keep]
        if self.kind in ("drop_outliers", "clip_outliers"):
            X2 = X.reshape(len(X), -1).astype(np.float64)
            med = np.median(X2, axis=0)
            mad = 1.4826 * np.median(np.abs(X2 - med), axis=0)
            mad = np.where(mad > 0, mad, np.maximum(X2.std(axis=0), 1e-12))
            z = self.params.get("z", 10.0)
            if self.kind == "drop_outliers":
                keep = (np.abs(X2 - med) <= z * mad).all(axis=1)
                report["rows_dropped_outliers"] = int((~keep).sum())
                return X[keep], y[keep]
            clipped = np.clip(X2, med - z * mad, med + z * mad)
            report["values_clipped"] = int((clipped != X2).sum())
            return clipped.reshape(X.shape).astype(X.dtype), y
        return X, y


@dataclass
class Recipe:
    """A training run as data: see the module docstring."""
    layers: list
    loss: object
    optimizer_class: type
    optimizer_config: dict
    epochs: int
    batch_size: int
    seed: int = 0
    dtype: str = "float32"
    backend: str | None = None
    loss_scaler: bool = False
    callbacks: list = field(default_factory=list)       # (code, factory) pairs added by the repair
    data_steps: list = field(default_factory=list)
    scaler: str | None = None                           # "Standardizer" when inputs are standardised
    label_map: str | None = None                        # "int", "unique" or "binary" (see attempt.map_labels)
    label_classes: tuple | None = None                  # the training labels' values, for "unique"/"binary"
    target_scale: bool = False                          # train on standardised targets, fold back into the output

    @classmethod
    def from_model(cls, model, epochs: int, batch_size: int) -> "Recipe":
        opt = model.optimizer
        return cls(layers=[clone_layer(layer) for layer in model.layers], loss=copy.deepcopy(model.loss),
                   optimizer_class=type(opt), optimizer_config=dict(opt.get_config()),
                   epochs=int(epochs), batch_size=int(batch_size), seed=model.seed, dtype=model.dtype.name,
                   backend=model.backend.name, loss_scaler=model.loss_scaler is not None)

    def clone(self) -> "Recipe":
        new = copy.copy(self)
        new.layers = [clone_layer(layer) for layer in self.layers]
        new.loss = copy.deepcopy(self.loss)
        new.optimizer_config = dict(self.optimizer_config)
        new.callbacks = list(self.callbacks)
        new.data_steps = list(self.data_steps)
        return new

    # -- building ---------------------------------------------------------------------------
    def build(self, input_shape):
        """A fresh, compiled and built model (new weights drawn from ``seed``)."""
        from ..mixed_precision import LossScaler
        from ..model import Sequential
        model = Sequential([clone_layer(layer) for layer in self.layers], seed=self.seed, dtype=self.dtype,
                           backend=self.backend)
        model.compile(loss=copy.deepcopy(self.loss), optimizer=self.optimizer_class(**self.optimizer_config),
                      loss_scaler=LossScaler() if self.loss_scaler else None)
        model.build(tuple(input_shape))
        return model

    def make_callbacks(self) -> list:
        return [factory() for _, factory in self.callbacks]

    def has_callback(self, code_prefix: str) -> bool:
        return any(code.startswith(code_prefix) for code, _ in self.callbacks)

    # -- the code a user would write ----------------------------------------------------------
    def code(self) -> list[str]:
        lines = []
        for step in self.data_steps:
            lines.append(step.code)
        lines.append("model = Sequential([")
        lines += [f"    {layer_code(layer)}," for layer in self.layers]
        extra = "" if self.dtype == "float32" else f", dtype={self.dtype!r}"
        lines.append(f"], seed={self.seed}{extra})")
        opt = self.optimizer_class(**self.optimizer_config)
        scaler = ", loss_scaler=LossScaler()" if self.loss_scaler else ""
        lines.append(f"model.compile(loss={_call_code(self.loss)}, optimizer={_call_code(opt, keep=('lr',))}{scaler})")
        cbs = ", ".join(code for code, _ in self.callbacks)
        cb = f", callbacks=[{cbs}]" if cbs else ""
        lines.append(f"model.fit(X_train, y_train, epochs={self.epochs}, batch_size={self.batch_size}{cb})")
        return lines


def code_diff(before: Recipe, after: Recipe) -> str:
    """The change from ``before`` to ``after`` as a unified diff of their code."""
    diff = difflib.unified_diff(before.code(), after.code(), "broken run", "repaired run", lineterm="", n=2)
    return "\n".join(diff)
