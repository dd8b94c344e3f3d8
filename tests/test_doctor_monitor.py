"""Monitor: the recorded numbers equal independently computed ones."""
import json
import math

import numpy as np
import pytest

from bpnet import SGD, Adam, Monitor, Sigmoid, Tanh
from bpnet.doctor.monitor import SIGMOID_HI, SIGMOID_LO, TANH_HI
from doctor_helpers import blobs, mlp, one_blas_thread, scaled_normal  # noqa: F401


def _manual_grads(W1, b1, W2, b2, X, y):
    """Dense-ReLU-Dense with softmax cross-entropy, differentiated by hand in float64."""
    X, W1, b1, W2, b2 = (np.asarray(a, np.float64) for a in (X, W1, b1, W2, b2))
    z1 = X @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz2 = p.copy()
    dz2[np.arange(len(y)), y] -= 1
    dz2 /= len(y)
    dh = dz2 @ W2.T
    dz1 = dh * (z1 > 0)
    return {"0.W": X.T @ dz1, "0.b": dz1.sum(0), "2.W": h.T @ dz2, "2.b": dz2.sum(0)}, h


def test_grad_and_weight_norms_match_independent_gradients():
    X, y = blobs(n=64)
    model = mlp(hidden=(8,))
    model.compile(loss="cross_entropy", optimizer=SGD(lr=0.1))
    model.build((16,))
    p0 = {k: v.copy() for k, v in model.parameters().items()}
    mon = Monitor(every=1)
    model.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[mon])   # one full batch
    rec = mon.records[0]
    grads, h = _manual_grads(p0["0.W"], p0["0.b"], p0["2.W"], p0["2.b"], X, y)
    for name, g in grads.items():
        assert rec[f"grad_norm/{name}"] == pytest.approx(np.linalg.norm(g), rel=1e-4)
        assert rec[f"weight_norm/{name}"] == pytest.approx(np.linalg.norm(p0[name].astype(np.float64)), rel=1e-5)
        assert rec[f"zero_grad_frac/{name}"] == pytest.approx(np.mean(g == 0))
        expected = 0.1 * np.linalg.norm(g) / np.linalg.norm(p0[name]) if np.linalg.norm(p0[name]) else 0.0
        if name.endswith("W"):      # plain SGD: the real update is exactly lr * grad
            assert rec[f"lr_grad_ratio/{name}"] == pytest.approx(expected, rel=1e-4)
            assert rec[f"update_ratio/{name}"] == pytest.approx(expected, rel=1e-3)
    layer0 = math.sqrt(np.linalg.norm(grads["0.W"]) ** 2 + np.linalg.norm(grads["0.b"]) ** 2)
    assert rec["grad_norm/0"] == pytest.approx(layer0, rel=1e-4)
    total = math.sqrt(sum(np.linalg.norm(g) ** 2 for g in grads.values()))
    assert rec["grad_norm/total"] == pytest.approx(total, rel=1e-4)
    assert rec["act_mean/1"] == pytest.approx(h.mean(), rel=1e-4)
    assert rec["act_std/1"] == pytest.approx(h.std(), rel=1e-4)
    assert rec["dead_frac/1"] == pytest.approx(np.mean(h.max(0) <= 0))
    assert rec["step"] == 0 and rec["epoch"] == 0 and rec["loss_finite"] is True


def test_adam_update_ratio_is_the_real_step():
    X, y = blobs(n=64)
    model = mlp(hidden=(8,))
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-2))
    model.build((16,))
    w0 = model.parameters()["0.W"].copy()
    mon = Monitor(every=1)
    model.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[mon])
    w1 = model.parameters()["0.W"]
    expected = np.linalg.norm(w1 - w0) / np.linalg.norm(w0)
    assert mon.records[0]["update_ratio/0.W"] == pytest.approx(expected, rel=1e-4)
    # the first Adam step moves every weight by ~lr, so it is not lr * |grad| / |W|
    assert expected == pytest.approx(1e-2 * math.sqrt(w0.size) / np.linalg.norm(w0), rel=0.05)


