"""The exception hierarchy, and the bpnet errors that replace bare NumPy tracebacks."""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import bpnet
from bpnet import errors
from bpnet.errors import (BackendError, BpnetError, CheckpointError, ConfigError, DataError, GradcheckError,
                          LabelError, NonFiniteError, NotBuiltError, ShapeError)

BUILTIN_BASE = {ShapeError: ValueError, LabelError: ValueError, DataError: ValueError, ConfigError: ValueError,
                NotBuiltError: RuntimeError, BackendError: RuntimeError, GradcheckError: AssertionError,
                NonFiniteError: FloatingPointError, CheckpointError: OSError}


def _bpnet_exception_classes():
    """Every exception class defined in a bpnet module that imports here."""
    found, imported = set(), []
    for info in pkgutil.walk_packages(bpnet.__path__, "bpnet."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:          # optional dependency (e.g. mpi4py, cupy) not installed
            continue
        imported.append(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("bpnet"):
                found.add(obj)
    return found, imported


def test_every_bpnet_exception_derives_from_bpneterror():
    classes, imported = _bpnet_exception_classes()
    assert {"bpnet.errors", "bpnet.model", "bpnet.losses", "bpnet.data"} <= set(imported)
    assert set(BUILTIN_BASE) <= classes
    for cls in classes:
        assert issubclass(cls, BpnetError), cls


def test_error_module_classes_all_derive_from_bpneterror():
    names = [n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(names) >= 11
    for n in names:
        assert issubclass(getattr(errors, n), BpnetError), n


@pytest.mark.parametrize("cls, base", list(BUILTIN_BASE.items()), ids=lambda v: getattr(v, "__name__", ""))
def test_errors_are_also_the_matching_builtin(cls, base):
    assert issubclass(cls, base) and issubclass(cls, BpnetError)
    with pytest.raises(base):
        raise cls("x")


def test_public_names_exported():
    for cls in BUILTIN_BASE:
        assert getattr(bpnet, cls.__name__) is cls
    assert bpnet.BpnetError is BpnetError
    assert bpnet.data.MissingDependencyError.__mro__[1] is BpnetError


def test_common_mistakes_raise_bpnet_errors(tmp_path):
    """One ``except BpnetError`` catches each of these; none is a bare NumPy error."""
    dense = bpnet.Dense(3)
    cases = {
        "backward before forward": (NotBuiltError, lambda: dense.backward(np.ones((2, 3)))),
        "unknown backend": (BackendError, lambda: bpnet.get_backend("tpu")),
        "unknown init": (ConfigError, lambda: bpnet.Dense(3, init="glorotish")),
        "dense units": (ConfigError, lambda: bpnet.Dense(0)),
        "dropout p": (ConfigError, lambda: bpnet.Dropout(1.0)),
        "summary unbuilt": (NotBuiltError, lambda: bpnet.Sequential([bpnet.Dense(2)]).summary(print_fn=None)),
        "loss logits ndim": (ShapeError, lambda: bpnet.CrossEntropy().forward(np.ones(3), np.zeros(3, int))),
        "loss rows": (ShapeError, lambda: bpnet.CrossEntropy().forward(np.ones((3, 2)), np.ones((2, 2)) / 2)),
        "missing checkpoint": (CheckpointError, lambda: bpnet.Sequential.load(tmp_path / "nope.npz")),
    }
    for what, (cls, call) in cases.items():
        with pytest.raises(cls) as info:
            call()
        assert isinstance(info.value, BpnetError), what
        assert len(str(info.value)) > 20, what                   # a sentence, not a bare value


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(CheckpointError, match="not a bpnet checkpoint"):
        bpnet.Sequential.load(path)
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"definitely not a zip file")
    with pytest.raises(CheckpointError, match="garbage.npz is not a bpnet checkpoint: it does not start like"):
        bpnet.Sequential.load(path)
    with pytest.raises(CheckpointError, match="cannot read bpnet checkpoint .*missing.npz: No such file"):
        bpnet.Sequential.load(tmp_path / "missing.npz")


def test_damaged_checkpoint(tmp_path):
    """A checkpoint whose entries were damaged or swapped says which entry is wrong
    (these were a bare JSONDecodeError, KeyError and broadcasting ValueError)."""
    import json
    model = bpnet.Sequential([bpnet.Dense(3), bpnet.ReLU(), bpnet.Dense(2)], backend="numpy")
    model.build((4,))
    model.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    config = json.loads(arrays["__config__"].tobytes().decode())

    def write(name, cfg_bytes, **changes):
        entries = {**arrays, "__config__": np.frombuffer(cfg_bytes, dtype=np.uint8), **changes}
        np.savez(tmp_path / name, **{k: v for k, v in entries.items() if v is not None})
        return tmp_path / name

    cases = [
        (write("json.npz", b"{not json"), r"__config__\) is damaged"),
        (write("missing.npz", json.dumps(config).encode(), **{"param/0.W": None}), "no entry 'param/0.W'"),
        (write("shape.npz", json.dumps(config).encode(), **{"param/0.W": np.zeros((5, 3))}),
         r"'param/0.W' has shape \(5, 3\) but the model's is \(4, 3\)"),
        (write("newer.npz", json.dumps({**config, "version": 99}).encode()), "format 99, newer"),
    ]
    for path, words in cases:
        with pytest.raises(CheckpointError, match=words):
            bpnet.Sequential.load(path)
    assert bpnet.Sequential.load(tmp_path / "ok.npz").count_params() == model.count_params()


def test_batchnorm_needs_two_samples():
    bn = bpnet.BatchNorm1d()
    with pytest.raises(ConfigError, match="at least 2 samples.*does not leave a single sample over"):
        bn.forward(np.ones((1, 3)), training=True)


def test_residual_shape_mismatch():
    res = bpnet.Residual([bpnet.Dense(4)])
    with pytest.raises(ShapeError, match=r"maps per-sample shape \(3,\) to \(4,\)"):
        res.forward(np.ones((2, 3)))


def test_checkpoints_get_ordinary_file_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private."""
    import os
    import stat

    from bpnet.io import atomic_write_bytes
    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.npz"
        atomic_write_bytes(fresh, b"new")
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644
        shared = tmp_path / "shared.npz"
        shared.write_bytes(b"old")
        os.chmod(shared, 0o664)
        atomic_write_bytes(shared, b"new")
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o664 and shared.read_bytes() == b"new"
    finally:
        os.umask(umask)
