"""Failures of the optimisation itself: the step size, its sign, its bookkeeping, overfitting."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ...callbacks import Callback, EarlyStopping
from ...layers import Dense, Dropout, ReLU, Tanh
from ...losses import MSE, CrossEntropy
from ...model import Sequential
from ...optim import SGD, Adam, AdamW
from ..core import Bar, Scenario, register
from ._common import BACKEND, consult_doctor, digits, finish, fit_scenario, loss_drop, mlp, smooth_regression


# --------------------------------------------------------------------------- learning rate
def _sgd_digits(cfg, data, seed, steps, label):
    model = mlp(hidden=(64, 64), seed=seed)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps,
                       batch_size=cfg.get("batch_size", 64), seed=seed, label=label, config=cfg)
    run.metrics["loss_drop"] = loss_drop(run)
    return consult_doctor(run)


def _regression_data(seed):
    return smooth_regression(seed)


def _sgd_regression(cfg, data, seed, steps, label):
    model = Sequential([Dense(32, init="xavier_uniform"), Tanh(), Dense(1)], seed=seed, backend=BACKEND)
    run = fit_scenario(model, MSE(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64, seed=seed,
                       monitor_every=1, label=label, config=cfg)
    return consult_doctor(run)


register(Scenario(
    name="lr_too_high",
    title="Learning rate too high: the loss diverges to NaN",
    explanation=(
        "Near a minimum the loss is roughly quadratic, L(w) ≈ L* + ½ (w - w*)ᵀ H (w - w*), and one "
        "gradient step maps the error e = w - w* to (I - η H) e. Along an eigenvector of H with "
        "eigenvalue λ the error is multiplied by |1 - η λ| every step, which is below 1 only when "
        "η < 2/λ_max. Past that bound each step overshoots by more than it corrects: the error grows "
        "geometrically and the squared-error loss with it (by |1 - η λ|² per step), until the "
        "outputs overflow float32 and the loss is inf, then NaN (inf - inf). On the way the loss "
        "rises step after step, which is what the doctor reads. Dividing η by 10 puts every "
        "|1 - η λ| back below 1."),
    data="smooth synthetic regression, y = sin(x·w/2) + x0·x1/2 + noise (8 features, 1024 train / 256 "
         "validation); MLP 8-32-1 tanh, MSE",
    broken={"optimizer": "SGD", "lr": 1.0},
    remedy={"optimizer": "SGD", "lr": 0.1},
    steps=800, expected_code="LR_TOO_HIGH",
    metric=Bar("first_nonfinite_step", "<=", 100),
    remedy_bars=(Bar("val_loss", "<=", 0.12),),
    make_data=_regression_data, trainer=_sgd_regression))


register(Scenario(
    name="lr_too_low",
    title="Learning rate too low: the loss does not move",
    explanation=(
        "A step changes the weights by Δw = -η ∇L, so the loss falls by about η ‖∇L‖² per step. With "
        "η = 1e-6 and ‖∇L‖ ≈ 1 that is 1e-6 per step: a few hundred steps change the loss in its "
        "fourth decimal, and each step moves a weight matrix by a ten-millionth of its size (the "
        "update/weight ratio ‖Δw‖/‖w‖, healthy near 1e-3, is ~1e-7). The loss curve is flat. Nothing "
        "is broken except the scale of the step; a learning rate 10^5 times larger trains the same "
        "network in the same budget."),
    data="digits (standardized); MLP 64-64-10 ReLU, He init",
    broken={"optimizer": "SGD", "lr": 1e-6},
    remedy={"optimizer": "SGD", "lr": 0.1},
    steps=300, expected_code="LR_TOO_LOW",
    metric=Bar("loss_drop", "<", 0.01),
    remedy_bars=(Bar("val_accuracy", ">=", 0.93),),
    make_data=digits, trainer=_sgd_digits))


# --------------------------------------------------------------------------- the update rule
class _WeightsBefore(Callback):
    """Keeps a copy of the flat weights after backward, before the update."""
    weights = None

    def on_backward_end(self, batch, logs=None):
        self.weights = self.model.flat_params.copy()


def _update_rule(cfg, data, seed, steps, label):
    """Full-batch SGD where the scenario supplies the update rule."""
    model = mlp(hidden=(64,), seed=seed)
    lr = cfg["lr"]
    rule = cfg["update"]
    acc = {}
    before = _WeightsBefore()
    update_norms: list = []

    def update(model, opt, step):
        p, g = model.flat_params, model.flat_grads
        if rule == "ascent":                 # the bug: w += lr * g
            p += lr * g
        elif rule == "descent":
            p -= lr * g
        elif rule == "accumulate":           # the bug: the buffer is never reset
            buf = acc.setdefault("g", np.zeros_like(g))
            buf += g
            p -= lr * buf
        elif rule == "accumulate_and_reset":
            buf = acc.setdefault("g", np.zeros_like(g))
            buf += g
            p -= lr * buf
            buf[...] = 0
        update_norms.append(float(np.sqrt(model.backend.sum_squares(p - before.weights))))

    run = fit_scenario(model, CrossEntropy(), SGD(lr=lr), data, steps=steps,
                       batch_size=cfg.get("batch_size", len(data["X"])), seed=seed, label=label, config=cfg,
                       update=update, callbacks=[before])
    s = np.asarray(run.step_loss[:11])
    m = run.metrics
    m["loss_rises_first_10"] = int((np.diff(s) > 0).sum()) if len(s) == 11 and np.isfinite(s).all() else 0
    m["loss_ratio_10"] = float(s[-1] / s[0]) if len(s) == 11 else math.nan
    u = np.asarray(update_norms)
    m["update_norm_first"] = float(u[0]) if len(u) else math.nan
    m["update_norm_last"] = float(u[-1]) if len(u) else math.nan
    m["update_growth"] = float(np.median(u[-5:]) / u[0]) if len(u) > 5 and u[0] > 0 else math.nan
    run.metrics["update_norms"] = [float(v) for v in u[:: max(1, len(u) // 20)]]
    return consult_doctor(run)


register(Scenario(
    name="gradient_ascent_sign",
    title="Sign error in the update: w += lr·g climbs the loss",
    explanation=(
        "The gradient ∇L points uphill, so descent is w ← w - η ∇L, which changes the loss by "
        "ΔL ≈ -η ‖∇L‖² < 0. Writing w += η ∇L flips the sign of that first-order term: "
        "ΔL ≈ +η ‖∇L‖² > 0 for every step, whatever η is. The loss therefore rises from the very "
        "first step (full-batch, every one of the first 10 steps goes up) and accelerates as the "
        "logits grow. Lowering the learning rate only slows the climb, so a doctor that reads only "
        "the loss curve would blame the learning rate; the cosine between the update and the "
        "gradient, +1 instead of -1, names the sign error."),
    data="digits (standardized), full batch; MLP 64-10 ReLU, He init",
    broken={"update": "ascent", "lr": 0.5},
    remedy={"update": "descent", "lr": 0.5},
    steps=60, expected_code="GRADIENT_ASCENT",
    metric=Bar("loss_rises_first_10", "==", 10),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=digits, trainer=_update_rule))


register(Scenario(
    name="forgot_zero_grad",
    title="Gradients accumulated across steps: the update keeps growing",
    explanation=(
        "A hand-written loop that sums gradients into its own buffer, buf ← buf + g_t, and steps "
        "w ← w - η buf but never resets buf, takes at step t the update η Σ_{s≤t} g_s. While the "
        "gradients point the same way that is t times the intended step, so the update norm grows "
        "linearly in t (a momentum of exactly 1, with no decay), overshoots the minimum and keeps "
        "overshooting: the loss oscillates with growing amplitude. Resetting the buffer after each "
        "step (what ``zero_grad`` does) restores plain SGD."),
    data="digits (standardized), batches of 64; MLP 64-10 ReLU, He init",
    broken={"update": "accumulate", "lr": 0.1, "batch_size": 64},
    remedy={"update": "accumulate_and_reset", "lr": 0.1, "batch_size": 64},
    steps=150, expected_code="STEP_SIZE",
    metric=Bar("update_growth", ">=", 10.0),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=digits, trainer=_update_rule))


# --------------------------------------------------------------------------- memory
def _budget_run(cfg, data, seed, steps, label):
    """Full-batch gradient descent under a memory budget: refused, or streamed in micro-batches."""
    from ...doctor import check_memory
    from ...doctor.monitor import Monitor
    from ...errors import MemoryBudgetError
    from ...history import History
    from ...summary import max_batch_size, require_memory
    from ..train import Run, activation_snapshot, evaluate

    X, y = data["X"], data["y"]
    model = mlp(hidden=(128, 128), seed=seed)
    loss = CrossEntropy()
    model.compile(loss=loss, optimizer=SGD(lr=cfg["lr"], momentum=0.9))
    model.build(X.shape[1:])
    budget = cfg["memory_budget_mib"] * 2 ** 20
    n = len(X)
    run = Run(label, dict(cfg), model=model)
    m = run.metrics
    full = model.memory_estimate(n)["total"]
    m.update(memory_full_batch=full, memory_budget=budget, memory_ratio=full / budget, batch_size=n)
    run.findings = check_memory(model, n, budget)
    micro = n if cfg["micro_batch"] == "full batch" else max_batch_size(model, budget)
    m["micro_batch"] = micro
    try:
        m["memory_per_step"] = require_memory(model, micro, budget)["total"]
    except MemoryBudgetError as err:                  # refused up front: nothing is trained
        m.update(refused=True, final_loss=math.nan, steps_run=0)
        run.notes.append(f"MemoryBudgetError: {err}")
        return run
    m["refused"] = False
    chunks = [(i, min(i + micro, n)) for i in range(0, n, micro)]
    monitor = Monitor(every=max(1, steps // 100))
    model.history = run.history = History()
    monitor.set_model(model)
    monitor.on_train_begin()
    acc = np.zeros_like(model.flat_grads)
    with np.errstate(all="ignore"):
        for step in range(steps):
            acc[...] = 0
            value = 0.0
            for a, b in chunks:                       # one full-batch gradient, micro-batch by micro-batch
                out = model.forward(X[a:b].astype(model.dtype), training=True)
                value += loss.forward(out, y[a:b]) * (b - a) / n
                model.backward(loss.backward())
                acc += model.flat_grads * np.float32((b - a) / n)
            if step == 0:                             # the lab checks: same gradient as one big batch
                loss.forward(model.forward(X.astype(model.dtype), training=True), y)
                model.backward(loss.backward())
                m["grad_match"] = float(np.linalg.norm(acc - model.flat_grads) / np.linalg.norm(model.flat_grads))
            model.flat_grads[...] = acc
            monitor.on_epoch_begin(step)
            monitor.on_backward_end(step, {"loss": value})
            model.optimizer.step()
            monitor.on_batch_end(step)
            run.step_loss.append(float(value))
            logs = {"loss": float(value)}
            logs.update({f"val_{k}": v for k, v in evaluate(model, data["X_val"], data["y_val"]).items()})
            run.history.append(step, logs)
        run.activations = activation_snapshot(model, X[:256].astype(model.dtype))
    m.update(steps_run=steps, final_loss=run.step_loss[-1], first_nonfinite_step=None)
    finish(run, data["X_val"], data["y_val"])
    return run


register(Scenario(
    name="oversized_batch",
    title="A batch that does not fit in memory: refuse up front, then stream micro-batches",
    explanation=(
        "Training memory is parameters + gradients + optimizer state + the activations every layer "
        "keeps for backward, and only the last term grows with the batch: about 2 · B · Σ_l d_l · 4 "
        "bytes for a batch of B samples through layers of width d_l in float32. Full-batch "
        "gradient descent on 1437 samples needs 7 MiB here; with a budget of 2 MiB it would exhaust "
        "memory part-way through a step (on a GPU: out of memory, the work so far lost). The "
        "estimate is known before the first step, so bpnet refuses up front with a "
        "MemoryBudgetError that names both numbers and the largest batch that fits. Because the "
        "loss is a mean over samples, ∇L = Σ_k (B_k / B) ∇L_k: streaming micro-batches that fit "
        "and adding their weighted gradients gives the same full-batch gradient (to float32 "
        "rounding), hence the same training, in a fraction of the memory."),
    data="digits (standardized); MLP 64-128-128-10 ReLU; full-batch SGD (lr 0.1, momentum 0.9); "
         "memory budget 2 MiB",
    broken={"micro_batch": "full batch", "memory_budget_mib": 2, "lr": 0.1},
    remedy={"micro_batch": "largest that fits", "memory_budget_mib": 2, "lr": 0.1},
    steps=60, expected_code="MEMORY_BUDGET",
    metric=Bar("memory_ratio", ">", 1.0),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9), Bar("grad_match", "<", 1e-5)),
    make_data=digits, trainer=_budget_run))


# --------------------------------------------------------------------------- generalisation
@lru_cache(maxsize=4)
def _tiny_digits(seed: int = 0, per_class: int = 10, noise: float = 0.2):
    """10 training images per digit (100 in all), 20% of them with a wrong label; the usual
    360-image validation split (clean)."""
    d = digits(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 707]))
    idx = np.concatenate([rng.choice(np.flatnonzero(d["y"] == c), per_class, replace=False) for c in range(10)])
    idx = rng.permutation(idx)
    y = d["y"][idx].copy()
    flip = rng.random(len(y)) < noise
    y[flip] = (y[flip] + rng.integers(1, 10, int(flip.sum()))) % 10
    return {"X": d["X"][idx], "y": y, "X_val": d["X_val"], "y_val": d["y_val"], "flipped": np.flatnonzero(flip)}


def _overfit_run(cfg, data, seed, steps, label):
    layers = [Dense(256, init="he_normal"), ReLU()]
    if cfg.get("dropout"):
        layers.append(Dropout(cfg["dropout"]))
    layers += [Dense(256, init="he_normal"), ReLU()]
    if cfg.get("dropout"):
        layers.append(Dropout(cfg["dropout"]))
    layers.append(Dense(10))
    model = Sequential(layers, seed=seed, backend=BACKEND)
    lr = cfg.get("lr", 3e-3)
    opt = AdamW(lr=lr, weight_decay=cfg["weight_decay"]) if cfg.get("weight_decay") else Adam(lr=lr)
    callbacks = [EarlyStopping("val_loss", patience=5, restore_best_weights=True)] if cfg.get("early_stopping") \
        else []
    run = fit_scenario(model, CrossEntropy(), opt, data, steps=steps, batch_size=10, seed=seed,
                       label=label, config=cfg, callbacks=callbacks)
    best = min(run.history["val_loss"])
    m = run.metrics
    m["best_val_loss"] = best
    m["val_loss_rise"] = m["val_loss"] / best - 1.0
    m["train_loss"] = run.history["loss"][-1]
    return consult_doctor(run)


register(Scenario(
    name="overfitting",
    title="Overfitting: 100 noisy training images, 85k weights, validation loss turns up",
    explanation=(
        "With 100 training images (a fifth of them mislabelled, as real labels often are) and "
        "~85,000 weights the network can drive the training loss to ~0 by memorising every image, "
        "wrong labels included. Early on, the steps that fit the training set also fit the "
        "validation set (the shared structure of digits is learnt first); later they fit the noise "
        "and grow the logits on memorised images, and every validation image the model gets wrong "
        "is now wrong with growing confidence: the validation cross-entropy, which charges -log p "
        "for confident mistakes, rises epoch after epoch while the training loss keeps falling. "
        "EarlyStopping(restore_best_weights=True) stops when the validation loss has not improved "
        "for 5 epochs and puts back the weights of its best epoch; Dropout and weight decay "
        "(AdamW) limit how far the weights can specialise."),
    data="digits (standardized), 10 training images per class (100, 20% with a wrong label) / 360 "
         "clean validation; MLP 64-256-256-10 ReLU; Adam lr 3e-3, batch 10",
    broken={"early_stopping": False, "weight_decay": 0.0, "dropout": 0.0, "lr": 3e-3},
    remedy={"early_stopping": True, "weight_decay": 0.0, "dropout": 0.0, "lr": 3e-3},
    variants={"Dropout 0.8 (no early stopping)": {"early_stopping": False, "dropout": 0.8},
              "AdamW weight decay 5 (no early stopping)": {"early_stopping": False, "weight_decay": 5.0}},
    report=("val_loss_rise", "best_val_loss", "val_accuracy"),
    steps=800, expected_code="OVERFITTING",
    metric=Bar("val_loss_rise", ">=", 0.15),
    remedy_bars=(Bar("val_loss_rise", "<=", 0.05), Bar("val_accuracy", ">=", 0.6)),
    make_data=_tiny_digits, trainer=_overfit_run))
