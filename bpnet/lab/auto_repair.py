"""The lab's third run: the broken configuration handed to :func:`bpnet.doctor.repair`.

The scenario's hand-written remedy says what an expert changes; the
auto-repaired run starts from the same broken model, data, seed and step
budget and lets the repair loop choose.  The broken run already happened, so
it is the repair's attempt 0 (its findings are the doctor's verdict on it).
The repaired model is then measured by the scenario's own remedy bars.  A
scenario whose failure is a bug in the user's code (a wrong backward, an
update that climbs the loss, gradients never reset) passes when the repair
refuses and names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..doctor import Baseline, repair
from ..doctor.remedies import is_user_code_bug
from .train import Run, predict_labels, recall


@dataclass
class AutoRepair:
    """The auto-repaired run: the repair's report, the numbers behind the bars, the verdict."""
    report: object = field(repr=False)
    values: dict
    bars: list                       # the bars that could be measured
    unmeasured: list                 # the bars whose number only the scenario's own trainer produces
    ok: bool
    bug_expected: bool

    @property
    def remedies(self) -> list[str]:
        return self.report.remedies

    def summary(self) -> str:
        rep = self.report
        if rep.bug is not None:
            name = rep.bug.evidence.get("class") or rep.bug.code
            return f"named the bug instead of repairing: {name} ({rep.bug.code}, {rep.bug.where or 'the update'})"
        chose = "; ".join(f"{a.remedy} ({a.change})" for a in rep.chain) or "nothing"
        what = f"chose {chose}"
        bars = ", ".join(f"{b} (got {_fmt(self.values.get(b.key))})" for b in self.bars) or "none measurable"
        n = len(rep.attempts) - 1
        return (f"{what}; {bars}; {n} attempt{'s' * (n != 1)}, {rep.training_seconds:.2f} s"
                + (f"; not measured here: {', '.join(map(str, self.unmeasured))}" if self.unmeasured else ""))


def _fmt(v) -> str:
    if v is None:
        return "none"
    v = float(v)
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def budget(broken: Run, n: int, steps: int) -> tuple[int, int]:
    """(epochs, batch size) of the broken run: steps per epoch from its history, the batch from that."""
    m = broken.metrics
    run_steps, run_epochs = int(m.get("steps_run") or 0), int(m.get("epochs_run") or 0)
    if run_steps == 0:                                   # refused before training: one full batch
        batch = n
    elif run_epochs >= 2:
        batch = -(-n // max(1, round(run_steps / run_epochs)))
    else:
        batch = min(64, n)
    per_epoch = -(-n // batch)
    return max(1, -(-steps // per_epoch)), batch


def auto_repair(scenario, broken: Run, seed: int = 0, max_attempts: int = 4, chooser: str = "doctor") -> AutoRepair:
    """Repair ``scenario``'s broken run automatically and judge the result by its bars
    (``chooser="random"``: the random-remedy baseline)."""
    data = scenario.make_data(seed)
    X, y, Xv, yv = data["X"], data["y"], data["X_val"], data["y_val"]
    epochs, batch = budget(broken, len(X), scenario.steps)
    base = Baseline(findings=broken.findings, history=broken.history)
    with np.errstate(all="ignore"):
        report = repair(broken.model, X, y, epochs, batch_size=batch, validation_data=(Xv, yv),
                        max_attempts=max_attempts, seed=seed, verbose=0, baseline=base, chooser=chooser)
    bug_expected = any(is_user_code_bug(f) for f in broken.findings if f.code == scenario.expected_code) or \
        scenario.expected_code in ("WRONG_GRADIENT", "GRADIENT_ASCENT")
    keys = {b.key for b in scenario.remedy_bars}
    values = measure(report, Xv, yv, keys)
    bars = [b for b in scenario.remedy_bars if b.key in values]
    unmeasured = [b for b in scenario.remedy_bars if b.key not in values]
    if report.bug is not None:
        ok = bug_expected
    else:
        final = values.get("final_loss", math.nan)
        ok = bool(bars) and all(b.holds(values) for b in bars) and math.isfinite(final)
    return AutoRepair(report=report, values=values, bars=bars, unmeasured=unmeasured, ok=ok,
                      bug_expected=bug_expected)


def measure(report, X_val, y_val, keys) -> dict:
    """The numbers the lab's bars read, measured on the repaired model and its run."""
    from .catalogue._common import finish
    from .catalogue.gradients import distinct_units
    model, history = report.model, report.history
    with np.errstate(all="ignore"):
        Xv = model._preprocess(np.asarray(X_val))
    if report.final is not None and report.final.label_map == "int":
        y_val = np.asarray(y_val).argmax(axis=1) if np.ndim(y_val) == 2 and np.shape(y_val)[1] > 1 else \
            np.rint(np.asarray(y_val).reshape(-1)).astype(np.int64)
    run = finish(Run("auto-repaired", {}, history=history, model=model), Xv, y_val)
    m = run.metrics
    losses = history.history.get("loss", [])
    m["final_loss"] = m["train_loss"] = float(losses[-1]) if losses else math.nan
    val = [v for v in history.history.get("val_loss", []) if math.isfinite(v)] + [m.get("val_loss", math.inf)]
    m["best_val_loss"] = best = min(val)
    m["val_loss_rise"] = m["val_loss"] / best - 1.0 if best > 0 and math.isfinite(best) else math.nan
    if model.loss.kind == "regression":
        m["val_loss_rel"] = m["val_loss"] / float(np.var(y_val))
    elif np.ndim(y_val) == 1 and len(np.unique(y_val)) == 2:       # the imbalance scenario's numbers
        pred = predict_labels(model, Xv)
        m["minority_recall"] = recall(y_val, pred, 1)
        m["majority_recall"] = recall(y_val, pred, 0)
        m["balanced_accuracy"] = 0.5 * (m["minority_recall"] + m["majority_recall"])
    first = model.layers[0]
    if type(first).__name__ == "Dense":
        m["distinct_units"] = distinct_units(model.backend.to_numpy(first.params["W"]))
    steps = history.steps
    if steps and "dh_norm/0/first" in steps[0] and steps[0].get("dh_norm/0/last"):
        m["dh_ratio_step0"] = steps[0]["dh_norm/0/first"] / steps[0]["dh_norm/0/last"]
    if "gradcheck_rel_error" in keys:
        from ..doctor.gradients import check_gradients
        found = check_gradients(model, np.asarray(Xv[:4], dtype=np.float64))
        m["gradcheck_rel_error"] = max((f.evidence["rel_error"] for f in found), default=0.0)
    return {k: v for k, v in m.items() if v is not None}
