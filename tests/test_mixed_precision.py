"""Mixed precision: fp16 overflow reproduced without loss scaling, repaired with it.

The regression problem has raw features of size ~300 (left unscaled on
purpose) and targets of size ~100.  In float16 the gradient of the output
layer, Σ_n h_n · 2(ŷ_n - t_n)/N, exceeds float16's maximum of 65504 on the
very first batch, and one Inf turns every weight into NaN.  The LossScaler
backs its scale off from 2^16 until the scaled gradients fit (below 1 here),
unscales them in float32 and updates float32 master weights, so the same
float16 model trains like the float32 one.
"""
import math
import warnings

import numpy as np
import pytest

from bpnet import SGD, Adam, ConfigError, Dense, ReLU, Sequential, clip_grad_norm
from bpnet.callbacks import GradientClipping, NaNGuard
from bpnet.mixed_precision import LossScaler


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(512, 8)) * 300).astype(np.float32)
    y = (X @ rng.normal(size=8) / 8).astype(np.float32)
    return X, y


def net(dtype, scaler=None, lr=1e-6, opt=SGD):
    m = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(1)], seed=0, dtype=dtype, backend="numpy")
    m.compile(loss="mse", optimizer=opt(lr=lr), loss_scaler=scaler)
    return m


def fit(m, data, epochs=10, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # numpy's fp16 overflow warnings
        return m.fit(*data, epochs=epochs, batch_size=64, verbose=0, **kw)


def test_fp16_without_scaling_overflows_to_inf(data):
    X, y = data
    m = net("float16")
    m.build((8,))
    with np.errstate(over="ignore", invalid="ignore"):
        m.train_step(X[:64].astype(np.float16), y[:64].astype(np.float16))
    g = m.gradients()
    assert np.isinf(g["2.W"]).any() and np.isfinite(g["0.W"]).all()     # the output layer's dW overflows
    h = fit(net("float16"), data)
    assert all(math.isnan(v) for v in h["loss"])


def test_fp16_with_loss_scaling_trains_like_fp32(data):
    h32 = fit(net("float32"), data)
    scaler = LossScaler()
    m = net("float16", scaler)
    h16 = fit(m, data)
    # 2^16 · 0.5^17 = 0.5 is the first scale at which the scaled gradients fit into float16
    assert scaler.overflows == 17 and scaler.scale == 0.5
    assert all(math.isfinite(v) for v in h16["loss"])
    assert h16["loss"][-1] < 0.15 * h16["loss"][0]
    assert h16["loss"][-1] == pytest.approx(h32["loss"][-1], rel=0.25)
    assert m.flat_params.dtype == np.float16 and scaler.master_params.dtype == np.float32
    np.testing.assert_array_equal(m.flat_params, scaler.master_params.astype(np.float16))
    assert m.optimizer.t == 80 - 17 and m.optimizer.state == {}


def test_master_weights_keep_updates_float16_rounds_away(data):
    """An update 1e-4 × the weight is below half an fp16 ulp (~4.9e-4 relative): lost in fp16, kept in the master."""
    m = net("float16", LossScaler(init_scale=1.0), lr=1.0)
    m.build((8,))
    m.loss_scaler._ensure_master()
    w0 = m.flat_params.copy()
    m.flat_grads[...] = (-1e-4 * w0.astype(np.float32)).astype(np.float16)
    for _ in range(10):
        assert m.loss_scaler.unscale_grads()
        m.optimizer.step()
    master = m.loss_scaler.master_params
    nz = w0 != 0
    grads32 = m.flat_grads.astype(np.float32)
    np.testing.assert_allclose(master[nz], w0[nz].astype(np.float32) - 10 * grads32[nz], rtol=1e-6)
    plain = w0.copy()
    for _ in range(10):
        plain -= m.flat_grads          # the same updates applied in float16 directly
    assert np.array_equal(plain, w0)   # every one rounded away


def test_clip_grad_norm_by_hand_clips_the_master_gradients(data):
    """The by-hand loop (backward, unscale, clip, step) under mixed precision: clip_grad_norm(model)
    measures and rescales the unscaled float32 gradients the optimizer reads.  It used to clip the
    scaled float16 ``flat_grads`` (reporting S times the norm) and leave the update unclipped."""
    X, y = data
    Xs, ys = (X[:64] / 300).astype(np.float16), (y[:64] / 300).astype(np.float32)
    m = net("float16", LossScaler(init_scale=2.0 ** 8), lr=1.0)
    out = m.forward(Xs, training=True)
    m.loss.forward(out.astype(np.float32), ys)
    m.backward(m.loss_scaler.scale_loss_grad(m.loss.backward()))
    assert m.loss_scaler.unscale_grads()
    true = m.loss_scaler.master_grads.astype(np.float64)
    true_norm = np.linalg.norm(true)
    scaled_norm = np.linalg.norm(m.flat_grads.astype(np.float64))
    assert scaled_norm == pytest.approx(2.0 ** 8 * true_norm, rel=1e-2)
    max_norm = true_norm / 4
    assert clip_grad_norm(m, max_norm) == pytest.approx(true_norm, rel=1e-6)
    np.testing.assert_allclose(m.loss_scaler.master_grads, true * max_norm / (true_norm + 1e-6), rtol=1e-6)
    before = m.loss_scaler.master_params.copy()
    m.optimizer.step()                                   # SGD, lr 1: the step is the clipped gradient
    assert np.linalg.norm((before - m.loss_scaler.master_params).astype(np.float64)) == \
        pytest.approx(max_norm, rel=1e-5)


def test_memory_estimate_counts_the_float32_master_copy():
    """fp16 weights and gradients (2 + 2 bytes), Adam's m and v in float32 (4 + 4), and the float32
    master weights and gradients (4 + 4): 20 bytes a parameter, which the estimate put at 8."""
    m = net("float16", LossScaler(), opt=Adam)
    m.build((8,))
    n = m.count_params()
    mem = m.memory_estimate(0)
    assert mem == {"parameters": 2 * n, "gradients": 2 * n, "optimizer_state": 8 * n,
                   "master_weights": 8 * n, "activations": 0, "total": 20 * n}
    assert "master weights and gradients" in m.summary(print_fn=None)
    plain = net("float16", opt=Adam)
    plain.build((8,))
    assert plain.memory_estimate(0)["total"] == 8 * n and "master_weights" not in plain.memory_estimate(0)


def test_loss_scaler_backoff_and_growth():
    s = LossScaler(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    s.update(found_inf=True)
    assert (s.scale, s.good_steps, s.overflows) == (512.0, 0, 1)
    s.update(False)
    s.update(False)
    assert s.scale == 512.0 and s.good_steps == 2
    s.update(False)
    assert (s.scale, s.good_steps) == (1024.0, 0)
    s.update(False)
    s.update(True)                       # an overflow resets the run of good steps
    s.update(False)
    s.update(False)
    assert (s.scale, s.good_steps) == (512.0, 2)
    with pytest.raises(ConfigError):
        LossScaler(backoff_factor=1.5)


def test_scale_halves_on_overflow_and_grows_after_the_interval_in_training(data):
    X, y = data
    Xs, ys = (X / 300).astype(np.float32), (y / 300).astype(np.float32)
    scaler = LossScaler(init_scale=2.0 ** 8, growth_interval=4)
    m = net("float16", scaler, lr=1e-3, opt=Adam)
    scales = []

    from bpnet.callbacks import Callback

    class Log(Callback):
        def on_backward_end(self, batch, logs=None):
            scales.append((scaler.scale, self.model.skip_step))
    fit(m, (Xs, ys), epochs=2, callbacks=[Log()])
    # no overflow with these small values: the scale doubles every 4 steps
    assert [s for s, _ in scales] == [2.0 ** (8 + (i + 1) // 4) for i in range(16)]
    assert not any(skip for _, skip in scales)
    # force an overflow: a scale so large that the scaled gradient is Inf in fp16
    scaler.scale = 2.0 ** 40
    scales.clear()
    fit(m, (Xs, ys), epochs=1, callbacks=[Log()])
    skipped = [s for s, skip in scales if skip]
    assert skipped == [2.0 ** (39 - i) for i in range(len(skipped))] and len(skipped) >= 1
    assert not any(skip for _, skip in scales[len(skipped):])        # then it fits, and stays


def test_mixed_precision_with_clipping_and_guard_and_checkpoint(data, tmp_path):
    scaler = LossScaler()
    clip = GradientClipping(max_norm=1e4)
    guard = NaNGuard()
    m = net("float16", scaler, opt=Adam, lr=0.05)
    h = fit(m, data, epochs=4, callbacks=[clip, guard])
    assert guard.restarts == 0 and all(math.isfinite(v) for v in h["loss"])
    assert len(clip.norms) == 32 - scaler.overflows and max(clip.norms) < np.inf
    m.save(tmp_path / "mp.npz")
    loaded = Sequential.load(tmp_path / "mp.npz", backend="numpy")
    assert loaded.loss_scaler is not None and loaded.loss_scaler.scale == scaler.scale
    np.testing.assert_array_equal(loaded.loss_scaler.master_params, scaler.master_params)
    np.testing.assert_array_equal(loaded.flat_params, m.flat_params)
    for k in ("m", "v"):            # Adam's moments stay float32 (v ~ g² would overflow float16)
        assert loaded.optimizer.state[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.optimizer.state[k], m.optimizer.state[k])
    assert m.optimizer.state["v"].max() > 65504


def test_float32_model_with_loss_scaler_is_its_own_master(data):
    X, y = data
    Xs, ys = (X / 300).astype(np.float32), (y / 300).astype(np.float32)
    plain = net("float32", lr=1e-3, opt=Adam)
    scaled = net("float32", LossScaler(init_scale=2.0 ** 4), lr=1e-3, opt=Adam)
    fit(plain, (Xs, ys), epochs=3)
    fit(scaled, (Xs, ys), epochs=3)
    assert scaled.loss_scaler.master_params is scaled.flat_params
    np.testing.assert_allclose(scaled.flat_params, plain.flat_params, rtol=1e-4, atol=1e-6)
