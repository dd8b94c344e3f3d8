"""The scikit-learn estimators: estimator checks, model selection, pickling, early stopping."""
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.model_selection import (GridSearchCV, RandomizedSearchCV, cross_val_score,  # noqa: E402
                                     train_test_split)
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from bpnet.sklearn import BPNetClassifier, BPNetRegressor  # noqa: E402

# Checks that scikit-learn's common test suite runs and these estimators are known to fail, with why.
_FLOAT32 = ("bpnet trains and predicts in float32; BLAS (sgemm) sums a 1-row batch in a different order "
            "than a 20-row batch, so outputs differ by a few float32 ulps (~2e-7), above this check's "
            "atol=1e-7.  Labels and probabilities agree to float32 precision.")
EXPECTED_FAILED = {"check_methods_subset_invariance": _FLOAT32}


@parametrize_with_checks([BPNetClassifier(), BPNetRegressor()],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def test_defaults_stored_verbatim_and_clone():
    clf = BPNetClassifier(hidden_layer_sizes=[32, 16], lr=0.01, class_weight="balanced")
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == [32, 16] and params["lr"] == 0.01
    assert params["class_weight"] == "balanced" and params["epochs"] == 50 and params["backend"] is None
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    assert set(BPNetRegressor().get_params()) == set(params) - {"class_weight"}


def test_pipeline_learns_digits(digits):
    Xtr, Xte, ytr, yte = digits
    pipe = Pipeline([("scale", StandardScaler()), ("net", BPNetClassifier(epochs=20))]).fit(Xtr, ytr)
    net = pipe.named_steps["net"]
    assert net.n_features_in_ == 64 and list(net.classes_) == list(range(10))
    assert net.n_iter_ == 20 and len(net.history_["loss"]) == 20
    assert net.history_["loss"][-1] < net.history_["loss"][0] / 5
    assert pipe.score(Xte, yte) > 0.95
    proba = pipe.predict_proba(Xte)
    assert proba.shape == (len(Xte), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(net.classes_[proba.argmax(1)], pipe.predict(Xte))


def test_same_seed_same_model_and_refit_is_idempotent(digits):
    Xtr, _, ytr, _ = digits
    a = BPNetClassifier(epochs=2, seed=3).fit(Xtr[:300], ytr[:300])
    b = BPNetClassifier(epochs=2, seed=3).fit(Xtr[:300], ytr[:300])
    pa = a.predict_proba(Xtr[:50])
    np.testing.assert_array_equal(pa, b.predict_proba(Xtr[:50]))
    a.fit(Xtr[:300], ytr[:300])
    np.testing.assert_array_equal(pa, a.predict_proba(Xtr[:50]))
    c = BPNetClassifier(epochs=2, seed=4).fit(Xtr[:300], ytr[:300])
    assert not np.allclose(pa, c.predict_proba(Xtr[:50]))


def test_binary_string_labels_and_predict_proba():
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    labels = np.array(["no", "yes"])[y]
    clf = BPNetClassifier(epochs=40, hidden_layer_sizes=(16,)).fit(X, labels)
    assert list(clf.classes_) == ["no", "yes"]
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-10)
    assert set(clf.predict(X)) <= {"no", "yes"}
    assert clf.score(X, labels) > 0.85


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        BPNetClassifier().fit(np.ones((5, 2)), np.zeros(5))


def test_class_weight_balanced_shifts_predictions_to_the_rare_class():
    X, y = make_classification(n_samples=600, n_features=5, weights=[0.9, 0.1], class_sep=0.5,
                               flip_y=0.05, random_state=1)
    plain = BPNetClassifier(epochs=20, hidden_layer_sizes=(8,)).fit(X, y)
    balanced = BPNetClassifier(epochs=20, hidden_layer_sizes=(8,), class_weight="balanced").fit(X, y)
    w = balanced.model_.loss.class_weights
    np.testing.assert_allclose(w, len(y) / (2 * np.bincount(y)))
    assert (balanced.predict(X) == 1).sum() > 1.5 * (plain.predict(X) == 1).sum()


def test_regressor_1d_and_2d_targets():
    X, y = make_regression(n_samples=300, n_features=5, noise=5.0, random_state=0)
    y = (y - y.mean()) / y.std()
    reg = BPNetRegressor(epochs=60, hidden_layer_sizes=(32,), lr=3e-3).fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == (300,) and pred.dtype == np.float64 and reg.n_outputs_ == 1
    assert reg.score(X, y) > 0.95
    Y = np.column_stack([y, -2 * y])
    reg2 = BPNetRegressor(epochs=60, hidden_layer_sizes=(32,), lr=3e-3).fit(X, Y)
    assert reg2.predict(X).shape == (300, 2) and reg2.n_outputs_ == 2
    assert reg2.score(X, Y) > 0.95


def test_pickle_round_trip_keeps_predictions_without_pickling_layers(digits):
    Xtr, Xte, ytr, _ = digits
    clf = BPNetClassifier(epochs=3, dropout=0.2, hidden_layer_sizes=(32, 16)).fit(Xtr, ytr)
    blob = pickle.dumps(clf)
    assert b"bpnet.layers" not in blob          # weights travel as arrays + JSON, like Sequential.save
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))
    assert back.get_params() == clf.get_params()


def test_early_stopping_stops_and_keeps_best_weights(digits):
    Xtr, _, ytr, _ = digits
    clf = BPNetClassifier(epochs=300, lr=1e-2, early_stopping=True, patience=3).fit(Xtr / 16, ytr)
    hist = clf.history_
    assert clf.n_iter_ < 300 and "val_loss" in hist
    best = int(np.argmin(hist["val_loss"]))
    assert clf.n_iter_ - 1 - best >= 3            # ran `patience` epochs past the best one
    # the restored weights are the best epoch's: re-evaluating gives the best validation loss
    from sklearn.model_selection import train_test_split as split
    _, Xv, _, yv = split(Xtr / 16, ytr, test_size=0.1, random_state=0, stratify=ytr)
    val = clf.model_.evaluate(Xv, np.searchsorted(clf.classes_, yv))["loss"]
    assert val == pytest.approx(min(hist["val_loss"]), rel=1e-5)


def test_grid_and_randomized_search_and_cross_val_score(digits):
    Xtr, Xte, ytr, yte = digits
    Xs, ys = Xtr[:600], ytr[:600]
    pipe = Pipeline([("scale", StandardScaler()), ("net", BPNetClassifier(epochs=8))])
    grid = GridSearchCV(pipe, {"net__lr": [1e-4, 3e-3], "net__hidden_layer_sizes": [(32,)]}, cv=3)
    grid.fit(Xs, ys)
    assert grid.best_params_["net__lr"] == 3e-3
    assert grid.score(Xte, yte) > 0.85
    rand = RandomizedSearchCV(pipe, {"net__dropout": [0.0, 0.1, 0.2], "net__batch_size": [16, 64]},
                              n_iter=2, cv=2, random_state=0).fit(Xs, ys)
    assert len(rand.cv_results_["params"]) == 2
    scores = cross_val_score(BPNetRegressor(epochs=5), Xs / 16, ys.astype(float), cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


@pytest.mark.parametrize("bad, match", [
    ({"hidden_layer_sizes": (0,)}, "positive integer"),
    ({"activation": "swish"}, "activation"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"lr": 0.0}, "lr"),
    ({"dropout": 1.0}, "dropout"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_hyper_parameters_raise_in_fit_not_init(bad, match):
    clf = BPNetClassifier(**bad)                     # scikit-learn: __init__ never validates
    with pytest.raises(ValueError, match=match):
        clf.fit(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2)
