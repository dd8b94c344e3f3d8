"""Tests for bpnet.init: moments against closed forms, PyTorch's gain table,
orthogonality, the (in, out) fan layout, aliases, get_initializer and dtypes.

Tolerances come from sampling error on N = 400*300 = 120 000 draws, at
6 standard errors (a false failure has probability ~1e-9 per check):
  mean:  se = sigma / sqrt(N)
  std (normal):  relative se = 1 / sqrt(2N)
  std (uniform): relative se = sqrt(4/45) * 3 / (2 sqrt(N)) = 0.447 / sqrt(N)
"""

import math

import numpy as np
import pytest

from bpnet import init
from bpnet.errors import ConfigError

SHAPE = (400, 300)  # (fan_in, fan_out) in bpnet's (in, out) layout
N = SHAPE[0] * SHAPE[1]
Z = 6.0


def rng(seed=0):
    return np.random.default_rng(seed)


def check_normal(w, mean, std):
    w = w.astype(np.float64)
    assert abs(w.mean() - mean) < Z * std / math.sqrt(N)
    assert abs(w.std() / std - 1) < Z / math.sqrt(2 * N)


def check_uniform(w, lo, hi):
    w = w.astype(np.float64)
    std = (hi - lo) / math.sqrt(12)
    assert abs(w.mean() - (lo + hi) / 2) < Z * std / math.sqrt(N)
    assert abs(w.std() / std - 1) < Z * 0.447 / math.sqrt(N)
    # inside the bounds (float32 rounding aside) and reaching close to them
    span = hi - lo
    assert w.min() >= lo - 1e-6 * span and w.max() <= hi + 1e-6 * span
    assert w.min() < lo + 1e-3 * span and w.max() > hi - 1e-3 * span


# --- fans and gains -----------------------------------------------------------

def test_compute_fans_in_out_layout():
    assert init.compute_fans((400, 300)) == (400, 300)
    assert init.compute_fans((7,)) == (7, 7)
    assert init.compute_fans(5) == (5, 5)
    assert init.compute_fans((3, 4, 5, 2)) == (30, 40)
    with pytest.raises(ConfigError):
        init.compute_fans(())


@pytest.mark.parametrize("name, param, gain", [
    ("linear", None, 1.0), ("identity", None, 1.0), ("conv2d", None, 1.0),
    ("conv_transpose3d", None, 1.0), ("sigmoid", None, 1.0),
    ("tanh", None, 5 / 3), ("relu", None, math.sqrt(2)),
    ("leaky_relu", None, math.sqrt(2 / (1 + 0.01 ** 2))),
    ("leaky_relu", 0.2, math.sqrt(2 / 1.04)), ("leaky_relu", 0, math.sqrt(2)),
    ("selu", None, 0.75), ("ReLU", None, math.sqrt(2)),
])
def test_calculate_gain_table(name, param, gain):
    assert init.calculate_gain(name, param) == pytest.approx(gain, rel=1e-12)


def test_calculate_gain_rejects_unknown_and_bad_slope():
    with pytest.raises(ConfigError, match="tanh"):
        init.calculate_gain("elu")
    with pytest.raises(ConfigError, match="slope"):
        init.calculate_gain("leaky_relu", "0.1")
    with pytest.raises(ConfigError, match="slope"):
        init.calculate_gain("leaky_relu", True)


# --- moments against closed forms -------------------------------------------

def test_constants():
    assert np.array_equal(init.zeros(SHAPE, rng()), np.zeros(SHAPE, np.float32))
    assert np.array_equal(init.ones((3,), rng()), np.ones(3, np.float32))
    w = init.constant((2, 3), rng(), np.float64, value=0.25)
    assert w.dtype == np.float64 and np.all(w == 0.25)


