"""Rules over the loss curves, judged on the run's whole course and scaled to its own noise.

* LR_TOO_HIGH -- the loss rises at the end, swings up and down by more than a
  quarter of what the run has learnt, or ends above where it started; or
  the first updates were many times the weights' size and the run then
  stalled (the learning rate wrecked the weights at once).
* LR_TOO_LOW / PLATEAU -- the loss is flat; only a warning when the run is
  stuck (it removed under a tenth of the initial loss, or a classifier's
  training accuracy is at chance).
* OVERFITTING -- validation loss rising while training loss falls, by more
  than the validation loss's own noise and by a real share of what was
  learnt; when a validation accuracy is recorded and it holds at its best
  level (within the sampling noise of the validation set, read off the
  accuracy's granularity 1/n), the run is overconfident, not worse: info.

"Learnt well" (:meth:`Outcome.learnt_well`): the final loss is below half the
initial loss (the first recorded step's loss, else the first epoch's; for
cross-entropy at most ln K, the loss of guessing) and a
classifier's training accuracy is at least halfway from chance to 1.
"""
from __future__ import annotations

import math

import numpy as np

from . import findings as F
from .findings import Finding


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class Outcome:
    """How well a run went, from its history: initial and final loss, accuracies."""

    def __init__(self, run):
        s, _ = run.loss_series()
        steps = [r["loss"] for r in run.finite_steps[:1]]
        self.initial = float(steps[0]) if steps else (float(s[0]) if s else math.nan)
        self.final = float(np.median(s[-3:])) if s else math.nan
        self.best = float(min(s)) if s else math.nan
        self.series = s
        self.history = run.h.history
        shape = getattr(run.model, "output_shape", None) if getattr(run.model, "built", False) else None
        width = int(np.prod(shape)) if shape else 0
        self.classes = 2 if width == 1 else width
        # a classifier's progress counts from the loss of guessing (ln K for cross-entropy), not from
        # an initial loss that a bad initialisation made absurd
        loss_name = type(getattr(run.model, "loss", None)).__name__
        self.reference = self.initial
        if loss_name in ("CrossEntropy", "BCEWithLogits") and self.classes >= 2 and _finite(self.initial):
            self.reference = min(self.initial, math.log(self.classes))

    @property
    def learnt(self) -> float:
        """Share of the initial loss removed by the end (1 = all of it, < 0 = got worse)."""
        if not (_finite(self.reference) and _finite(self.final)) or self.reference <= 0:
            return 0.0
        return 1.0 - self.final / self.reference

    def learnt_well(self) -> bool:
        """Half the initial loss removed and, for a classifier, a training accuracy at least halfway
        from chance to 1 (an absurd initial loss makes the first test easy)."""
        if self.learnt <= 0.5:
            return False
        acc = [a for a in self.history.get("accuracy", []) if _finite(a)]
        if not acc or self.classes < 2:
            return True
        chance = 1.0 / self.classes
        return float(np.mean(acc[-3:])) >= chance + 0.5 * (1 - chance)

    def stalled(self, share: float = 0.25) -> bool:
        """Learnt (almost) nothing: ``share`` of the loss or less, or a training accuracy at chance."""
        if self.learnt < share:
            return True
        acc = [a for a in self.history.get("accuracy", []) if _finite(a)]
        if not acc or self.classes < 2:
            return False
        return float(np.mean(acc[-3:])) < 1.0 / self.classes + 0.1


