"""Failures that come with the data: scale, missing values, outliers, labels, imbalance."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...data import Standardizer, load_breast_cancer, train_test_split
from ...layers import Dense, ReLU
from ...losses import MSE, CrossEntropy, FocalLoss
from ...model import Sequential
from ...optim import SGD
from ..core import Bar, Scenario, register
from ..train import predict_labels, recall, train
from ._common import BACKEND, consult_doctor, digits, finish, mlp


# --------------------------------------------------------------------------- input scale
@lru_cache(maxsize=4)
def _cancer(seed: int = 0):
    """Wisconsin breast cancer, raw features (cm, cm², counts: stds from 0.003 to 590), 75/25 split."""
    X, y = load_breast_cancer()
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.25, seed=seed, stratify=True)
    return {"X": X_tr, "y": y_tr, "X_val": X_va, "y_val": y_va}


def _scaled(cfg, data):
    """(X_train, X_val) as the configuration prepares them."""
    X, Xv = data["X"], data["X_val"]
    how = cfg["scaling"]
    if how == "none":
        return X, Xv
    sc = Standardizer().fit(X)
    if how == "train only":                 # the bug: the validation split is left raw
        return sc.transform(X), Xv
    return sc.transform(X), sc.transform(Xv)


def _cancer_run(cfg, data, seed, steps, label):
    X, Xv = _scaled(cfg, data)
    model = mlp(hidden=(32,), out=2, seed=seed)
    run = train(model, CrossEntropy(), SGD(lr=cfg["lr"]), X, data["y"], steps=steps, batch_size=32, seed=seed,
                label=label, config=cfg, validation_data=(Xv, data["y_val"]))
    finish(run, Xv, data["y_val"])
    m = run.metrics
    m["train_accuracy"] = float((predict_labels(model, X) == data["y"]).mean())
    m["accuracy_gap"] = m["train_accuracy"] - m["val_accuracy"]
    m["majority_rate"] = float(max(data["y_val"].mean(), 1 - data["y_val"].mean()))
    std = X.std(axis=0)
    m["feature_std_ratio"] = float(std.max() / std[std > 0].min())
    return consult_doctor(run, data=[(X, data["y"]), (Xv, data["y_val"])])


register(Scenario(
    name="unnormalized_inputs",
    title="Unnormalised inputs: raw features from 0.003 to 4000 stall training",
    explanation=(
        "For the first layer ∂L/∂W_ij = Σ_n x_ni δ_nj, so each weight's gradient scales with its "
        "feature. The breast-cancer features range from fractal dimension (std 0.007) to area "
        "(std 350): the loss surface is stretched by the squared ratio of scales, ~1e10, along "
        "different weights, and one learning rate cannot suit both. A step that is safe for the area "
        "weights is 1e5 times too small for the others, and a step useful for those sends the area "
        "weights and the pre-activations (x·w ~ 1e3) flying: ReLUs die or logits saturate, and the "
        "model settles on the majority class (63%). Standardising each feature to mean 0, std 1 "
        "(statistics from the training split) makes the curvature similar in every direction."),
    data="breast cancer (426 train / 143 validation), raw features; MLP 30-32-2 ReLU; SGD lr 0.01",
    broken={"scaling": "none", "lr": 0.01},
    remedy={"scaling": "standardize", "lr": 0.01},
    steps=300, expected_code="UNNORMALIZED_INPUTS",
    metric=Bar("val_accuracy", "<=", 0.75),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=_cancer, trainer=_cancer_run))


register(Scenario(
    name="train_val_scaling_mismatch",
    title="Training data scaled, validation data not: a model that only works on paper",
    explanation=(
        "A Standardizer learns μ and σ on the training split and the network learns on "
        "(x - μ)/σ, values of order 1. If the validation (or production) data skip the transform, "
        "the network sees raw values up to (x - 0)/1 ≈ 4000 where it was trained on ≈ 3: its "
        "pre-activations are hundreds of times larger, every prediction is pushed to whichever "
        "class the large features favour, and validation accuracy collapses while training "
        "accuracy stays near 99%. The gap between the two, not the loss curve, is the symptom. "
        "Every split must go through the same fitted scaler (save it with the model: "
        "model.preprocessor)."),
    data="breast cancer; Standardizer fit on the training split; MLP 30-32-2 ReLU; SGD lr 0.05",
    broken={"scaling": "train only", "lr": 0.05},
    remedy={"scaling": "standardize", "lr": 0.05},
    steps=300, expected_code="UNNORMALIZED_INPUTS",
    metric=Bar("accuracy_gap", ">=", 0.3),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=_cancer, trainer=_cancer_run))


# --------------------------------------------------------------------------- missing values
@lru_cache(maxsize=4)
def _digits_with_nans(seed: int = 0):
    """Digits (standardized) with NaN written into 1% of the training rows (one pixel each)."""
    d = dict(digits(seed))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 303]))
    X = d["X"].copy()
    rows = np.sort(rng.choice(len(X), size=len(X) // 100, replace=False))
    X[rows, rng.integers(0, X.shape[1], size=len(rows))] = np.nan
    d["X"], d["nan_rows"] = X, rows
    return d


def _nan_run(cfg, data, seed, steps, label):
    from ...doctor import check_data

    X, y = data["X"], data["y"]
    if cfg["rows"] == "drop flagged":      # the remedy reads the rows off the doctor's finding
        flagged = [f for f in check_data(X, y) if f.code == "NONFINITE_DATA"]
        bad = np.asarray(flagged[0].evidence["rows"] if flagged else [], dtype=np.int64)
        if flagged and flagged[0].evidence["n_rows"] > len(bad):       # the finding lists the first rows only
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        keep = np.setdiff1d(np.arange(len(X)), bad)
        X, y = X[keep], y[keep]
    model = mlp(hidden=(64,), seed=seed)
    run = train(model, CrossEntropy(), SGD(lr=cfg["lr"]), X, y, steps=steps, batch_size=64, seed=seed,
                label=label, config=cfg, validation_data=(data["X_val"], data["y_val"]))
    finish(run, data["X_val"], data["y_val"])
    run.metrics["rows_used"] = len(X)
    return consult_doctor(run, data=[(X, y)])


register(Scenario(
    name="nan_in_data",
    title="A few NaN values in the data poison every weight",
    explanation=(
        "NaN propagates through every arithmetic operation: one NaN pixel makes that sample's "
        "pre-activations NaN, hence its loss, hence the batch's mean loss and ∂L/∂W = xᵀδ for every "
        "weight the sample touches, which is all of the first layer and, through δ, all the rest. "
        "After the first optimizer step on a batch holding one such row, every parameter is NaN and "
        "stays NaN. bpnet's fit refuses such data up front (validate_xy); a hand-written loop does "
        "not, which is what this scenario runs. The doctor's check_data lists the rows; dropping (or "
        "imputing) them fixes the run."),
    data="digits (standardized) with NaN in 14 of 1437 training rows; MLP 64-10 ReLU; SGD lr 0.1; "
         "a hand-written loop that does not validate its batches",
    broken={"rows": "all", "lr": 0.1},
    remedy={"rows": "drop flagged", "lr": 0.1},
    steps=150, expected_code="NONFINITE_DATA",
    metric=Bar("first_nonfinite_step", "<=", 100),
    remedy_bars=(Bar("val_accuracy", ">=", 0.93),),
    make_data=_digits_with_nans, trainer=_nan_run))


# --------------------------------------------------------------------------- outliers
@lru_cache(maxsize=4)
def _regression_with_outliers(seed: int = 0):
    """A linear-plus-curvature regression where 1% of training rows carry a unit error (x1000)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 404]))
    n, d = 1280, 6
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = X @ w + 0.3 * np.tanh(X[:, 0] * X[:, 1]) + 0.1 * rng.standard_normal(n)
    X, y = X.astype(np.float32), y.astype(np.float32).reshape(-1, 1)
    k = n * 4 // 5
    Xtr = X[:k].copy()
    rows = np.sort(rng.choice(k, size=k // 100, replace=False))
    cols = rng.integers(0, d, size=len(rows))
    Xtr[rows, cols] *= 1000.0                  # e.g. a sensor that reported millimetres instead of metres
    return {"X": Xtr, "y": y[:k], "X_val": X[k:], "y_val": y[k:], "outlier_rows": rows}


def _outlier_run(cfg, data, seed, steps, label):
    from ...doctor import check_data

    X, y = data["X"], data["y"]
    if cfg["rows"] == "drop flagged":
        flagged = [f for f in check_data(X, y, loss="mse") if f.code == "OUTLIERS"]
        bad = np.asarray(flagged[0].evidence["rows"], dtype=np.int64) if flagged else np.zeros(0, np.int64)
        keep = np.setdiff1d(np.arange(len(X)), bad)
        X, y = X[keep], y[keep]
    sc = Standardizer().fit(X)
    Xs, Xv = sc.transform(X), sc.transform(data["X_val"])
    model = Sequential([Dense(32, init="he_normal"), ReLU(), Dense(1)], seed=seed, backend=BACKEND)
    run = train(model, MSE(), SGD(lr=cfg["lr"]), Xs, y, steps=steps, batch_size=32, seed=seed,
                label=label, config=cfg, validation_data=(Xv, data["y_val"]))
    finish(run, Xv, data["y_val"])
    run.metrics["rows_used"] = len(X)
    run.metrics["target_var"] = float(data["y_val"].var())
    return consult_doctor(run, data=[(X, y)], loss="mse")


register(Scenario(
    name="outliers",
    title="A few huge outliers (unit errors) wreck the fit",
    explanation=(
        "1% of the training rows have one feature multiplied by 1000 (a unit error). Two things go "
        "wrong. The Standardizer's σ is dominated by those rows (σ ≈ 1000/√100 ≈ 100 instead of 1), "
        "so the clean values of that feature are squashed to ~0.01 and the signal in them all but "
        "disappears. And the outlier rows arrive with inputs of ~30 after scaling: their squared "
        "error gradient xᵀ(ŷ - y) is hundreds of times larger than a normal row's, so each batch "
        "holding one yanks the weights toward fitting that single row, often hard enough to start a "
        "divergence that ends in inf; when it does not, the validation error on clean data stays "
        "many times the noise level. The doctor's check_data finds the rows "
        "(robust z-score |x - median| / (1.4826 MAD) > 10); dropping them (or a RobustScaler plus "
        "clipping) restores the fit."),
    data="synthetic regression y = x·w + 0.3 tanh(x0 x1) + noise (6 features, 1024 train, 10 with a "
         "x1000 unit error / 256 clean validation); MLP 6-32-1 ReLU; SGD lr 0.01",
    broken={"rows": "all", "lr": 0.01},
    remedy={"rows": "drop flagged", "lr": 0.01},
    steps=400, expected_code="OUTLIERS",
    metric=Bar("val_loss", ">=", 0.5),
    remedy_bars=(Bar("val_loss", "<=", 0.1),),
    make_data=_regression_with_outliers, trainer=_outlier_run))


# --------------------------------------------------------------------------- labels
def _label_run(cfg, data, seed, steps, label):
    y, yv = data["y"], data["y_val"]
    if cfg["loss"] == "mse":             # the bug: class ids used as regression targets
        model = mlp(hidden=(64,), out=1, seed=seed)
        run = train(model, MSE(), SGD(lr=cfg["lr"]), data["X"], y, steps=steps, batch_size=64, seed=seed,
                    label=label, config=cfg, validation_data=(data["X_val"], yv.astype(np.float32)))
        with np.errstate(all="ignore"):
            out = np.nan_to_num(model.predict(data["X_val"])[:, 0], nan=-1.0)
        pred = np.clip(np.rint(out), 0, 9).astype(np.int64)
        loss_name = "mse"
    else:
        model = mlp(hidden=(64,), out=10, seed=seed)
        run = train(model, CrossEntropy(), SGD(lr=cfg["lr"]), data["X"], y, steps=steps, batch_size=64,
                    seed=seed, label=label, config=cfg, validation_data=(data["X_val"], yv))
        pred = predict_labels(model, data["X_val"])
        loss_name = "cross_entropy"
    finish(run)
    run.metrics["val_accuracy"] = float((pred == yv).mean())
    return consult_doctor(run, data=[(data["X"], y)], loss=loss_name)


register(Scenario(
    name="label_format_mismatch",
    title="Class labels fed to a regression loss: digits as numbers 0..9",
    explanation=(
        "Integer labels are names, not quantities. Fed to MSE with one output, the network is told "
        "that a 7 is 'between' a 6 and an 8 and that mistaking a 0 for a 9 is 81 times worse than for "
        "a 1. The squared error is minimised by the conditional mean E[y | x]: for an ambiguous "
        "image of a 1 or a 7 it predicts 4, a digit that was never in question. Rounded, the "
        "predictions are right far less often than a classifier's. The fix is the format the loss "
        "expects: 10 logits and CrossEntropy on integer labels (or one-hot rows)."),
    data="digits (standardized); MLP 64-64-N ReLU; SGD lr 0.02",
    broken={"loss": "mse", "outputs": 1, "lr": 0.02},
    remedy={"loss": "cross_entropy", "outputs": 10, "lr": 0.02},
    steps=600, expected_code="LABEL_FORMAT",
    metric=Bar("val_accuracy", "<=", 0.6),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=digits, trainer=_label_run))


# --------------------------------------------------------------------------- imbalance
@lru_cache(maxsize=4)
def _imbalanced(seed: int = 0, n: int = 4000, minority: float = 0.05):
    """Two overlapping Gaussian classes in 2-D, 95% negatives at (0, 0), 5% positives at (1.5, 1.5)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 505]))
    y = (rng.random(n) < minority).astype(np.int64)
    X = (rng.standard_normal((n, 2)) + 1.5 * y[:, None]).astype(np.float32)
    k = n * 3 // 4
    return {"X": X[:k], "y": y[:k], "X_val": X[k:], "y_val": y[k:]}


def _imbalance_run(cfg, data, seed, steps, label):
    y = data["y"]
    counts = np.bincount(y, minlength=2)
    if cfg["loss"] == "weighted":
        loss = CrossEntropy(class_weights=(len(y) / (2 * counts)).tolist())
    elif cfg["loss"] == "focal":
        loss = FocalLoss(gamma=2.0, alpha=(len(y) / (2 * counts)).tolist())
    else:
        loss = CrossEntropy()
    model = Sequential([Dense(2, init="xavier_uniform")], seed=seed, backend=BACKEND)
    run = train(model, loss, SGD(lr=cfg["lr"]), data["X"], y, steps=steps, batch_size=64, seed=seed,
                label=label, config=cfg, validation_data=(data["X_val"], data["y_val"]))
    finish(run, data["X_val"], data["y_val"])
    pred = predict_labels(model, data["X_val"])
    m = run.metrics
    m["minority_recall"] = recall(data["y_val"], pred, 1)
    m["majority_recall"] = recall(data["y_val"], pred, 0)
    m["balanced_accuracy"] = 0.5 * (m["minority_recall"] + m["majority_recall"])
    return consult_doctor(run, data=[(data["X"], y)])


register(Scenario(
    name="class_imbalance",
    title="Class imbalance (95/5): high accuracy, rare class ignored",
    explanation=(
        "With 95% negatives, predicting 'negative' for everything scores 95% accuracy, and the "
        "unweighted cross-entropy L = -(1/N) Σ log p_{y_i} is dominated by the majority: the 5% of "
        "positives contribute 5% of the gradient, so the decision boundary sits where the positives "
        "barely matter and most of them are called negative. Weighting each class by N / (K · N_c) "
        "(here ~10x for the positives) makes both classes contribute equally to ∂L/∂z and moves the "
        "boundary; the focal loss -α (1 - p_t)^γ log p_t additionally down-weights the easy, "
        "confidently classified majority. Judge by minority recall, not accuracy."),
    data="two overlapping Gaussian classes in 2-D, 95% at (0, 0) and 5% at (1.5, 1.5), unit variance "
         "(3000 train / 1000 validation); logistic regression (Dense 2); SGD lr 0.1",
    broken={"loss": "cross_entropy", "lr": 0.1},
    remedy={"loss": "weighted", "lr": 0.1},
    variants={"focal loss (γ = 2, α = class weights)": {"loss": "focal"}},
    report=("minority_recall", "val_accuracy"),
    steps=150, expected_code="CLASS_IMBALANCE",
    metric=Bar("minority_recall", "<=", 0.3),
    remedy_bars=(Bar("minority_recall", ">=", 0.7), Bar("balanced_accuracy", ">=", 0.75)),
    make_data=_imbalanced, trainer=_imbalance_run))
