"""Failures of the gradient signal: vanishing, exploding, dead, symmetric, or simply wrong."""
from __future__ import annotations

from functools import partial

import numpy as np

from ... import init as initializers
from ...layers import BatchNorm1d, Dense, LeakyReLU, ReLU, Residual, Sigmoid, Tanh
from ...losses import CrossEntropy
from ...model import Sequential
from ...optim import SGD
from ..core import Bar, Scenario, register
from ..layers import WrongSigmoid
from ._common import BACKEND, consult_doctor, digits, fit_scenario

_ACT = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh, "leaky_relu": LeakyReLU}


def _dead_fraction(run) -> float:
    """Largest fraction of a ReLU layer's units that output 0 for every probe sample."""
    worst = 0.0
    for name, values in run.activations.items():
        if "ReLU" not in name or "Leaky" in name:
            continue
        layer = run.model
        for part in name.split(" ")[0].split("."):
            layer = layer.sublayers()[int(part)]
        units = values.reshape(-1, *layer.output_shape).reshape(-1, int(np.prod(layer.output_shape)))
        worst = max(worst, float((units.max(axis=0) <= 0).mean()))
    return worst


def distinct_units(W, rtol: float = 1e-6) -> int:
    """Number of different columns of W (units), equal within rtol · max|W|."""
    W = np.asarray(W, dtype=np.float64)
    if not np.isfinite(W).all():
        return -1
    tol = rtol * max(float(np.abs(W).max()), 1e-30)
    reps: list = []
    for j in range(W.shape[1]):
        if not any(np.abs(W[:, j] - r).max() <= tol for r in reps):
            reps.append(W[:, j])
    return len(reps)


# --------------------------------------------------------------------------- depth
def _deep(cfg, data, seed, steps, label):
    act, depth, width = _ACT[cfg["activation"]], cfg.get("depth", 12), 32
    arch = cfg.get("arch", "plain")
    layers = []
    if arch == "residual":
        layers.append(Dense(width, init=cfg["init"]))
        layers += [Residual([Dense(width, init=cfg["init"]), act()]) for _ in range(depth)]
    else:
        for _ in range(depth):
            layers.append(Dense(width, init=cfg["init"]))
            if arch == "batchnorm":
                layers.append(BatchNorm1d())
            layers.append(act())
    layers.append(Dense(10, init="xavier_uniform"))
    model = Sequential(layers, seed=seed, backend=BACKEND)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg)
    return consult_doctor(run)


register(Scenario(
    name="deep_sigmoid_vanishing",
    title="Vanishing gradients in a deep sigmoid stack",
    explanation=(
        "Backprop multiplies the gradient by one Jacobian per layer: δ_{l-1} = (δ_l ⊙ σ'(z_l)) W_lᵀ. "
        "The sigmoid's slope σ'(z) = σ(z)(1 - σ(z)) is at most 1/4 (at z = 0), and Xavier-scaled "
        "weights have gain about 1, so every sigmoid layer shrinks the gradient by a factor of 4 or "
        "more. Through 12 layers that is 4^-12 ≈ 6e-8: the first layer's gradient is a millionth of "
        "the last layer's, the early layers never move and the network learns nothing but the class "
        "prior. ReLU has slope exactly 1 where active and He initialisation (Var W = 2/fan_in) keeps "
        "‖δ‖ constant in expectation, so the same depth trains. BatchNorm (each layer re-centred and "
        "re-scaled so σ works near its steepest point) and residual connections (y = x + F(x), so "
        "∂y/∂x = I + ∂F/∂x carries the gradient past F) are the other standard repairs."),
    data="digits (standardized); 12 x (Dense 32, activation) + Dense 10; SGD lr 0.1 (ReLU: 0.05)",
    broken={"activation": "sigmoid", "init": "xavier_uniform", "lr": 0.1},
    remedy={"activation": "relu", "init": "he_normal", "lr": 0.05},
    variants={"sigmoid+batchnorm": {"activation": "sigmoid", "init": "xavier_uniform", "arch": "batchnorm",
                                    "lr": 0.1},
              "sigmoid+residual": {"activation": "sigmoid", "init": "xavier_uniform", "arch": "residual",
                                   "lr": 0.1}},
    report=("grad_norm_first_layer", "val_accuracy"),
    steps=500, expected_code="VANISHING_GRADIENTS",
    metric=Bar("grad_norm_first_layer", "<", 1e-6),
    remedy_bars=(Bar("val_accuracy", ">=", 0.8), Bar("grad_norm_first_layer", ">=", 1e-2)),
    make_data=digits, trainer=_deep))


