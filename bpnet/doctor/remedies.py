"""The remedies the repair loop can apply, keyed by the doctor's finding codes.

Each :class:`Remedy` is one standard fix: it edits a :class:`~bpnet.doctor.recipe.Recipe`
and returns a one-line description of the change, or None when it does not
apply to this model (there is nothing to change).  ``REMEDIES[code]`` lists a
problem's fixes in the order they are tried.  Problems are taken in
AUTOTRAINER's priority order (:data:`PRIORITY`): the data first, then the
output layer and loss, then the gradients, then the learning rate and
convergence; a fix to an earlier stage often removes the later symptoms.

``keeps_weights`` marks the fixes that leave the architecture, the
initialisation and the data alone, so a run whose problem appeared mid-way
can restart from its last good checkpoint; every other fix restarts from a
fresh initialisation.  The problems that are bugs in the user's own code
(:data:`USER_CODE_BUGS`) have no remedy: the repair names them instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import findings as F
from . import fixes as X

# After a structural fix that leaves the doctor quiet but the run no better, the seeds' next step:
# re-tune the learning rate (and the optimizer) before giving the fix up.
NO_GAIN = "NO_GAIN"

# AUTOTRAINER's order: data, output/loss, gradients, learning rate and convergence.
PRIORITY = {
    F.MEMORY_BUDGET: 0.0, F.NONFINITE_DATA: 0.1, F.LABEL_FORMAT: 0.2, F.UNNORMALIZED_INPUTS: 0.3,
    "UNNORMALIZED_TARGETS": 0.35, F.OUTLIERS: 0.4,
    F.CLASS_IMBALANCE: 0.5,
    "EPS_UNDERFLOW": 0.05, F.DOUBLE_SOFTMAX: 1.0, F.OUTPUT_LOSS_MISMATCH: 1.1, F.NONFINITE_LOSS: 1.2,
    F.SYMMETRIC_WEIGHTS: 2.0, F.EXPLODING_GRADIENTS: 2.1, F.EXPLODING_THROUGH_TIME: 2.2, F.VANISHING_GRADIENTS: 2.3,
    F.VANISHING_THROUGH_TIME: 2.4, F.DYING_RELU: 2.5, F.SATURATED_ACTIVATIONS: 2.6,
    NO_GAIN: 3.9, F.LR_TOO_HIGH: 3.0, F.STEP_SIZE: 3.1, F.LR_TOO_LOW: 3.2, F.PLATEAU: 3.3, F.OVERFITTING: 3.4,
}
STAGES = ("data", "output/loss", "gradients", "learning rate/convergence")
USER_CODE_BUGS = (F.WRONG_GRADIENT, F.GRADIENT_ASCENT)
# Findings of severity info that still name something worth fixing when nothing else was found
# (a validation loss that rises while the accuracy holds: stop at the best epoch).
IMPROVABLE_INFO = (F.OVERFITTING,)



@dataclass(frozen=True)
class Remedy:
    """One fix: ``apply(recipe, finding, ctx) -> description | None`` edits ``recipe`` in place."""
    name: str
    apply: Callable
    keeps_weights: bool = False
    settles: tuple = ()          # codes this fix answers for good (imbalance is still in the data after weighting)

    def __str__(self):
        return self.name


@dataclass
class Context:
    """What a remedy may read: the training split as it was used, and the last trained model."""
    X: object
    y: object
    model: object = None


def is_user_code_bug(finding) -> bool:
    """A wrong backward, an update that climbs the loss, or gradients summed across steps."""
    return finding.code in USER_CODE_BUGS or (finding.code == F.STEP_SIZE and finding.where == "growing")


def _table() -> dict:
    lr_down = Remedy("learning rate x0.1", X.scale_lr(0.1), keeps_weights=True)
    lr_up = Remedy("learning rate x10", X.scale_lr(10.0), keeps_weights=True)
    adam = Remedy("Adam instead of SGD", X.use_adam, keeps_weights=True)
    clip = Remedy("gradient clipping (max_norm 5)", X.clipping(), keeps_weights=True)
    reinit = Remedy("He/Xavier/orthogonal re-initialisation", X.reinit)
    relu = Remedy("ReLU with He init instead of sigmoid/tanh", X.swap_activation(X.SQUASHING, "ReLU", "he_normal"))
    leaky = Remedy("LeakyReLU instead of ReLU", X.swap_activation(("ReLU",), "LeakyReLU", "he_normal"))
    bn = Remedy("BatchNorm1d after dense layers", X.batchnorm)
    res = Remedy("residual connections", X.residual)
    fewer = Remedy("fewer layers", X.fewer_layers)
    ortho = Remedy("orthogonal recurrent weights", X.orthogonal_recurrence)
    standardize = Remedy("standardise inputs (fit on the training split)", X.standardize)
    return {
        F.MEMORY_BUDGET: [Remedy("largest batch that fits", X.batch_that_fits)],
        F.NONFINITE_DATA: [Remedy("drop non-finite rows", X.drop_nonfinite)],
        F.LABEL_FORMAT: [Remedy("labels in the loss's format", X.convert_labels)],
        F.OUTLIERS: [Remedy("drop outlier rows", X.data_step(
            "drop_outliers", "X_train, y_train = drop_outliers(X_train, y_train, z=10)  # robust z-score, "
            "training split only", z=10.0)),
                     Remedy("clip outliers", X.data_step(
                         "clip_outliers", "X_train = clip_outliers(X_train, z=10)  # training split only", z=10.0))],
        F.UNNORMALIZED_INPUTS: [standardize],
        "UNNORMALIZED_TARGETS": [Remedy("standardise regression targets", X.standardize_targets)],
        F.CLASS_IMBALANCE: [Remedy("class weights", X.class_weights(False), settles=(F.CLASS_IMBALANCE,)),
                            Remedy("focal loss", X.class_weights(True), settles=(F.CLASS_IMBALANCE,))],
        F.DOUBLE_SOFTMAX: [Remedy("remove the double softmax", X.remove_last(("Softmax",)))],
        F.OUTPUT_LOSS_MISMATCH: [Remedy("classification loss on logits", X.classification_loss),
                                 Remedy("linear output layer", X.remove_last(("ReLU", "Sigmoid", "Tanh", "Softmax")))],
        "EPS_UNDERFLOW": [Remedy("loss scaling / float32 for float16", X.float16_fix)],
        F.NONFINITE_LOSS: [Remedy("numerically stable loss", X.stable_loss),
                           Remedy("loss scaling / float32 for float16", X.float16_fix),
                           standardize, lr_down, clip],
        F.SYMMETRIC_WEIGHTS: [reinit],
        F.EXPLODING_GRADIENTS: [reinit, ortho, clip, lr_down, bn],
        F.EXPLODING_THROUGH_TIME: [ortho, clip, lr_down],
        F.VANISHING_GRADIENTS: [relu, bn, res, reinit, fewer],
        F.VANISHING_THROUGH_TIME: [ortho, fewer],
        F.DYING_RELU: [reinit, lr_down, leaky],
        F.SATURATED_ACTIVATIONS: [reinit, standardize, bn, relu],
        F.LR_TOO_HIGH: [lr_down, clip, adam],
        F.STEP_SIZE: [lr_down, adam],
        F.LR_TOO_LOW: [adam, lr_up],
        F.PLATEAU: [adam, Remedy("ReduceLROnPlateau(factor 0.5, patience 3)", X.reduce_lr(), keeps_weights=True),
                    lr_up],
        NO_GAIN: [adam, lr_up, lr_down],
        F.OVERFITTING: [Remedy("EarlyStopping with best-weight restore", X.early_stopping(), keeps_weights=True),
                        Remedy("Dropout(0.5)", X.dropout), Remedy("weight decay (AdamW)", X.weight_decay)],
    }


REMEDIES: dict = _table()
NO_GAIN_FINDING = F.Finding(NO_GAIN, "warning", "the doctor is quiet after the last fix, but the validation "
                            "metric is no better than the best run so far", remedy="re-tune the learning rate")


def remedies_for(finding) -> list:
    """The ordered fixes for ``finding`` (a STEP_SIZE that is too small is a learning rate too low)."""
    if finding.code == F.STEP_SIZE and finding.where == "too small":
        return REMEDIES[F.LR_TOO_LOW]
    return REMEDIES.get(finding.code, [])


def all_remedies() -> list:
    """Every distinct remedy once, in table order (the random baseline draws from these)."""
    seen, out = set(), []
    for fixes in REMEDIES.values():
        for r in fixes:
            if r.name not in seen:
                seen.add(r.name)
                out.append(r)
    return out


def stage(finding) -> float:
    return PRIORITY.get(finding.code, len(STAGES))


def root_causes_first(findings) -> list:
    """The findings in priority order.  A non-finite loss is a symptom whenever anything else
    was found (exploding gradients, a learning rate too high, bad data): it goes last, and
    its own remedies are tried only when it is the whole story."""
    others = [f for f in findings if f.code != F.NONFINITE_LOSS]
    key = (lambda f: stage(f) + (10.0 if f.code == F.NONFINITE_LOSS and others else 0.0))
    return sorted(findings, key=key)

