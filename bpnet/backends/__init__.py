"""Array backends: where bpnet's arrays live and which kernels compute on them.

Three backends implement one interface, :class:`~bpnet.backends.base.Backend`
(device questions and shared pieces); :class:`NumpyBackend` is the reference:

* ``"numpy"`` -- plain NumPy expressions, the code the docstrings derive;
* ``"numba"`` -- the same maths through fused Numba kernels (``bpnet.kernels``);
* ``"cupy"``  -- the GPU: cuBLAS matrix products plus CUDA C kernels.

Layers never ask which backend they run on: they call ``backend.xp`` (the
array namespace) and the backend's kernel methods.
"""
from __future__ import annotations

import importlib.util
import os

from ..errors import BackendError
from .base import Backend
from .numpy_backend import NumpyBackend

__all__ = ["Backend", "NumpyBackend", "get_backend", "default_backend_name", "available_backends", "numba_pays"]

_INSTANCES: dict = {}


def _numba_importable() -> bool:
    """Whether Numba is installed (found, not imported: importing it costs half a second)."""
    return importlib.util.find_spec("numba") is not None


def default_backend_name() -> str:
    """``$BPNET_BACKEND`` if set, else ``"auto"`` when Numba is installed, else ``"numpy"``.

    ``"auto"``: a model starts on NumPy and moves to Numba when ``fit`` sees a
    run long enough for the fused kernels to repay loading them (:func:`numba_pays`).
    """
    env = os.environ.get("BPNET_BACKEND", "").strip().lower()
    if env:
        return env
    return "auto" if _numba_importable() else "numpy"


# The break-even of the "auto" choice.  Loading Numba and its cached kernels costs a new process
# about a second (NUMBA_LOAD_S, bench_train's start-up figures), loading the kernels compiled
# ahead of time (``bpnet build-kernels``) about 0.04 s (AOT_LOAD_S, with a margin); each training
# step then saves the per-call overhead of the unfused NumPy pieces (about SAVED_PER_LAYER_S per
# Dense layer) and the extra memory passes of the unfused optimizer update (about
# SAVED_PER_PARAM_S per parameter).
NUMBA_LOAD_S = 1.0
AOT_LOAD_S = 0.1
SAVED_PER_LAYER_S = 15e-6
SAVED_PER_PARAM_S = 5e-9


def numba_load_seconds() -> float:
    """What loading the numba backend's kernels costs a new process: the ahead-of-time module
    where it is built for this machine (and not switched off), else Numba's JIT cache."""
    from . import numba_aot
    built = numba_aot.enabled() and numba_aot.is_built()
    return AOT_LOAD_S if built else NUMBA_LOAD_S


def numba_pays(dense_layers: int, params: int, steps: int) -> bool:
    """True when a run of ``steps`` steps saves more on Numba than loading its kernels costs."""
    saved = steps * (dense_layers * SAVED_PER_LAYER_S + params * SAVED_PER_PARAM_S)
    return _numba_importable() and saved > numba_load_seconds()


def available_backends() -> list[str]:
    """Names of the backends that can be created on this machine."""
    names = ["numpy"]
    if _numba_importable():
        names.append("numba")
    try:
        get_backend("cupy")
        names.append("cupy")
    except BackendError:
        pass
    return names


def get_backend(name=None):
    """Return the (shared) backend object called ``name``.

    ``name`` may be a backend instance (returned unchanged), a string, or
    ``None`` for :func:`default_backend_name`; ``"auto"`` gives the NumPy
    backend a model starts on (the model itself decides later).
    """
    if name is None:
        name = default_backend_name()
    if name == "auto":
        name = "numpy"
    if not isinstance(name, str):
        return name
    key = name.lower()
    if key not in _INSTANCES:
        _INSTANCES[key] = _create(key)
    return _INSTANCES[key]


def _create(key):
    if key == "numpy":
        return NumpyBackend()
    if key == "numba":
        if not _numba_importable():
            raise BackendError(
                "backend 'numba' needs Numba, which is not installed; "
                "run `pip install numba` or use backend='numpy'")
        from .numba_backend import NumbaBackend
        return NumbaBackend()
    if key == "cupy":
        try:
            from .cupy_backend import CupyBackend
        except ImportError as exc:
            raise BackendError(
                f"backend 'cupy' is unavailable ({exc}); it needs CuPy and a CUDA GPU "
                "(`pip install cupy-cuda12x`), or use backend='numpy' / 'numba'") from exc
        return CupyBackend()
    raise BackendError(
        f"unknown backend {key!r}; choose one of 'numpy', 'numba', 'cupy' "
        "(or set BPNET_BACKEND to one of them)")
