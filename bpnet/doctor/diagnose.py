"""``diagnose``: named problems read off a training run's history.

It reads the per-epoch losses (``history["loss"]``, ``history["val_loss"]``)
and, when a :class:`~bpnet.doctor.Monitor` ran, the per-step records in
``history.steps``.  Every rule compares a number with a documented threshold
(:class:`~bpnet.doctor.Thresholds`) and reports that number as evidence:

======================  ==================================================================
EXPLODING_GRADIENTS     first/last layer gradient-norm ratio > 70, or a layer norm > 1e3,
                        or the total norm grew > 100x since the start
VANISHING_GRADIENTS     first/last ratio < 1e-3 and first-layer norm < 1e-4
DYING_RELU              >= 70 % of a ReLU layer's units output 0 for a whole batch
SATURATED_ACTIVATIONS   > 50 % of a sigmoid/tanh layer's outputs have |z| > 5
NONFINITE_LOSS          a NaN/Inf loss, with the signal that went wrong before it
LR_TOO_HIGH             the loss rises several points in a row, swings up and down by more than
                        a quarter of what the run learnt, ends above its start, or the first
                        updates were > 0.5 of the weights and the run never learnt (loss_rules)
LR_TOO_LOW / PLATEAU    the loss is flat; LR_TOO_LOW when the weights barely move too
                        (update/weight ratio < 1e-5)
STEP_SIZE               a weight matrix's update/weight ratio > 1e-1 or < 1e-6 (healthy ~1e-3),
                        or plain SGD stepping by more than 3x lr·‖g‖ (gradients summed over steps)
GRADIENT_ASCENT         the updates point along +∇L (median cosine of update and gradient > 0)
OVERFITTING             validation loss rising beyond its own noise while training loss falls;
                        info when the validation accuracy holds (loss_rules)
VANISHING_THROUGH_TIME  a recurrent layer's ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ < 1e-5 (see through_time)
EXPLODING_THROUGH_TIME  the same ratio > 1e2
======================  ==================================================================

A run that learnt well (final loss below half the initial) is not stuck: STEP_SIZE,
SATURATED_ACTIVATIONS, VANISHING_GRADIENTS, partly dead ReLUs and a flat end are then
``info``, and GRADIENT_ASCENT is not claimed.  The findings come back as one story
(:func:`~bpnet.doctor.story.tell`): root causes first, symptoms with ``caused_by``.

With ``model=`` it adds the static checks of :func:`~bpnet.doctor.check_model`.
"""
from __future__ import annotations

import math
import re

import numpy as np

from . import findings as F
from ._paths import describe
from .findings import Finding
from .loss_rules import Outcome, learning_rate, overfitting
from .model_checks import check_model
from .story import tell
from .thresholds import Thresholds
from .through_time import diagnose as _through_time

_LAYER_KEY = re.compile(r"^\d+(\.\d+)*$")
_BLOCK = 5          # per-step losses are averaged in blocks of this many records
_MIN_ROWS_FOR_DEATH = 8     # a partly dead layer is judged only on batches of at least this many samples


def diagnose(history, model=None, thresholds: Thresholds | None = None, static: bool = True) -> list[Finding]:
    """Findings for a run: ``history`` is a :class:`~bpnet.History` (or its ``to_dict()``).
    ``static=False`` leaves out :func:`check_model` (the model is then read only for its optimizer
    and layer names)."""
    from ..history import History
    if isinstance(history, dict):
        history = History.from_dict(history)
    t = thresholds or Thresholds()
    run = _Run(history, model, t)
    out: list[Finding] = []
    for rule in (_nonfinite_loss, _gradients, _through_time, _activations, _learning_rate, _step_size,
                 _update_direction, overfitting):
        out.extend(rule(run))
    if any(f.code == F.LR_TOO_LOW for f in out):     # the same cause, said more precisely
        out = [f for f in out if not (f.code == F.STEP_SIZE and f.where == "too small")]
    out = _weigh_outcome(run, out)
    if static and model is not None and getattr(model, "layers", None):
        out.extend(check_model(model, thresholds=t))
    return tell(out)


# Findings about how training went that a run which learnt well shows only as a passing state.
_OUTCOME_GATED = {F.STEP_SIZE, F.SATURATED_ACTIVATIONS, F.VANISHING_GRADIENTS}


