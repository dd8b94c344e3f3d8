"""Failures of floating-point arithmetic: overflow, log(0), a squashed output, float16's range."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ...data import load_digits, train_test_split
from ...layers import Dense, ReLU, Softmax
from ...losses import MSE, BCEWithLogits, CrossEntropy
from ...mixed_precision import LossScaler
from ...model import Sequential
from ...optim import SGD
from ..core import Bar, Scenario, register
from ..layers import NaiveBCE, NaiveNLL, NaiveSoftmax
from ._common import BACKEND, consult_doctor, digits, fit_scenario


# --------------------------------------------------------------------------- softmax overflow
@lru_cache(maxsize=4)
def _raw_digits(seed: int = 0):
    """Digits as 8-bit images: pixel values 0..255 (16 x 0..16, unscaled), 80/20 split."""
    X, y = load_digits()
    X = X * np.float32(255 / 16)
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.2, seed=seed, stratify=True)
    return {"X": X_tr, "y": y_tr, "X_val": X_va, "y_val": y_va}


def _softmax_run(cfg, data, seed, steps, label):
    layers = [Dense(64, init="he_normal"), ReLU(), Dense(10, init="he_normal")]
    if cfg["output"] == "naive softmax + NLL":
        layers.append(NaiveSoftmax())
        loss = NaiveNLL()
    else:
        loss = CrossEntropy()
    model = Sequential(layers, seed=seed, backend=BACKEND)
    run = fit_scenario(model, loss, SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64, seed=seed,
                       monitor_every=1, label=label, config=cfg)
    return consult_doctor(run)


register(Scenario(
    name="naive_softmax_overflow",
    title="Softmax as exp(z)/Σexp(z): overflow to inf/inf = NaN",
    explanation=(
        "float32 represents numbers up to 3.4e38, so exp(z) overflows to inf for z > 88.7. Logits "
        "of that size are ordinary: raw 8-bit pixels (0..255) give them on the first batch, and "
        "confident training reaches them later anyway. A softmax written as exp(z)/Σ exp(z) then "
        "computes inf/inf = NaN, and the NLL -log p on top of it turns any probability that "
        "underflowed to 0 into inf. The maths allows a free shift: softmax(z) = softmax(z - max z), "
        "and then every exponent is ≤ 0. The fused loss goes further and never forms p at all: "
        "log p_c = z_c - m - log Σ_k exp(z_k - m), with gradient p - onehot(y), so it is finite "
        "for any finite logits. Same network, same data, same learning rate."),
    data="digits as 8-bit images (pixels 0..255, unscaled); MLP 64-64-10 ReLU; SGD lr 1e-3",
    broken={"output": "naive softmax + NLL", "lr": 1e-3},
    remedy={"output": "logits + CrossEntropy (fused log-softmax)", "lr": 1e-3},
    steps=150, expected_code="NONFINITE_LOSS",
    metric=Bar("first_nonfinite_step", "<=", 100),
    remedy_bars=(Bar("val_accuracy", ">=", 0.85),),
    make_data=_raw_digits, trainer=_softmax_run))


# --------------------------------------------------------------------------- log(0)
@lru_cache(maxsize=4)
def _binary_digits(seed: int = 0):
    """Digits as a binary task, 'less than 5' vs 'at least 5' (standardized): targets (N, 1) in {0, 1}."""
    d = digits(seed)
    return {"X": d["X"], "y": (d["y"] >= 5).astype(np.float32).reshape(-1, 1),
            "X_val": d["X_val"], "y_val": (d["y_val"] >= 5).astype(np.float32).reshape(-1, 1)}


def _bce_run(cfg, data, seed, steps, label):
    loss = NaiveBCE() if cfg["loss"] == "-log(sigmoid(z))" else BCEWithLogits()
    model = Sequential([Dense(64, init="he_normal"), ReLU(), Dense(1, init="he_normal")], seed=seed,
                       backend=BACKEND)
    run = fit_scenario(model, loss, SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64, seed=seed,
                       monitor_every=1, label=label, config=cfg)
    return consult_doctor(run)


register(Scenario(
    name="log_of_zero",
    title="Binary cross-entropy as -log(sigmoid(z)): log(0) and 0/0",
    explanation=(
        "Written as the formula reads, ℓ = -[t log σ(z) + (1 - t) log(1 - σ(z))] first rounds σ(z) "
        "to float32. For z > 16.6, e^{-z} < 2^-24 and σ(z) is exactly 1.0, so log(1 - σ) = log 0 "
        "= -inf for a negative example, and the chain rule ∂ℓ/∂σ · σ'(z) = [(1-t)/(1-σ) - t/σ] · "
        "σ(1-σ) forms 1/0 and 0 · inf = NaN even for a correctly classified one. Logits of 17 "
        "are what a confident classifier produces, so the loss turns NaN as soon as training "
        "succeeds. With log σ(z) = -softplus(-z) and log(1 - σ(z)) = -softplus(z), "
        "softplus(u) = max(u, 0) + log1p(e^{-|u|}), the loss is exact for every z and the gradient "
        "simplifies to σ(z) - t: that is BCEWithLogits."),
    data="digits as 'digit < 5' vs 'digit >= 5' (standardized); MLP 64-64-1 ReLU; SGD lr 1.0",
    broken={"loss": "-log(sigmoid(z))", "lr": 1.0},
    remedy={"loss": "BCEWithLogits", "lr": 1.0},
    steps=200, expected_code="NONFINITE_LOSS",
    metric=Bar("first_nonfinite_step", "<=", 100),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=_binary_digits, trainer=_bce_run))


# --------------------------------------------------------------------------- double softmax
def _double_softmax_run(cfg, data, seed, steps, label):
    layers = [Dense(64, init="he_normal"), ReLU(), Dense(10, init="he_normal")]
    if cfg["output"] == "Softmax layer":
        layers.append(Softmax())
    model = Sequential(layers, seed=seed, backend=BACKEND)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg)
    run.metrics["loss_floor"] = math.log(9 + math.e) - 1.0      # the lowest CE of softmax over [0, 1] inputs
    run.metrics["train_loss"] = run.history["loss"][-1]
    return consult_doctor(run)


register(Scenario(
    name="double_softmax",
    title="Softmax layer in front of CrossEntropy: the loss cannot go below 1.46",
    explanation=(
        "CrossEntropy applies log-softmax to what it receives. Given probabilities p ∈ [0, 1] "
        "instead of logits, it computes softmax(p): the largest possible gap between two of its "
        "inputs is 1, so the best attainable probability for the right class is e/(e + 9) ≈ 0.23 "
        "and the loss can never fall below log(9 + e) - 1 ≈ 1.46. Its gradient is squeezed as well: "
        "∂L/∂z passes through the softmax Jacobian p_i(δ_ij - p_j), whose entries are at most 1/4, "
        "so learning crawls. Accuracy may still creep up (the argmax survives), which hides the bug. "
        "Removing the Softmax layer (CrossEntropy takes logits) lets the loss fall freely."),
    data="digits (standardized); MLP 64-64-10 ReLU (+ Softmax); SGD lr 0.1",
    broken={"output": "Softmax layer", "lr": 0.1},
    remedy={"output": "logits", "lr": 0.1},
    steps=300, expected_code="DOUBLE_SOFTMAX",
    metric=Bar("train_loss", ">=", 1.46),
    remedy_bars=(Bar("train_loss", "<=", 0.3), Bar("val_accuracy", ">=", 0.93)),
    make_data=digits, trainer=_double_softmax_run))


# --------------------------------------------------------------------------- float16
@lru_cache(maxsize=4)
def _raw_regression(seed: int = 0, n: int = 640, d: int = 8):
    """Raw sensor-like readings (~300) and a linear target (~100): fine in float32, not in float16."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 606]))
    X = rng.normal(size=(n, d)) * 300
    y = X @ rng.normal(size=d) / 8 + rng.normal(size=n)
    X, y = X.astype(np.float32), y.astype(np.float32).reshape(-1, 1)
    k = n * 4 // 5
    return {"X": X[:k], "y": y[:k], "X_val": X[k:], "y_val": y[k:]}


