"""diagnose: each problem provoked on a small deterministic run (or a constructed history)."""
import math

import numpy as np
import pytest

from bpnet import SGD, Adam, Dense, History, Monitor, ReLU, Sequential, Sigmoid, Tanh
from bpnet.doctor import Finding, Thresholds, diagnose
from doctor_helpers import blobs, mlp, one_blas_thread, scaled_normal  # noqa: F401


def _train(model, X, y, epochs=1, loss="cross_entropy", opt=None, batch_size=64, every=1):
    model.compile(loss=loss, optimizer=opt or Adam())
    h = model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[Monitor(every=every)])
    return h, diagnose(h, model)


def _codes(findings):
    return sorted(f.code for f in findings)


def _one(findings, code):
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, findings
    return hits[0]


def _history(loss, val_loss=None, steps=()):
    h = History()
    for i, v in enumerate(loss):
        logs = {"loss": v}
        if val_loss is not None:
            logs["val_loss"] = val_loss[i]
        h.append(i, logs)
    h.steps = list(steps)
    return h


def test_exploding_gradients_from_a_too_large_initial_scale():
    X, y = blobs()
    init = lambda shape, rng, dtype: (rng.standard_normal(shape) * 3 * np.sqrt(2 / shape[0])).astype(dtype)
    model = Sequential([l for _ in range(6) for l in (Dense(32, init=init), ReLU())] + [Dense(3)],
                       seed=0, backend="numpy")
    h, found = _train(model, X, y, opt=SGD(lr=1e-6))
    f = _one(found, "EXPLODING_GRADIENTS")
    assert f.severity == "error"
    biggest = max(v for v in f.evidence["norms"].values())
    assert biggest > 1e3
    assert biggest == pytest.approx(np.median([r["grad_norm/12"] for r in h.steps][-3:]))
    assert "gradient norm" in f.message and f.remedy


def test_exploding_gradients_from_the_layer_ratio():
    steps = [{"step": i, "loss": 1.0, "grad_norm/0": 80.0, "grad_norm/2": 1.0, "grad_norm/total": 80.0}
             for i in range(5)]
    f = _one(diagnose(_history([1.0], steps=steps)), "EXPLODING_GRADIENTS")
    assert f.evidence["ratio"] == 80.0 and (f.evidence["first_layer"], f.evidence["last_layer"]) == ("0", "2")
    assert diagnose(_history([1.0], steps=steps), thresholds=Thresholds(explode_ratio=100)) == []


def test_exploding_gradients_from_growth():
    steps = [{"step": i, "loss": 1.0, "grad_norm/0": 2.0 ** i, "grad_norm/total": 2.0 ** i} for i in range(12)]
    f = _one(diagnose(_history([1.0], steps=steps)), "EXPLODING_GRADIENTS")
    assert f.evidence["growth"] == pytest.approx(2.0 ** 9)


def test_vanishing_gradients_in_a_deep_tanh_stack_with_tiny_weights():
    X, y = blobs()
    model = Sequential([l for _ in range(6) for l in (Dense(32, init=scaled_normal(0.01)), Tanh())] + [Dense(3)],
                       seed=0, backend="numpy")
    h, found = _train(model, X, y, opt=SGD(lr=1e-3))
    f = _one(found, "VANISHING_GRADIENTS")
    assert f.evidence["first_norm"] < 1e-4 and f.evidence["ratio"] < 1e-3
    assert f.evidence["last_layer"] == "12"
    assert f.evidence["first_norm"] == pytest.approx(np.median([r["grad_norm/0"] for r in h.steps][-3:]))


def test_dying_relu():
    X, y = blobs()
    model = mlp(hidden=(32,))
    model.build((16,))
    model.layers[0].params["b"][...] = -1e3
    h, found = _train(model, X, y)
    assert _codes(found) == ["DYING_RELU"]               # no spurious VANISHING / STEP_SIZE: the cause is named
    f = found[0]
    assert (f.evidence["dead_frac"], f.where, f.severity) == (1.0, "layer 1", "error")
    assert "100% of the ReLU units in layer 1 (relu, ReLU)" in f.message


def test_saturated_sigmoid():
    X, y = blobs()
    model = mlp(hidden=(32,), init=scaled_normal(10.0), act=Sigmoid)
    h, found = _train(model, X, y)
    f = _one(found, "SATURATED_ACTIVATIONS")
    assert f.where == "layer 1"
    assert f.evidence["sat_frac"] == pytest.approx(np.median([r["sat_frac/1"] for r in h.steps][-3:]))
    assert f.evidence["sat_frac"] > 0.8


def test_nonfinite_loss_says_where_it_came_from():
    X, _ = blobs()
    y = (X @ np.random.default_rng(1).standard_normal(16) * 10).astype(np.float32)
    model = mlp(hidden=(32,), out=1)
    with np.errstate(all="ignore"):
        h, found = _train(model, X, y, loss="mse", opt=SGD(lr=0.5), epochs=3)
    f = _one(found, "NONFINITE_LOSS")
    first_bad = next(r["step"] for r in h.steps if not math.isfinite(r["loss"]))
    assert f.evidence["first_step"] == first_bad and f.evidence["last_finite_step"] == first_bad - 1
    assert "exploding gradients" in f.evidence["source"] and "learning rate is too high" in f.evidence["source"]
    assert "EXPLODING_GRADIENTS" in _codes(found)