def _weigh_outcome(run, found):
    """A run that learnt well (loss below half its initial value) is not stuck, saturated or
    stepping wrongly: those findings become info, with the outcome in their evidence.
    Gradient ascent needs a loss that did not fall."""
    out = Outcome(run)
    if not out.learnt_well():
        return found
    kept = []
    for f in found:
        if f.code == F.GRADIENT_ASCENT:
            continue
        gated = f.code in _OUTCOME_GATED and f.where != "growing"
        if gated:
            f.severity = "info"
            f.evidence = {**f.evidence, "learnt": out.learnt, "initial_loss": out.initial, "final_loss": out.final}
            f.message += f" The run still learnt ({out.learnt:.0%} of the initial loss removed), so this is worth knowing, not a failure."
        kept.append(f)
    return kept


class _Run:
    """The history's numbers in the shapes the rules need."""

    def __init__(self, history, model, t):
        self.h, self.model, self.t = history, model, t
        self.steps = list(getattr(history, "steps", []) or [])
        self.finite_steps = [r for r in self.steps if _finite(r.get("loss", math.nan))]
        self.epoch_loss = list(history.history.get("loss", []))
        self.val_loss = list(history.history.get("val_loss", []))

    def recent(self, key, k=None):
        """Median of ``key`` over the last ``k`` records with a finite loss (None if absent)."""
        vals = [r[key] for r in self.finite_steps if key in r][-(k or self.t.recent):]
        return float(np.median(vals)) if vals else None

    def zero_frac(self, layer):
        """Smallest recent fraction of exactly-zero gradient entries among the layer's parameters."""
        fracs = [self.recent(f"zero_grad_frac/{p}") for p in self.keys("zero_grad_frac/")
                 if p.rsplit(".", 1)[0] == layer]
        fracs = [f for f in fracs if f is not None]
        return min(fracs) if fracs else 0.0

    def keys(self, prefix):
        return sorted({k[len(prefix):] for r in self.steps for k in r if k.startswith(prefix)})

    def where(self, path):
        return describe(self.model, path)

    def update_ratios(self):
        return _update_ratios(self)

    def loss_series(self):
        """(values, unit): finite epoch losses, or block means of per-step losses when
        there are fewer than 3 epochs."""
        ep = [v for v in self.epoch_loss if _finite(v)]
        if len(ep) >= 3 or not self.finite_steps:
            return ep, "epoch"
        losses = [r["loss"] for r in self.finite_steps]
        blocks = [float(np.mean(losses[i:i + _BLOCK])) for i in range(0, len(losses) - _BLOCK + 1, _BLOCK)]
        return blocks, f"{_BLOCK}-step block"


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _layer_paths(run):
    paths = [k for k in run.keys("grad_norm/") if _LAYER_KEY.match(k)]
    return sorted(paths, key=lambda p: tuple(int(x) for x in p.split(".")))


