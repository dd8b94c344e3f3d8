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
from .recipe import DataStep

# AUTOTRAINER's order: data, output/loss, gradients, learning rate and convergence.
PRIORITY = {
    F.MEMORY_BUDGET: 0.0, F.NONFINITE_DATA: 0.1, F.LABEL_FORMAT: 0.2, F.UNNORMALIZED_INPUTS: 0.3, F.OUTLIERS: 0.4,
    F.CLASS_IMBALANCE: 0.5,
    "EPS_UNDERFLOW": 0.05, F.DOUBLE_SOFTMAX: 1.0, F.OUTPUT_LOSS_MISMATCH: 1.1, F.NONFINITE_LOSS: 1.2,
    F.SYMMETRIC_WEIGHTS: 2.0, F.EXPLODING_GRADIENTS: 2.1, F.EXPLODING_THROUGH_TIME: 2.2, F.VANISHING_GRADIENTS: 2.3,
    F.VANISHING_THROUGH_TIME: 2.4, F.DYING_RELU: 2.5, F.SATURATED_ACTIVATIONS: 2.6,
    F.LR_TOO_HIGH: 3.0, F.STEP_SIZE: 3.1, F.LR_TOO_LOW: 3.2, F.PLATEAU: 3.3, F.OVERFITTING: 3.4,
}
STAGES = ("data", "output/loss", "gradients", "learning rate/convergence")
USER_CODE_BUGS = (F.WRONG_GRADIENT, F.GRADIENT_ASCENT)
# Findings of severity info that still name something worth fixing when nothing else was found
# (a validation loss that rises while the accuracy holds: stop at the best epoch).
IMPROVABLE_INFO = (F.OVERFITTING,)

_RELU_FAMILY = ("ReLU", "LeakyReLU", "ELU")
_SQUASHING = ("Sigmoid", "Tanh")


@dataclass(frozen=True)
class Remedy:
    """One fix: ``apply(recipe, finding, ctx) -> description | None`` edits ``recipe`` in place."""
    name: str
    apply: Callable
    keeps_weights: bool = False

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


# -- the learning rate and the optimizer ----------------------------------------------------
def _scale_lr(factor):
    def apply(recipe, finding, ctx):
        old = recipe.optimizer_config["lr"]
        recipe.optimizer_config["lr"] = new = float(f"{old * factor:.3g}")
        return f"learning rate {old:g} -> {new:g}"
    return apply


def _use_adam(recipe, finding, ctx):
    from ..optim import Adam
    if issubclass(recipe.optimizer_class, Adam):
        return None
    old = recipe.optimizer_class.__name__
    recipe.optimizer_class, recipe.optimizer_config = Adam, {"lr": 1e-3}
    return f"optimizer {old} -> Adam(lr=1e-3)"


def _weight_decay(recipe, finding, ctx):
    from ..optim import AdamW
    if recipe.optimizer_config.get("weight_decay"):
        return None
    lr = recipe.optimizer_config["lr"]
    recipe.optimizer_class, recipe.optimizer_config = AdamW, {"lr": lr, "weight_decay": 0.05}
    return f"optimizer -> AdamW(lr={lr:g}, weight_decay=0.05)"


def _callback(code, make):
    def apply(recipe, finding, ctx):
        if recipe.has_callback(code.split("(")[0]):
            return None
        recipe.callbacks.append((code, make))
        return f"add {code}"
    return apply


def _clipping():
    from ..callbacks import GradientClipping
    return _callback("GradientClipping(5.0)", lambda: GradientClipping(5.0))


def _early_stopping():
    from ..callbacks import EarlyStopping
    return _callback("EarlyStopping('val_loss', patience=5, restore_best_weights=True)",
                     lambda: EarlyStopping("val_loss", patience=5, restore_best_weights=True))


def _reduce_lr():
    from ..callbacks import ReduceLROnPlateau
    return _callback("ReduceLROnPlateau('val_loss', factor=0.5, patience=3)",
                     lambda: ReduceLROnPlateau("val_loss", factor=0.5, patience=3))


# -- initialisation and activations --------------------------------------------------------
def _hidden_pairs(recipe):
    """(index of a Dense, class name of the activation after it or None) for each Dense."""
    out = []
    for i, layer in enumerate(recipe.layers):
        if type(layer).__name__ == "Dense":
            nxt = recipe.layers[i + 1] if i + 1 < len(recipe.layers) else None
            out.append((i, type(nxt).__name__ if nxt is not None else None))
    return out


