"""``overfit_check``: can the pipeline drive the loss to ~0 on a handful of samples?

A correct model, loss and backward pass can memorise 10 samples within a few
hundred full-batch steps.  If it cannot, something upstream of "tuning" is
broken, and the other checks say what: the data (check_data), the labels
(their format), the loss (output layer vs loss) or the gradients (a
numerical gradient check of a float64 copy).  If all of those pass, the
labels probably do not belong to their inputs.

Note: a network can memorise 10 *randomly* labelled samples too, so a pass
does not prove the labels are aligned; a misalignment that changes from
step to step (a loader shuffling X and y separately) does fail.  Pass it as
``transform`` to put your batch pipeline under test.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from ..callbacks import Callback
from ..errors import BpnetError
from ..layers.base import layer_from_config
from ..losses import loss_from_config
from ..training import Strategy, TrainingLoop
from .data_checks import check_data
from .model_checks import check_model

_SUSPECT = {"NONFINITE_DATA": "data", "UNNORMALIZED_INPUTS": "data", "OUTLIERS": "data",
            "LABEL_FORMAT": "labels", "CLASS_IMBALANCE": "labels",
            "DOUBLE_SOFTMAX": "loss", "OUTPUT_LOSS_MISMATCH": "loss",
            "SYMMETRIC_WEIGHTS": "gradients"}


@dataclass
class OverfitReport:
    """The outcome of :func:`overfit_check`."""
    passed: bool
    initial_loss: float
    final_loss: float
    n: int
    steps: int
    explanation: str
    losses: list = field(default_factory=list)
    suspects: list = field(default_factory=list)        # of "data", "labels", "loss", "gradients"
    findings: list = field(default_factory=list)
    gradcheck_error: float | None = None

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return (f"OverfitReport(passed={self.passed}, loss {self.initial_loss:.4g} -> {self.final_loss:.4g}, "
                f"n={self.n}, steps={self.steps}, suspects={self.suspects})")

    def __str__(self):
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"overfit check {verdict}: loss {self.initial_loss:.4g} -> {self.final_loss:.4g} in "
                f"{self.steps} steps on {self.n} samples\n{self.explanation}")


def _fresh_copy(model, dtype=None):
    cfg = model.get_config()
    from ..model import Sequential
    fresh = Sequential([layer_from_config(spec) for spec in cfg["layers"]], seed=cfg["seed"],
                       dtype=dtype or cfg["dtype"], backend=model.backend, name=cfg.get("name"))
    fresh.build(model.input_shape)
    return fresh


def _fresh_loss(loss):
    try:
        return loss_from_config(type(loss).__name__, loss.get_config())
    except (KeyError, TypeError):
        fresh = copy.copy(loss)
        fresh.grad = None
        return fresh


class _SameBatch(Strategy):
    """The same (optionally transformed) batch, ``steps`` times, as one epoch of the training loop."""

    def __init__(self, xb, yb, steps, transform, rng):
        self.xb, self.yb, self.steps, self.transform, self.rng = xb, yb, steps, transform, rng

    def prepare(self, loop, X, y):
        pass

    def steps_per_epoch(self, loop) -> int:
        return self.steps

    def batches(self, loop, epoch):
        for _ in range(self.steps):
            if self.transform is None:
                yield self.xb, self.yb
            else:
                yield self.transform(self.xb.copy(), self.yb.copy(), self.rng)


class _StopAtNonfinite(Callback):
    """Records each step's loss; a non-finite one ends the run before its update."""

    def __init__(self, losses: list):
        self.losses = losses

    def on_loss_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        if not math.isfinite(logs["loss"]):
            self.model.skip_step = True
            self.model.stop_training = True