# -- rules ---------------------------------------------------------------------------------
def _nonfinite_loss(run):
    t = run.t
    bad_epochs = [i for i, v in enumerate(run.epoch_loss) if not _finite(v)]
    bad_steps = [r for r in run.steps if not _finite(r.get("loss", 0.0))]
    if not bad_epochs and not bad_steps:
        return []
    ev = {}
    if bad_epochs:
        ev["first_epoch"] = int(run.h.epoch[bad_epochs[0]]) if bad_epochs[0] < len(run.h.epoch) else bad_epochs[0]
    source = "it is not known where it came from (train with a Monitor or detect_anomaly=True to find out)"
    if bad_steps:
        first = bad_steps[0]
        ev["first_step"] = int(first["step"])
        before = [r for r in run.finite_steps if r["step"] < first["step"]]
        causes = []
        nonfinite_acts = [k.split("/", 1)[1] for k in first if k.startswith("act_mean/") and not _finite(first[k])]
        if nonfinite_acts:
            causes.append(f"the forward pass was already non-finite at {run.where(nonfinite_acts[0])}")
            ev["first_nonfinite_activation"] = nonfinite_acts[0]
        if before:
            last = before[-1]
            g_first = run.finite_steps[0].get("grad_norm/total")
            g_last = last.get("grad_norm/total")
            ev["last_finite_step"] = int(last["step"])
            ev["last_finite_loss"] = float(last["loss"])
            if g_first is not None and g_last is not None:
                ev["grad_norm_first"], ev["grad_norm_last_finite"] = float(g_first), float(g_last)
                if not _finite(g_last) or g_last > t.explode_norm or \
                        (g_first > 0 and g_last / g_first > t.explode_growth):
                    causes.append(f"the gradient norm had grown from {g_first:.3g} to {g_last:.3g} "
                                  f"(step {last['step']}): exploding gradients")
            ratios = [v for k, v in last.items() if k.startswith("update_ratio/") and _finite(v)]
            if ratios and max(ratios) > t.step_high:
                ev["max_update_ratio"] = float(max(ratios))
                causes.append(f"updates were {max(ratios):.3g} of the weights' size at step {last['step']}: "
                              "the learning rate is too high")
            if last["loss"] > 10 * max(run.finite_steps[0]["loss"], 1e-12):
                causes.append(f"the loss had already risen from {run.finite_steps[0]['loss']:.4g} "
                              f"to {last['loss']:.4g}: divergence")
        elif not nonfinite_acts:
            causes.append("the loss was non-finite from the first recorded step: look at the data and the "
                          "initial weights")
        if causes:
            source = "; ".join(causes)
    ev["source"] = source
    when = f"step {ev['first_step']}" if "first_step" in ev else f"epoch {ev.get('first_epoch')}"
    return [Finding(
        F.NONFINITE_LOSS, "error",
        f"the loss became NaN/Inf at {when}; {source}. Every update after that is garbage.",
        evidence=ev,
        remedy="rerun with fit(..., detect_anomaly=True) to stop at the first NaN/Inf and name the layer; "
               "lower the learning rate, clip gradients (clip_grad_norm), and check the data with "
               "bpnet.doctor.check_data.")]


def _gradients(run):
    t = run.t
    paths = _layer_paths(run)
    if not paths:
        return []
    out = []
    norms = {p: run.recent(f"grad_norm/{p}") for p in paths}
    first, last = paths[0], paths[-1]
    g_first, g_last = norms[first], norms[last]
    ratio = None
    if len(paths) >= 2 and g_first is not None and g_last is not None and g_last > 0:
        ratio = g_first / g_last
    big = {p: n for p, n in norms.items() if n is not None and (n > t.explode_norm or math.isinf(n))}
    totals = [r["grad_norm/total"] for r in run.finite_steps if "grad_norm/total" in r]
    growth = None
    k = t.recent
    if len(totals) >= 2 * k:
        early, late = float(np.median(totals[:k])), float(np.median(totals[-k:]))
        growth = late / early if early > 0 else (math.inf if late > 0 else 1.0)
    ev = {"first_layer": first, "last_layer": last, "first_norm": g_first, "last_norm": g_last,
          "ratio": ratio, "growth": growth, "norms": norms}
    reasons = []
    if ratio is not None and ratio > t.explode_ratio:
        reasons.append(f"the first layer's gradient norm is {ratio:.3g}x the last layer's "
                       f"({g_first:.3g} vs {g_last:.3g}; limit {t.explode_ratio:g})")
    if big:
        p, n = max(big.items(), key=lambda kv: kv[1])
        reasons.append(f"{run.where(p)} has gradient norm {n:.3g} (limit {t.explode_norm:g})")
    if growth is not None and growth > t.explode_growth:
        reasons.append(f"the total gradient norm grew {growth:.3g}x during training (limit {t.explode_growth:g})")
    if reasons:
        out.append(Finding(
            F.EXPLODING_GRADIENTS, "error",
            "gradients are exploding: " + "; ".join(reasons) + ". Each layer multiplies the gradient "
            "by more than 1 on its way back, so the early layers get huge updates and training diverges.",
            evidence=ev,
            remedy="use a smaller initial scale (Dense(..., init='he_normal') for ReLU, 'xavier_uniform' "
                   "for tanh), clip gradients (clip_grad_norm(model, 1.0)), lower the learning rate, "
                   "or add BatchNorm1d / residual connections."))
    # exactly-zero gradients come from dead units (DYING_RELU), not from shrinking products
    # a run that has learnt (almost) nothing is judged 10x less strictly, and without the absolute norm
    stalled = Outcome(run).stalled() and len(run.finite_steps) >= 2 * t.recent
    early = [r.get(f"grad_norm/{first}", 0.0) / r[f"grad_norm/{last}"] for r in run.finite_steps[:t.recent]
             if r.get(f"grad_norm/{last}", 0.0) > 0] if len(paths) >= 3 else []
    judged = min([ratio] + early) if ratio is not None else None     # stalled: the start counts too
    vanishing = ratio is not None and (
        (ratio < t.vanish_ratio and g_first is not None and g_first < t.vanish_norm) or
        (stalled and judged < 20 * t.vanish_ratio))
    if vanishing and run.zero_frac(first) < 0.99:
        out.append(Finding(
            F.VANISHING_GRADIENTS, "error",
            f"gradients are vanishing: the first layer's gradient norm is {g_first:.3g}, "
            f"{ratio:.3g} times the last layer's ({g_last:.3g}); the early layers barely learn.",
            evidence=ev,
            remedy="use ReLU-family activations with He initialisation (or xavier for tanh), fewer or "
                   "residual layers, BatchNorm1d; avoid deep stacks of sigmoids."))
    return out


