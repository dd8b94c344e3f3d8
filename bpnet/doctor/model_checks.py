"""``check_model``: mistakes visible in the model and loss before training.

* DOUBLE_SOFTMAX -- a Softmax output layer in front of a loss that applies
  softmax itself (CrossEntropy, FocalLoss take logits).
* OUTPUT_LOSS_MISMATCH -- a ReLU, Sigmoid or Tanh output in front of a loss
  that expects unbounded logits.
* OUTPUT_LOSS_MISMATCH -- a Softmax over one unit (always 1), or a Softmax
  output trained with a regression loss (MSE on one-hot targets).
* EPS_UNDERFLOW -- an optimizer whose ``eps`` is 0 in the model's dtype
  (Adam's 1e-8 in float16) without a loss scaler's float32 state.
* SYMMETRIC_WEIGHTS -- a hidden Dense layer whose units are identical (all
  columns of W equal and all biases equal, e.g. zero or constant init): every
  unit then receives the same gradient and they stay clones forever.

``check_memory(model, batch_size, budget_bytes)`` adds MEMORY_BUDGET: one
batch needs more memory (``model.memory_estimate``) than the budget.
"""
from __future__ import annotations

import numpy as np

from ..layers.dense import Dense
from ..losses import get_loss
from . import findings as F
from ._paths import leaf_layers
from .findings import Finding
from .thresholds import Thresholds


def check_model(model, loss=None, thresholds: Thresholds | None = None) -> list[Finding]:
    """Static checks of ``model`` against ``loss`` (default ``model.loss``)."""
    loss = get_loss(loss) if loss is not None else getattr(model, "loss", None)
    out: list[Finding] = []
    if model.layers and _single_unit_softmax(out, model):
        pass
    elif loss is not None and model.layers:
        _output_layer(out, model, loss)
    if getattr(model, "built", False):
        _symmetry(out, model)
    _eps_underflow(out, model)
    return out


def _single_unit_softmax(out, model) -> bool:
    """OUTPUT_LOSS_MISMATCH: softmax over one unit is exp(z)/exp(z) = 1 whatever z (gradient 0)."""
    last = model.layers[-1]
    shape = getattr(last, "output_shape", None) if getattr(model, "built", False) else None
    if type(last).__name__ != "Softmax" or shape is None or int(np.prod(shape)) != 1:
        return False
    out.append(Finding(
        F.OUTPUT_LOSS_MISMATCH, "error",
        "the model ends with a softmax over a single output unit: softmax(z) = e^z / e^z = 1 for every "
        "input, so the prediction never changes and the gradient through it is exactly 0; nothing before it "
        "can learn.",
        evidence={"output_layer": "Softmax", "units": 1},
        remedy="for two classes use Dense(1) with loss='bce_with_logits' (a sigmoid inside the loss), or "
               "Dense(2) with loss='cross_entropy'; drop the Softmax layer either way.",
        where=f"layer {len(model.layers) - 1}"))
    return True


def _eps_underflow(out, model):
    """EPS_UNDERFLOW: the optimizer keeps its state in the model's dtype, where its eps is 0."""
    opt = getattr(model, "optimizer", None)
    eps = getattr(opt, "eps", None)
    dtype = np.dtype(getattr(model, "dtype", np.float32))
    if eps is None or dtype.kind != "f" or getattr(model, "loss_scaler", None) is not None \
            or dtype.type(eps) != 0 or eps == 0:
        return
    out.append(Finding(
        F.EPS_UNDERFLOW, "error",
        f"{type(opt).__name__}(eps={eps:g}) on a {dtype.name} model: eps rounds to 0 in {dtype.name} (its "
        f"smallest positive value is {float(np.finfo(dtype).smallest_subnormal):.3g}), and the squared-gradient "
        "average underflows with it, so the first update divides by 0 and the weights become NaN/Inf.",
        evidence={"optimizer": type(opt).__name__, "eps": float(eps), "dtype": dtype.name},
        remedy="compile with loss_scaler=bpnet.LossScaler() (float32 master weights and optimizer state), "
               f"train in float32, or use eps of at least {float(np.finfo(dtype).eps):.3g}.",
        where="optimizer"))