def _fp16_run(cfg, data, seed, steps, label):
    model = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(1)], seed=seed, dtype=cfg["dtype"],
                       backend=BACKEND)
    scaler = LossScaler() if cfg.get("loss_scaler") else None
    run = fit_scenario(model, MSE(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64, seed=seed,
                       monitor_every=1, loss_scaler=scaler, label=label, config=cfg)
    m = run.metrics
    m["val_loss_rel"] = m["val_loss"] / float(data["y_val"].var())
    if scaler is not None:
        m["skipped_steps"], m["final_scale"] = scaler.overflows, scaler.scale
    return consult_doctor(run)


register(Scenario(
    name="fp16_overflow",
    title="float16 gradients overflow 65504: one Inf, then every weight is NaN",
    explanation=(
        "float16 has a 5-bit exponent: its largest finite value is 65504. With raw inputs of ~300 "
        "the first errors are ~600, so the squared errors (3.6e5) and the output layer's gradient "
        "∂L/∂W = Σ_n h_n · 2(ŷ_n - t_n)/N (activations ~1e3 times errors ~1e2) are inf in float16 "
        "on the very first batch. The update w ← w - η · inf makes those weights inf, the next "
        "forward pass computes inf - inf = NaN, and the run is lost, although float32 trains the "
        "same model without trouble. Mixed precision repairs it: the loss is evaluated in float32, "
        "a dynamic loss scale S (gradients computed "
        "for S·L, divided by S in float32) halves on every overflow, skipping that step, until the "
        "scaled gradients fit (here S falls from 2^16 to 0.5); the update goes to float32 master "
        "weights, so small updates are not rounded away either."),
    data="raw sensor-like regression, features ~300, targets ~100 (512 train / 128 validation); "
         "MLP 8-16-1 ReLU; SGD lr 1e-6",
    broken={"dtype": "float16", "loss_scaler": False, "lr": 1e-6},
    remedy={"dtype": "float16", "loss_scaler": True, "lr": 1e-6},
    variants={"float32 reference": {"dtype": "float32", "loss_scaler": False}},
    report=("val_loss_rel", "first_nonfinite_step"),
    steps=200, expected_code="NONFINITE_LOSS",
    metric=Bar("first_nonfinite_step", "<=", 100),
    remedy_bars=(Bar("val_loss_rel", "<=", 0.15),),
    make_data=_raw_regression, trainer=_fp16_run))
