"""check_data and check_model: pre-training checks, each asserted with its evidence."""
import numpy as np
import pytest

from bpnet import BCEWithLogits, CrossEntropy, Dense, MSE, ReLU, Sequential, Sigmoid, Softmax, Tanh
from bpnet.doctor import Thresholds, check_data, check_model
from bpnet.data import load_digits
from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


def _one(findings, code):
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, findings
    return hits[0]


def test_clean_standardised_data_has_no_findings():
    X, y = blobs(n=500)
    assert check_data(X, y, loss="cross_entropy") == []
    X, y = load_digits()
    Xs = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)     # constant pixels stay 0
    assert check_data(Xs, y, loss="cross_entropy") == []


def test_nonfinite_rows_are_listed():
    X, y = blobs(n=50)
    X[[4, 17], 2] = np.nan
    X[30, 0] = np.inf
    f = _one(check_data(X, y), "NONFINITE_DATA")
    assert f.evidence["rows"] == [4, 17, 30] and (f.evidence["n_nan"], f.evidence["n_inf"]) == (2, 1)
    assert f.evidence["columns"] == [0, 2] and f.severity == "error"
    y = y.astype(np.float64)
    y[9] = np.nan
    assert _one(check_data(blobs(n=50)[0], y), "NONFINITE_DATA").evidence == {
        "array": "y", "rows": [9], "n_rows": 1, "n_nan": 1, "n_inf": 0, "columns": [0]}


def test_unnormalised_inputs():
    X, y = blobs(n=200)
    X[:, 3] = X[:, 3] * 1000 + 5000            # std 1000, mean 5000
    X[:, 7] *= 1e-3                            # std 1e-3
    f = _one(check_data(X, y), "UNNORMALIZED_INPUTS")
    assert f.evidence["features"] == [3, 7]
    assert f.evidence["max_abs_mean"] == pytest.approx(np.abs(X.mean(0)).max(), rel=1e-6)
    assert f.evidence["max_std"] == pytest.approx(X[:, 3].std(), rel=1e-4)
    assert f.evidence["min_std"] == pytest.approx(X[:, 7].std(), rel=1e-4)
    assert check_data(X, y, thresholds=Thresholds(mean_max=1e4, std_max=1e4, std_min=1e-4)) == []


def test_outliers_by_robust_z_score():
    X, y = blobs(n=400)
    X[[12, 250], 5] = 300.0
    f = _one(check_data(X, y), "OUTLIERS")
    assert f.evidence["rows"] == [12, 250] and f.evidence["features"] == [5]
    med = np.median(X[:, 5])
    mad = 1.4826 * np.median(np.abs(X[:, 5] - med))
    assert f.evidence["max_robust_z"] == pytest.approx((300 - med) / mad, rel=1e-5)


def test_label_format_against_the_loss():
    X, y = blobs(n=60)
    model = mlp()            # 3 outputs
    model.build((16,))
    f = _one(check_data(X, y + 1, loss="cross_entropy", model=model), "LABEL_FORMAT")
    assert "labels must lie in 0..2" in f.message and f.evidence["max"] == 3.0
    f = _one(check_data(X, y + 1, loss="cross_entropy"), "LABEL_FORMAT")          # no model: 1-based labels
    assert f.severity == "warning" and "from 1 to 3" in f.message
    f = _one(check_data(X, y.astype(float) + 0.5, loss="cross_entropy"), "LABEL_FORMAT")
    assert "non-integer" in f.message
    f = _one(check_data(X, y * 2 - 1, loss=BCEWithLogits()), "LABEL_FORMAT")      # -1/1 targets
    assert f.evidence["min"] == -1.0
    onehot = np.eye(4)[y]                                                           # 4 columns, 3 outputs
    assert "width 4" in _one(check_data(X, onehot, loss="cross_entropy", model=model), "LABEL_FORMAT").message
    assert check_data(X, np.eye(3)[y], loss="cross_entropy", model=model) == []   # one-hot is fine
    f = _one(check_data(X, y, loss="mse", model=model), "LABEL_FORMAT")            # class labels to MSE
    assert "class labels" in f.message


def test_class_imbalance():
    X, _ = blobs(n=330)
    y = np.array([0] * 300 + [1] * 20 + [2] * 10)
    f = _one(check_data(X, y, loss=CrossEntropy()), "CLASS_IMBALANCE")
    assert f.evidence["counts"] == {"0": 300, "1": 20, "2": 10} and f.evidence["ratio"] == 30.0
    assert (f.evidence["majority"], f.evidence["minority"]) == (0, 2)
    assert check_data(X, y, loss="cross_entropy", thresholds=Thresholds(imbalance_ratio=50)) == []


def test_double_softmax_and_output_loss_mismatch():
    model = Sequential([Dense(8), ReLU(), Dense(3), Softmax()], backend="numpy")
    f = _one(check_model(model, "cross_entropy"), "DOUBLE_SOFTMAX")
    assert f.evidence == {"output_layer": "Softmax", "loss": "CrossEntropy"} and f.where == "layer 3"
    for act in (ReLU, Sigmoid, Tanh):
        model = Sequential([Dense(8), ReLU(), Dense(3), act()], backend="numpy")
        f = _one(check_model(model, "cross_entropy"), "OUTPUT_LOSS_MISMATCH")
        assert f.evidence["output_layer"] == act.__name__
    model = Sequential([Dense(1), Sigmoid()], backend="numpy")
    assert _one(check_model(model, BCEWithLogits()), "OUTPUT_LOSS_MISMATCH").evidence["loss"] == "BCEWithLogits"
    assert check_model(Sequential([Dense(1), Sigmoid()], backend="numpy"), MSE()) == []


def test_sigmoid_output_cannot_reach_regression_targets():
    X, _ = blobs(n=40)
    y = np.linspace(-2, 5, 40).astype(np.float32)
    model = Sequential([Dense(8), Tanh(), Dense(1), Sigmoid()], backend="numpy")
    f = _one(check_data(X, y, loss="mse", model=model), "OUTPUT_LOSS_MISMATCH")
    assert f.evidence["target_range"] == [-2.0, 5.0] and f.evidence["output_range"] == [0.0, 1.0]
    assert check_data(X, (y + 2) / 7, loss="mse", model=model) == []


def test_symmetric_weights():
    model = Sequential([Dense(8, init="zeros"), ReLU(), Dense(8, init="he_normal"), ReLU(), Dense(3, init="zeros")],
                       backend="numpy")
    model.build((4,))
    f = _one(check_model(model), "SYMMETRIC_WEIGHTS")            # the zero output layer is fine
    assert (f.where, f.evidence["units"], f.evidence["column_spread"], f.evidence["clones"]) == ("layer 0", 8, 0.0, False)
    model = Sequential([Dense(8, init=lambda s, r, d: np.full(s, 0.3, d)), Tanh(),
                        Dense(3, init=lambda s, r, d: np.full(s, 0.1, d))], backend="numpy")
    model.build((4,))
    f = _one(check_model(model), "SYMMETRIC_WEIGHTS")
    assert f.evidence["value"] == pytest.approx(0.3) and f.evidence["clones"] and f.severity == "error"
    assert check_model(mlp()) == []
