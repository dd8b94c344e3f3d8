"""backend="auto" (the default when Numba is installed): NumPy until a run is long enough for Numba."""
import subprocess
import sys

import numpy as np
import pytest

from bpnet import Adam, Callback, Dense, ReLU, Sequential
from bpnet.backends import _numba_importable, default_backend_name, numba_pays

pytestmark = pytest.mark.skipif(not _numba_importable(), reason="Numba is not installed")


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    monkeypatch.delenv("BPNET_BACKEND", raising=False)


class StopAfter(Callback):
    """End the run after ``n`` steps (the planned length is what the backend choice reads)."""

    def __init__(self, n):
        self.n = n

    def on_batch_end(self, batch, logs=None):
        if self.loop.step + 1 >= self.n:
            self.model.stop_training = True


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 32)).astype(np.float32), rng.integers(0, 4, n)


def net(backend=None):
    model = Sequential([Dense(256), ReLU(), Dense(256), ReLU(), Dense(4)], seed=3, backend=backend)
    return model.compile(loss="cross_entropy", optimizer=Adam(1e-3))


def test_a_model_starts_on_numpy_under_auto():
    assert default_backend_name() == "auto"
    model = net()
    assert model.auto_backend and model.backend.name == "numpy"
    assert not net("numba").auto_backend and not net("numpy").auto_backend


def test_the_break_even_grows_with_the_run_and_the_model():
    assert not numba_pays(3, 300, steps=300)                  # a 20-line teaching script
    assert numba_pays(3, 535_000, steps=10_000)                # an MNIST-sized MLP for a few epochs
    short = next(s for s in range(1, 10**7, 97) if numba_pays(3, 100_000, s))
    assert numba_pays(3, 100_000, short * 2) and not numba_pays(3, 100_000, short // 2)
    assert numba_pays(3, 1_000_000, short)                     # more parameters: pays sooner


def test_a_short_run_stays_on_numpy_and_matches_an_explicit_numpy_run():
    X, y = data()
    auto, ref = net(), net("numpy")
    h_auto = auto.fit(X, y, epochs=2, batch_size=64, verbose=0)
    h_ref = ref.fit(X, y, epochs=2, batch_size=64, verbose=0)
    assert auto.backend.name == "numpy"
    assert h_auto["loss"] == h_ref["loss"]
    np.testing.assert_array_equal(auto.flat_params, ref.flat_params)


def test_a_long_run_moves_to_numba_before_the_first_step_and_matches_an_explicit_numba_run():
    X, y = data()
    auto, ref = net(), net("numba")
    h_auto = auto.fit(X, y, epochs=10_000, batch_size=64, verbose=0, callbacks=[StopAfter(6)])
    h_ref = ref.fit(X, y, epochs=10_000, batch_size=64, verbose=0, callbacks=[StopAfter(6)])
    assert auto.backend.name == "numba" and not auto.auto_backend
    assert h_auto["loss"] == h_ref["loss"]
    np.testing.assert_array_equal(np.asarray(auto.flat_params), np.asarray(ref.flat_params))


def test_a_small_script_never_imports_numba():
    code = ("import sys, numpy as np\n"
            "from bpnet import Sequential, Dense, Tanh\n"
            "X = np.random.default_rng(0).standard_normal((64, 2)); y = (X[:, 0] > 0).astype(int)\n"
            "m = Sequential([Dense(8), Tanh(), Dense(2)]).compile(loss='cross_entropy')\n"
            "m.fit(X, y, epochs=3, verbose=0)\n"
            "print('numba' in sys.modules, m.backend.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items() if k != "BPNET_BACKEND"})
    assert out.stdout.split() == ["False", "numpy"]


def test_the_break_even_is_shorter_where_the_kernels_are_compiled_ahead_of_time(monkeypatch, tmp_path):
    from bpnet.backends import (AOT_LOAD_S, NUMBA_LOAD_S, SAVED_PER_LAYER_S, SAVED_PER_PARAM_S, numba_aot,
                                numba_load_seconds)
    per_step = 3 * SAVED_PER_LAYER_S + 100_000 * SAVED_PER_PARAM_S

    def pays_from(load):                 # a run 1% longer than load / per_step pays, 1% shorter not
        n = load / per_step
        return numba_pays(3, 100_000, int(n * 1.01) + 1) and not numba_pays(3, 100_000, int(n * 0.99))

    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BPNET_AOT", raising=False)
    assert numba_load_seconds() == NUMBA_LOAD_S and pays_from(NUMBA_LOAD_S)     # nothing built here
    folder = numba_aot.module_dir()
    folder.mkdir(parents=True)
    (folder / numba_aot.MANIFEST).write_text("{}")
    assert numba_load_seconds() == AOT_LOAD_S < NUMBA_LOAD_S and pays_from(AOT_LOAD_S)
    assert not numba_pays(3, 300, steps=300)                     # the teaching script: still NumPy
    monkeypatch.setenv("BPNET_AOT", "0")
    assert numba_load_seconds() == NUMBA_LOAD_S