def test_normal_and_uniform():
    check_normal(init.normal(SHAPE, rng(1), mean=0.5, std=2.0), 0.5, 2.0)
    check_uniform(init.uniform(SHAPE, rng(2), a=-1.0, b=3.0), -1.0, 3.0)
    check_uniform(init.uniform(SHAPE, rng(3)), 0.0, 1.0)


def test_xavier():
    bound = 2.0 * math.sqrt(6 / (400 + 300))  # 0.18516
    check_uniform(init.xavier_uniform(SHAPE, rng(4), gain=2.0), -bound, bound)
    check_normal(init.xavier_normal(SHAPE, rng(5), gain=2.0), 0.0, 2.0 * math.sqrt(2 / 700))


@pytest.mark.parametrize("mode, fan", [("fan_in", 400), ("fan_out", 300)])
def test_kaiming_uses_in_out_layout(mode, fan):
    gain = math.sqrt(2 / (1 + 0.01 ** 2))  # default nonlinearity leaky_relu, a=0.01
    check_uniform(init.kaiming_uniform(SHAPE, rng(6), a=0.01, mode=mode),
                  -gain * math.sqrt(3 / fan), gain * math.sqrt(3 / fan))
    check_normal(init.kaiming_normal(SHAPE, rng(7), mode=mode, nonlinearity="tanh"),
                 0.0, (5 / 3) / math.sqrt(fan))


def test_kaiming_default_is_relu_gain_on_shape0():
    # a=0 with leaky_relu is plain ReLU: std = sqrt(2/400) = 0.0707, not sqrt(2/300)
    check_normal(init.kaiming_normal(SHAPE, rng(8)), 0.0, math.sqrt(2 / 400))
    check_normal(init.kaiming_normal(SHAPE[::-1], rng(8)), 0.0, math.sqrt(2 / 300))


def test_keras_names():
    check_normal(init.he_normal(SHAPE, rng(9)), 0.0, math.sqrt(2 / 400))
    b = math.sqrt(6 / 400)
    check_uniform(init.he_uniform(SHAPE, rng(10)), -b, b)
    check_normal(init.lecun_normal(SHAPE, rng(11)), 0.0, 1 / math.sqrt(400))


def test_variance_preservation_through_relu_stack():
    """He init keeps E[h^2] flat through 10 ReLU layers; 1/fan_in halves it per layer."""
    def mean_square_ratio(fn):
        r = rng(12)
        h = r.standard_normal((512, 256))
        first = None
        for _ in range(10):
            h = np.maximum(h @ fn((256, 256), r, np.float64), 0.0)
            first = (h ** 2).mean() if first is None else first
        return (h ** 2).mean() / first

    # 9 layers after the first; finite width makes the ratio wander ~0.75-1.6 across seeds
    assert 0.5 < mean_square_ratio(init.he_normal) < 2.0
    assert 0.5 < mean_square_ratio(init.lecun_normal) / 0.5 ** 9 < 2.0  # ~0.002


# --- orthogonal ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(400, 300), (300, 400), (64, 64)])
def test_orthogonal_is_orthonormal(shape):
    w = init.orthogonal(shape, rng(13), np.float64)
    assert w.shape == shape
    k = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    assert np.abs(gram - np.eye(k)).max() < 1e-5
    w32 = init.orthogonal(shape, rng(13))
    gram32 = (w32.T @ w32 if shape[0] >= shape[1] else w32 @ w32.T).astype(np.float64)
    assert np.abs(gram32 - np.eye(k)).max() < 1e-4


def test_orthogonal_gain_determinism_and_sign_fix():
    w1 = init.orthogonal((50, 30), rng(14), np.float64)
    w3 = init.orthogonal((50, 30), rng(14), np.float64, gain=3.0)
    assert np.allclose(w3, 3.0 * w1, rtol=0, atol=1e-12)
    assert np.array_equal(init.orthogonal((50, 30), rng(14)), init.orthogonal((50, 30), rng(14)))
    assert not np.array_equal(w1, init.orthogonal((50, 30), rng(15), np.float64))
    # reference: Q of the same Gaussian draw, columns signed by diag(R)
    q, r = np.linalg.qr(rng(14).standard_normal((50, 30)))
    assert np.allclose(w1, q * np.sign(np.diag(r)), atol=1e-12)
    with pytest.raises(ConfigError, match="2 dimensions"):
        init.orthogonal((5,), rng())