def _exploding(cfg, data, seed, steps, label):
    layers = []
    for _ in range(8):
        layers += [Dense(64, init=cfg["init"]), ReLU()]
    layers.append(Dense(10, init=cfg["init"]))
    model = Sequential(layers, seed=seed, backend=BACKEND)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg)
    return consult_doctor(run)


register(Scenario(
    name="exploding_init",
    title="Exploding activations and gradients from a too-large initialisation",
    explanation=(
        "A unit of y = xW sums fan_in terms, so Var(y) = fan_in · Var(W) · E[x²]. With W ~ N(0, 1) and "
        "fan_in = 64, each ReLU layer multiplies the signal's second moment by 64/2 = 32 (ReLU keeps "
        "half): after 8 layers the logits are ~32^4 ≈ 1e6 times too large. The backward pass is the "
        "transpose of the same products, so the gradient norms are ~1e6 as well: the first SGD step "
        "throws the weights far away and the loss is NaN within a few steps. He initialisation, "
        "Var(W) = 2/fan_in, makes the per-layer factor exactly 1."),
    data="digits (standardized); 8 x (Dense 64, ReLU) + Dense 10; SGD lr 0.05",
    broken={"init": "normal (std 1)", "lr": 0.05},
    remedy={"init": "he_normal", "lr": 0.05},
    steps=200, expected_code="EXPLODING_GRADIENTS",
    metric=Bar("grad_norm_first_layer", ">=", 1e3),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=digits, trainer=lambda cfg, *a: _exploding({**cfg, "init": cfg["init"].split(" ")[0]}, *a)))


# --------------------------------------------------------------------------- dead units
def _relu_net(cfg, data, seed, steps, label):
    act = _ACT[cfg["activation"]]
    init = cfg.get("init", "he_normal")
    if init.startswith("constant"):
        init = partial(initializers.constant, value=float(init[len("constant("):-1]))
    model = Sequential([Dense(cfg.get("width", 64), init=init), act(), Dense(cfg.get("width", 64), init=init),
                        act(), Dense(10, init=init)], seed=seed, backend=BACKEND)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg)
    run.metrics["dead_frac_max"] = _dead_fraction(run)
    run.metrics["distinct_units"] = distinct_units(model.layers[0].params["W"])
    return consult_doctor(run)


register(Scenario(
    name="dying_relu",
    title="Dying ReLU: a large step pushes units where they never fire again",
    explanation=(
        "A ReLU unit passes gradient only where z = x·w + b > 0. One oversized update (here SGD with "
        "η = 2) can move w and b so far that z < 0 for every input; from then on ∂L/∂w = Σ_n x_n "
        "δ_n [z_n > 0] = 0 exactly, so nothing can bring the unit back. Whole layers die this way "
        "and the network falls to the class prior (loss ≈ log 10). LeakyReLU (slope α = 0.01 for "
        "z < 0) never has an exactly zero gradient, so its units can recover; but the first repair "
        "is the step size: at η = 0.1 no unit dies."),
    data="digits (standardized); MLP 64-64-10, He init; SGD lr 2.0",
    broken={"activation": "relu", "lr": 2.0},
    remedy={"activation": "relu", "lr": 0.1},
    variants={"leaky_relu, lr 0.5": {"activation": "leaky_relu", "lr": 0.5}},
    report=("dead_frac_max", "val_accuracy"),
    steps=120, expected_code="DYING_RELU",
    metric=Bar("dead_frac_max", ">=", 0.7),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9),),
    make_data=digits, trainer=_relu_net))