def _activations(run):
    t = run.t
    out = []
    rows = run.recent("batch_rows")
    few = rows is not None and rows < _MIN_ROWS_FOR_DEATH
    for path in run.keys("dead_frac/"):
        frac = run.recent(f"dead_frac/{path}")
        if frac is not None and frac >= t.dead_frac:
            # off for every sample of a batch of 1 or 2 is what half the units of a healthy net are
            severity = "error" if frac >= 0.99 else ("info" if few else "warning")
            note = (f" (batches of {rows:.0f} samples: too few to tell a dead unit from one that is just off "
                    "for these inputs)" if few and severity == "info" else "")
            out.append(Finding(
                F.DYING_RELU, severity,
                f"{frac:.0%} of the ReLU units in {run.where(path)} are dead: they output 0 for every "
                f"sample of a batch, so they pass no gradient and cannot recover{note}.",
                evidence={"layer": path, "dead_frac": frac, "limit": t.dead_frac,
                          "act_mean": run.recent(f"act_mean/{path}"), "batch_rows": rows},
                remedy="lower the learning rate, initialise with init='he_normal' and zero bias, or use "
                       "LeakyReLU / ELU, which keep a gradient for negative inputs.",
                where=f"layer {path}"))
    for path in run.keys("sat_frac/"):
        frac = run.recent(f"sat_frac/{path}")
        if frac is not None and frac > t.saturated_frac:
            out.append(Finding(
                F.SATURATED_ACTIVATIONS, "warning",
                f"{frac:.0%} of the outputs of {run.where(path)} sit in the flat tails (|z| > 5), where "
                "the derivative is below 0.007: those units hardly learn and block the gradient.",
                evidence={"layer": path, "sat_frac": frac, "limit": t.saturated_frac,
                          "act_std": run.recent(f"act_std/{path}")},
                remedy="normalise the inputs, initialise with init='xavier_uniform' (smaller weights), "
                       "lower the learning rate, or switch to ReLU-family activations.",
                where=f"layer {path}"))
    return out


def _weight_ratios(run, prefix):
    """{param: recent median ratio} for weight matrices (not biases or norm scales)."""
    names = run.keys(prefix)
    if run.model is not None:
        shapes = {n: tuple(p.shape) for n, p in run.model.parameters().items()}
        names = [n for n in names if len(shapes.get(n, ())) >= 2]
    else:
        names = [n for n in names if n.rsplit(".", 1)[-1] == "W"]
    out = {n: run.recent(prefix + n) for n in names}
    return {n: v for n, v in out.items() if v is not None}


def _update_ratios(run):
    ratios = _weight_ratios(run, "update_ratio/")
    return ratios or _weight_ratios(run, "lr_grad_ratio/")


def _learning_rate(run):
    return learning_rate(run, _lr(run))


def _lr(run):
    opt = getattr(run.model, "optimizer", None)
    if opt is not None:
        return float(opt.lr)
    lrs = run.h.history.get("lr")
    return float(lrs[-1]) if lrs else None


