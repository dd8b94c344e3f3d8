"""The standard fixes behind :mod:`~bpnet.doctor.remedies`, one function each.

Each ``fix(recipe, finding, ctx) -> description | None`` edits a
:class:`~bpnet.doctor.recipe.Recipe` in place and says what it changed, or
returns None when there is nothing to change for this model (a factory such
as ``scale_lr(0.1)`` returns such a function).  ``ctx`` is a
:class:`~bpnet.doctor.remedies.Context`: the training split as it was used.
"""
from __future__ import annotations

from . import findings as F
from .recipe import DataStep

RELU_FAMILY = ("ReLU", "LeakyReLU", "ELU")
SQUASHING = ("Sigmoid", "Tanh")


# -- the learning rate and the optimizer ----------------------------------------------------
def scale_lr(factor):
    """lr x factor; raising an lr a hundred times below the optimizer's default goes straight
    to the default (x10 steps from 1e-7 would spend four attempts)."""
    def apply(recipe, finding, ctx):
        old = recipe.optimizer_config["lr"]
        new = float(f"{old * factor:.3g}")
        default = _default_lr(recipe.optimizer_class)
        if factor > 1 and default is not None and old < default / 100:
            recipe.optimizer_config["lr"] = default
            return f"learning rate {old:g} -> {default:g} (the optimizer's default)"
        recipe.optimizer_config["lr"] = new
        return f"learning rate {old:g} -> {new:g}"
    return apply


def _default_lr(cls):
    import inspect
    p = inspect.signature(cls.__init__).parameters.get("lr")
    return None if p is None or p.default is inspect.Parameter.empty else float(p.default)


def use_adam(recipe, finding, ctx):
    """Adam (lr 1e-3) instead of a non-adaptive optimizer: a per-weight step size."""
    from ..optim import Adam
    if issubclass(recipe.optimizer_class, Adam):
        return None
    old = recipe.optimizer_class.__name__
    recipe.optimizer_class, recipe.optimizer_config = Adam, {"lr": 1e-3}
    return f"optimizer {old} -> Adam(lr=1e-3)"


def weight_decay(recipe, finding, ctx):
    """AdamW with decoupled weight decay 0.05 at the same learning rate."""
    from ..optim import AdamW
    if recipe.optimizer_config.get("weight_decay"):
        return None
    lr = recipe.optimizer_config["lr"]
    recipe.optimizer_class, recipe.optimizer_config = AdamW, {"lr": lr, "weight_decay": 0.05}
    return f"optimizer -> AdamW(lr={lr:g}, weight_decay=0.05)"


def callback(code, make):
    """Add the callback ``make()`` (written ``code``) to every run, once."""
    def apply(recipe, finding, ctx):
        if recipe.has_callback(code.split("(")[0]):
            return None
        recipe.callbacks.append((code, make))
        return f"add {code}"
    return apply


def clipping():
    from ..callbacks import GradientClipping
    return callback("GradientClipping(5.0)", lambda: GradientClipping(5.0))


def early_stopping():
    from ..callbacks import EarlyStopping
    return callback("EarlyStopping('val_loss', patience=5, restore_best_weights=True)",
                     lambda: EarlyStopping("val_loss", patience=5, restore_best_weights=True))