def overfit_check(model, X, y, n: int = 10, steps: int = 200, lr: float | None = None, tol: float = 0.05,
                  transform=None, seed: int | None = None, print_fn=None) -> OverfitReport:
    """Train a fresh copy of ``model`` (same architecture, seed and loss) on ``n`` samples.

    The copy is rebuilt from the model's config (its initial weights, not the
    trained ones), compiled with Adam (``lr``, default 1e-2) and trained on
    the same ``n`` samples, full batch, for ``steps`` steps.  It passes when
    the loss reaches ~0: below ``tol`` for a classification loss (with every
    sample classified right), below 1 % of the initial loss for regression.
    ``transform(xb, yb, rng) -> (xb, yb)``, if given, is applied every step
    (your augmentation or batch pipeline, put under test).  ``model`` must be
    compiled (its loss is copied).
    """
    from ..optim import Adam
    if model.loss is None:
        raise BpnetError("overfit_check needs a compiled model (model.compile(loss=...)): it copies the loss")
    X, y = np.asarray(X), np.asarray(y)
    rng = np.random.default_rng(model.seed if seed is None else seed)
    idx = np.sort(rng.choice(len(X), size=min(n, len(X)), replace=False))
    Xs, ys = X[idx], y[idx]
    if not model.built:
        model.build(X.shape[1:])
    fresh = _fresh_copy(model)
    fresh.compile(loss=_fresh_loss(model.loss), optimizer=Adam(lr=lr or 1e-2))
    classification = fresh.loss.kind == "classification"
    xb_all = Xs.astype(fresh.dtype)
    integer_labels = classification and ys.ndim == 1 and fresh.loss.name != "bce_with_logits"
    yb_all = ys if integer_labels or ys.dtype.kind not in "biuf" else ys.astype(fresh.dtype)
    losses: list = []
    bk = fresh.backend
    batches = _SameBatch(xb_all, yb_all, steps, transform, rng)
    loop = TrainingLoop(fresh, [_StopAtNonfinite(losses)], epochs=1, batch_size=len(xb_all),
                        strategy=batches, trust_targets=False)
    try:
        loop.run(xb_all, yb_all)
    except BpnetError as e:         # e.g. a label error: report it instead of crashing
        losses.append(math.nan)
        failure = str(e)
    else:
        failure = None
    # judge on the clean (untransformed) samples in evaluation mode
    final = losses[-1]
    correct = True
    if failure is None and math.isfinite(final):
        out = fresh.forward(xb_all, training=False)
        final = float(fresh.loss.forward(out, bk.asarray(yb_all)))
        losses.append(final)
        if classification:
            correct = fresh.loss.count_correct(out, bk.asarray(yb_all)) == len(yb_all)
    initial = losses[0]
    if classification:
        passed = math.isfinite(final) and final <= tol and correct
    else:
        passed = math.isfinite(final) and final <= 0.01 * initial
    report = OverfitReport(passed=passed, initial_loss=initial, final_loss=final, n=len(idx),
                           steps=len(losses) - 1, explanation="", losses=losses)
    if passed:
        report.explanation = (f"the loss fell from {initial:.4g} to {final:.4g}: data, labels, loss and "
                              "gradients can fit a small sample, so the pipeline is wired correctly.")
    else:
        _explain(report, model, fresh, Xs, ys, failure)
    if print_fn is not None:
        print_fn(str(report))
    return report


def _explain(report, model, fresh, Xs, ys, failure):
    findings = check_data(Xs, ys, loss=fresh.loss, model=fresh) + check_model(_fresh_copy(model), fresh.loss)
    report.findings = findings
    suspects = []
    for f in findings:
        s = _SUSPECT.get(f.code)
        if s and s not in suspects and f.severity != "info":
            suspects.append(s)
    report.gradcheck_error = _gradcheck(model, Xs, ys, fresh.loss)
    if report.gradcheck_error is not None and report.gradcheck_error > 1e-4 and "gradients" not in suspects:
        suspects.append("gradients")
    lines = [f"the loss only went from {report.initial_loss:.4g} to {report.final_loss:.4g} on "
             f"{report.n} samples; a correct pipeline drives it to ~0."]
    if failure:
        lines.append(f"training stopped with an error: {failure}")
    if not math.isfinite(report.final_loss):
        lines.append("the loss became NaN/Inf: run with detect_anomaly to find where.")
    if "gradients" in suspects and report.gradcheck_error is not None and report.gradcheck_error > 1e-4:
        lines.append(f"gradients: the backward pass disagrees with numerical differences (relative error "
                     f"{report.gradcheck_error:.2g}); a layer's backward is wrong (see bpnet.gradcheck).")
    for f in findings:
        if _SUSPECT.get(f.code):
            lines.append(f"{_SUSPECT[f.code]}: {f.message}")
    if not suspects:
        suspects.append("labels")
        lines.append("data, label format, loss and gradients all pass their checks, so the labels probably "
                     "do not belong to their inputs (shuffled or misaligned in the pipeline); otherwise "
                     "the model is too small for even n samples.")
    report.suspects = suspects
    report.explanation = "\n".join(lines)


def _gradcheck(model, Xs, ys, loss, k: int = 3):
    """Worst relative error of the model's backward (a float64 copy, k samples), or None if it cannot run."""
    from ..gradcheck import gradcheck
    try:
        m64 = _fresh_copy(model, dtype="float64")
        lf = _fresh_loss(loss)
        lf.backend = m64.backend
        x = np.asarray(Xs[:k], dtype=np.float64)
        y = ys[:k] if (ys.dtype.kind in "iu" and ys.ndim == 1) else np.asarray(ys[:k], dtype=np.float64)
        rep = gradcheck(m64, x, target=y, loss=lf, raise_on_fail=False, tol=1e-4, max_elements=50,
                        check_inputs=False)
        return float(rep.max_rel_error)
    except Exception:          # a custom layer without config, a backend without float64, ...
        return None