def test_orthogonal_higher_rank_flattens():
    w = init.orthogonal((4, 3, 2), rng(16), np.float64).reshape(4, 6)
    assert np.abs(w @ w.T - np.eye(4)).max() < 1e-12


# --- aliases, get_initializer -------------------------------------------------

@pytest.mark.parametrize("alias, target, kw", [
    ("he_normal", init.kaiming_normal, {"nonlinearity": "relu"}),
    ("he_uniform", init.kaiming_uniform, {"nonlinearity": "relu"}),
    ("glorot_normal", init.xavier_normal, {}),
    ("glorot_uniform", init.xavier_uniform, {}),
    ("xavier", init.xavier_uniform, {}),
    ("he", init.kaiming_normal, {"nonlinearity": "relu"}),
    ("kaiming", init.kaiming_normal, {"nonlinearity": "relu"}),
    ("lecun_normal", init.normal, {"std": 1 / math.sqrt(40)}),
])
def test_aliases_match_targets(alias, target, kw):
    got = init.get_initializer(alias)((40, 30), rng(17))
    assert np.array_equal(got, target((40, 30), rng(17), **kw))
    assert np.array_equal(got, init.INITIALIZERS[alias]((40, 30), rng(17)))


def test_get_initializer_names_kwargs_and_callables():
    f = init.get_initializer("Xavier_Normal", gain=2.0)
    assert np.array_equal(f((20, 10), rng(18), np.float64),
                          init.xavier_normal((20, 10), rng(18), np.float64, gain=2.0))
    assert np.all(init.get_initializer("CONSTANT", value=3.0)((2, 2), rng()) == 3.0)

    def custom(shape, rng, dtype=np.float32, scale=1.0):
        return np.full(shape, scale, dtype)
    g = init.get_initializer(custom, scale=7.0)
    assert np.array_equal(g((3,), rng(), np.float64), np.full(3, 7.0))
    expected = {"zeros", "ones", "constant", "normal", "uniform", "orthogonal",
                "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
                "lecun_normal", "xavier", "he", "kaiming"}
    assert set(init.INITIALIZERS) == expected


def test_get_initializer_errors_name_valid_choices():
    with pytest.raises(ConfigError, match="he_normal") as e:
        init.get_initializer("he_norm")
    assert "'he_norm'" in str(e.value) and "xavier_uniform" in str(e.value)
    with pytest.raises(ConfigError, match="valid names"):
        init.get_initializer(42)
    with pytest.raises(ConfigError, match="gain"):
        init.get_initializer("he_normal", gain=2.0)  # typo'd kwarg caught up front
    with pytest.raises(ConfigError, match="fan_in, fan_out"):
        init.kaiming_normal(SHAPE, rng(), mode="fan_avg")
    with pytest.raises(ConfigError, match="Generator"):
        init.normal((2, 2), np.random.RandomState(0))
    with pytest.raises(ConfigError):
        init.normal((2, 2), rng(), std=-1.0)


# --- dtype --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(init.INITIALIZERS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_honoured_and_same_draw(name, dtype):
    f = init.get_initializer(name)
    w = f((30, 20), rng(19), dtype)
    assert isinstance(w, np.ndarray) and w.dtype == dtype and w.shape == (30, 20)
    assert np.array_equal(w, f((30, 20), rng(19), np.float64).astype(dtype))


def test_empty_shape_returns_empty():
    for name in ("he_normal", "xavier_uniform", "orthogonal", "normal"):
        w = init.get_initializer(name)((0, 5), rng())
        assert w.shape == (0, 5) and w.dtype == np.float32
