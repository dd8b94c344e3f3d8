"""Small data sets for learning and testing: real ones (shipped with bpnet) and synthetic ones.

* Real: :func:`load_digits`, :func:`load_iris`, :func:`load_wine`, :func:`load_breast_cancer`.
* Synthetic: :func:`make_spirals`, :func:`make_moons`, :func:`xor`.

Each returns ``(X, y)`` as host NumPy arrays: X float32 (real) or float64 (synthetic), y int64.

The four real sets are scikit-learn's copies of UCI data sets (CC BY 4.0),
stored once as compressed ``.npz`` files in ``bpnet/_datasets`` (about
110 KB together; origin, licences and the script that wrote them in its
README).  Shipping them keeps scikit-learn an optional dependency (it brings
joblib and threadpoolctl and is ten times the size of bpnet) while a plain
``pip install bpnet-framework`` still runs ``bpnet train --dataset iris``.
"""
from __future__ import annotations

from importlib import resources

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["load_digits", "load_iris", "load_wine", "load_breast_cancer", "make_spirals", "make_moons", "xor"]


# --------------------------------------------------------------------------- real data sets
def _load(name: str):
    """``(X float32, y int64)`` from ``bpnet/_datasets/NAME.npz``."""
    source = resources.files("bpnet").joinpath("_datasets", f"{name}.npz")
    try:
        with source.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
            X, y = data["X"], data["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"the bundled data set {name!r} cannot be read from {source} ({exc}); "
                        "reinstall bpnet-framework (pip install --force-reinstall bpnet-framework)") from exc
    return np.ascontiguousarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)


def load_digits():
    """8x8 handwritten digits: X (1797, 64) float32, y (1797,) int64 in 0..9.

    Pixel values are left raw (integers 0..16); scale them yourself, e.g.
    ``X / 16`` or a :class:`Standardizer` fit on the training split.
    """
    return _load("digits")


def load_iris():
    """Fisher's iris: X (150, 4) float32 (cm), y (150,) int64 in 0..2. Unscaled."""
    return _load("iris")


def load_wine():
    """Wine recognition: X (178, 13) float32, y (178,) int64 in 0..2.

    Features span very different ranges (proline ~1000, hue ~1): standardize
    before training, or watch plain SGD crawl.
    """
    return _load("wine")


def load_breast_cancer():
    """Wisconsin breast cancer: X (569, 30) float32, y (569,) int64 in {0, 1}. Unscaled."""
    return _load("breast_cancer")


# --------------------------------------------------------------------------- synthetic data
def _check_synth(n_samples: int, noise: float, min_samples: int = 1) -> None:
    if int(n_samples) < min_samples:
        raise ConfigError(f"n_samples must be at least {min_samples}, got {n_samples}")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")


def _shuffled(rng, X, y):
    perm = rng.permutation(len(X))
    return X[perm].astype(np.float32), y[perm].astype(np.int64)


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2, seed: int = 0):
    """The CS231n spiral: ``n_classes`` arms in 2-D, not linearly separable.

    Arm ``j`` has radius ``r = linspace(0, 1)`` and angle
    ``t = linspace(4j, 4(j+1)) + noise * N(0, 1)``; a point is
    ``(r sin t, r cos t)``.  Classes differ in size by at most one; rows are
    shuffled.  Returns X (n, 2) float32, y (n,) int64.
    """
    if int(n_classes) < 1:
        raise ConfigError(f"n_classes must be at least 1, got {n_classes}")
    _check_synth(n_samples, noise, min_samples=n_classes)
    rng = np.random.default_rng(seed)
    sizes = [n_samples // n_classes + (j < n_samples % n_classes) for j in range(n_classes)]
    Xs, ys = [], []
    for j, m in enumerate(sizes):
        r = np.linspace(0.0, 1.0, m)
        t = np.linspace(4.0 * j, 4.0 * (j + 1), m) + noise * rng.standard_normal(m)
        Xs.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        ys.append(np.full(m, j))
    return _shuffled(rng, np.concatenate(Xs), np.concatenate(ys))


def make_moons(n_samples: int = 200, noise: float = 0.1, seed: int = 0):
    """Two interleaving half circles (the scikit-learn shape, own code).

    Class 0: ``(cos t, sin t)``; class 1: ``(1 - cos t, 0.5 - sin t)`` for
    ``t`` evenly spaced in ``[0, pi]``; Gaussian noise of std ``noise`` on both
    coordinates.  Class 0 gets ``n_samples // 2`` points.  Rows are shuffled.
    """
    _check_synth(n_samples, noise, min_samples=2)
    rng = np.random.default_rng(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    t_out, t_in = np.linspace(0.0, np.pi, n_out), np.linspace(0.0, np.pi, n_in)
    X = np.concatenate([np.column_stack([np.cos(t_out), np.sin(t_out)]),
                        np.column_stack([1.0 - np.cos(t_in), 0.5 - np.sin(t_in)])])
    y = np.concatenate([np.zeros(n_out), np.ones(n_in)])
    X = X + noise * rng.standard_normal(X.shape)
    return _shuffled(rng, X, y)


_XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
_XOR_Y = np.array([0, 1, 1, 0])


def xor(n_samples: int | None = None, noise: float = 0.0, seed: int = 0):
    """The XOR problem, the classic case a network without a hidden layer cannot fit.

    With ``n_samples=None``: the four corners ``[[0,0],[0,1],[1,0],[1,1]]`` in
    that order with ``y = [0, 1, 1, 0]`` (plus Gaussian noise if ``noise > 0``).
    Otherwise ``n_samples`` points spread evenly over the corners, each jittered
    by Gaussian noise of std ``noise``, rows shuffled.
    """
    rng = np.random.default_rng(seed)
    if n_samples is None:
        X = _XOR_X + noise * rng.standard_normal(_XOR_X.shape) if noise > 0 else _XOR_X
        return X.astype(np.float32), _XOR_Y.astype(np.int64)
    _check_synth(n_samples, noise)
    corner = np.arange(n_samples) % 4
    X = _XOR_X[corner] + noise * rng.standard_normal((n_samples, 2))
    return _shuffled(rng, X, _XOR_Y[corner])