def _noise(values) -> float:
    """Robust noise level of a curve: MAD of its second differences, scaled to one point's σ.

    For a smooth trend the second difference x[i+1] - 2x[i] + x[i-1] is ~0; for white noise of
    σ it has σ·√6, so σ ≈ 1.4826·median|Δ²x| / √6."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if len(v) < 4:
        return 0.0
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    return float(1.4826 * np.median(np.abs(d2)) / math.sqrt(6.0))


def learning_rate(run, lr) -> list:
    t, out = run.t, Outcome(run)
    s, unit = run.loss_series()
    found = []
    if len(s) >= 3:
        found = _too_high(run, s, unit, out, lr)
    if not found:
        found = _wrecked_at_start(run, out, lr)
    w = t.plateau_window
    if len(s) >= w + 1 and not found:
        found = _flat(run, s, unit, out, lr)
    return found


def _too_high(run, s, unit, out, lr):
    t = run.t
    k = t.rise_epochs
    tail = s[-(k + 1):]
    progress = max(out.initial - out.best, 0.0) if _finite(out.initial) else abs(s[0])
    floor = max(t.noise_floor * abs(s[0]), 0.25 * progress)
    rising = len(tail) == k + 1 and all(b > a for a, b in zip(tail, tail[1:])) and tail[-1] - tail[0] > floor
    rise = (tail[-1] - tail[0]) / abs(tail[0]) if rising and tail[0] != 0 else 0.0
    swings, last_sign, last_swing = 0, 0, -1
    for i, (a, b) in enumerate(zip(s, s[1:])):
        base = min(abs(a), abs(b))
        if base > 0 and abs(b - a) / base > t.swing_rel and abs(b - a) > floor:
            sign = 1 if b > a else -1
            if sign != last_sign:
                swings += 1
            last_sign, last_swing = sign, i + 1
    diverged = _finite(out.initial) and out.final > out.initial * 1.05 and s[-1] > s[0]
    peak = max(s)
    blew_up = _finite(out.initial) and out.initial > 0 and peak > 10 * out.initial and not _exploding_at_init(run)
    if not (rise > t.rise_rel or swings >= t.swing_count or diverged or blew_up):
        return []
    by = f"{rise:.0%}" if rise < 10 else f"a factor of {1 + rise:.3g}"
    if rise > t.rise_rel:
        why = f"the loss rose {k} {unit}s in a row, by {by} (from {tail[0]:.4g} to {tail[-1]:.4g})"
    elif swings >= t.swing_count:
        why = (f"the loss swung up and down by more than {t.swing_rel:.0%} {swings} times, each swing larger "
               f"than {floor:.3g} (a quarter of what the run learnt, or its noise)")
    elif diverged:
        why = f"the loss ended at {out.final:.4g}, above where it started ({out.initial:.4g})"
    else:
        why = (f"the loss shot up to {peak:.4g}, {peak / out.initial:.3g} times its initial value "
               f"{out.initial:.4g} ({unit} {s.index(peak)}), before coming down to {out.final:.4g}")
    severe = rise > 1.0 or diverged or (blew_up and not out.learnt_well())
    # swings only in the first half of a run that then learnt well: gone by the end
    settled = (swings >= t.swing_count and not (rise > t.rise_rel or diverged or blew_up)
               and last_swing < len(s) / 2 and out.learnt_well())
    if settled:
        why += f", all in the first half of the run (the last at {unit} {last_swing}); it settled afterwards"
    return [Finding(
        F.LR_TOO_HIGH, "error" if severe else ("info" if settled else "warning"),
        f"the learning rate looks too high: {why}; the steps overshoot the minimum.",
        evidence={"losses": [float(v) for v in s[-12:]], "unit": unit, "rise": rise, "swings": swings,
                  "swing_floor": floor, "initial_loss": out.initial, "final_loss": out.final, "lr": lr},
        remedy="divide the learning rate by 3-10, or use a warm-up / ReduceLROnPlateau; clip "
               "gradients if single batches spike.")]


def _wrecked_at_start(run, out, lr):
    """Updates many times the weights' size in the first records, then a run that did not learn:
    the learning rate threw the weights away at once (typically killing the ReLUs)."""
    t = run.t
    first = run.finite_steps[:t.recent] or run.steps[:t.recent]
    ratios = [v for r in first for k, v in r.items() if k.startswith("update_ratio/") and k.endswith(".W")
              and _finite(v)]
    if not ratios or max(ratios) < 5 * t.step_high or _exploding_at_init(run):
        return []
    big = max(ratios)
    if out.learnt_well() and big < 50 * t.step_high:
        return []               # a rough start the run recovered from; 5x the weights' size is not rough
    recovered = out.learnt_well()
    return [Finding(
        F.LR_TOO_HIGH, "warning" if recovered else "error",
        f"the learning rate looks too high: the first updates changed a weight matrix by {big:.3g} times its "
        f"own size (healthy is ~1e-3), and the run "
        f"{'learnt afterwards, but from thrown-away weights' if recovered else 'never recovered'} (loss "
        f"{out.initial:.4g} -> {out.final:.4g}); steps that large throw the initial weights away and can "
        "kill units for good.",
        evidence={"max_early_update_ratio": big, "initial_loss": out.initial, "final_loss": out.final, "lr": lr},
        remedy="divide the learning rate by 10 (Adam: 1e-3; SGD: 0.01-0.1 for standardised inputs), or "
               "warm it up (LinearWarmup).")]


def _exploding_at_init(run) -> bool:
    """The gradient was already huge at the first record, before any update could be to blame:
    the initial weights (or the data), not the learning rate, made it explode."""
    first = run.finite_steps[:1] or run.steps[:1]
    if not first:
        return False
    r, t = first[0], run.t
    g = r.get("grad_norm/total")
    return g is not None and (not _finite(g) or g > t.explode_norm)


def _flat(run, s, unit, out, lr):
    t = run.t
    w = t.plateau_window
    ref, best = s[-w - 1], min(s[-w:])
    improvement = (ref - best) / abs(ref) if ref != 0 else 0.0
    # a gain no larger than the curve's own jitter is no gain: the best of w noisy points lies
    # about 2 sigma below their mean by chance alone
    noisy = ref - best <= 2 * _noise(s[-(w + 1):] if len(s) > w + 4 else s) and out.stalled()
    if not ((improvement < t.plateau_rel or noisy) and
            s[-1] > max(t.converged_loss, t.converged_rel * abs(s[0]))):
        return []
    # flat after some progress may be the data's noise floor (a linear model on diabetes removes 25%)
    severity = "warning" if out.stalled(share=0.1) else "info"
    ratios = run.update_ratios()
    med = float(np.median(list(ratios.values()))) if ratios else None
    ev = {"losses": [float(v) for v in s[-(w + 1):]], "unit": unit, "improvement": improvement,
          "median_update_ratio": med, "lr": lr, "learnt": out.learnt}
    if med is not None and med < t.lr_low_ratio:
        return [Finding(
            F.LR_TOO_LOW, severity,
            f"the loss has not improved over the last {w} {unit}s ({improvement:.2%}) and each step "
            f"changes the weights by only {med:.2g} of their size (a healthy step is ~1e-3): the "
            "learning rate is too low.",
            evidence=ev,
            remedy="raise the learning rate by 10x at a time (or run an LR range test); Adam with "
                   "lr=1e-3 is a sound default.")]
    return [Finding(
        F.PLATEAU, severity,
        f"the loss has been flat at {s[-1]:.4g} for the last {w} {unit}s "
        f"(improvement {improvement:.2%}) although the weights still move"
        f"{f' ({med:.2g} of their size per step)' if med is not None else ''}"
        + (f"; the run did learn ({out.learnt:.0%} of the initial loss removed), so it may simply have "
           "converged (as far as this model and data allow)" if severity == "info" else "") + ".",
        evidence=ev,
        remedy="the model may be stuck (saddle, dead units) or too small: try a learning-rate "
               "schedule (ReduceLROnPlateau), a bigger model, or check the other findings.")]


def _accuracy_holds(hist):
    """(holds, evidence): does the validation accuracy stay at its best, within its sampling noise?"""
    acc = [a for a in hist.get("val_accuracy", []) if _finite(a)]
    if len(acc) < 4:
        return None, {}
    steps = np.diff(np.unique(np.round(acc, 9)))
    n = round(1.0 / steps.min()) if len(steps) and steps.min() > 0 else 1000
    # the best of a 3-epoch running mean (a single epoch's peak is the noise's maximum), against the
    # mean of the last 3; the difference of two such estimates has about √2 times one's binomial σ
    best = float(np.max(np.convolve(acc, np.ones(3) / 3, mode="valid")))
    final = float(np.mean(acc[-3:]))
    sigma = math.sqrt(max(best * (1 - best), 1.0 / n) / max(n, 1))
    margin = max(2 * math.sqrt(2) * sigma, 2 * _noise(acc), 2.0 / max(n, 1))
    return best - final <= margin, {"best_val_accuracy": best, "final_val_accuracy": final,
                                    "val_size_estimate": int(n), "accuracy_margin": margin}


def overfitting(run) -> list:
    t = run.t
    val, tr = run.val_loss, run.epoch_loss
    k = t.overfit_epochs
    if len(val) < k + 1 or len(tr) < k + 1 or not all(_finite(v) for v in val[-(k + 1):]):
        return []
    finite = [v for v in val if _finite(v)]
    best = min(finite)
    best_epoch = int(np.nanargmin(np.asarray(val, dtype=float)))
    tail = val[-(k + 1):]
    noise = _noise(val)
    learnt = max(finite[0] - best, 0.0)
    rise = val[-1] - best
    rising = float(np.mean(tail[1:])) > float(np.mean(val[max(best_epoch - 1, 0):best_epoch + 2])) + noise
    # the training loss must really have kept falling since the best epoch, by more than its jitter
    still_learning = tr[best_epoch] - tr[-1] > 2 * _noise(tr)
    if not (rising and still_learning and rise > best * t.overfit_rise and rise > 2 * noise
            and rise > 0.1 * learnt and len(val) - 1 - best_epoch >= k):
        return []
    holds, acc_ev = _accuracy_holds(run.h.history)
    severity = "info" if holds else "warning"
    stopped = any(type(cb).__name__ == "EarlyStopping" for cb in getattr(run, "callbacks", ()))
    msg = (f"the model is overfitting: validation loss rose to {val[-1]:.4g} ({(val[-1] / best - 1):.0%} above "
           f"its best, {best:.4g} at epoch {best_epoch}; noise ±{noise:.2g}) while the training loss kept "
           f"falling (to {tr[-1]:.4g})")
    if holds:
        msg += (f"; validation accuracy holds at {acc_ev['final_val_accuracy']:.3g} (best "
                f"{acc_ev['best_val_accuracy']:.3g}), so the model grows overconfident rather than worse")
    return [Finding(
        F.OVERFITTING, "info" if stopped else severity, msg + ".",
        evidence={"val_loss": [float(v) for v in val[-(k + 1):]], "loss": [float(v) for v in tr[-(k + 1):]],
                  "best_val_loss": float(best), "best_epoch": best_epoch, "noise": noise, **acc_ev},
        remedy="stop at the best epoch (EarlyStopping with restore_best_weights), add weight decay "
               "(AdamW) or Dropout, get more data, or use a smaller model.")]