def test_nonfinite_loss_from_epoch_losses_only():
    f = _one(diagnose(_history([1.0, 0.9, float("nan")])), "NONFINITE_LOSS")
    assert f.evidence["first_epoch"] == 2 and "not known" in f.evidence["source"]


def test_lr_too_high_diverging_regression():
    X, _ = blobs()
    y = (X @ np.random.default_rng(1).standard_normal(16)).astype(np.float32)
    model = Sequential([Dense(1)], seed=0, backend="numpy")
    h, found = _train(model, X, y, loss="mse", opt=SGD(lr=1.05), epochs=5, batch_size=256)
    f = _one(found, "LR_TOO_HIGH")
    assert f.evidence["losses"] == h["loss"][-12:] and h["loss"][-1] > h["loss"][0]
    assert f.evidence["rise"] == pytest.approx((h["loss"][-1] - h["loss"][-4]) / h["loss"][-4])
    assert f.evidence["lr"] == 1.05


def test_lr_too_high_swings():
    f = _one(diagnose(_history([2.3, 1.0, 2.2, 0.9, 2.4, 1.1])), "LR_TOO_HIGH")
    assert f.evidence["swings"] == 5


def test_lr_too_low():
    X, y = blobs()
    model = mlp()
    h, found = _train(model, X, y, opt=SGD(lr=1e-7), epochs=7, every=2)
    assert _codes(found) == ["LR_TOO_LOW"]
    f = found[0]
    assert f.evidence["median_update_ratio"] < 1e-5 and abs(f.evidence["improvement"]) < 1e-3


def test_plateau_when_weights_still_move():
    steps = [{"step": i, "loss": 1.0, "update_ratio/0.W": 1e-3} for i in range(5)]
    f = _one(diagnose(_history([2.0, 1.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], steps=steps)), "PLATEAU")
    assert f.evidence["median_update_ratio"] == 1e-3 and f.evidence["improvement"] == 0.0
    # a converged loss is not a plateau
    assert diagnose(_history([2.0, 0.05, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])) == []


def test_step_size_too_large():
    X, y = blobs()
    model = mlp()
    h, found = _train(model, X, y, opt=SGD(lr=5.0))
    f = _one(found, "STEP_SIZE")
    assert f.where == "too large" and max(f.evidence["ratios"].values()) > 0.1
    assert f.evidence["ratios"]["0.W"] == pytest.approx(np.median([r["update_ratio/0.W"] for r in h.steps][-3:]))


def test_step_size_too_small_from_records():
    steps = [{"step": i, "loss": 1.0 - 0.1 * i, "update_ratio/0.W": 1e-7, "update_ratio/0.b": 1e-9}
             for i in range(4)]
    f = _one(diagnose(_history([1.0], steps=steps)), "STEP_SIZE")
    assert f.where == "too small" and f.evidence["ratios"] == {"0.W": 1e-7}     # biases are not judged


def test_overfitting():
    loss = [1.0, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1]
    val = [1.0, 0.7, 0.5, 0.45, 0.5, 0.56, 0.62]
    f = _one(diagnose(_history(loss, val)), "OVERFITTING")
    assert (f.evidence["best_epoch"], f.evidence["best_val_loss"]) == (3, 0.45)
    assert f.evidence["val_loss"] == [0.45, 0.5, 0.56, 0.62]
    assert diagnose(_history(loss, [1.0, 0.7, 0.5, 0.45, 0.44, 0.43, 0.42])) == []


def test_symmetric_weights_after_training_from_zeros():
    X, y = blobs()
    model = Sequential([Dense(16, init="zeros"), Tanh(), Dense(16, init="zeros"), Tanh(), Dense(3, init="zeros")],
                       seed=0, backend="numpy")
    h, found = _train(model, X, y, opt=Adam(1e-2), epochs=2)
    sym = [f for f in found if f.code == "SYMMETRIC_WEIGHTS"]
    assert [f.where for f in sym] == ["layer 0", "layer 2"]
    assert all(f.evidence["column_spread"] == 0.0 and f.evidence["clones"] for f in sym)


def test_diagnose_accepts_a_saved_history_and_findings_serialise(tmp_path):
    X, y = blobs()
    model = mlp(hidden=(32,))
    model.build((16,))
    model.layers[0].params["b"][...] = -1e3
    h, found = _train(model, X, y)
    h.findings = found
    h.to_json(tmp_path / "h.json")
    again = History.load_json(tmp_path / "h.json")
    assert [f.code for f in diagnose(again)] == ["DYING_RELU"]
    assert Finding.from_dict(again.findings[0]) == found[0]
    assert "[error] DYING_RELU" in str(found[0]) and "remedy:" in str(found[0])
