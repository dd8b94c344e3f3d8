"""Shared pieces of the doctor tests: small deterministic models and data, one BLAS thread."""
import numpy as np
import pytest

from bpnet import Dense, ReLU, Sequential


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small matrices gain nothing from BLAS threads and suffer badly when cores are shared."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def blobs(n=256, d=16, classes=3, seed=0):
    """Standardised Gaussian inputs with labels from two coordinates (learnable, balanced)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)) % classes
    return X, y


def mlp(hidden=(32,), out=3, init="he_normal", act=ReLU, seed=0, dtype="float32", **kw):
    layers = []
    for h in hidden:
        layers += [Dense(h, init=init), act()]
    return Sequential(layers + [Dense(out)], seed=seed, dtype=dtype, backend="numpy", **kw)


def scaled_normal(scale):
    """An initialiser N(0, scale²) (for provoking bad initial scales)."""
    def init(shape, rng, dtype):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    return init