def test_dead_fraction_is_one_with_a_huge_negative_bias():
    X, y = blobs(n=128)
    model = mlp(hidden=(16,))
    model.build((16,))
    model.layers[0].params["b"][...] = -1e3
    model.compile(optimizer=Adam())
    h = model.fit(X, y, epochs=1, batch_size=32, verbose=0, callbacks=[Monitor(every=1)])
    assert [r["dead_frac/1"] for r in h.steps] == [1.0] * 4
    assert all(r["zero_grad_frac/0.W"] == 1.0 for r in h.steps)
    assert all(r["grad_norm/0"] == 0.0 for r in h.steps)


@pytest.mark.parametrize("act, lo, hi", [(Sigmoid, SIGMOID_LO, SIGMOID_HI), (Tanh, -TANH_HI, TANH_HI)])
def test_saturated_fraction_matches_numpy(act, lo, hi):
    X, y = blobs(n=64)
    model = mlp(hidden=(32,), init=scaled_normal(2.0), act=act)
    model.compile(optimizer=SGD(lr=1e-3))
    mon = Monitor(every=1)
    model.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[mon])
    z = X.astype(np.float64) @ np.asarray(model.layers[0].params["W"], np.float64)   # weights moved by ~1e-3 only
    y_out = np.asarray(model.layers[1].y)
    expected = np.mean((y_out < lo) | (y_out > hi))
    assert mon.records[0]["sat_frac/1"] == pytest.approx(expected)
    assert 0.3 < expected < 1.0
    assert expected == pytest.approx(np.mean(np.abs(z) > 5), abs=0.02)   # |z| > 5, read off the output


def test_every_and_export(tmp_path):
    X, y = blobs(n=256)
    model = mlp()
    model.compile(optimizer=Adam())
    h = model.fit(X, y, epochs=2, batch_size=16, verbose=0, callbacks=[Monitor(every=10)])
    assert [r["step"] for r in h.steps] == [0, 10, 20, 30]          # 16 steps per epoch
    assert [r["epoch"] for r in h.steps] == [0, 0, 1, 1]
    h.to_csv(tmp_path / "steps.csv", per_step=True)
    header = (tmp_path / "steps.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "step"] and "grad_norm/0.W" in header and "dead_frac/1" in header
    data = json.loads(h.to_json())
    assert data["steps"][1]["grad_norm/0.W"] == pytest.approx(h.steps[1]["grad_norm/0.W"])


def test_hand_written_loop_and_bad_every():
    X, y = blobs(n=32)
    model = mlp()
    model.compile(optimizer=SGD(lr=0.1))
    mon = Monitor(every=2)
    mon.set_model(model)
    for step in range(4):
        loss = model.loss.forward(model.forward(X, training=True), y)
        model.backward(model.loss.backward())
        mon.on_backward_end(step, {"loss": loss})
        model.optimizer.step()
        mon.on_batch_end(step)
    assert [r["step"] for r in mon.records] == [0, 2]
    assert all("update_ratio/0.W" in r for r in mon.records)
    with pytest.raises(ValueError):
        Monitor(every=0)


def test_mixed_precision_gradients_are_recorded_unscaled():
    from bpnet.mixed_precision import LossScaler
    X, y = blobs(n=64)
    runs = {}
    for dtype, scaler in (("float32", None), ("float16", LossScaler(init_scale=2.0 ** 10))):
        model = mlp(hidden=(8,), dtype=dtype)
        model.compile(optimizer=SGD(lr=0.1), loss_scaler=scaler)
        mon = Monitor(every=1)
        model.fit(X, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[mon])
        runs[dtype] = mon.records[0]
    for key in ("grad_norm/0.W", "grad_norm/2.W", "grad_norm/total"):
        assert runs["float16"][key] == pytest.approx(runs["float32"][key], rel=1e-2)
