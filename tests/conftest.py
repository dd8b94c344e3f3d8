"""Shared fixtures: every backend-aware test runs once per available backend."""
import numpy as np
import pytest

from bpnet.backends import available_backends, get_backend
from bpnet.layers import BuildContext

BACKENDS = [b for b in available_backends() if b != "cupy"]
try:
    get_backend("cupy")
    BACKENDS.append("cupy")
except Exception:   # no CuPy or no GPU: the cupy variants are skipped below with a reason
    pass


@pytest.fixture(params=["numpy", "numba", "cupy"])
def backend(request):
    """Name of a backend; tests using it run on numpy, numba and (with a GPU) cupy."""
    if request.param not in BACKENDS:
        reason = {"numba": "Numba is not installed",
                  "cupy": "CuPy or a CUDA GPU is not available"}[request.param]
        pytest.skip(reason)
    return request.param


def build_layer(layer, input_shape, backend="numpy", dtype=np.float64, seed=0):
    """Build a standalone layer on a chosen backend and dtype (for gradient checks)."""
    layer.build(tuple(input_shape), BuildContext(get_backend(backend), np.dtype(dtype),
                                                 np.random.default_rng(seed)))
    return layer
