"""One attempt of the repair loop: prepare the data, train through ``fit``, diagnose, score.

:class:`Data` holds the user's raw splits and applies a recipe's data steps
(rows dropped from the training split only, a scaler fit on the training
split only).  :func:`train_attempt` trains a recipe once with the doctor's
:class:`~bpnet.doctor.Monitor` and returns an :class:`Attempt`: the findings,
the validation metric, the time, and the checkpoint of the best epoch (what a
mid-run failure restarts from).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..callbacks import Callback, TerminateOnNaN
from ..errors import BpnetError
from ..history import History
from .data_checks import check_data
from .diagnose import diagnose
from .model_checks import check_model
from .monitor import Monitor

ACTIONABLE = ("error", "warning")
BALANCED = "val_balanced_accuracy"


class Data:
    """The raw training and validation splits, and the recipe's data pipeline over them."""

    def __init__(self, X, y, validation_data=None, validation_split=0.0):
        X, y = np.asarray(X), np.asarray(y)
        self.note = ""
        if validation_data is not None:
            Xv, yv = (np.asarray(a) for a in validation_data)
        else:
            frac = validation_split or 0.2
            if not validation_split:
                self.note = "no validation data given: the last 20% of (X, y) judge the repairs"
            n_val = max(1, int(round(len(X) * frac)))
            X, y, Xv, yv = X[:-n_val], y[:-n_val], X[-n_val:], y[-n_val:]
        self.X, self.y, self.X_val, self.y_val = X, y, Xv, yv
        self.class_ids = _class_ids(y)

    def train_view(self, recipe):
        """(X, y) of the training split after the recipe's data steps (what training sees)."""
        X, y, *_ = self.prepared(recipe)
        return X, y

    def prepared(self, recipe):
        """(X, y, X_val, y_val, scaler, report) for ``recipe``."""
        X, y, report = self.X, self.y, {}
        for step in recipe.data_steps:
            if step.train_only:
                X, y = step.apply_train(X, y, report)
        Xv, yv = self.X_val, self.y_val
        for step in recipe.data_steps:
            if step.kind == "drop_nonfinite_val":
                Xv, yv = step.apply_train(Xv, yv, scratch := {})
                report["validation_rows_left_out"] = scratch["rows_dropped_nonfinite"]
        if recipe.label_map is not None:
            y, yv = (map_labels(a, recipe.label_map, recipe.label_classes) for a in (y, yv))
        scaler = None
        if recipe.scaler == "Standardizer":
            from ..data import Standardizer
            finite = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
            scaler = Standardizer().fit(X[finite])
            with np.errstate(all="ignore"):
                X, Xv = transform(scaler, X), transform(scaler, Xv)
        return X, y, Xv, yv, scaler, report


