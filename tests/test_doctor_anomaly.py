"""Anomaly mode names the layer, phase, operation and rows of the first NaN/Inf."""
import numpy as np
import pytest

import bpnet
from bpnet import MSE, SGD, Adam, Dense, Layer, NonFiniteError, ReLU, Residual, Sequential
from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


class Log(Layer):
    """y = log(x): NaN for negative inputs (a forward op that produces NaN)."""

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.x = x
        return np.log(x)

    def backward(self, dy):
        return dy / self.x


class BadBackward(Layer):
    """Identity forward whose backward returns NaN in rows 1 and 4 (a broken backward)."""

    def forward(self, x, training=False):
        self._ensure_built(x)
        return x

    def backward(self, dy):
        dx = dy.copy()
        dx[[1, 4]] = np.nan
        return dx


def test_nan_in_the_data_blames_the_data():
    X, y = blobs(n=16)
    X[[3, 11], 5] = np.nan
    model = mlp()
    with bpnet.detect_anomaly():
        with pytest.raises(NonFiniteError) as info:
            model.forward(X, training=True)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_name, e.rows, e.data_to_blame) == ("forward", 0, "dense", [3, 11], True)
    assert e.operation == "Dense forward x@W+b"
    assert "the input batch already contains NaN in rows [3, 11]: the data is to blame" in str(e)
    assert Sequential.observers == ()                    # the context manager cleaned up


def test_inf_weights_are_named_in_forward():
    X, y = blobs(n=16)
    model = mlp(hidden=(8, 8))                           # 0 Dense, 1 ReLU, 2 Dense, 3 ReLU, 4 Dense
    model.build((16,))
    model.layers[2].params["W"][0, :] = np.inf
    with bpnet.detect_anomaly(model), np.errstate(invalid="ignore"):
        with pytest.raises(NonFiniteError) as info:
            model.forward(X)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_class, e.data_to_blame) == ("forward", 2, "Dense", False)
    assert e.operation == "Dense forward x@W+b"
    assert e.rows == list(range(16))          # every row meets the Inf row of W (and 0 * Inf is NaN)
    assert "W (8 Inf)" in str(e)
    assert "observers" not in vars(model)


def test_custom_forward_op_producing_nan():
    X, y = blobs(n=12)
    model = Sequential([Dense(4, init="he_normal"), Log(), Dense(3)], seed=0, backend="numpy")
    model.build((16,))
    z = X @ model.layers[0].params["W"] + model.layers[0].params["b"]
    with bpnet.detect_anomaly(), np.errstate(invalid="ignore"):
        with pytest.raises(NonFiniteError) as info:
            model.forward(X)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_name, e.kind) == ("forward", 1, "log", "NaN")
    assert e.operation == "Log forward"
    assert e.rows == np.flatnonzero((z < 0).any(axis=1)).tolist()
    assert "input was finite" in str(e)


def test_broken_backward_is_named_in_fit_and_anomaly_mode_is_switched_off_after():
    X, y = blobs(n=32)
    model = Sequential([Dense(8, init="he_normal"), ReLU(), BadBackward(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=SGD(lr=0.1))
    with pytest.raises(NonFiniteError) as info:
        model.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0, detect_anomaly=True)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_name, e.rows) == ("backward", 2, "badbackward", [1, 4])
    assert "BadBackward backward" in e.operation and "dx" in str(e)
    assert "observers" not in vars(model) and model.observers == ()
    # without anomaly mode the NaN silently reaches the weights
    model2 = Sequential([Dense(8, init="he_normal"), ReLU(), BadBackward(), Dense(3)], seed=0, backend="numpy")
    model2.compile(optimizer=SGD(lr=0.1))
    model2.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert np.isnan(model2.layers[0].params["W"]).any()


def test_nan_inside_a_residual_block_gives_the_path():
    X, y = blobs(n=8)
    model = Sequential([Dense(4, init="he_normal"), Residual([Dense(4, init="he_normal"), Log()]), Dense(3)],
                       seed=0, backend="numpy")
    with bpnet.detect_anomaly(), np.errstate(invalid="ignore"):
        with pytest.raises(NonFiniteError) as info:
            model.forward(X)
    assert (info.value.layer_index, info.value.layer_path, info.value.layer_class) == (1, "1.1", "Log")


def test_loss_overflow_is_the_loss_phase():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = np.full((16, 1), 1e30, dtype=np.float32)                       # finite, but (y - out)² overflows
    model = Sequential([Dense(1)], seed=0, backend="numpy")
    model.compile(loss=MSE(), optimizer=SGD(lr=0.1))
    with np.errstate(over="ignore"), pytest.raises(NonFiniteError) as info:
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, detect_anomaly=True)
    assert info.value.phase == "loss" and info.value.layer_index is None
    assert "MSE forward" in info.value.operation


def test_update_overflow_is_the_update_phase():
    X, y = blobs(n=16)
    model = mlp(hidden=(4,))
    model.compile(optimizer=SGD(lr=1e39))
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(NonFiniteError) as info:
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, detect_anomaly=True)
    e = info.value
    assert e.phase == "update" and e.operation == "SGD step" and e.layer_index == 0
    assert "every gradient was finite" in str(e)


def test_nan_loss_gradient_in_a_hand_loop():
    X, y = blobs(n=8)
    model = mlp()
    with bpnet.detect_anomaly():
        model.forward(X, training=True)
        dy = np.ones((8, 3), np.float32)
        dy[6] = np.inf
        with pytest.raises(NonFiniteError) as info:
            model.backward(dy)
    assert (info.value.phase, info.value.rows, info.value.kind) == ("loss", [6], "Inf")


def test_a_clean_run_is_identical_with_and_without_anomaly_mode():
    X, y = blobs(n=64)
    runs = []
    for flag in (False, True):
        model = mlp()
        model.compile(optimizer=Adam(1e-2))
        h = model.fit(X, y, epochs=2, batch_size=16, verbose=0, detect_anomaly=flag)
        runs.append((h["loss"], model.flat_params.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_loss_scaler_overflow_is_not_an_anomaly():
    from bpnet.mixed_precision import LossScaler
    X, y = blobs(n=64)
    model = mlp(hidden=(8,), dtype="float16")
    scaler = LossScaler(init_scale=2.0 ** 40)             # float16 gradients overflow: steps are skipped
    model.compile(optimizer=Adam(1e-3), loss_scaler=scaler)
    with np.errstate(over="ignore", invalid="ignore"):
        h = model.fit(X, y, epochs=2, batch_size=16, verbose=0, detect_anomaly=True)
    assert scaler.overflows > 0 and np.isfinite(h["loss"]).all()
