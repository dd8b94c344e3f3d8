"""Anomaly mode sees inside the fused Dense + activation steps of the execution plan."""
import numpy as np
import pytest

import bpnet
from bpnet import SGD, Dense, NonFiniteError, ReLU, Sequential
from bpnet.layers import Activation
from bpnet.layers.fused import DenseActivation

BACKENDS = [b for b in ("numpy", "numba") if b in bpnet.available_backends()]


class Log(Activation):
    """y = log z (NaN for z < 0); dz = dy / z = dy · e^(-y)."""

    def f(self, xp, z):
        return xp.log(z)

    def dz(self, xp, y, dy):
        return dy * xp.exp(-y)


class NaNSlope(Activation):
    """y = z, with a backward that breaks on the third row: dz = dy, row 2 NaN."""

    def f(self, xp, z):
        return z.copy()

    def dz(self, xp, y, dy):
        dz = dy.copy()
        dz[2] = xp.nan
        return dz


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def model_with(activation, backend):
    model = Sequential([Dense(6), activation, Dense(3)], seed=0, backend=backend)
    model.compile(loss="cross_entropy", optimizer=SGD(lr=0.1))
    model.build((5,))
    assert isinstance(model.steps[0], DenseActivation)          # the pair really runs fused
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_weight_in_a_fused_step_is_blamed_on_the_dense_layer(backend):
    X, y = data()
    model = model_with(ReLU(), backend)
    model.layers[0].params["W"][1, :] = np.inf
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError) as info:
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, detect_anomaly=True)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_class, e.operation) == ("forward", 0, "Dense", "Dense forward x@W+b")
    assert "W (6 Inf)" in str(e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_made_by_the_activation_of_a_fused_step_is_blamed_on_the_activation(backend):
    X, y = data()
    model = model_with(Log(), backend)
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError) as info:
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, detect_anomaly=True)
    e = info.value
    assert (e.phase, e.layer_index, e.layer_path, e.layer_class) == ("forward", 1, "1", "Log")
    assert e.data_to_blame is False and "Its input was finite" in str(e)
    assert "observers" not in vars(model)                         # switched off after the error


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_made_by_the_activation_backward_of_a_fused_step(backend):
    X, y = data()
    model = model_with(NaNSlope(), backend)
    with bpnet.detect_anomaly(), pytest.raises(NonFiniteError) as info:
        out = model.forward(X, training=True)
        model.backward(np.ones_like(out) / len(X))
    e = info.value
    assert (e.phase, e.layer_index, e.layer_class, e.rows) == ("backward", 1, "NaNSlope", [2])


def test_fused_and_unfused_plans_give_the_same_numbers_under_anomaly_mode():
    X, y = data(64)
    runs = []
    for anomaly in (False, True):
        model = model_with(ReLU(), BACKENDS[-1])
        h = model.fit(X, y, epochs=2, batch_size=16, verbose=0, detect_anomaly=anomaly)
        runs.append((h["loss"], model.flat_params.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
