"""Doctor rules about the update itself and the gradients' correctness:
GRADIENT_ASCENT (update_grad_cos), STEP_SIZE "growing" (gradients summed over steps),
WRONG_GRADIENT (check_gradients, layer by layer), LABEL_FORMAT for class ids fed to MSE."""
import numpy as np
import pytest

from bpnet import CrossEntropy, Dense, Layer, Sequential, Sigmoid, SGD
from bpnet.doctor import Monitor, check_data, check_gradients, diagnose
from bpnet.history import History

from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


def _loop(model, X, y, steps, rule, lr=0.05, batch=64):
    """A hand-written loop with a Monitor; ``rule(model, lr, buffer)`` updates the weights."""
    loss = CrossEntropy()
    model.compile(loss=loss, optimizer=SGD(lr=lr))
    model.build(X.shape[1:])
    model.history = History()
    mon = Monitor(every=1)
    mon.set_model(model)
    mon.on_train_begin()
    buf = np.zeros_like(model.flat_grads)
    for step in range(steps):
        i = (step * batch) % len(X)
        value, _ = model.train_step(X[i:i + batch], y[i:i + batch])
        mon.on_backward_end(step, {"loss": value})
        rule(model, lr, buf)
        mon.on_batch_end(step)
    return model.history


def descent(model, lr, buf):
    model.flat_params -= lr * model.flat_grads


def ascent(model, lr, buf):
    model.flat_params += lr * model.flat_grads


def accumulate(model, lr, buf):
    buf += model.flat_grads
    model.flat_params -= lr * buf


def test_monitor_records_update_gradient_cosine():
    X, y = blobs()
    h = _loop(mlp(), X, y, 5, descent)
    assert [r["update_grad_cos"] for r in h.steps] == pytest.approx([-1.0] * 5, abs=1e-5)
    h = _loop(mlp(), X, y, 5, ascent)
    assert [r["update_grad_cos"] for r in h.steps] == pytest.approx([1.0] * 5, abs=1e-5)


def test_gradient_ascent_is_named_and_descent_is_not():
    X, y = blobs()
    model = mlp()
    found = {f.code: f for f in diagnose(_loop(model, X, y, 12, ascent), model=model)}
    assert "GRADIENT_ASCENT" in found
    assert found["GRADIENT_ASCENT"].evidence["median_cos"] == pytest.approx(1.0, abs=1e-5)
    assert "w -= lr * g" in found["GRADIENT_ASCENT"].remedy
    model = mlp()
    assert "GRADIENT_ASCENT" not in {f.code for f in diagnose(_loop(model, X, y, 12, descent), model=model)}


def test_gradients_summed_over_steps_make_a_growing_step():
    X, y = blobs()
    model = mlp()
    h = _loop(model, X, y, 40, accumulate)
    grow = [f for f in diagnose(h, model=model) if f.code == "STEP_SIZE" and f.where == "growing"]
    assert len(grow) == 1
    ev = grow[0].evidence
    assert ev["multiplier_first"] == pytest.approx(1.0, rel=1e-4)      # the first step is plain SGD
    assert ev["multiplier_recent"] > ev["limit"] == 3.0
    model = mlp()
    h = _loop(model, X, y, 40, descent)
    assert not [f for f in diagnose(h, model=model) if f.where == "growing"]


class _SlopeIsOutput(Layer):
    """Sigmoid with the wrong backward dz = dy·σ (should be dy·σ(1-σ))."""

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, dy):
        return dy * self.y


def test_check_gradients_names_the_wrong_layer_and_element():
    X, _ = blobs(n=8, d=6)
    bad = Sequential([Dense(5), _SlopeIsOutput(), Dense(3)], seed=0, backend="numpy")
    bad.build((6,))
    found = check_gradients(bad, X[:4])
    assert [f.where for f in found] == ["layer 1"]
    ev = found[0].evidence
    assert ev["class"] == "_SlopeIsOutput" and ev["tensor"] == "input"
    assert 0.1 < ev["rel_error"] <= 1.0
    assert len(ev["worst_index"]) == 2 and ev["analytic"] != pytest.approx(ev["numeric"], rel=1e-2)
    good = Sequential([Dense(5), Sigmoid(), Dense(3)], seed=0, backend="numpy")
    good.build((6,))
    assert check_gradients(good, X[:4]) == []
    assert good.dtype == np.float32                     # the check ran on a float64 copy


def test_class_ids_fed_to_mse_are_a_label_format_warning():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 4))
    ids = np.arange(100) % 10
    f = [f for f in check_data(X, ids, loss="mse") if f.code == "LABEL_FORMAT"]
    assert len(f) == 1 and f[0].severity == "warning" and "0..9" in f[0].message
    assert not [f for f in check_data(X, ids.astype(np.float32) + 0.5, loss="mse") if f.code == "LABEL_FORMAT"]
    assert not [f for f in check_data(X, ids % 2, loss="mse") if f.code == "LABEL_FORMAT"]    # 0/1 targets
    assert not [f for f in check_data(X, 3 * ids, loss="mse") if f.code == "LABEL_FORMAT"]    # counts


def test_memory_budget_is_refused_up_front_with_the_numbers():
    from bpnet.doctor import check_memory
    from bpnet.errors import MemoryBudgetError
    from bpnet.summary import max_batch_size, memory_estimate, require_memory

    model = mlp(hidden=(128, 128), out=10)
    model.build((64,))
    need = memory_estimate(model, 1000)["total"]
    per_sample = memory_estimate(model, 1)["total"] - memory_estimate(model, 0)["total"]
    assert per_sample == 2 * (64 + 128 + 128 + 128 + 128 + 10) * 4          # 2 x activations x float32
    budget = 2 ** 20
    fit = max_batch_size(model, budget)
    assert memory_estimate(model, fit)["total"] <= budget < memory_estimate(model, fit + 1)["total"]
    with pytest.raises(MemoryBudgetError) as err:
        require_memory(model, 1000, budget)
    assert (err.value.needed, err.value.budget, err.value.max_batch_size) == (need, budget, fit)
    assert f"at most {fit} samples" in str(err.value) and "1.0 MiB" in str(err.value)
    assert require_memory(model, fit, budget)["total"] <= budget
    (f,) = check_memory(model, 1000, budget)
    assert f.code == "MEMORY_BUDGET" and f.evidence["total"] == need
    assert f.evidence["max_batch_size"] == fit and f.evidence["micro_batches"] == -(-1000 // fit)
    assert check_memory(model, fit, budget) == []