def target_stats(y):
    """Per-column mean and standard deviation of regression targets (the training split's)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    sd = y.std(axis=0)
    return y.mean(axis=0).astype(np.float32), np.where(sd > 0, sd, 1.0).astype(np.float32)


def fold_target_scale(model, mu, sd):
    """A model trained on (y - μ)/σ, made to predict y: the last Dense layer's
    z = h W + b becomes z σ + μ = h (W σ) + (b σ + μ), exactly."""
    last = model.layers[-1]
    bk = model.backend
    last.params["W"][...] = last.params["W"] * bk.asarray(sd, dtype=last.params["W"].dtype)
    last.params["b"][...] = last.params["b"] * bk.asarray(sd, dtype=last.params["b"].dtype) + \
        bk.asarray(mu, dtype=last.params["b"].dtype)
    if model.loss_scaler is not None:
        model.loss_scaler.sync_from_model()


def compose(first, second):
    """One affine scaler doing ``first`` then ``second``: ((x - c1)/s1 - c2)/s2 = (x - (c1 + c2 s1)) / (s1 s2)."""
    from ..data import Standardizer
    out = Standardizer()
    out.center_ = first.center_ + second.center_ * first.scale_
    out.scale_ = first.scale_ * second.scale_
    out.n_features_in_ = first.n_features_in_
    return out


def transform(scaler, X):
    X2 = X.reshape(len(X), -1).astype(np.float64)
    out = (X2 - scaler.center_) / scaler.scale_
    return out.reshape(X.shape).astype(X.dtype if X.dtype.kind == "f" else np.float32)


def _as_ids(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1).astype(np.int64)
    return np.rint(y.reshape(len(y))).astype(np.int64)


def map_labels(y, how, classes=None):
    """Labels in the loss's format: ``int`` class ids, ``unique`` (indices into ``classes``),
    ``binary`` (the larger of two target values becomes 1, the other 0)."""
    if how == "int":
        return _as_ids(y)
    y = np.asarray(y)
    if how == "unique":
        return np.searchsorted(np.asarray(classes), y.reshape(len(y))).astype(np.int64)
    if how == "binary":
        return (y >= np.asarray(classes).max()).astype(np.float32)
    return y


def _class_ids(y) -> bool:
    """Labels that name classes: non-negative integers (or a few whole-number floats) in one
    column, or one-hot rows.  Such runs are judged by balanced accuracy."""
    y = np.asarray(y)
    if y.size == 0 or y.dtype.kind not in "iuf" or y.ndim > 2:
        return False
    if y.ndim == 2 and y.shape[1] > 1:
        return bool(np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1))
    if not np.isfinite(y).all() or y.min() < 0:
        return False
    if y.dtype.kind == "f":
        values = np.unique(y)
        return bool(len(values) <= 20 and np.all(values == np.rint(values)))
    return True


class _BestEpoch(Callback):
    """Keeps the weights of the best epoch so far (by validation loss) and notes a later relapse."""

    def __init__(self):
        self.best, self.best_epoch, self.weights, self.buffers = math.inf, None, None, None
        self.relapsed = False

    def on_epoch_end(self, epoch, logs=None):
        v = (logs or {}).get("val_loss", math.nan)
        loss = (logs or {}).get("loss", math.nan)
        finite = math.isfinite(v) and math.isfinite(loss)
        if finite and v < self.best:
            self.best, self.best_epoch, self.relapsed = v, epoch, False
            bk = self.model.backend
            self.weights = bk.to_numpy(self.model.flat_params).copy()
            self.buffers = [bk.to_numpy(o.buffers[k]).copy() for _, o, k in self.model.named_buffers()]
        elif self.best_epoch is not None and (not finite or v > self.best * 1.1):
            self.relapsed = True


@dataclass
class Attempt:
    """One training run of the repair: what was changed, what the doctor said, how well it did."""
    number: int
    findings: list
    metric_name: str
    metric: float
    val_loss: float
    seconds: float
    history: History = field(default_factory=History, repr=False)
    model: object = field(default=None, repr=False)
    scaler: object = field(default=None, repr=False)
    checkpoint: object = field(default=None, repr=False)
    mid_run: bool = False
    restart: str = ""
    remedy: str | None = None
    change: str | None = None
    target: object = None
    verdict: str = ""
    kept: bool = False
    data_report: dict = field(default_factory=dict)
    error: str | None = None
    recipe: object = field(default=None, repr=False)
    chosen: bool = False                              # the attempt whose model the report hands back
    settled: frozenset = frozenset()                  # codes a kept fix answered (see Remedy.settles)
    parent: object = field(default=None, repr=False)  # the attempt whose recipe this one changed

    @classmethod
    def from_baseline(cls, b, model, data: "Data") -> "Attempt":
        with np.errstate(all="ignore"):
            name, metric, val_loss = score_model(model, data.X_val, data.y_val, data.class_ids)
        return cls(0, list(b.findings), name, metric, val_loss, b.seconds, history=b.history, model=None)

    @property
    def problems(self) -> list:
        return [f for f in self.findings if f.severity in ACTIONABLE and f.code not in self.settled]

    @property
    def quiet(self) -> bool:
        return not self.problems and self.error is None

    @property
    def score(self) -> float:
        """Higher is better: accuracy (ties broken by the loss), or minus the loss; NaN is -inf."""
        if self.metric_name == BALANCED:
            if not math.isfinite(self.metric):
                return -math.inf
            return self.metric - 1e-3 * min(self.val_loss, 1e3) if math.isfinite(self.val_loss) else \
                self.metric - 1.0
        return -self.metric if math.isfinite(self.metric) else -math.inf

    def has(self, finding) -> bool:
        return finding is not None and any(f.key == finding.key for f in self.problems)

    def story(self) -> str:
        found = ", ".join(f"{f.code}" + (f" ({f.where})" if f.where else "") for f in self.problems) or \
            "nothing"
        result = f"{self.metric_name} {self.metric:.4g}" if math.isfinite(self.metric) else \
            f"{self.metric_name} {self.metric}"
        if self.number == 0:
            text = f"attempt 0 (broken run): found {found}; {result}"
        else:
            why = self.target.code if self.target is not None else "no finding"
            text = (f"attempt {self.number}: for {why} did {self.remedy}: {self.change}; restart from "
                    f"{self.restart} -> {result}, doctor found {found}")
        if self.data_report:
            text += " [" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.data_report.items()) + "]"
        if self.error:
            text += f" (training refused: {self.error})"
        return f"  {text}; {self.verdict} ({self.seconds:.2f} s)"


def train_attempt(recipe, data: Data, user_callbacks=(), number: int = 0, restart=None) -> Attempt:
    """Train ``recipe`` once (from ``restart``'s weights when given) and diagnose it."""
    X, y, Xv, yv, scaler, report = data.prepared(recipe)
    model = recipe.build(X.shape[1:])
    where = "fresh initialisation"
    if restart is not None and restart[1].size == model.flat_params.size:
        epoch, weights, buffers = restart
        model.flat_params[...] = model.backend.asarray(weights)
        for (_, owner, key), value in zip(model.named_buffers(), buffers):
            owner.buffers[key][...] = model.backend.asarray(value)
        where = f"the last good checkpoint (epoch {epoch})"
    steps = max(1, -(-len(X) // recipe.batch_size)) * recipe.epochs
    best = _BestEpoch()
    cbs = [Monitor(every=max(1, steps // 100)), *recipe.make_callbacks(), *user_callbacks, best, TerminateOnNaN()]
    start = time.perf_counter()
    error = None
    target = target_stats(y) if recipe.target_scale else None
    y_fit, yv_fit = (y, yv) if target is None else ((y - target[0]) / target[1], (yv - target[0]) / target[1])
    with np.errstate(all="ignore"):
        try:
            history = model.fit(X, y_fit, epochs=recipe.epochs, batch_size=recipe.batch_size,
                                validation_data=(Xv, yv_fit), callbacks=cbs, verbose=0)
        except BpnetError as err:            # e.g. fit refuses non-finite data up front
            history, error = model.history or History(), f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - start
        findings = _diagnose(model, history, X, y_fit, Xv, yv_fit)
        if target is not None:
            fold_target_scale(model, *target)
        name, metric, val_loss = score_model(model, Xv, yv, data.class_ids)
    att = Attempt(number, findings, name, metric, val_loss, seconds, history=history, model=model, scaler=scaler,
                  restart=where, data_report=report, error=error)
    if best.weights is not None:
        att.checkpoint = (best.best_epoch, best.weights, best.buffers)
        att.mid_run = best.relapsed
    return att


def _diagnose(model, history, X, y, Xv=None, yv=None) -> list:
    found = list(check_data(X, y, loss=model.loss, model=model))
    if Xv is not None:                      # validation data that cannot be scored
        for f in check_data(Xv, yv, loss=model.loss, model=model):
            if f.code == "NONFINITE_DATA":
                f.where = "validation"
                found.append(f)
    found += diagnose(history, model=model) if len(history) else check_model(model)
    seen, out = set(), []
    for f in found:
        if f.key not in seen:
            seen.add(f.key)
            out.append(f)
    return out


def score_model(model, Xv, yv, class_ids: bool):
    """(metric name, value, validation loss).

    With class-id labels the metric is the balanced accuracy (the mean recall over the
    classes; plain accuracy rewards ignoring a rare class); a regression model on class
    ids is scored by its rounded outputs.  Otherwise the metric is the validation loss.
    """
    finite = np.isfinite(np.asarray(model._preprocess(np.asarray(Xv)), dtype=np.float64)).all()
    try:
        res = model.evaluate(Xv, yv) if finite else {}
    except BpnetError:
        res = {}
    loss = float(res.get("loss", math.nan))
    loss = loss if math.isfinite(loss) else math.nan
    if not class_ids:
        return "val_loss", loss, loss
    if not finite:
        return BALANCED, math.nan, loss
    out = model.predict(Xv)
    yv = _as_ids(yv)
    if out.shape[1] > 1:
        pred = np.nan_to_num(out, nan=-np.inf).argmax(axis=1)
    elif model.loss.kind == "classification":
        pred = (out[:, 0] > 0).astype(np.int64)
    else:
        pred = np.clip(np.rint(np.nan_to_num(out[:, 0], nan=-1.0)), 0, int(yv.max())).astype(np.int64)
    if not np.isfinite(out).all():
        return BALANCED, math.nan, loss
    recalls = [float((pred[yv == c] == c).mean()) for c in np.unique(yv)]
    return BALANCED, float(np.mean(recalls)), loss


def user_layer_bugs(model, data: Data):
    """The first WRONG_GRADIENT of a layer class that is not bpnet's own (None if all pass)."""
    from ._paths import leaf_layers
    from .gradients import check_gradients
    if not model.built:
        model.build(tuple(data.X.shape[1:]))
    own = [layer for _, layer in leaf_layers(model) if not type(layer).__module__.startswith("bpnet.layers")]
    if not own:
        return None
    X = np.asarray(data.X[:4], dtype=np.float64)
    if not np.isfinite(X).all():
        return None
    with np.errstate(all="ignore"):
        found = check_gradients(model, X)
    names = {type(layer).__name__ for layer in own}
    return next((f for f in found if f.evidence.get("class") in names), None)
