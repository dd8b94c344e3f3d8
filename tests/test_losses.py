"""Losses: values against textbook formulas (and scikit-learn), gradient checks, stability, label errors.

Every reference below is written out in float64 in this file; none is
computed by the code under test.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss

from bpnet import (MAE, MSE, BCEWithLogits, BpnetError, CrossEntropy, FocalLoss, LabelError, ShapeError,
                   get_backend, gradcheck)
from bpnet.errors import ConfigError

TOL = 1e-6
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
rows = st.integers(min_value=1, max_value=6)
classes = st.integers(min_value=2, max_value=5)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


class On:
    """A loss on a backend: outputs moved to its device, gradients brought back to the host."""

    def __init__(self, loss, backend):
        self.bk = get_backend(backend)
        self.loss = loss
        loss.backend = self.bk

    def forward(self, z, target):
        return self.loss.forward(self.bk.asarray(z), target)

    def backward(self):
        return self.bk.to_numpy(self.loss.backward())


on = On


def ref_log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ref_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def data(seed, n, c, scale=2.0):
    rng = np.random.default_rng([seed, 7])
    z = rng.normal(0.0, scale, size=(n, c))
    y = rng.integers(0, c, size=n)
    return rng, z, y


def check(loss, z, target, **kwargs):
    report = gradcheck(getattr(loss, "loss", loss), z, target, tol=TOL, max_elements=60, **kwargs)
    assert [c.name for c in report.checks] == ["output"]
    assert report["output"].n_checked == min(z.size, 60)
    assert report.max_rel_error < TOL, str(report)


# --------------------------------------------------------------------------- regression losses
@SETTINGS
@given(n=rows, d=st.integers(1, 4), seed=seeds)
def test_mse(backend, n, d, seed):
    rng = np.random.default_rng([seed, 1])
    y, t = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    loss = on(MSE(), backend)
    assert loss.forward(y, t) == pytest.approx(np.mean((y - t) ** 2), rel=1e-13)
    np.testing.assert_allclose(loss.backward(), 2 * (y - t) / y.size, rtol=1e-13)
    check(loss, y, t)


@SETTINGS
@given(n=rows, d=st.integers(1, 4), seed=seeds)
def test_mae_away_from_ties(backend, n, d, seed):
    rng = np.random.default_rng([seed, 2])
    t = rng.standard_normal((n, d))
    y = t + rng.uniform(0.01, 1.0, (n, d)) * rng.choice([-1.0, 1.0], (n, d))
    loss = on(MAE(), backend)
    assert loss.forward(y, t) == pytest.approx(np.mean(np.abs(y - t)), rel=1e-13)
    check(loss, y, t)


def test_regression_target_column_and_shape_error():
    y = np.array([[1.0], [2.0], [4.0]])
    assert MSE().forward(y, np.array([1.0, 1.0, 1.0])) == pytest.approx((0 + 1 + 9) / 3)
    assert MAE().forward(y, np.array([0.0, 0.0, 0.0])) == pytest.approx(7 / 3)
    with pytest.raises(ShapeError, match=r"\(3, 1\).*\(2,\)"):
        MSE().forward(y, np.array([1.0, 2.0]))


# --------------------------------------------------------------------------- cross-entropy
@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_cross_entropy_integer_labels(backend, n, c, seed):
    _, z, y = data(seed, n, c)
    loss = on(CrossEntropy(), backend)
    expected = -np.mean(ref_log_softmax(z)[np.arange(n), y])
    value = loss.forward(z, y)
    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(log_loss(y, ref_softmax(z), labels=np.arange(c)), rel=1e-10)
    np.testing.assert_allclose(loss.backward(), (ref_softmax(z) - np.eye(c)[y]) / n, rtol=1e-10, atol=1e-15)
    check(loss, z, y)


@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_cross_entropy_one_hot_rows(backend, n, c, seed):
    _, z, y = data(seed, n, c)
    loss = on(CrossEntropy(), backend)
    assert loss.forward(z, np.eye(c)[y]) == pytest.approx(-np.mean(ref_log_softmax(z)[np.arange(n), y]), rel=1e-12)
    check(loss, z, np.eye(c)[y])


@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_cross_entropy_probability_rows(backend, n, c, seed):
    rng, z, _ = data(seed, n, c)
    q = rng.dirichlet(np.ones(c), size=n)
    loss = on(CrossEntropy(), backend)
    assert loss.forward(z, q) == pytest.approx(-np.mean((q * ref_log_softmax(z)).sum(axis=1)), rel=1e-12)
    check(loss, z, q)


@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_cross_entropy_class_weights(backend, n, c, seed):
    rng, z, y = data(seed, n, c)
    w = rng.uniform(0.2, 3.0, c)
    loss = on(CrossEntropy(class_weights=w), backend)
    # PyTorch's weighted mean: Σ w_y (-log p_y) / Σ w_y
    nll = -ref_log_softmax(z)[np.arange(n), y]
    expected = (w[y] * nll).sum() / w[y].sum()
    assert loss.forward(z, y) == pytest.approx(expected, rel=1e-12)
    assert loss.forward(z, y) == pytest.approx(
        log_loss(y, ref_softmax(z), labels=np.arange(c), sample_weight=w[y]), rel=1e-10)
    check(loss, z, y)
    assert loss.forward(z, np.eye(c)[y]) == pytest.approx(expected, rel=1e-12)   # one-hot: same value
    check(loss, z, np.eye(c)[y])


@pytest.mark.parametrize("eps", [0.1, 0.3])
@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_cross_entropy_label_smoothing(backend, eps, n, c, seed):
    _, z, y = data(seed, n, c)
    loss = on(CrossEntropy(label_smoothing=eps), backend)
    logp = ref_log_softmax(z)
    # PyTorch: (1-ε) · NLL + ε · mean over classes of -log p
    expected = (1 - eps) * np.mean(-logp[np.arange(n), y]) + eps * np.mean(-logp.mean(axis=1))
    assert loss.forward(z, y) == pytest.approx(expected, rel=1e-12)
    check(loss, z, y)
    assert loss.forward(z, np.eye(c)[y]) == pytest.approx(expected, rel=1e-12)
    check(loss, z, np.eye(c)[y])


@pytest.mark.parametrize("big", [1e4, 1e3, 88.0])
def test_cross_entropy_extreme_logits(backend, big):
    z = np.array([[big, -big, 0.0], [0.0, 0.0, big], [-big, -big, -big]])
    y = np.array([0, 1, 2])
    for target in (y, np.eye(3)[y]):
        loss = on(CrossEntropy(), backend)
        value = loss.forward(z, target)
        # row 0: right and certain, 0; row 1: wrong by `big`, loss big; row 2: uniform, log 3
        assert value == pytest.approx((0.0 + big + np.log(3)) / 3, rel=1e-12)
        g = loss.backward()
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, (ref_softmax(z) - np.eye(3)[y]) / 3, atol=1e-15)
    for dtype in (np.float32, np.float64):
        loss = on(CrossEntropy(label_smoothing=0.1), backend)
        assert np.isfinite(loss.forward(z.astype(dtype), y)) and np.all(np.isfinite(loss.backward()))


def test_cross_entropy_float32_matches_float64(backend):
    _, z, y = data(3, 32, 10)
    loss = on(CrossEntropy(), backend)
    v64, g64 = loss.forward(z, y), loss.backward().copy()
    v32, g32 = loss.forward(z.astype(np.float32), y), loss.backward()
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- focal loss
def ref_focal(z, y, gamma, alpha=None):
    n = len(y)
    logpt = ref_log_softmax(z)[np.arange(n), y]
    pt = np.exp(logpt)
    a = np.ones(n) if alpha is None else np.asarray(alpha)[y]
    return (-a * (1 - pt) ** gamma * logpt).sum() / a.sum()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("use_alpha", [False, True])
@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_focal(backend, gamma, use_alpha, n, c, seed):
    rng, z, y = data(seed, n, c)
    alpha = rng.uniform(0.25, 1.0, c) if use_alpha else None
    loss = on(FocalLoss(gamma=gamma, alpha=alpha), backend)
    assert loss.forward(z, y) == pytest.approx(ref_focal(z, y, gamma, alpha), rel=1e-12)
    check(loss, z, y)
    assert loss.forward(z, np.eye(c)[y]) == pytest.approx(ref_focal(z, y, gamma, alpha), rel=1e-12)
    check(loss, z, np.eye(c)[y])


@SETTINGS
@given(n=rows, c=classes, seed=seeds)
def test_focal_gamma0_equals_cross_entropy(backend, n, c, seed):
    rng, z, y = data(seed, n, c)
    focal, ce = on(FocalLoss(gamma=0.0), backend), on(CrossEntropy(), backend)
    assert focal.forward(z, y) == pytest.approx(ce.forward(z, y), rel=1e-12)
    np.testing.assert_allclose(focal.backward(), ce.backward(), rtol=1e-10, atol=1e-15)
    w = rng.uniform(0.2, 2.0, c)
    focal, ce = on(FocalLoss(gamma=0.0, alpha=w), backend), on(CrossEntropy(class_weights=w), backend)
    assert focal.forward(z, y) == pytest.approx(ce.forward(z, y), rel=1e-12)
    np.testing.assert_allclose(focal.backward(), ce.backward(), rtol=1e-10, atol=1e-15)


def test_focal_downweights_easy_examples():
    z = np.array([[4.0, 0.0], [0.0, 4.0]])
    y = np.array([0, 0])                        # row 0 easy, row 1 hard
    ce = -ref_log_softmax(z)[[0, 1], [0, 0]]
    p = np.exp(-ce)
    f = FocalLoss(gamma=2.0)
    assert f.forward(z[:1], y[:1]) == pytest.approx((1 - p[0]) ** 2 * ce[0], rel=1e-12)
    assert f.forward(z[:1], y[:1]) < 1e-3 * ce[0]       # easy example: weight (1-p)² ≈ 3e-4
    assert f.forward(z[1:], y[1:]) > 0.9 * ce[1]        # hard example keeps almost all its loss


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_extreme_logits(backend, gamma):
    z = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
    y = np.array([0, 1])
    loss = on(FocalLoss(gamma=gamma), backend)
    assert loss.forward(z, y) == pytest.approx(1e4 / 2, rel=1e-12)
    g = loss.backward()
    assert np.all(np.isfinite(g)), g
    np.testing.assert_allclose(g, [[0, 0, 0], [0, -0.5, 0.5]], atol=1e-15)


# --------------------------------------------------------------------------- BCE with logits
def ref_bce(z, t, pw=1.0):
    log_sig = -np.logaddexp(0.0, -z)            # log σ(z)
    log_one_minus = -np.logaddexp(0.0, z)       # log(1 - σ(z))
    return np.mean(-(pw * t * log_sig + (1 - t) * log_one_minus))


@pytest.mark.parametrize("pos_weight", [None, 3.0, 0.5])
@SETTINGS
@given(n=rows, k=st.integers(1, 3), seed=seeds)
def test_bce_with_logits(backend, pos_weight, n, k, seed):
    rng = np.random.default_rng([seed, 3])
    z = rng.normal(0, 2, (n, k))
    t = rng.integers(0, 2, (n, k)).astype(np.float64)
    loss = on(BCEWithLogits(pos_weight=pos_weight), backend)
    pw = 1.0 if pos_weight is None else pos_weight
    assert loss.forward(z, t) == pytest.approx(ref_bce(z, t, pw), rel=1e-12)
    check(loss, z, t)
    soft = rng.uniform(0, 1, (n, k))             # probability targets
    assert loss.forward(z, soft) == pytest.approx(ref_bce(z, soft, pw), rel=1e-12)
    check(loss, z, soft)


def test_bce_matches_sklearn_log_loss():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20, 1))
    t = rng.integers(0, 2, 20)
    p = 1 / (1 + np.exp(-z[:, 0]))
    assert BCEWithLogits().forward(z, t) == pytest.approx(log_loss(t, p), rel=1e-10)


def test_bce_extreme_logits(backend):
    z = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    t = np.array([1.0, 0.0, 0.0, 1.0])
    for pw in (None, 2.0):
        loss = on(BCEWithLogits(pos_weight=pw), backend)
        value = loss.forward(z, t)
        assert value == pytest.approx((0 + 0 + 1e4 + (pw or 1.0) * 1e4) / 4, rel=1e-12)
        g = loss.backward()
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g[:, 0], [0, 0, 0.25, -(pw or 1.0) / 4], atol=1e-15)


# --------------------------------------------------------------------------- label errors
Z = np.random.default_rng(0).standard_normal((4, 3))


@pytest.mark.parametrize("make", [CrossEntropy, FocalLoss], ids=["ce", "focal"])
@pytest.mark.parametrize("target, words", [
    (np.array([0, 1, 3, 2]), ["0..2", "3"]),                            # out of range
    (np.array([0, -1, 1, 2]), ["0..2", "-1"]),                          # negative
    (np.eye(4)[[0, 1, 2, 3]], ["(N, 3)", "width 4"]),                   # one-hot of the wrong width
    (np.array([[0], [1], [2], [1]]), ["(N,)", "ravel"]),                # (N, 1) column
    (np.array(["cat", "dog", "cat", "dog"]), ["integer class labels", "dtype"]),   # strings
    (np.array([[0.5, 0.2, 0.2]] * 4), ["(N, 3)", "summing to 1"]),      # rows that do not sum to 1
    (np.array([0.0, 1.5, 1.0, 2.0]), ["integer class labels", "1.5"]),  # non-integer floats
])
def test_categorical_label_errors(backend, make, target, words):
    loss = on(make(), backend)
    with pytest.raises(LabelError) as info:
        loss.forward(Z, target)
    msg = str(info.value)
    assert make.__name__ in msg or "label" in msg.lower()
    for w in words:
        assert w in msg, msg
    assert isinstance(info.value, BpnetError)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_backend_label_kernel_same_signature_and_errors(backend, smoothing):
    """Every backend's softmax_cross_entropy_labels takes ``smoothing=`` by name, gives the
    reference's numbers, and rejects a label outside 0..C-1 with a LabelError naming the
    row; the NumPy reference used to index from the end for -1 and give a wrong loss."""
    bk = get_backend(backend)
    z = bk.asarray(Z)
    y = np.array([0, 2, 1, 2])
    loss, dz = bk.softmax_cross_entropy_labels(z, bk.asarray(y), smoothing=smoothing)
    q = np.full((4, 3), smoothing / 3) + (1 - smoothing) * np.eye(3)[y]
    logp = Z - Z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert loss == pytest.approx(-(q * logp).sum() / 4, rel=1e-12)
    np.testing.assert_allclose(bk.to_numpy(dz), (np.exp(logp) - q) / 4, rtol=1e-12, atol=1e-15)
    for bad, row in (([0, -1, 1, 2], 1), ([0, 1, 3, 2], 2)):
        with pytest.raises(LabelError, match=f"at row {row} is outside 0..2"):
            bk.softmax_cross_entropy_labels(z, bk.asarray(np.array(bad)), smoothing=smoothing)


def test_label_error_says_expected_format():
    with pytest.raises(LabelError, match=r"integer class labels of shape \(N,\) with values in 0\.\.2"):
        CrossEntropy().forward(Z, np.array([[0], [1], [2], [1]]))


def test_bce_label_errors():
    with pytest.raises(LabelError, match=r"targets in \[0, 1\]"):
        BCEWithLogits().forward(np.zeros((3, 1)), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(LabelError, match="dtype"):
        BCEWithLogits().forward(np.zeros((2, 1)), np.array(["yes", "no"]))


def test_loss_config_errors():
    with pytest.raises(ConfigError):
        CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ConfigError):
        CrossEntropy(class_weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="2 class_weights for 3 classes"):
        CrossEntropy(class_weights=[1.0, 2.0]).forward(Z, np.array([0, 1, 2, 0]))
    with pytest.raises(ConfigError):
        FocalLoss(gamma=-1)
    with pytest.raises(ConfigError, match="2 alpha weights for 3 classes"):      # was a bare IndexError
        FocalLoss(alpha=[1.0, 2.0]).forward(Z, np.array([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match="non-negative"):                        # was a loss of the wrong sign
        FocalLoss(alpha=[1.0, -2.0, 1.0])
    with pytest.raises(ConfigError, match="pos_weight must be >= 0"):
        BCEWithLogits(pos_weight=-1.0)
    with pytest.raises(ConfigError, match="before forward"):
        MSE().backward()
