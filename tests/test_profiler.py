"""The per-layer profiler: the parts add up to the step, memory figures, no side effects."""
import numpy as np
import pytest

from bpnet import Adam, ConfigError, Dense, Dropout, ReLU, Sequential
from bpnet.profiler import profile


def _mlp(backend, dropout=0.0):
    layers = [Dense(512, init="he_normal"), ReLU(), Dense(256, init="he_normal"), ReLU(), Dense(10)]
    if dropout:
        layers.insert(2, Dropout(dropout))
    model = Sequential(layers, seed=0, backend=backend)
    model.compile("cross_entropy", Adam(lr=1e-3))
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(128, 784)).astype(np.float32), rng.integers(0, 10, 128)


def test_rows_memory_and_shares(batch, backend):
    X, y = batch
    model = _mlp(backend, dropout=0.5)
    report = model.profile(X[:64], y[:64], steps=3, print_fn=None)
    # the rows follow what the model runs: each Dense + activation pair is one fused step
    assert [r["type"] for r in report.rows] == ["Dense+ReLU", "Dropout", "Dense+ReLU", "Dense",
                                                "CrossEntropy", "Adam"]
    assert [r["name"] for r in report.rows[:4]] == ["0 dense+relu", "2 dropout", "3 dense+relu", "5 dense"]
    assert [r["kind"] for r in report.rows][-2:] == ["loss", "optimizer"]
    itemsize = 4
    assert [r["activation_bytes"] for r in report.rows[:4]] == \
        [64 * 512 * itemsize] * 2 + [64 * 256 * itemsize] + [64 * 10 * itemsize]
    assert report.activation_bytes == 64 * itemsize * (2 * 512 + 256 + 10)
    assert sum(r["share"] for r in report.rows) == pytest.approx(1.0)
    assert report.parts_ms == pytest.approx(sum(r["total_ms"] for r in report.rows))
    assert report.measured_step_ms > 0 and report.total_ms > 0
    assert report.optimizer_share == report.rows[-1]["share"] > 0
    for r in report.rows:
        if r["kind"] == "layer":
            assert r["total_ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"])
        assert r["forward_ms"] >= 0 and r["backward_ms"] >= 0


def test_profile_leaves_the_model_as_it_was(batch):
    X, y = batch
    model = _mlp("numpy", dropout=0.2)
    model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    params = model.flat_params.copy()
    m = model.optimizer.state["m"].copy()
    t = model.optimizer.t
    drop_state = model.layers[2].rng.bit_generator.state
    lines = []
    model.profile(X, y, steps=2, print_fn=lines.append)
    np.testing.assert_array_equal(model.flat_params, params)
    np.testing.assert_array_equal(model.optimizer.state["m"], m)
    assert model.optimizer.t == t and model.layers[2].rng.bit_generator.state == drop_state
    assert model.layers[0].needs_input_grad is True and model.loss.trusted is False
    assert all(getattr(layer, "x", None) is None and getattr(layer, "mask", None) is None
               for layer in model.layers)
    text = lines[0]
    assert "0 dense+relu (Dense+ReLU)" in text and "optimizer (Adam)" in text and "measured" in text
    assert "256.0 KiB" in text                  # 128 x 512 float32 output of the first layer


def test_profile_needs_a_compiled_model(batch):
    model = Sequential([Dense(4), ReLU(), Dense(2)])
    with pytest.raises(ConfigError, match="compile"):
        profile(model, *batch, print_fn=None)


resource = pytest.importorskip("resource")


def test_page_faults_of_a_step_that_maps_fresh_memory_are_counted(batch):
    """A step that touches 64 MiB of newly mapped memory (above glibc's mmap threshold, so
    it is mapped and unmapped each time) faults at least 32 pages, 2 MiB ones included."""
    X, y = batch
    model = _mlp("numpy")
    real_step = model.optimizer.step

    def step_with_scratch():
        scratch = np.ones(64 << 17, np.float64)      # 64 MiB
        del scratch
        real_step()
    model.optimizer.step = step_with_scratch
    report = model.profile(X, y, steps=3, print_fn=None)
    assert report.page_faults_per_step >= 32
    assert "page faults per step" in report.table()


def test_numba_steps_fault_no_pages_with_the_heap_kept():
    pytest.importorskip("numba")
    from bpnet.backends.heap import keep_heap_top
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(256, 64)).astype(np.float32), rng.integers(0, 10, 256)
    model = Sequential([Dense(256), ReLU(), Dense(256), ReLU(), Dense(256), ReLU(), Dense(10)],
                       seed=0, backend="numba")
    model.compile("cross_entropy", Adam(lr=1e-3))
    report = model.profile(X, y, steps=5, print_fn=None)
    if not keep_heap_top():
        pytest.skip("glibc's heap padding is not in effect here (not glibc, or malloc tuned by the user)")
    assert report.page_faults_per_step < 1