def _reinit(recipe, finding, ctx):
    """He for layers feeding a ReLU-family unit, Xavier otherwise, orthogonal for recurrences."""
    changes = []
    for layer in (sub for top in recipe.layers for sub in top.walk()):
        cls = type(layer).__name__
        if cls == "RNN":
            for attr, want in (("init", "xavier_uniform"), ("recurrent_init", "orthogonal")):
                if getattr(layer, attr) != want:
                    setattr(layer, attr, want)
                    changes.append(f"RNN {attr} -> {want!r}")
    for i, act in _hidden_pairs(recipe):
        want = "he_normal" if act in _RELU_FAMILY else "xavier_uniform"
        layer = recipe.layers[i]
        if layer.init != want:
            changes.append(f"layer {i} init {_name(layer.init)} -> {want!r}")
            layer.init = want
    return "; ".join(changes) if changes else None


def _orthogonal_recurrence(recipe, finding, ctx):
    changes = []
    for layer in (sub for top in recipe.layers for sub in top.walk()):
        if type(layer).__name__ == "RNN" and layer.recurrent_init != "orthogonal":
            changes.append(f"RNN recurrent_init {_name(layer.recurrent_init)} -> 'orthogonal'")
            layer.recurrent_init = "orthogonal"
    return "; ".join(changes) if changes else None


def _name(spec) -> str:
    from .recipe import init_code
    return init_code(spec)


def _swap_activation(src, dst, init):
    def apply(recipe, finding, ctx):
        from ..layers.base import LAYER_REGISTRY
        hits = [i for i, layer in enumerate(recipe.layers[:-1]) if type(layer).__name__ in src]
        if not hits:
            return None
        for i in hits:
            recipe.layers[i] = LAYER_REGISTRY[dst]()
            if i > 0 and type(recipe.layers[i - 1]).__name__ == "Dense":
                recipe.layers[i - 1].init = init
        return f"hidden {'/'.join(src)} -> {dst} (init {init!r}) in layers {hits}"
    return apply


def _batchnorm(recipe, finding, ctx):
    from ..layers import BatchNorm1d
    names = [type(layer).__name__ for layer in recipe.layers]
    if "BatchNorm1d" in names:
        return None
    pairs = [i for i, act in _hidden_pairs(recipe) if act is not None and act != "Dense" and i + 1 < len(names)
             and names[i + 1] in _RELU_FAMILY + _SQUASHING]
    if not pairs:
        return None
    for i in reversed(pairs):
        recipe.layers.insert(i + 1, BatchNorm1d())
    return f"BatchNorm1d after the Dense layers {pairs}"


def _stack(recipe):
    """Indices of the repeated (Dense(w), activation) pairs after the first, all of width w."""
    pairs = [(i, act) for i, act in _hidden_pairs(recipe) if act in _RELU_FAMILY + _SQUASHING]
    if len(pairs) < 3:
        return []
    width = recipe.layers[pairs[0][0]].units
    return [i for i, _ in pairs[1:] if recipe.layers[i].units == width and recipe.layers[i + 1] is not None]


def _residual(recipe, finding, ctx):
    from ..layers import Residual
    idx = _stack(recipe)
    if len(idx) < 2:
        return None
    for i in reversed(idx):
        block = [recipe.layers[i], recipe.layers[i + 1]]
        recipe.layers[i:i + 2] = [Residual(block)]
    return f"{len(idx)} (Dense, activation) pairs wrapped in Residual blocks"


