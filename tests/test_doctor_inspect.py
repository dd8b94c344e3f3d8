"""trace (per-layer statistics) and overfit_check (can the pipeline memorise 10 samples?)."""
import numpy as np
import pytest

from bpnet import Adam, Dense, ReLU, Sequential, Tanh
from bpnet.data import Standardizer, load_digits
from bpnet.doctor import overfit_check, trace
from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


def test_trace_rows_match_numpy():
    X, _ = blobs(n=32)
    model = mlp(hidden=(8,))
    lines = []
    rows = trace(model, X, print_fn=lines.append)
    assert [r["name"] for r in rows] == ["input", "dense", "relu", "dense"]
    assert [r["index"] for r in rows] == [None, 0, 1, 2]
    W0, b0, W2, b2 = (model.parameters()[k] for k in ("0.W", "0.b", "2.W", "2.b"))
    z = X @ W0 + b0
    h = np.maximum(z, 0)
    out = h @ W2 + b2
    for row, ref in zip(rows, (X, z, h, out)):
        assert row["shape"] == ref.shape and row["dtype"] == "float32"
        for stat in ("min", "max", "mean", "std"):
            assert row[stat] == pytest.approx(float(getattr(ref.astype(np.float64), stat)()), rel=1e-5, abs=1e-6)
        assert row["nan"] == 0 and row["inf"] == 0
    assert "relu" in lines[0] and "nan" in lines[0].splitlines()[0]
    assert model.trace(X, print_fn=None) == rows                      # the method delegates here


def test_trace_counts_nan_and_inf_and_keeps_finite_stats():
    X, _ = blobs(n=16)
    X[3, :] = np.nan
    X[5, 1] = np.inf
    with np.errstate(invalid="ignore"):
        rows = trace(mlp(), X, print_fn=None)
    finite = X[np.isfinite(X)].astype(np.float64)
    assert (rows[0]["nan"], rows[0]["inf"]) == (16, 1)
    assert rows[0]["mean"] == pytest.approx(finite.mean()) and rows[0]["max"] == pytest.approx(finite.max())
    assert rows[1]["nan"] > 0                                  # the NaN row spreads into layer 0


def _digits(n=200):
    X, y = load_digits()
    return Standardizer().fit(X).transform(X)[:n], y[:n]


def _digits_model(*middle):
    model = Sequential([Dense(32, init="he_normal"), ReLU(), *middle, Dense(10)], seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=Adam(1e-3))
    return model


def test_overfit_check_passes_on_a_correct_pipeline():
    X, y = _digits()
    model = _digits_model()
    report = overfit_check(model, X, y, n=10, steps=200)
    assert report.passed and report.final_loss < 0.05 < report.initial_loss
    assert report.losses[0] == report.initial_loss and report.n == 10
    assert "wired correctly" in report.explanation
    assert model.optimizer.t == 0                        # the model itself was not trained


def test_overfit_check_fails_when_labels_do_not_stay_with_their_inputs():
    X, y = _digits()

    def shuffle_labels(xb, yb, rng):        # a loader that shuffles X and y with different permutations
        return xb, rng.permutation(yb)

    report = overfit_check(_digits_model(), X, y, n=10, steps=200, transform=shuffle_labels)
    assert not report.passed and report.final_loss > 0.1
    assert report.suspects == ["labels"]
    assert report.gradcheck_error is not None and report.gradcheck_error < 1e-4
    assert "labels probably do not belong to their inputs" in report.explanation


class NegatedTanh(Tanh):
    """Tanh whose backward has the wrong sign: gradient ascent through this layer."""

    def backward(self, dy):
        return -super().backward(dy)


def test_overfit_check_fails_on_a_broken_gradient_and_names_it():
    X, y = _digits()
    report = overfit_check(_digits_model(Dense(32, init="xavier_uniform"), NegatedTanh()), X, y, n=10, steps=200)
    assert not report.passed
    assert report.suspects == ["gradients"] and report.gradcheck_error > 1e-2
    assert "backward pass disagrees with numerical differences" in report.explanation


def test_overfit_check_points_at_the_loss():
    X, y = _digits()
    model = Sequential([Dense(32, init="he_normal"), ReLU(), Dense(10), ReLU()], seed=0, backend="numpy")
    model.compile(loss="cross_entropy")                 # a ReLU clips the logits the loss needs
    report = overfit_check(model, X, y, steps=60)
    assert not report.passed and report.suspects == ["loss"]
    assert [f.code for f in report.findings] == ["OUTPUT_LOSS_MISMATCH"]
