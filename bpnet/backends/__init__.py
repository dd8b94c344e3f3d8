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

import os

from ..errors import BackendError
from .base import Backend
from .numpy_backend import NumpyBackend

__all__ = ["Backend", "NumpyBackend", "get_backend", "default_backend_name", "available_backends"]

_INSTANCES: dict = {}


def _numba_importable() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend_name() -> str:
    """``$BPNET_BACKEND`` if set, else ``"numba"`` when importable, else ``"numpy"``."""
    env = os.environ.get("BPNET_BACKEND", "").strip().lower()
    if env:
        return env
    return "numba" if _numba_importable() else "numpy"


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
    ``None`` for :func:`default_backend_name`.
    """
    if name is None:
        name = default_backend_name()
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