def _step_size(run):
    t = run.t
    ratios = _update_ratios(run)
    out = []
    high = {n: v for n, v in ratios.items() if v > t.step_high}
    low = {n: v for n, v in ratios.items() if v < t.step_low
           and (run.recent(f"zero_grad_frac/{n}") or 0.0) < 0.99}      # all-zero gradient: dead units
    if high:
        n, v = max(high.items(), key=lambda kv: kv[1])
        out.append(Finding(
            F.STEP_SIZE, "warning",
            f"each step changes {n} by {v:.3g} of its size (healthy is ~1e-3, limit {t.step_high:g}): "
            "updates this large overwrite what the weights learnt and make training erratic.",
            evidence={"ratios": high, "limit": t.step_high, "lr": _lr(run)},
            remedy="lower the learning rate until update/weight ratios are near 1e-3.",
            where="too large"))
    if low:
        n, v = min(low.items(), key=lambda kv: kv[1])
        out.append(Finding(
            F.STEP_SIZE, "warning",
            f"each step changes {n} by only {v:.3g} of its size (healthy is ~1e-3, limit {t.step_low:g}): "
            "at this pace the weights effectively do not train.",
            evidence={"ratios": low, "limit": t.step_low, "lr": _lr(run)},
            remedy="raise the learning rate (or check for vanishing gradients).",
            where="too small"))
    out.extend(_step_multiplier(run))
    return out


def _step_multiplier(run):
    """Plain SGD steps by exactly lr·g (at most lr·‖g‖/(1-μ) with momentum μ): a larger update
    is built from something else, typically gradients summed over steps without zero_grad."""
    t = run.t
    opt = getattr(run.model, "optimizer", None)
    if type(opt).__name__ != "SGD" or getattr(opt, "weight_decay", 0.0):
        return []
    limit = t.step_growth / (1.0 - getattr(opt, "momentum", 0.0))
    lrs = [v for v in run.h.history.get("lr", []) if _finite(v) and v > 0]
    if lrs and opt.lr > 0:                  # momentum still carries steps taken at a larger, earlier lr
        limit *= max(lrs) / min(lrs[-1], float(opt.lr))
    names = list(_weight_ratios(run, "update_ratio/"))
    per_record = []
    for r in run.finite_steps:
        m = [r[f"update_ratio/{n}"] / r[f"lr_grad_ratio/{n}"] for n in names
             if f"update_ratio/{n}" in r and r.get(f"lr_grad_ratio/{n}", 0) > 0]
        if m:
            per_record.append(float(np.median(m)))
    if len(per_record) < t.recent:
        return []
    early, late = per_record[0], float(np.median(per_record[-t.recent:]))
    if not late > limit:
        return []
    return [Finding(
        F.STEP_SIZE, "warning",
        f"the optimizer is SGD, whose step is lr·‖g‖{' / (1 - momentum)' if opt.momentum else ''}, yet "
        f"recent updates are {late:.3g} times lr·‖g‖ (at the first record: {early:.3g}): the step is built "
        "from more than the current gradient, typically gradients added up over steps because they "
        "were never reset, so the update keeps growing.",
        evidence={"multiplier_first": early, "multiplier_recent": late, "limit": limit,
                  "multipliers": per_record[-12:], "lr": _lr(run)},
        remedy="reset the gradient buffer before every backward pass (model.zero_grad() or "
               "opt.zero_grad()); bpnet layers overwrite their grads, so this happens in hand-written "
               "accumulation loops.",
        where="growing")]


def _update_direction(run):
    t = run.t
    cos = [r["update_grad_cos"] for r in run.finite_steps if _finite(r.get("update_grad_cos"))]
    if len(cos) < t.recent:
        return []
    med = float(np.median(cos))
    opt = getattr(run.model, "optimizer", None)
    plain_sgd = type(opt).__name__ == "SGD" and not getattr(opt, "momentum", 0.0)
    # momentum and adaptive steps lag the gradient: an overshooting run gives a small positive
    # cosine; a sign error gives a large one
    limit = t.ascent_cos if plain_sgd or opt is None else max(t.ascent_cos, 0.5)
    if not med > limit:
        return []
    out = Outcome(run)
    if not plain_sgd and not out.final > 1.05 * out.initial:
        return []       # a lagging step's cosine is only evidence when the loss went up, too
    return [Finding(
        F.GRADIENT_ASCENT, "error",
        f"the updates move the weights along the gradient, uphill: the cosine between each update and "
        f"∇L has median {med:+.2f} over {len(cos)} steps (gradient descent gives -1 for SGD and below 0 "
        "for any descent method), so every step raises the loss to first order whatever the "
        "learning rate.",
        evidence={"median_cos": med, "cos": cos[-12:], "limit": limit},
        remedy="fix the sign of the update: w -= lr * g (not +=); if the gradient itself is "
               "suspect, run bpnet.doctor.check_gradients(model, X[:4]).")]