def _fewer_layers(recipe, finding, ctx):
    idx = _stack(recipe)
    if len(idx) < 2:
        return None
    drop = idx[len(idx) // 2:]
    for i in reversed(drop):
        del recipe.layers[i:i + 2]
    return f"{len(drop)} of the {len(idx) + 1} hidden (Dense, activation) pairs removed"


def _dropout(recipe, finding, ctx):
    from ..layers import Dropout
    if any(type(layer).__name__ == "Dropout" for layer in recipe.layers):
        return None
    acts = [i for i, layer in enumerate(recipe.layers[:-1]) if type(layer).__name__ in _RELU_FAMILY + _SQUASHING]
    if not acts:
        return None
    for i in reversed(acts):
        recipe.layers.insert(i + 1, Dropout(0.5))
    return f"Dropout(0.5) after the hidden activations {acts}"


# -- the output layer and the loss -----------------------------------------------------------
def _remove_last(kinds):
    def apply(recipe, finding, ctx):
        last = type(recipe.layers[-1]).__name__
        if last not in kinds or len(recipe.layers) < 2:
            return None
        recipe.layers.pop()
        return f"final {last} layer removed (the model outputs what {type(recipe.loss).__name__} expects)"
    return apply


def _stable_loss(recipe, finding, ctx):
    """A hand-written softmax + log-loss (or -log σ) replaced by bpnet's fused, shift-safe loss."""
    from ..losses import BCEWithLogits, CrossEntropy
    loss_cls = type(recipe.loss)
    if loss_cls.__module__ == "bpnet.losses":
        return None
    last = recipe.layers[-1]
    if "softmax" in type(last).__name__.lower():
        recipe.layers.pop()
        recipe.loss = CrossEntropy()
        return f"{type(last).__name__} + {loss_cls.__name__} -> logits + CrossEntropy (fused log-softmax)"
    if recipe.loss.kind == "classification" and getattr(last, "units", None) == 1:
        recipe.loss = BCEWithLogits()
        return f"{loss_cls.__name__} -> BCEWithLogits (log σ written as -softplus, finite for every z)"
    return None


def _float16_fix(recipe, finding, ctx):
    if recipe.dtype != "float16":
        return None
    if not recipe.loss_scaler:
        recipe.loss_scaler = True
        return "mixed precision: float16 compute with a dynamic LossScaler and float32 master weights"
    recipe.dtype, recipe.loss_scaler = "float32", False
    return "dtype float16 -> float32"


def _class_weights(focal):
    def apply(recipe, finding, ctx):
        import numpy as np
        from ..losses import CrossEntropy, FocalLoss
        if type(recipe.loss).__name__ not in ("CrossEntropy",) or getattr(recipe.loss, "class_weights", None) \
                is not None and not focal:
            return None
        y = np.asarray(ctx.y)
        labels = y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)
        k = int(getattr(recipe.layers[-1], "units", labels.max() + 1))
        counts = np.maximum(np.bincount(labels, minlength=k), 1)
        w = [float(f"{v:.4g}") for v in len(labels) / (k * counts)]
        recipe.loss = FocalLoss(gamma=2.0, alpha=w) if focal else CrossEntropy(class_weights=w)
        return f"loss -> {type(recipe.loss).__name__}({'gamma=2, alpha' if focal else 'class_weights'}={w})"
    return apply


def _convert_labels(recipe, finding, ctx):
    """Class ids given to a regression loss become CrossEntropy on K logits; an output layer
    narrower than the labels is widened; float class ids become integers."""
    import numpy as np
    from ..layers import Dense
    from ..losses import CrossEntropy
    y = np.asarray(ctx.y)
    is_ids = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    values = np.unique(y)
    if not (is_ids and y.size and np.all(values == np.round(values)) and values.min() >= 0):
        return None
    k = int(values.max()) + 1
    changes = []
    if recipe.loss.kind == "regression":
        recipe.loss = CrossEntropy()
        changes.append(f"loss -> CrossEntropy on {k} classes")
    while type(recipe.layers[-1]).__name__ != "Dense" and len(recipe.layers) > 1:
        changes.append(f"final {type(recipe.layers.pop()).__name__} removed")
    last = recipe.layers[-1]
    if isinstance(last, Dense) and last.units != k:
        recipe.layers[-1] = Dense(k, init=last.init)
        changes.append(f"output layer {last.units} -> {k} units")
    if recipe.label_map != "int" and (y.dtype.kind == "f" or y.ndim == 2):
        recipe.label_map = "int"
        changes.append("labels -> integer class ids of shape (N,)")
    return "; ".join(changes) if changes else None


# -- the data --------------------------------------------------------------------------------
def _data_step(kind, code, train_only=True, **params):
    def apply(recipe, finding, ctx):
        if any(s.kind == kind for s in recipe.data_steps):
            return None
        recipe.data_steps.append(DataStep(kind, code, train_only, params))
        return code.split("  #")[0].strip() if "#" in code else code
    return apply


def _standardize(recipe, finding, ctx):
    if recipe.scaler == "Standardizer" or (finding.code != F.UNNORMALIZED_INPUTS and _standardized(ctx.X)):
        return None
    recipe.scaler = "Standardizer"
    recipe.data_steps.append(DataStep("standardize", "scaler = Standardizer().fit(X_train)  # training split "
                                      "only; model.preprocessor = scaler", train_only=False))
    return "standardise the inputs: Standardizer fit on the training split, kept as model.preprocessor"