register(Scenario(
    name="zero_init_symmetry",
    title="Constant initialisation: hidden units stay identical clones",
    explanation=(
        "If every hidden unit starts with the same weights, they compute the same output h_j, so "
        "the loss is symmetric under swapping them and each receives the same gradient "
        "∂L/∂W_{:,j} = xᵀ δ_j with δ_j identical for all j. Identical units plus identical updates "
        "stay identical: after any number of steps the layer is one unit copied 64 times, and the "
        "network can only learn what a single-unit bottleneck can. (All zeros is the extreme case: "
        "with W₂ = 0 the hidden layers get no gradient at all.) Random initialisation breaks the "
        "symmetry; its scale is then chosen by Xavier or He."),
    data="digits (standardized); MLP 64-64-10 tanh; SGD lr 0.1",
    broken={"activation": "tanh", "init": "constant(0.05)", "lr": 0.1},
    remedy={"activation": "tanh", "init": "xavier_uniform", "lr": 0.1},
    steps=200, expected_code="SYMMETRIC_WEIGHTS",
    metric=Bar("distinct_units", "<=", 1),
    remedy_bars=(Bar("val_accuracy", ">=", 0.9), Bar("distinct_units", ">=", 64)),
    make_data=digits, trainer=_relu_net))


# --------------------------------------------------------------------------- a wrong backward
def _hand_layer(cfg, data, seed, steps, label):
    hidden = WrongSigmoid() if cfg["layer"] == "WrongSigmoid" else Sigmoid()
    model = Sequential([Dense(32, init="xavier_uniform"), hidden, Dense(10, init="xavier_uniform")],
                       seed=seed, backend=BACKEND)
    run = fit_scenario(model, CrossEntropy(), SGD(lr=cfg["lr"]), data, steps=steps, batch_size=64,
                       seed=seed, label=label, config=cfg)
    from ...doctor.gradients import check_gradients
    found = check_gradients(model, data["X"][:4], data["y"][:4], seed=seed)
    worst = max((f.evidence["rel_error"] for f in found), default=0.0)
    run.metrics["gradcheck_rel_error"] = worst
    run.metrics["gradcheck_failed_layers"] = [f.where for f in found]
    consult_doctor(run)
    run.findings += found
    run.notes += [f"check_gradients, {f.where}:\n{f.evidence['report']}" for f in found]
    return run


register(Scenario(
    name="wrong_derivative",
    title="A hand-written backward with the wrong derivative (sigmoid' = s)",
    explanation=(
        "A user layer computes y = σ(z) correctly but its backward returns dz = dy ⊙ y, as if "
        "σ'(z) = σ(z); the true derivative is σ(z)(1 - σ(z)). Nothing crashes: every gradient "
        "upstream of the layer is off by the factor 1/(1 - σ(z)) (between 1 and ∞), so training "
        "still lowers the loss a little, in a wrong direction, and the bug can survive for weeks. "
        "A gradient check compares each layer's backward with central differences "
        "(f(x + h) - f(x - h)) / 2h, whose error is O(h²): a correct layer agrees to ~1e-9 in "
        "float64, the broken one is off by tens of percent, and the check names the layer and the "
        "worst element. Fixing the formula makes the check pass."),
    data="digits (standardized); Dense 32, hidden sigmoid layer, Dense 10; SGD lr 0.5",
    broken={"layer": "WrongSigmoid", "lr": 0.5},
    remedy={"layer": "Sigmoid", "lr": 0.5},
    steps=200, expected_code="WRONG_GRADIENT",
    metric=Bar("gradcheck_rel_error", ">=", 1e-2),
    remedy_bars=(Bar("gradcheck_rel_error", "<", 1e-6), Bar("val_accuracy", ">=", 0.9)),
    make_data=digits, trainer=_hand_layer))
