"""Saving and loading models: architecture as JSON, arrays in one ``.npz``, no pickle.

Writes are atomic: the file is written under a temporary name in the same
directory, flushed to disk, then renamed over the target.  A crash mid-write
leaves the previous file intact.
"""
from __future__ import annotations

import io
import json
import os
import stat
import tempfile

import numpy as np

from .errors import CheckpointError

FORMAT_VERSION = 1


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        os.fchmod(fd, _file_mode(path))      # mkstemp makes 0600; keep what a plain open() would give
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _file_mode(path) -> int:
    """The existing file's permissions, or 0666 less the process umask for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _rng_state(gen):
    return gen.bit_generator.state


def model_state(model) -> tuple[dict, dict]:
    """(JSON-able config, dict of host arrays) describing the model completely."""
    bk = model.backend
    arrays = {}
    for name, owner, key in model.named_parameters():
        arrays[f"param/{name}"] = bk.to_numpy(owner.params[key])
    for name, owner, key in model.named_buffers():
        arrays[f"buffer/{name}"] = bk.to_numpy(owner.buffers[key])
    config = {"format": "bpnet", "version": FORMAT_VERSION, "model": model.get_config(),
              "input_shape": list(model.input_shape) if model.built else None,
              "rng": {"init": _rng_state(model.init_rng), "data": _rng_state(model.data_rng),
                      "layers": {str(i): _rng_state(layer.rng) for i, layer in enumerate(model.walk())
                                 if getattr(layer, "rng", None) is not None}}}
    if model.loss is not None:
        config["loss"] = {"class": type(model.loss).__name__, "config": model.loss.get_config()}
        config["metrics"] = model.metrics
    if model.optimizer is not None:
        config["optimizer"] = {"class": type(model.optimizer).__name__, "config": model.optimizer.get_config()}
        for k, v in model.optimizer.state_dict().items():
            arrays[f"optimizer/{k}"] = np.asarray(v)
    scaler = getattr(model, "loss_scaler", None)
    if scaler is not None:
        config["loss_scaler"] = scaler.get_config()
        for k, v in scaler.state_dict().items():
            arrays[f"loss_scaler/{k}"] = np.asarray(v)
    if model.preprocessor is not None:
        config["preprocessor"] = {"class": type(model.preprocessor).__name__,
                                  "config": model.preprocessor.get_config()}
        for k, v in model.preprocessor.state_dict().items():
            arrays[f"preprocessor/{k}"] = np.asarray(v)
    return config, arrays


def save_model(model, path):
    model._require_built()
    config, arrays = model_state(model)
    buf = io.BytesIO()
    np.savez(buf, __config__=np.frombuffer(json.dumps(config).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path) -> tuple[dict, dict]:
    try:
        with open(os.fspath(path), "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read bpnet checkpoint {path!s}: {exc}") from exc
    return parse_checkpoint(data, path)


def parse_checkpoint(data: bytes, name="checkpoint") -> tuple[dict, dict]:
    """(config, arrays) from the bytes of a checkpoint file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read bpnet checkpoint {name!s}: {exc}") from exc
    if "__config__" not in arrays:
        raise CheckpointError(f"{name!s} is an .npz file but not a bpnet checkpoint (no __config__ entry)")
    try:
        config = json.loads(arrays.pop("__config__").tobytes().decode())
    except ValueError as exc:           # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{name!s}: the architecture entry (__config__) is damaged: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != "bpnet" or "model" not in config:
        raise CheckpointError(f"{name!s} is an .npz file but its __config__ is not a bpnet model description")
    if int(config.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{name!s} was written in checkpoint format {config['version']}, newer than this "
                              f"bpnet reads ({FORMAT_VERSION}); upgrade bpnet to load it")
    return config, arrays


def _saved_array(arrays, key, like):
    """The checkpoint's array ``key``, checked against the shape of ``like`` (the model's array)."""
    if key not in arrays:
        raise CheckpointError(f"the checkpoint has no entry {key!r} for the model it describes; "
                              "the file is damaged or was not written by Sequential.save")
    saved = arrays[key]
    if tuple(saved.shape) != tuple(like.shape):
        raise CheckpointError(f"the checkpoint's {key!r} has shape {tuple(saved.shape)} but the model's "
                              f"is {tuple(like.shape)}; the file is damaged or belongs to another model")
    return saved


def restore_state(model, config: dict, arrays: dict):
    """Load weights, buffers, optimizer state and random-generator states into ``model``."""
    from .losses import loss_from_config
    from .optim import optimizer_from_config
    if not model.built and config.get("input_shape") is not None:
        model.build(tuple(config["input_shape"]))
    bk = model.backend
    for name, owner, key in model.named_parameters():
        saved = _saved_array(arrays, f"param/{name}", owner.params[key])
        owner.params[key][...] = bk.asarray(saved, dtype=model.dtype)
    for name, owner, key in model.named_buffers():
        saved = _saved_array(arrays, f"buffer/{name}", owner.buffers[key])
        owner.buffers[key][...] = bk.asarray(saved, dtype=model.dtype)
    rng = config.get("rng", {})
    if rng:
        model.init_rng.bit_generator.state = rng["init"]
        model.data_rng.bit_generator.state = rng["data"]
        for i, layer in enumerate(model.walk()):
            if str(i) in rng.get("layers", {}):
                layer.rng.bit_generator.state = rng["layers"][str(i)]
    if "loss" in config and model.loss is None:
        model.compile(loss=loss_from_config(config["loss"]["class"], config["loss"]["config"]),
                      optimizer=optimizer_from_config(config["optimizer"]["class"], config["optimizer"]["config"]),
                      metrics=config.get("metrics"))
    if "loss_scaler" in config and model.optimizer is not None:
        from .mixed_precision import LossScaler
        if getattr(model, "loss_scaler", None) is None:
            model.loss_scaler = LossScaler(**config["loss_scaler"]).bind(model)
        model.loss_scaler.sync_from_model()
        model.loss_scaler.load_state_dict({k.split("/", 1)[1]: v for k, v in arrays.items()
                                           if k.startswith("loss_scaler/")})
    if model.optimizer is not None:
        opt_state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        if opt_state:
            model.optimizer.load_state_dict(opt_state)
    if "preprocessor" in config:
        from . import data
        cls = getattr(data, config["preprocessor"]["class"])
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("preprocessor/")}
        model.preprocessor = cls.from_state_dict(state, config["preprocessor"]["config"])


def load_model(path, backend=None):
    return model_from_checkpoint(*read_checkpoint(path), backend=backend)


def model_from_checkpoint(config: dict, arrays: dict, backend=None):
    """Rebuild a model (architecture, weights, optimizer, generators) from a parsed checkpoint."""
    from .model import Sequential
    model = Sequential.from_config(config["model"])
    if backend is not None:
        from .backends import get_backend
        model.backend = get_backend(backend)
    restore_state(model, config, arrays)
    return model
