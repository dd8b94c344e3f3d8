"""What a checkpoint's JSON may say: its keys, their types, and classes from bpnet's registries.

Loading never resolves a class by looking a name from the file up on a
module: layers come from ``LAYER_REGISTRY``, losses from ``LOSSES``,
optimizers from ``OPTIMIZER_CLASSES``, preprocessors from ``PREPROCESSORS``.
Every class's settings must be arguments its constructor takes.  A failure
is a :class:`~bpnet.errors.CheckpointError` that names the file and the key.
"""
from __future__ import annotations

import inspect
import math

from .errors import CheckpointError
from .validation import did_you_mean

FORMAT_VERSION = 2   # 2: small state (counters, generators) in the config's "state" entry; 1 is still read

_TOP_KEYS = {"format", "version", "model", "input_shape", "rng", "loss", "metrics", "optimizer",
             "loss_scaler", "preprocessor", "state", "callbacks", "training"}


class _Where:
    """The file name, for messages."""

    def __init__(self, name):
        self.name = name

    def fail(self, key: str, problem: str):
        raise CheckpointError(f"{self.name!s}: {key} {problem}; the file is damaged or was not written by "
                              "bpnet's Sequential.save")


def check_config(config, arrays: dict, name) -> None:
    """Raise CheckpointError unless ``config`` is a description bpnet can rebuild safely."""
    w = _Where(name)
    if not isinstance(config, dict) or config.get("format") != "bpnet" or "model" not in config:
        raise CheckpointError(f"{name!s} is an .npz file but its __config__ is not a bpnet model description")
    version = config.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        w.fail("'version'", f"is {version!r}, not a checkpoint format number (unsupported version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{name!s} was written in checkpoint format {version}, newer than this "
                              f"bpnet reads ({FORMAT_VERSION}); upgrade bpnet to load it")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        w.fail(f"the key {sorted(unknown)[0]!r}", "is not part of a bpnet checkpoint")
    _check_model(w, config["model"])
    _check_input_shape(w, config.get("input_shape"), arrays)
    _check_rng(w, config.get("rng"))
    if "state" in config:
        _dict(w, config["state"], "'state'")
    _check_training(w, config)


def _dict(w, value, key) -> dict:
    if not isinstance(value, dict):
        w.fail(key, f"is {type(value).__name__}, not an object")
    return value


def _check_class(w, spec, key: str, registry: dict, kind: str):
    """``spec`` is ``{"class": name in registry, "config": {arguments of its constructor}}``; the class."""
    spec = _dict(w, spec, key)
    missing = {"class", "config"} - set(spec)
    if missing:
        w.fail(key, f"lacks {sorted(missing)} (missing key)")
    name = spec["class"]
    if not isinstance(name, str) or name not in registry:
        w.fail(f"{key}.class", f"names the unknown {kind} class {name!r}{did_you_mean(name, registry)}")
    cls = registry[name]
    config = _dict(w, spec["config"], f"{key}.config")
    if not hasattr(cls, "from_config"):
        _check_arguments(w, cls, config, key)
    return cls


def _check_arguments(w, cls, config: dict, key: str):
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):      # pragma: no cover - every bpnet class has a signature
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    for arg in config:
        if arg not in params:
            w.fail(f"{key}.config", f"gives {cls.__name__} the setting {arg!r}, which it does not take"
                                    f"{did_you_mean(arg, params)}")


def _check_model(w, model):
    model = _dict(w, model, "'model'")
    layers = model.get("layers")
    if not isinstance(layers, list) or not layers:
        w.fail("'model.layers'", "is not a non-empty list of layers")
    for i, spec in enumerate(layers):
        _check_layer(w, spec, f"'model.layers[{i}]'")
    if not isinstance(model.get("dtype", "float32"), str) or not isinstance(model.get("seed", 0), int):
        w.fail("'model'", "has a dtype that is not a name or a seed that is not an integer")


def _check_layer(w, spec, key: str):
    from .layers.base import LAYER_REGISTRY
    _check_class(w, spec, key, LAYER_REGISTRY, "layer")
    config = spec["config"]
    if "layers" in config:                       # a nested Sequential
        if not isinstance(config["layers"], list):
            w.fail(f"{key}.config.layers", "is not a list of layers")
        for i, sub in enumerate(config["layers"]):
            _check_layer(w, sub, f"{key}.layers[{i}]")
    if "block" in config:                        # a Residual's inner block
        _check_layer(w, config["block"], f"{key}.block")


def _check_input_shape(w, shape, arrays: dict):
    if shape is None:
        return
    if not isinstance(shape, list) or not shape or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        w.fail("'input_shape'", f"is {shape!r}, not a list of positive integers")
    # building allocates the parameters before their shapes are compared with the saved arrays;
    # an input wider than every saved parameter together cannot belong to this file
    saved = sum(a.size for k, a in arrays.items() if k.startswith("param/"))
    if saved and math.prod(shape) > saved:
        w.fail("'input_shape'", f"is {shape}, more inputs than the file's {saved} saved parameters")


def _check_rng(w, rng):
    if rng is None:
        return
    rng = _dict(w, rng, "'rng'")
    states = [("'rng.init'", rng.get("init")), ("'rng.data'", rng.get("data"))]
    states += [(f"'rng.layers.{k}'", v) for k, v in _dict(w, rng.get("layers", {}), "'rng.layers'").items()]
    for key, state in states:
        state = _dict(w, state, key)
        if not isinstance(state.get("bit_generator"), str) or not isinstance(state.get("state"), dict):
            w.fail(key, "is not a random generator's state (missing key 'bit_generator' or 'state')")


def _check_training(w, config: dict):
    from .data import PREPROCESSORS
    from .losses import LOSSES
    from .optim import OPTIMIZER_CLASSES
    if ("loss" in config) != ("optimizer" in config):
        w.fail("'loss' and 'optimizer'", "must both be present or both absent (missing key)")
    if "loss" in config:
        _check_class(w, config["loss"], "'loss'", {c.__name__: c for c in LOSSES.values()}, "loss")
        _check_class(w, config["optimizer"], "'optimizer'", OPTIMIZER_CLASSES, "optimizer")
        metrics = config.get("metrics")
        if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
            w.fail("'metrics'", f"is {metrics!r}, not a list of metric names")
    if "loss_scaler" in config:
        from .mixed_precision import LossScaler
        _check_arguments(w, LossScaler, _dict(w, config["loss_scaler"], "'loss_scaler'"), "'loss_scaler'")
    if "preprocessor" in config:
        _check_class(w, config["preprocessor"], "'preprocessor'", PREPROCESSORS, "preprocessor")
    if "callbacks" in config:
        _dict(w, config["callbacks"], "'callbacks'")
    if "training" in config:
        training = _dict(w, config["training"], "'training'")
        for key in ("epoch", "step"):
            if isinstance(training.get(key), bool) or not isinstance(training.get(key), int):
                w.fail(f"'training.{key}'", f"is {training.get(key)!r}, not an integer (missing key?)")
        _dict(w, training.get("history"), "'training.history'")