def _standardized(X) -> bool:
    """Every feature already has |mean| < 1 and a standard deviation between 0.2 and 5."""
    import numpy as np
    X2 = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    X2 = X2[np.isfinite(X2).all(axis=1)]
    if not len(X2):
        return True
    mean, std = X2.mean(axis=0), X2.std(axis=0)
    std = std[std > 0]
    return bool(np.all(np.abs(mean) < 1.0) and np.all((std > 0.2) & (std < 5.0)))


def _batch_that_fits(recipe, finding, ctx):
    fit = finding.evidence.get("max_batch_size")
    if not fit or fit >= recipe.batch_size:
        return None
    old, recipe.batch_size = recipe.batch_size, int(fit)
    return f"batch size {old} -> {fit} (the largest that fits the memory budget)"


def _table() -> dict:
    lr_down = Remedy("learning rate x0.1", _scale_lr(0.1), keeps_weights=True)
    lr_up = Remedy("learning rate x10", _scale_lr(10.0), keeps_weights=True)
    adam = Remedy("Adam instead of SGD", _use_adam, keeps_weights=True)
    clip = Remedy("gradient clipping (max_norm 5)", _clipping(), keeps_weights=True)
    reinit = Remedy("He/Xavier/orthogonal re-initialisation", _reinit)
    relu = Remedy("ReLU with He init instead of sigmoid/tanh", _swap_activation(_SQUASHING, "ReLU", "he_normal"))
    leaky = Remedy("LeakyReLU instead of ReLU", _swap_activation(("ReLU",), "LeakyReLU", "he_normal"))
    bn = Remedy("BatchNorm1d after dense layers", _batchnorm)
    res = Remedy("residual connections", _residual)
    fewer = Remedy("fewer layers", _fewer_layers)
    ortho = Remedy("orthogonal recurrent weights", _orthogonal_recurrence)
    standardize = Remedy("standardise inputs (fit on the training split)", _standardize)
    return {
        F.MEMORY_BUDGET: [Remedy("largest batch that fits", _batch_that_fits)],
        F.NONFINITE_DATA: [Remedy("drop non-finite training rows", _data_step(
            "drop_nonfinite", "X_train, y_train = drop_nonfinite_rows(X_train, y_train)  # training split only"))],
        F.LABEL_FORMAT: [Remedy("labels in the loss's format", _convert_labels)],
        F.OUTLIERS: [Remedy("drop outlier rows", _data_step(
            "drop_outliers", "X_train, y_train = drop_outliers(X_train, y_train, z=10)  # robust z-score, "
            "training split only", z=10.0)),
                     Remedy("clip outliers", _data_step(
                         "clip_outliers", "X_train = clip_outliers(X_train, z=10)  # training split only", z=10.0))],
        F.UNNORMALIZED_INPUTS: [standardize],
        F.CLASS_IMBALANCE: [Remedy("class weights", _class_weights(False)),
                            Remedy("focal loss", _class_weights(True))],
        F.DOUBLE_SOFTMAX: [Remedy("remove the double softmax", _remove_last(("Softmax",)))],
        F.OUTPUT_LOSS_MISMATCH: [Remedy("linear output layer", _remove_last(("ReLU", "Sigmoid", "Tanh", "Softmax")))],
        "EPS_UNDERFLOW": [Remedy("loss scaling / float32 for float16", _float16_fix)],
        F.NONFINITE_LOSS: [Remedy("numerically stable loss", _stable_loss),
                           Remedy("loss scaling / float32 for float16", _float16_fix),
                           standardize, lr_down, clip],
        F.SYMMETRIC_WEIGHTS: [reinit],
        F.EXPLODING_GRADIENTS: [reinit, ortho, clip, lr_down, bn],
        F.EXPLODING_THROUGH_TIME: [ortho, clip, lr_down],
        F.VANISHING_GRADIENTS: [relu, bn, res, reinit, fewer],
        F.VANISHING_THROUGH_TIME: [ortho, fewer],
        F.DYING_RELU: [lr_down, leaky, reinit],
        F.SATURATED_ACTIVATIONS: [reinit, standardize, bn, relu],
        F.LR_TOO_HIGH: [lr_down, clip, adam],
        F.STEP_SIZE: [lr_down, adam],
        F.LR_TOO_LOW: [adam, lr_up],
        F.PLATEAU: [adam, Remedy("ReduceLROnPlateau(factor 0.5, patience 3)", _reduce_lr(), keeps_weights=True),
                    lr_up],
        F.OVERFITTING: [Remedy("EarlyStopping with best-weight restore", _early_stopping(), keeps_weights=True),
                        Remedy("Dropout(0.5)", _dropout), Remedy("weight decay (AdamW)", _weight_decay)],
    }


REMEDIES: dict = _table()


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