def reduce_lr():
    from ..callbacks import ReduceLROnPlateau
    return callback("ReduceLROnPlateau('val_loss', factor=0.5, patience=3)",
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


def reinit(recipe, finding, ctx):
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
        want = "he_normal" if act in RELU_FAMILY else "xavier_uniform"
        layer = recipe.layers[i]
        if act is None and _scaled_init(layer.init):
            continue                      # an output layer with a standard scale stays as it is
        if layer.init != want:
            changes.append(f"layer {i} init {_name(layer.init)} -> {want!r}")
            layer.init = want
        if layer.bias_init != "zeros":
            changes.append(f"layer {i} bias_init {_name(layer.bias_init)} -> 'zeros'")
            layer.bias_init = "zeros"
    return "; ".join(changes) if changes else None


def _scaled_init(spec) -> bool:
    """A fan-scaled initialiser by name (Xavier, He/Kaiming, LeCun, orthogonal)."""
    return isinstance(spec, str) and spec.split("_")[0] in ("xavier", "he", "kaiming", "lecun", "orthogonal")


def orthogonal_recurrence(recipe, finding, ctx):
    """An orthogonal recurrent matrix (every eigenvalue of modulus 1): ‖h U‖ = ‖h‖ through time."""
    changes = []
    for layer in (sub for top in recipe.layers for sub in top.walk()):
        if type(layer).__name__ == "RNN" and layer.recurrent_init != "orthogonal":
            changes.append(f"RNN recurrent_init {_name(layer.recurrent_init)} -> 'orthogonal'")
            layer.recurrent_init = "orthogonal"
    return "; ".join(changes) if changes else None


def _name(spec) -> str:
    from .recipe import init_code
    return init_code(spec)


def swap_activation(src, dst, init):
    """Hidden activations of the classes ``src`` become ``dst``; the Dense before each gets ``init``."""
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


def batchnorm(recipe, finding, ctx):
    """BatchNorm1d between each hidden Dense and its activation (each layer re-centred and re-scaled)."""
    from ..layers import BatchNorm1d
    names = [type(layer).__name__ for layer in recipe.layers]
    if "BatchNorm1d" in names:
        return None
    pairs = [i for i, act in _hidden_pairs(recipe) if act in RELU_FAMILY + SQUASHING]
    if not pairs:
        return None
    for i in reversed(pairs):
        recipe.layers.insert(i + 1, BatchNorm1d())
    return f"BatchNorm1d after the Dense layers {pairs}"


def _stack(recipe):
    """Indices of the repeated (Dense(w), activation) pairs after the first, all of width w."""
    pairs = [(i, act) for i, act in _hidden_pairs(recipe) if act in RELU_FAMILY + SQUASHING]
    if len(pairs) < 3:
        return []
    width = recipe.layers[pairs[0][0]].units
    return [i for i, _ in pairs[1:] if recipe.layers[i].units == width]


def residual(recipe, finding, ctx):
    """Each repeated (Dense, activation) pair of a deep stack becomes y = x + F(x)."""
    from ..layers import Residual
    idx = _stack(recipe)
    if len(idx) < 2:
        return None
    for i in reversed(idx):
        block = [recipe.layers[i], recipe.layers[i + 1]]
        recipe.layers[i:i + 2] = [Residual(block)]
    return f"{len(idx)} (Dense, activation) pairs wrapped in Residual blocks"


def fewer_layers(recipe, finding, ctx):
    """Half of the repeated (Dense, activation) pairs of a deep stack removed."""
    idx = _stack(recipe)
    if len(idx) < 2:
        return None
    drop = idx[len(idx) // 2:]
    for i in reversed(drop):
        del recipe.layers[i:i + 2]
    return f"{len(drop)} of the {len(idx) + 1} hidden (Dense, activation) pairs removed"


def dropout(recipe, finding, ctx):
    """Dropout(0.5) after every hidden activation."""
    from ..layers import Dropout
    if any(type(layer).__name__ == "Dropout" for layer in recipe.layers):
        return None
    acts = [i for i, layer in enumerate(recipe.layers[:-1]) if type(layer).__name__ in RELU_FAMILY + SQUASHING]
    if not acts:
        return None
    for i in reversed(acts):
        recipe.layers.insert(i + 1, Dropout(0.5))
    return f"Dropout(0.5) after the hidden activations {acts}"


# -- the output layer and the loss -----------------------------------------------------------
def remove_last(kinds):
    """The final layer dropped when it is one of ``kinds`` (a softmax before CrossEntropy, an
    activation before a loss that wants logits or unbounded outputs)."""
    def apply(recipe, finding, ctx):
        last = type(recipe.layers[-1]).__name__
        if last not in kinds or len(recipe.layers) < 2:
            return None
        recipe.layers.pop()
        return f"final {last} layer removed (the model outputs what {type(recipe.loss).__name__} expects)"
    return apply


def stable_loss(recipe, finding, ctx):
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


def float16_fix(recipe, finding, ctx):
    """A float16 model: first a dynamic loss scaler with float32 master weights, then float32."""
    if recipe.dtype != "float16":
        return None
    if not recipe.loss_scaler:
        recipe.loss_scaler = True
        return "mixed precision: float16 compute with a dynamic LossScaler and float32 master weights"
    recipe.dtype, recipe.loss_scaler = "float32", False
    return "dtype float16 -> float32"


def class_weights(focal):
    """CrossEntropy weighted by N / (K·N_c) per class, or the focal loss with those weights as α."""
    def apply(recipe, finding, ctx):
        import numpy as np
        from ..losses import CrossEntropy, FocalLoss
        if type(recipe.loss).__name__ != "CrossEntropy":
            return None
        if not focal and getattr(recipe.loss, "class_weights", None) is not None:
            return None                                   # already weighted
        y = np.asarray(ctx.y)
        labels = y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)
        k = int(getattr(recipe.layers[-1], "units", labels.max() + 1))
        counts = np.maximum(np.bincount(labels, minlength=k), 1)
        w = [float(f"{v:.4g}") for v in len(labels) / (k * counts)]
        recipe.loss = FocalLoss(gamma=2.0, alpha=w) if focal else CrossEntropy(class_weights=w)
        return f"loss -> {type(recipe.loss).__name__}({'gamma=2, alpha' if focal else 'class_weights'}={w})"
    return apply


def convert_labels(recipe, finding, ctx):
    """Labels in the format the loss expects.

    Class ids given to a regression loss become CrossEntropy on K logits (an output layer
    narrower than the labels is widened); 1-based (or gapped) ids become 0..K-1; two-valued
    binary targets (-1/+1) become 0/1; multi-hot rows under CrossEntropy become BCEWithLogits.
    """
    import numpy as np
    y = np.asarray(ctx.y)
    loss_name = type(recipe.loss).__name__
    if y.ndim == 2 and y.shape[1] > 1:
        if loss_name in ("CrossEntropy", "FocalLoss") and np.isin(y, (0, 1)).all() and np.any(y.sum(axis=1) != 1):
            from ..losses import BCEWithLogits
            recipe.loss = BCEWithLogits()
            return f"multi-hot targets: {loss_name} (one class per row) -> BCEWithLogits (one 0/1 target per output)"
        return None
    values = np.unique(y[np.isfinite(y)] if y.dtype.kind == "f" else y)
    if loss_name == "BCEWithLogits" and len(values) == 2 and not np.array_equal(values, [0, 1]):
        recipe.label_map, recipe.label_classes = "binary", tuple(values.tolist())
        lo, hi = float(values.min()), float(values.max())
        recipe.data_steps.append(DataStep("labels", f"y = (y == {hi!r}).astype('float32')  # {lo!r}/{hi!r} targets "
                                          "as 0/1", train_only=False))
        return f"targets {values.min():g}/{values.max():g} -> 0/1 for BCEWithLogits"
    if not (y.size and np.all(values == np.round(values)) and values.min() >= 0):
        return None
    changes = []
    if recipe.loss.kind == "classification" and values.min() >= 1 or \
            recipe.loss.kind == "classification" and len(values) < values.max() + 1 and len(values) > 1:
        recipe.label_map, recipe.label_classes = "unique", tuple(values.tolist())
        recipe.data_steps.append(DataStep("labels", "classes, y = np.unique(y, return_inverse=True)  # class i "
                                          "is label classes[i]", train_only=False))
        changes.append(f"labels {values.tolist()[:6]} -> class indices 0..{len(values) - 1}")
        k = len(values)
    else:
        k = int(values.max()) + 1
    _classification_head(recipe, k, changes)
    if recipe.label_map is None and (y.dtype.kind == "f" or y.ndim == 2):
        recipe.label_map = "int"
        changes.append("labels -> integer class ids of shape (N,)")
    return "; ".join(changes) if changes else None


def _classification_head(recipe, k, changes):
    """CrossEntropy on k logits: the loss switched from regression, output activations removed,
    the last Dense k units wide."""
    from ..layers import Dense
    from ..losses import CrossEntropy
    if recipe.loss.kind == "regression":
        recipe.loss = CrossEntropy()
        changes.append(f"loss -> CrossEntropy on {k} classes")
    while type(recipe.layers[-1]).__name__ != "Dense" and len(recipe.layers) > 1:
        changes.append(f"final {type(recipe.layers.pop()).__name__} removed")
    last = recipe.layers[-1]
    if isinstance(last, Dense) and last.units != k and k > 1:
        recipe.layers[-1] = Dense(k, init=last.init)
        changes.append(f"output layer {last.units} -> {k} units")


def classification_loss(recipe, finding, ctx):
    """A softmax (or sigmoid) output trained with a regression loss on one-hot (0/1) targets:
    the classification loss on logits instead."""
    import numpy as np
    from ..losses import BCEWithLogits
    y = np.asarray(ctx.y)
    last = type(recipe.layers[-1]).__name__
    if recipe.loss.kind != "regression" or last not in ("Softmax", "Sigmoid") or not np.isin(y, (0, 1)).all():
        return None
    old = type(recipe.loss).__name__
    if last == "Softmax" and y.ndim == 2 and y.shape[1] > 1 and np.all(y.sum(axis=1) == 1):
        changes = []
        _classification_head(recipe, y.shape[1], changes)
        return f"{last} + {old} on one-hot targets -> logits + CrossEntropy"
    if last == "Sigmoid":
        recipe.layers.pop()
        recipe.loss = BCEWithLogits()
        return f"Sigmoid + {old} on 0/1 targets -> logits + BCEWithLogits"
    return None


# -- the data --------------------------------------------------------------------------------
def drop_nonfinite(recipe, finding, ctx):
    """Non-finite training rows are dropped (reported); non-finite validation rows cannot be
    scored, so they are left out of the score (also reported), never repaired in place."""
    kind = "drop_nonfinite_val" if finding.where == "validation" else "drop_nonfinite"
    if any(s.kind == kind for s in recipe.data_steps):
        return None
    if kind == "drop_nonfinite":
        code = "X_train, y_train = drop_nonfinite_rows(X_train, y_train)  # training split only"
    else:
        code = "X_val, y_val = drop_nonfinite_rows(X_val, y_val)  # they cannot be scored; clean them at the source"
    recipe.data_steps.append(DataStep(kind, code, train_only=kind == "drop_nonfinite"))
    return code.split("  #")[0]


def data_step(kind, code, train_only=True, **params):
    """Add the data step ``kind`` (see :class:`~bpnet.doctor.recipe.DataStep`), once."""
    def apply(recipe, finding, ctx):
        if any(s.kind == kind for s in recipe.data_steps):
            return None
        recipe.data_steps.append(DataStep(kind, code, train_only, params))
        return code.split("  #")[0].strip() if "#" in code else code
    return apply


def standardize(recipe, finding, ctx):
    """A Standardizer fit on the training split, applied to every split and kept as model.preprocessor
    (for a non-finite loss only when the inputs are not already near unit scale)."""
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


def standardize_targets(recipe, finding, ctx):
    """Regression targets far from unit scale: train on (y - μ)/σ (training statistics); the last
    Dense layer then takes σ and μ into its weights, so the model predicts y itself."""
    if recipe.target_scale or recipe.loss.kind != "regression" or type(recipe.layers[-1]).__name__ != "Dense":
        return None
    recipe.target_scale = True
    recipe.data_steps.append(DataStep("target_scale", "mu, sd = y_train.mean(0), y_train.std(0); y_train = "
                                      "(y_train - mu) / sd  # then W *= sd, b = b * sd + mu in the last Dense",
                                      train_only=False))
    return "standardise the targets on the training split; the output layer folds them back (W·σ, b·σ + μ)"


def batch_that_fits(recipe, finding, ctx):
    """The largest batch the memory budget allows (from the MEMORY_BUDGET finding's evidence)."""
    fit = finding.evidence.get("max_batch_size")
    if not fit or fit >= recipe.batch_size:
        return None
    old, recipe.batch_size = recipe.batch_size, int(fit)
    return f"batch size {old} -> {fit} (the largest that fits the memory budget)"
