"""The doctor's verdict as one story, and the checks that close the misses of issue 11.

Root cause first with its symptoms attached (caused_by), contradictions dropped;
heavy tails told from unit errors; validation data judged against the training
data; integer-valued float labels; softmax over one unit; eps that is 0 in
float16; user-written layers gradient-checked during fit; a condition gone by
the end kept only as info.
"""
import numpy as np
import pytest

import bpnet
from bpnet import Adam, Dense, LossScaler, ReLU, Sequential, Softmax
from bpnet.data import Standardizer
from bpnet.doctor import Doctor, Finding, check_data, check_model, diagnose
from bpnet.doctor.gradients import check_user_layers
from bpnet.doctor.story import headline, tell
from bpnet.doctor.validation_checks import check_validation
from bpnet.history import History
from bpnet.layers.base import Layer
from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


def _f(code, severity="warning", where=None):
    return Finding(code, severity, f"{code.lower()} seen", remedy=f"fix {code.lower()}", where=where)


def test_tell_puts_the_root_cause_first_and_attaches_its_symptoms():
    found = [_f("STEP_SIZE", where="too large"), _f("EXPLODING_GRADIENTS", "error"), _f("NONFINITE_LOSS", "error"),
             _f("UNNORMALIZED_INPUTS", where="X"), _f("CLASS_IMBALANCE", where="y")]
    story = tell(found)
    assert [f.code for f in story][0] == "UNNORMALIZED_INPUTS"
    roots = [f.code for f in story if not f.caused_by]
    assert roots == ["UNNORMALIZED_INPUTS", "CLASS_IMBALANCE"]           # imbalance explains no blow-up
    for f in story:
        if f.caused_by:
            assert f.caused_by == "UNNORMALIZED_INPUTS"
            assert story.index(f) < story.index(next(r for r in story if r.code == "CLASS_IMBALANCE"))
    line = headline(story)
    assert line.startswith("doctor: main problem: UNNORMALIZED_INPUTS at X (warning)")
    assert "remedy: fix unnormalized_inputs" in line and "\n" not in line


def test_tell_never_reports_contradictory_findings_together():
    story = tell([_f("LR_TOO_LOW"), _f("LR_TOO_HIGH"), _f("DYING_RELU", "error", where="layer 1")])
    codes = [f.code for f in story]
    assert "LR_TOO_LOW" not in codes and codes[0] == "LR_TOO_HIGH"
    assert story[1].code == "DYING_RELU" and story[1].caused_by == "LR_TOO_HIGH"
    assert headline(tell([_f("PLATEAU", "info")])) == "doctor: no problems found (1 note in history.findings)"
    assert headline([]) == "doctor: no problems found"


def test_heavy_tails_of_real_data_are_not_outliers_but_unit_errors_are():
    X, y = bpnet.datasets.load_breast_cancer()
    Xs = Standardizer().fit(X).transform(X)
    z = np.abs(Xs - np.median(Xs, 0)) / (1.4826 * np.median(np.abs(Xs - np.median(Xs, 0)), 0))
    assert np.nanmax(z[:, np.isfinite(z).all(0)]) > 20                     # the tails are heavy ...
    assert not [f for f in check_data(Xs, y, loss="cross_entropy") if f.code == "OUTLIERS"]   # ... and real
    Xb = X.astype(np.float64).copy()
    Xb[[10, 200, 300], 0] *= 1000                                          # radius in the wrong unit
    f = next(f for f in check_data(Standardizer().fit(Xb).transform(Xb), y, loss="cross_entropy")
             if f.code == "OUTLIERS")
    assert f.evidence["rows"] == [10, 200, 300] and f.evidence["features"] == [0]


def test_rarely_on_pixels_are_no_scale_problem():
    X, y = bpnet.datasets.load_digits()
    assert check_data(X / 16.0, y, loss="cross_entropy") == []
    f = next(f for f in check_data(X * 16.0, y, loss="cross_entropy") if f.code == "UNNORMALIZED_INPUTS")
    assert f.evidence["max_std"] > 20


def test_integer_valued_float_labels_are_labels():
    X, y = blobs(n=90)
    model = Sequential([Dense(8), ReLU(), Dense(1)], seed=0, backend="numpy")
    model.build((16,))
    f = next(f for f in check_data(X, y.astype(np.float32).reshape(-1, 1), loss="mse", model=model)
             if f.code == "LABEL_FORMAT")
    assert "whole numbers" in f.message and f.severity == "warning"
    noisy = y.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, len(y)).astype(np.float32)
    assert check_data(X, noisy.reshape(-1, 1), loss="mse", model=model) == []


def test_unscaled_regression_targets():
    X, _ = blobs(n=100)
    y = (X[:, :1] * 3e4 + 2e5).astype(np.float32)
    f = next(f for f in check_data(X, y, loss="mse") if f.code == "UNNORMALIZED_TARGETS")
    assert f.evidence["max_abs_mean"] == pytest.approx(float(y.mean()), rel=1e-4) and f.where == "y"
    assert check_data(X, (y - y.mean()) / y.std(), loss="mse") == []


