"""Failures of backpropagation through time: the gradient explodes or vanishes along the sequence."""
from __future__ import annotations

import math
from functools import lru_cache, partial

import numpy as np

from ... import init as initializers
from ...callbacks import GradientClipping
from ...layers import RNN, Dense
from ...losses import CrossEntropy
from ...model import Sequential
from ...optim import SGD
from ..core import Bar, Scenario, register
from ._common import BACKEND, consult_doctor, fit_scenario


@lru_cache(maxsize=4)
def _sum_sign(seed: int = 0, n: int = 1280, steps: int = 20, features: int = 4):
    """x (n, 20, 4) ~ N(0, 1); label 1 when the first feature summed over the sequence is > 0."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 202]))
    X = rng.standard_normal((n, steps, features)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    return _split(X, y)


@lru_cache(maxsize=4)
def _first_step_memory(seed: int = 0, n: int = 1280, steps: int = 30, features: int = 4, noise: float = 0.5):
    """x (n, 30, 4): feature 0 is the label's sign (±1) at the first step and 0 after it; the other
    features are N(0, noise²) distractors at every step.  The label is only visible at t = 1."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 203]))
    sign = rng.choice([-1.0, 1.0], size=n)
    X = noise * rng.standard_normal((n, steps, features))
    X[:, :, 0] = 0.0
    X[:, 0, 0] = sign
    return _split(X.astype(np.float32), (sign > 0).astype(np.int64))


def _split(X, y):
    k = len(X) * 4 // 5
    return {"X": X[:k], "y": y[:k], "X_val": X[k:], "y_val": y[k:]}


def _recurrent_init(spec: str):
    """"orthogonal", "orthogonal x 1.5" (ρ(U) = 1.5) or "normal(0.05)" (U_ij ~ N(0, 0.05²))."""
    if spec.startswith("normal("):
        return partial(initializers.normal, std=float(spec[len("normal("):-1]))
    gain = float(spec.split(" x ")[1]) if " x " in spec else 1.0
    return partial(initializers.orthogonal, gain=gain)


def _sequence_run(cfg, data, seed, steps, label):
    rnn = RNN(16, activation=cfg["activation"], recurrent_init=_recurrent_init(cfg["recurrent_init"]))
    model = Sequential([rnn, Dense(2)], seed=seed, backend=BACKEND)
    model.build(data["X"].shape[1:])
    rho_start = rnn.spectral_radius()
    clip = cfg.get("clip_norm")
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg, callbacks=[GradientClipping(clip)] if clip else [])
    first = run.history.steps[0]
    m = run.metrics
    m["spectral_radius_start"], m["spectral_radius"] = rho_start, rnn.spectral_radius()
    m["dh_ratio_step0"] = first["dh_norm/0/first"] / first["dh_norm/0/last"]   # ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖
    m["dh_ratio_recent"] = _recent_ratio(run.history.steps)
    return consult_doctor(run)


def _recent_ratio(records, k: int = 3) -> float:
    vals = [r["dh_norm/0/first"] / r["dh_norm/0/last"] for r in records[-k:]
            if math.isfinite(r.get("loss", math.nan)) and r["dh_norm/0/last"] > 0]
    return float(np.median(vals)) if vals else math.nan


register(Scenario(
    name="recurrent_explosion",
    title="Exploding gradients through time: an RNN whose U has spectral radius 1.5",
    explanation=(
        "Backpropagation through time sends ∂L/∂h_t one step back as g_{t-1} = (g_t ⊙ φ'(a_t)) Uᵀ, "
        "so the gradient reaching step T-k has been multiplied k times by diag(φ') Uᵀ. With "
        "U = 1.5 · (orthogonal) every eigenvalue of U has modulus ρ(U) = 1.5, and in a linear "
        "recurrence (φ' = 1) ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ is exactly 1.5^19 ≈ 2217 over T = 20 steps; the "
        "shared W, U, b collect that gradient from every step, so their gradient norm is ~8e3 at the "
        "first step and one SGD step sends the weights, then the loss, to inf. Clipping the global "
        "gradient norm to 5 keeps the direction of each step and bounds its size while training "
        "pulls ρ(U) down to about 1; an orthogonal U (ρ = 1) avoids the explosion from the start. "
        "(With tanh, saturation caps the states: a tanh RNN with ρ(U) ≫ 1 is chaotic rather than "
        "divergent, which clipping does not cure; the linear recurrence shows the explosion alone.)"),
    data="random sequences x (20 steps x 4 features); label = [Σ_t x_t,0 > 0]; "
         "RNN(16, activation='linear') + Dense 2; SGD lr 0.01",
    broken={"activation": "linear", "recurrent_init": "orthogonal x 1.5", "lr": 0.01, "clip_norm": None},
    remedy={"activation": "linear", "recurrent_init": "orthogonal x 1.5", "lr": 0.01, "clip_norm": 5.0},
    variants={"orthogonal init (ρ = 1), clip 5": {"recurrent_init": "orthogonal"}},
    report=("grad_norm_first_layer", "dh_ratio_step0", "val_accuracy", "spectral_radius"),
    steps=600, expected_code="EXPLODING_GRADIENTS",
    metric=Bar("grad_norm_first_layer", ">=", 1e3),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=_sum_sign, trainer=_sequence_run))


register(Scenario(
    name="recurrent_vanishing",
    title="Vanishing gradients through time: a tanh RNN with small recurrent weights forgets the start",
    explanation=(
        "The label is shown only at the first of 30 steps. To learn it, ∂L/∂h_T must travel back to "
        "h_1 through g_{t-1} = (g_t ⊙ (1 - h_t²)) Uᵀ, 29 times. With U_ij ~ N(0, 0.05²) the spectral "
        "radius is ρ(U) ≈ 0.05·√16 = 0.2 and tanh' = 1 - h² ≤ 1, so every step shrinks the gradient "
        "about 5-fold: ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ is ~1e-22 at the start (0.2^29 ≈ 5e-21; tanh' < 1 does the rest). The forward pass forgets in the same "
        "way (h_T holds 0.2^29 of what h_1 saw), the output layer sees only the distractors, and "
        "the accuracy stays at chance. An orthogonal U keeps ‖h U‖ = ‖h‖, so the first step's "
        "signal and its gradient both reach the other end (only tanh' < 1 shrinks them), and the "
        "same network learns the task."),
    data="sequences x (30 steps x 4 features): the label's sign in feature 0 at t = 1 only, N(0, 0.5²) "
         "distractors in features 1-3; RNN(16, tanh) + Dense 2; SGD lr 0.2",
    broken={"activation": "tanh", "recurrent_init": "normal(0.05)", "lr": 0.2},
    remedy={"activation": "tanh", "recurrent_init": "orthogonal", "lr": 0.2},
    report=("dh_ratio_step0", "val_accuracy", "spectral_radius"),
    steps=800, expected_code="VANISHING_THROUGH_TIME",
    metric=Bar("dh_ratio_step0", "<", 1e-6),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9), Bar("dh_ratio_step0", ">=", 1e-4)),
    make_data=_first_step_memory, trainer=_sequence_run))