def _output_layer(out, model, loss):
    last = model.layers[-1]
    cls, lname = type(last).__name__, type(loss).__name__
    where = f"layer {len(model.layers) - 1}"
    if cls == "Softmax" and loss.kind == "regression":
        out.append(Finding(
            F.OUTPUT_LOSS_MISMATCH, "warning",
            f"the model ends with Softmax (class probabilities) but is trained with {lname}, a regression "
            "loss: the squared error of a probability has a gradient that vanishes exactly when the network "
            "is confidently wrong (p -> 0 for the true class), so a classifier learns slowly or not at all.",
            evidence={"output_layer": cls, "loss": lname},
            remedy="drop the Softmax layer and compile with loss='cross_entropy' (integer labels or one-hot "
                   "rows; the loss applies the softmax itself).",
            where=where))
        return
    if not getattr(loss, "expects_logits", False):
        return
    if cls == "Softmax" and loss.kind == "classification" and lname != "BCEWithLogits":
        out.append(Finding(
            F.DOUBLE_SOFTMAX, "error",
            f"the model ends with Softmax but {lname} applies softmax to its input itself: the loss sees "
            "softmax(softmax(z)), whose values are squeezed into [1/e, e] ratios, so gradients shrink and "
            "learning crawls or stalls.",
            evidence={"output_layer": cls, "loss": lname},
            remedy=f"remove the final Softmax layer (train on logits with {lname}); apply softmax only "
                   "when you need probabilities at prediction time.",
            where=where))
    elif cls in ("ReLU", "Sigmoid", "Tanh", "Softmax"):
        what = {"ReLU": "clips every negative logit to 0, so a class can never be pushed below the others "
                        "and dead outputs get no gradient",
                "Sigmoid": "squeezes the logits into (0, 1), so the loss can never become confident "
                           "(a sigmoid applied twice)",
                "Tanh": "squeezes the logits into (-1, 1), so the loss can never become confident",
                "Softmax": "turns the logits into probabilities before a loss that expects logits"}[cls]
        out.append(Finding(
            F.OUTPUT_LOSS_MISMATCH, "error",
            f"the model ends with {cls} but {lname} expects raw logits: the {cls} {what}.",
            evidence={"output_layer": cls, "loss": lname},
            remedy=f"end the model with the last Dense layer (no activation) and keep {lname}.",
            where=where))


def _symmetry(out, model):
    dense = [(path, layer) for path, layer in leaf_layers(model) if isinstance(layer, Dense)]
    bk = model.backend
    for k, (path, layer) in enumerate(dense[:-1]):      # the output layer may start symmetric
        W = np.asarray(bk.to_numpy(layer.params["W"]), dtype=np.float64)
        b = np.asarray(bk.to_numpy(layer.params["b"]), dtype=np.float64)
        if W.shape[1] < 2 or not (np.isfinite(W).all() and np.isfinite(b).all()):
            continue
        spread_w = float((W.max(axis=1) - W.min(axis=1)).max())
        spread_b = float(b.max() - b.min())
        scale = max(float(np.abs(W).max()), float(np.abs(b).max()))
        if spread_w > 1e-6 * scale or spread_b > 1e-6 * scale:
            continue
        nxt = np.asarray(bk.to_numpy(dense[k + 1][1].params["W"]), dtype=np.float64)
        out_spread = float((nxt.max(axis=0) - nxt.min(axis=0)).max()) if nxt.shape[0] == W.shape[1] else np.inf
        clones = out_spread <= 1e-6 * max(float(np.abs(nxt).max()), 1e-30)
        zero = scale == 0
        state = "all zero" if zero else f"all equal to {float(W.flat[0]):.4g}"
        if clones:
            consequence = ("the next layer's weights treat them alike too, so they receive the same gradient "
                           "and stay clones forever: the layer acts like a single unit")
        else:
            consequence = ("they compute the same output; only the next layer's random weights can tell them "
                           "apart" + (", and with zero weights a ReLU after them passes no gradient at all"
                                      if zero else ""))
        out.append(Finding(
            F.SYMMETRIC_WEIGHTS, "error" if clones or zero else "warning",
            f"all {W.shape[1]} units of layer {path} ({layer.name}) are identical (every column of W is the "
            f"same, {state}; equal biases): {consequence}.",
            evidence={"layer": path, "units": int(W.shape[1]), "column_spread": spread_w,
                      "bias_spread": spread_b, "value": float(W.flat[0]), "next_layer_row_spread": out_spread,
                      "clones": bool(clones)},
            remedy="initialise W randomly (Dense(..., init='he_normal') for ReLU, 'xavier_uniform' for "
                   "tanh/sigmoid); constant or zero initialisation does not break the symmetry between units.",
            where=f"layer {path}"))


def check_memory(model, batch_size: int, budget_bytes: float) -> list[Finding]:
    """MEMORY_BUDGET when a batch of ``batch_size`` needs more than ``budget_bytes``
    (see :func:`bpnet.summary.require_memory`, which refuses such a batch with an error)."""
    from ..summary import _fmt_bytes, max_batch_size, memory_estimate
    need = memory_estimate(model, batch_size)
    if need["total"] <= budget_bytes:
        return []
    fit = max_batch_size(model, budget_bytes)
    steps = -(-batch_size // fit) if fit else None
    return [Finding(
        F.MEMORY_BUDGET, "error",
        f"a batch of {batch_size} samples needs {_fmt_bytes(need['total'])} (activations "
        f"{_fmt_bytes(need['activations'])}) but the budget is {_fmt_bytes(budget_bytes)}: "
        f"{need['total'] / budget_bytes:.3g} times too much.",
        evidence={**{k: int(v) for k, v in need.items()}, "batch_size": int(batch_size),
                  "budget": float(budget_bytes), "max_batch_size": fit, "micro_batches": steps},
        remedy=(f"stream batches of at most {fit} samples; to keep the same step, accumulate the gradients "
                f"of {steps} micro-batches (each weighted by its share of the batch) before one optimizer "
                "step." if fit else "even one sample does not fit: use a smaller model or a larger budget."),
        where=f"batch {batch_size}")]
