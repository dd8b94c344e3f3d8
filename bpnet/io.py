"""Saving and loading models: architecture as JSON, arrays in one ``.npz``, no pickle.

Writes are atomic: the file is written under a temporary name in the same
directory (``.tmp-<name>.<pid>.<random>.part``), flushed to disk, renamed over
the target, and the directory is flushed so the rename survives a power cut.
A crash mid-write leaves the previous file intact; the next save of the same
path removes the temporary files that crashed saves of it left behind.  A
symbolic link is written through (its target is replaced, the link stays);
a directory, FIFO or device at the path is refused.

Reading is :mod:`bpnet.checkpoint`: every damaged or crafted file is a
:class:`~bpnet.errors.CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import stat
import tempfile

import numpy as np

from . import state
from .checkpoint import parse_checkpoint  # noqa: F401 - re-exported (the MPI trainer reads bytes)
from .checkpoint_schema import FORMAT_VERSION
from .errors import BpnetError, CheckpointError
from .layers.base import LAYER_REGISTRY



_TEMP_SUFFIX = ".part"


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    target = _write_target(path)
    directory, base = os.path.split(target)
    _make_directory(directory, path)
    _remove_stale_temporaries(directory, base)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{base}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=directory)
    except OSError as exc:
        raise CheckpointError(f"cannot save {path!s}: cannot create a file in {directory} ({exc.strerror})") from exc
    try:
        os.fchmod(fd, _file_mode(target))      # mkstemp makes 0600; keep what a plain open() would give
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_directory(directory)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise CheckpointError(f"cannot save {path!s}: {why}; the previous file (if any) is intact "
                                  f"({exc})") from exc
        raise


def _write_target(path) -> str:
    """The regular file a save of ``path`` replaces: symlinks resolved, anything else refused."""
    if path is None or os.fspath(path) == "":
        raise CheckpointError("cannot save a checkpoint to an empty path; pass a file name such as 'model.npz'")
    target = os.path.realpath(os.fspath(path))       # through symlinks, so the link keeps pointing at it
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:                           # e.g. a path component is a regular file
        raise CheckpointError(f"cannot save {path!s}: {exc.strerror} (is part of the path a regular "
                              "file?)") from exc
    if not stat.S_ISREG(mode):
        kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                 (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")]
        kind = next((name for test, name in kinds if test(mode)), "not a regular file")
        raise CheckpointError(f"cannot save {path!s}: it is {kind}; pass the path of a file to write")
    return target


def _make_directory(directory: str, path):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:                           # FileExistsError / NotADirectoryError: a file is in the way
        raise CheckpointError(f"cannot save {path!s}: cannot create its directory {directory} "
                              f"({exc.strerror}; is part of the path a regular file?)") from exc


def _remove_stale_temporaries(directory: str, base: str):
    """Delete what crashed saves of ``base`` left behind: temporaries of processes that no longer run."""
    prefix = f".tmp-{base}."
    for tmp in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*" + _TEMP_SUFFIX)):
        pid = os.path.basename(tmp)[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue                                 # a save in progress (this process saves one at a time)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False                                 # not saving now: its own temporaries are leftovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                          # alive, another user's
        return True
    return True


def _fsync_directory(directory: str):
    """Flush the directory entry of the rename; file systems that cannot are skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _file_mode(path) -> int:
    """The existing file's permissions, or 0666 less the process umask for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def model_state(model) -> tuple[dict, dict]:
    """(JSON-able config, dict of host arrays) describing the model completely.

    The arrays are :func:`bpnet.state.array_slots`; the small values
    (counters, generator states) go into the config as ``"state"``.
    """
    bk = model.backend
    arrays = {name: bk.to_numpy(holder[key]) for name, holder, key in state.array_slots(model)}
    config = {"format": "bpnet", "version": FORMAT_VERSION, "model": model.get_config(),
              "input_shape": list(model.input_shape) if model.built else None,
              "state": state.values(model)}
    if model.loss is not None:
        config["loss"] = {"class": type(model.loss).__name__, "config": model.loss.get_config()}
        config["metrics"] = model.metrics
    if model.optimizer is not None:
        config["optimizer"] = {"class": type(model.optimizer).__name__, "config": model.optimizer.get_config()}
    if model.loss_scaler is not None:
        config["loss_scaler"] = model.loss_scaler.get_config()
    if model.preprocessor is not None:
        config["preprocessor"] = {"class": type(model.preprocessor).__name__,
                                  "config": model.preprocessor.get_config(),
                                  "applied": bool(getattr(model, "apply_preprocessor", False))}
        for k, v in model.preprocessor.state_dict().items():
            arrays[f"preprocessor/{k}"] = np.asarray(v)
    return config, arrays


def save_model(model, path, extra: tuple[dict, dict] | None = None):
    """Write the model to ``path`` atomically; ``extra`` = (config entries, arrays) saved with it.

    During ``fit`` the training loop's position, history and callback states are
    saved too (:func:`bpnet.callbacks.backup.training_state`)."""
    model._require_built()
    config, arrays = model_state(model)
    loop = getattr(model, "training_loop", None)
    if extra is None and loop is not None:          # saved during fit (by a callback): the run's state too
        from .callbacks.backup import training_state
        extra = training_state(loop)
    if extra is not None:
        config.update(extra[0])
        arrays.update(extra[1])
    buf = io.BytesIO()
    np.savez(buf, __config__=np.frombuffer(json.dumps(config).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path) -> tuple[dict, dict]:
    """(config, arrays) of the checkpoint at ``path``, checked (see :mod:`bpnet.checkpoint`)."""
    if path is None or os.fspath(path) == "":
        raise CheckpointError("cannot load a checkpoint from an empty path; pass the file model.save wrote")
    try:
        with open(os.fspath(path), "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read bpnet checkpoint {path!s}: {exc.strerror or exc}") from exc
    return parse_checkpoint(data, path)


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


def _upgrade_v1(config: dict, arrays: dict) -> tuple[dict, dict]:
    """Format 1 kept counters as arrays and generator states under ``"rng"``: read them as format 2."""
    arrays = dict(arrays)
    scalar = lambda key, kind: kind(arrays.pop(key)) if key in arrays else None  # noqa: E731
    opt = {k: scalar(f"optimizer/{k}", kind) for k, kind in (("t", int), ("lr", float), ("initial_lr", float))}
    scaler = {k: scalar(f"loss_scaler/{k}", kind) for k, kind in (("scale", float), ("good_steps", int),
                                                                  ("overflows", int))}
    if "loss_scaler/master_params" in arrays:
        arrays["loss_scaler/master"] = arrays.pop("loss_scaler/master_params")
    rng = config.get("rng", {})
    values = {"rng": {**{k: rng[k] for k in ("init", "data") if k in rng},
                      **{f"layer/{i}": st for i, st in rng.get("layers", {}).items()}}}
    if opt["t"] is not None:
        values["optimizer"] = {k: v for k, v in opt.items() if v is not None}
    if scaler["scale"] is not None:
        values["loss_scaler"] = {k: v for k, v in scaler.items() if v is not None}
    return {**config, "state": values}, arrays


def restore_state(model, config: dict, arrays: dict):
    """Load weights, buffers, optimizer and loss-scaler state and generator states into ``model``."""
    from .losses import loss_from_config
    from .optim import optimizer_from_config
    if not model.built and config.get("input_shape") is not None:
        model.build(tuple(config["input_shape"]))
    if "loss" in config and model.loss is None:
        model.compile(loss=loss_from_config(config["loss"]["class"], config["loss"]["config"]),
                      optimizer=optimizer_from_config(config["optimizer"]["class"], config["optimizer"]["config"]),
                      metrics=config.get("metrics"))
    if "loss_scaler" in config and model.optimizer is not None and model.loss_scaler is None:
        from .mixed_precision import LossScaler
        model.loss_scaler = LossScaler(**config["loss_scaler"]).bind(model)
    if model.loss_scaler is not None:
        model.loss_scaler.sync_from_model()
    if model.optimizer is not None and any(k.startswith("optimizer/") for k in arrays):
        model.optimizer._flat()                # allocate the state arrays the file fills
    if int(config.get("version", 1)) < 2:
        config, arrays = _upgrade_v1(config, arrays)
    bk = model.backend
    for name, holder, key in state.array_slots(model):
        if name.startswith("optimizer/") and name not in arrays:
            continue                           # state this optimizer has but the run had not created
        holder[key][...] = bk.asarray(_saved_array(arrays, name, holder[key]), dtype=holder[key].dtype)
    if model.loss_scaler is not None and "loss_scaler/master" not in arrays:
        model.loss_scaler.sync_from_model()
    state.load_values(model, config.get("state", {}))
    if "preprocessor" in config:
        from .data import PREPROCESSORS
        cls = PREPROCESSORS[config["preprocessor"]["class"]]      # a registry, never getattr on a module
        saved = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("preprocessor/")}
        model.preprocessor = cls.from_state_dict(saved, config["preprocessor"]["config"])
        model.apply_preprocessor = bool(config["preprocessor"].get("applied", False))


def load_model(path, backend=None):
    """The model saved at ``path``; a damaged or crafted file is a CheckpointError naming it."""
    return build_checked(read_checkpoint(path), path, backend)


def model_from_bytes(data: bytes, name="checkpoint", backend=None):
    """The model whose checkpoint file holds ``data`` (what ``load_model`` does after reading the file)."""
    return build_checked(parse_checkpoint(data, name), name, backend)


def build_checked(checkpoint: tuple[dict, dict], name, backend=None):
    """``model_from_checkpoint``, with what still goes wrong building it reported as a CheckpointError.

    The schema check (:mod:`bpnet.checkpoint_schema`) has vetted every key and
    class name; what remains are values a constructor refuses (a string where
    a number belongs, a negative size, a mis-shaped array): the file is damaged.
    """
    try:
        return model_from_checkpoint(*checkpoint, backend=backend)
    except CheckpointError as exc:
        if str(name) in str(exc):
            raise
        raise CheckpointError(f"{name!s}: {exc}") from exc
    except (BpnetError, TypeError, ValueError, KeyError, IndexError, AttributeError, MemoryError) as exc:
        raise CheckpointError(f"{name!s} describes a model bpnet cannot rebuild ({type(exc).__name__}: "
                              f"{exc}); the file is damaged or was not written by Sequential.save") from exc


def model_from_checkpoint(config: dict, arrays: dict, backend=None):
    """Rebuild a model (architecture, weights, optimizer, generators) from a parsed checkpoint."""
    model = LAYER_REGISTRY["Sequential"].from_config(config["model"])
    if backend is not None:
        from .backends import get_backend
        model.backend = get_backend(backend)
    restore_state(model, config, arrays)
    return model
