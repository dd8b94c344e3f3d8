"""No leaks: memory stays flat over many training steps, and inference keeps no activations."""
import gc

import numpy as np
import pytest

from bpnet import Adam, BatchNorm1d, Callback, Dense, Dropout, ReLU, Sequential
from doctor_helpers import one_blas_thread  # noqa: F401  (one BLAS thread: two test processes share two cores)

psutil = pytest.importorskip("psutil")

MB = 2 ** 20
CACHE_ATTRS = ("x", "y", "mask", "cache", "x_shape")


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


class _RssProbe(Callback):
    """Record the process RSS every ``every`` batches."""

    def __init__(self, every=25):
        self.every, self.step, self.samples = every, 0, []

    def on_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.samples.append((self.step, _rss()))


def _data(n=128 * 30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 784)).astype(np.float32), rng.integers(0, 10, n)


def test_rss_is_flat_over_300_training_steps(backend):
    X, y = _data()                                  # 30 batches of 128: 10 epochs = 300 steps
    model = Sequential([Dense(256, init="he_normal"), ReLU(), Dense(10)], seed=0, backend=backend)
    model.compile("cross_entropy", Adam(lr=1e-3))
    probe = _RssProbe(every=25)
    model.fit(X, y, epochs=10, batch_size=128, callbacks=[probe], verbose=0)
    steps = [s for s, _ in probe.samples]
    assert steps[-1] == 300
    warm = dict(probe.samples)[50]                  # after warm-up: buffers, optimizer state, kernels
    growth = max(r for s, r in probe.samples if s >= 50) - warm
    assert growth < 4 * MB, f"RSS grew by {growth / MB:.1f} MB over 250 steps: {probe.samples}"


def test_rss_is_flat_over_repeated_predict_and_evaluate(backend):
    X, y = _data(n=2048)
    model = Sequential([Dense(256, init="he_normal"), ReLU(), Dense(10)], seed=0, backend=backend)
    model.compile("cross_entropy", Adam())
    model.fit(X[:256], y[:256], epochs=1, batch_size=128, verbose=0)
    for _ in range(5):                              # warm-up
        model.predict(X)
        model.evaluate(X, y)
    before = _rss()
    for _ in range(50):
        model.predict(X)
        model.evaluate(X, y)
    growth = _rss() - before
    assert growth < 4 * MB, f"RSS grew by {growth / MB:.1f} MB over 50 predict+evaluate calls"


def _cached(model):
    """(layer, attribute) pairs still holding an array from a forward pass."""
    return [(layer.name, attr) for layer in model.walk() if layer is not model
            for attr in CACHE_ATTRS if getattr(layer, attr, None) is not None]


def test_predict_and_evaluate_leave_no_cached_activations(backend):
    X, y = _data(n=512)
    model = Sequential([Dense(64), BatchNorm1d(), ReLU(), Dropout(0.3), Dense(10)], seed=0, backend=backend)
    model.compile("cross_entropy", Adam())
    model.fit(X, y, epochs=1, batch_size=128, verbose=0)
    model.forward(X[:128], training=True)           # a training pass keeps what backward needs
    held = set(_cached(model))
    assert {("dense", "x"), ("batchnorm1d", "cache"), ("relu", "y"), ("dropout", "mask")} <= held
    out = model.predict(X)
    assert out.shape == (512, 10)
    assert _cached(model) == []
    model.forward(X[:128], training=True)
    model.evaluate(X, y)
    assert _cached(model) == []
    model.forward(X[:128], training=True)
    model.clear_cache()
    assert _cached(model) == []