def test_softmax_over_one_unit_and_softmax_with_mse():
    m = Sequential([Dense(4), ReLU(), Dense(1), Softmax()], seed=0, backend="numpy")
    m.build((3,))
    for loss in ("mse", "bce_with_logits"):
        f = [f for f in check_model(m, loss) if f.code == "OUTPUT_LOSS_MISMATCH"]
        assert len(f) == 1 and f[0].severity == "error" and "single output unit" in f[0].message
    m = Sequential([Dense(4), ReLU(), Dense(3), Softmax()], seed=0, backend="numpy")
    m.build((3,))
    f = [f for f in check_model(m, "mse") if f.code == "OUTPUT_LOSS_MISMATCH"]
    assert len(f) == 1 and f[0].severity == "warning" and "regression loss" in f[0].message


def test_eps_that_rounds_to_zero_in_float16_is_flagged_before_training():
    m = mlp(dtype="float16")
    m.compile(optimizer=Adam())
    f = [f for f in check_model(m) if f.code == "EPS_UNDERFLOW"]
    assert len(f) == 1 and f[0].severity == "error" and "float16" in f[0].message
    m2 = mlp(dtype="float16")
    m2.compile(optimizer=Adam(), loss_scaler=LossScaler())       # float32 optimizer state
    assert not [f for f in check_model(m2) if f.code == "EPS_UNDERFLOW"]
    m3 = mlp(dtype="float16")
    m3.compile(optimizer=Adam(eps=1e-4))
    assert not [f for f in check_model(m3) if f.code == "EPS_UNDERFLOW"]


def test_validation_data_is_judged_against_the_training_data():
    X, y = blobs(n=200)
    Xv, yv = blobs(n=60, seed=1)
    assert check_validation(X, y, Xv, yv, loss="cross_entropy") == []
    f = check_validation(X, y, Xv * 50 + 300, yv, loss="cross_entropy")[0]
    assert (f.code, f.where, f.severity) == ("UNNORMALIZED_INPUTS", "validation X", "error")
    assert "validation data" in f.message and f.evidence["shift_in_train_stds"] > 5
    bad = Xv.copy()
    bad[3, 2] = np.nan
    f = next(f for f in check_validation(X, y, bad, yv, loss="cross_entropy") if f.code == "NONFINITE_DATA")
    assert f.where == "validation X" and "validation data" in f.message
    f = next(f for f in check_validation(X, y, Xv, yv + 1, loss="cross_entropy") if f.code == "LABEL_FORMAT")
    assert f.where == "validation y" and "validation labels" in f.message


class _DoubleWrong(Layer):
    """y = 2x, whose backward returns 3 dy."""

    def forward(self, x, training=False):
        self._ensure_built(x)
        return 2 * x

    def backward(self, dy):
        return 3 * dy


def test_user_layers_are_gradient_checked_during_fit():
    X, y = blobs(n=64)
    model = Sequential([Dense(8), _DoubleWrong(), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=Adam())
    h = model.fit(X, y, epochs=1, verbose=0, doctor=Doctor(print_fn=None))
    f = next(f for f in h.findings if f.code == "WRONG_GRADIENT")
    assert f.where == "layer 1" and f.evidence["class"] == "_DoubleWrong" and f.evidence["tensor"] == "input"
    assert f.evidence["analytic"] == pytest.approx(1.5 * f.evidence["numeric"], rel=1e-6)
    assert h.findings[0].code == "WRONG_GRADIENT"
    assert check_user_layers(mlp(), X) == []                        # bpnet's own layers are not re-checked


def test_a_condition_gone_by_the_end_is_only_info():
    h = History()
    for e, (lo, va) in enumerate(zip([1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.18, 0.16, 0.15, 0.14],
                                     [1.0, 0.7, 0.5, 0.6, 0.7, 0.8, 0.4, 0.3, 0.25, 0.2])):
        h.append(e, {"loss": lo, "val_loss": va})
    assert diagnose(h) == []                           # the validation bump is over
    early = History()
    for e in range(6):
        early.append(e, {"loss": h["loss"][e], "val_loss": h["val_loss"][e]})
    assert [f.code for f in diagnose(early)] == ["OVERFITTING"]   # ... but was seen at epoch 5


def test_overfitting_with_validation_accuracy_holding_is_info():
    h = History()
    loss = [1.0, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1]
    val = [1.0, 0.7, 0.5, 0.45, 0.5, 0.56, 0.62]
    acc = [0.6, 0.8, 0.9, 0.95, 0.95, 0.95, 0.925]          # 40 validation samples: steps of 1/40
    for e in range(7):
        h.append(e, {"loss": loss[e], "val_loss": val[e], "val_accuracy": acc[e]})
    f = next(f for f in diagnose(h) if f.code == "OVERFITTING")
    assert f.severity == "info" and f.evidence["val_size_estimate"] == 40 and "overconfident" in f.message
