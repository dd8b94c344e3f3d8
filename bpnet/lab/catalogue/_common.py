"""Helpers shared by the scenarios: data sets, small models, the doctor's verdict, metrics."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ...data import Standardizer, load_digits, train_test_split
from ...layers import Dense, ReLU
from ...model import Sequential
from ..train import Run, evaluate, train

BACKEND = "numpy"          # the reference backend: the lab's numbers are the textbook's


@lru_cache(maxsize=4)
def digits(seed: int = 0):
    """scikit-learn's 8x8 digits, split 80/20 (stratified), standardized on the training split."""
    X, y = load_digits()
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.2, seed=seed, stratify=True)
    sc = Standardizer().fit(X_tr)
    return {"X": sc.transform(X_tr), "y": y_tr, "X_val": sc.transform(X_va), "y_val": y_va}


@lru_cache(maxsize=4)
def smooth_regression(seed: int = 0, n: int = 1280, d: int = 8, noise: float = 0.1):
    """y = sin(x·w/2) + x0·x1/2 + noise with x ~ N(0, I): a smooth target an MLP fits well."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = np.sin(X @ w / 2) + 0.5 * X[:, 0] * X[:, 1] + noise * rng.standard_normal(n)
    X, y = X.astype(np.float32), y.astype(np.float32).reshape(-1, 1)
    k = n * 4 // 5
    return {"X": X[:k], "y": y[:k], "X_val": X[k:], "y_val": y[k:]}


def mlp(hidden=(64,), out=10, act=ReLU, init="he_normal", seed=0, dtype="float32", **dense_kw):
    """Dense-activation stack with a linear output layer."""
    layers = []
    for units in hidden:
        layers += [Dense(units, init=init, **dense_kw), act()]
    layers.append(Dense(out, init=init, **dense_kw))
    return Sequential(layers, seed=seed, backend=BACKEND, dtype=dtype)


def consult_doctor(run: Run, *, data=None, loss=None, check_history=True, static=True) -> Run:
    """Put the doctor's findings on ``run``: ``diagnose`` on its history (with the model),
    and ``check_data`` on each ``(X, y)`` in ``data``.  Duplicates (same code and place) are dropped."""
    from ...doctor import check_data, check_model, diagnose

    model = run.model
    found = []
    with np.errstate(all="ignore"):
        if check_history:
            found += diagnose(run.history, model=model if static else None)
        elif static and model is not None:
            found += check_model(model)
        for X, y in data or ():
            found += check_data(X, y, loss=loss if loss is not None else getattr(model, "loss", None),
                                model=model)
    seen, out = set(), []
    for f in found:
        if f.key not in seen:
            seen.add(f.key)
            out.append(f)
    run.findings = out
    return run


def finish(run: Run, X_val=None, y_val=None) -> Run:
    """Standard metrics: validation loss/accuracy, first-step gradient norms per layer."""
    m = run.metrics
    if X_val is not None:
        for k, v in evaluate(run.model, X_val, y_val).items():
            m[f"val_{k}"] = v if math.isfinite(v) or k != "loss" else math.inf    # NaN loss: infinitely bad
    steps = run.history.steps
    if steps:
        first = steps[0]
        m["grad_norm_total_step0"] = first.get("grad_norm/total", math.nan)
        layer_keys = sorted((k for k in first if k.startswith("grad_norm/") and k[10:].replace(".", "").isdigit()),
                            key=lambda k: tuple(int(p) for p in k[10:].split(".")))
        if layer_keys:
            m["grad_norm_first_layer"] = first[layer_keys[0]]
            m["grad_norm_last_layer"] = first[layer_keys[-1]]
    return run


def fit_scenario(model, loss, optimizer, data, **train_kw) -> Run:
    """``train`` on ``data["X"], data["y"]`` with its validation split, then :func:`finish`."""
    run = train(model, loss, optimizer, data["X"], data["y"],
                validation_data=(data["X_val"], data["y_val"]), **train_kw)
    return finish(run, data["X_val"], data["y_val"])


def loss_drop(run: Run, k: int = 20) -> float:
    """1 - (mean loss of the last k steps) / (mean loss of the first k steps)."""
    s = np.asarray(run.step_loss, dtype=np.float64)
    if len(s) < 2 * k or not np.isfinite(s).all():
        return math.nan
    return float(1.0 - s[-k:].mean() / s[:k].mean())
