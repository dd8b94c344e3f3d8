"""``check_data``: what is wrong with (X, y) before a single step is taken.

* NONFINITE_DATA -- rows of X (or y) holding NaN/Inf.
* UNNORMALIZED_INPUTS -- feature means or spreads far from unit scale.
* OUTLIERS -- values far outside the bulk of their feature (robust z-score).
* LABEL_FORMAT -- targets in the wrong format or range for the loss.
* CLASS_IMBALANCE -- one class outnumbers another by more than 10 to 1.
* OUTPUT_LOSS_MISMATCH -- a bounded output layer (sigmoid, tanh, ReLU)
  that cannot reach the regression targets (needs ``model``).
"""
from __future__ import annotations

import numpy as np

from ..errors import LabelError
from ..losses import get_loss
from . import findings as F
from .findings import Finding
from .thresholds import Thresholds

_MAX_ROWS = 20
_SAMPLE = 20000        # means and stds are taken on at most this many rows
_ROBUST = 1000         # medians, MADs, percentiles and distinct counts on at most this many


def check_data(X, y=None, loss=None, model=None, thresholds: Thresholds | None = None) -> list[Finding]:
    """Pre-training checks of inputs ``X`` and targets ``y`` for ``loss``.

    ``loss`` (a name or instance; defaults to ``model.loss``) decides which
    label format is expected; ``model`` (built or not) supplies the number of
    outputs and the output layer.  Returns a list of :class:`Finding`
    (empty when nothing is wrong).
    """
    t = thresholds or Thresholds()
    if loss is None and model is not None:
        loss = getattr(model, "loss", None)
    loss = get_loss(loss) if loss is not None else None
    X = np.asarray(X)
    out: list[Finding] = []
    if X.ndim < 2 or X.shape[0] == 0 or X.dtype.kind not in "biuf":
        return out                           # validate_xy explains those with a DataError
    Xf = X.reshape(len(X), -1)
    finite_rows = _nonfinite(out, Xf, "X")
    Xc = Xf[finite_rows].astype(np.float64, copy=False) if not finite_rows.all() else Xf.astype(np.float64, copy=False)
    if len(Xc):
        rng = np.random.default_rng(0)
        sample = Xc if len(Xc) <= _SAMPLE else Xc[rng.choice(len(Xc), _SAMPLE, replace=False)]
        small = sample if len(sample) <= _ROBUST else sample[rng.choice(len(sample), _ROBUST, replace=False)]
        stats = _column_stats(small)
        _scale(out, sample, t, stats)
        _outliers(out, Xc, small, t, stats)
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind in "biuf" and len(y) == len(X):
            y_ok = _nonfinite(out, y.reshape(len(y), -1), "y")
            if y_ok.all():
                _labels(out, y, loss, model, t)
                _output_range(out, y, loss, model)
    return out


# -- the checks --------------------------------------------------------------------------
def _column_stats(S) -> dict:
    """Per feature, from one sort of the sample: distinct values, median, MAD and the 1st, 25th,
    75th and 99th percentiles (NumPy's default linear interpolation)."""
    n = len(S)
    Ss = np.sort(S, axis=0)
    med = 0.5 * (Ss[(n - 1) // 2] + Ss[n // 2])

    def pct(p):
        pos = p / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        return Ss[lo] + (pos - lo) * (Ss[hi] - Ss[lo])

    return {"n_unique": 1 + np.count_nonzero(np.diff(Ss, axis=0), axis=0), "median": med,
            "mad": 1.4826 * np.median(np.abs(S - med), axis=0),
            "q": (pct(1), pct(25), pct(75), pct(99))}

def _nonfinite(out, A, name) -> np.ndarray:
    """Append NONFINITE_DATA if ``A`` (2-D) has NaN/Inf; return the mask of finite rows."""
    if A.dtype.kind != "f":
        return np.ones(len(A), dtype=bool)
    finite = np.isfinite(A)
    rows_ok = finite.all(axis=1)
    if rows_ok.all():
        return rows_ok
    bad = np.flatnonzero(~rows_ok)
    cols = np.flatnonzero(~finite.all(axis=0))
    n_nan, n_inf = int(np.isnan(A).sum()), int(np.isinf(A).sum())
    out.append(Finding(
        F.NONFINITE_DATA, "error",
        f"{name} contains {n_nan} NaN and {n_inf} Inf values in {len(bad)} of {len(A)} rows "
        f"(rows {bad[:_MAX_ROWS].tolist()}{' ...' if len(bad) > _MAX_ROWS else ''}); one such value "
        "turns the loss into NaN.",
        evidence={"array": name, "rows": bad[:_MAX_ROWS].tolist(), "n_rows": int(len(bad)),
                  "n_nan": n_nan, "n_inf": n_inf, "columns": cols[:_MAX_ROWS].tolist()},
        remedy=f"drop those rows (keep = np.isfinite({name}).all(axis=1)) or impute the missing values "
               "(e.g. with the column median) before training.",
        where=name))
    return rows_ok


def _scale(out, S, t, stats):
    mean, std = S.mean(axis=0), S.std(axis=0)
    varying = std > 0
    abs_mean = np.abs(mean)
    # a feature that is almost always one value (a rarely inked pixel) has a tiny std but is no
    # scale problem: a small spread counts only when the bulk of the values (the IQR) is small too
    q1, q3 = stats["q"][1], stats["q"][2]
    bulk = (q3 - q1) / 1.349
    bad_mean = np.flatnonzero(abs_mean > t.mean_max)
    bad_std = np.flatnonzero(varying & (((std < t.std_min) & (bulk > 0)) | (std > t.std_max)))
    if not len(bad_mean) and not len(bad_std):
        return
    worst = sorted(set(bad_mean.tolist()) | set(bad_std.tolist()))
    vstd = std[varying]
    out.append(Finding(
        F.UNNORMALIZED_INPUTS, "warning",
        f"{len(worst)} of {S.shape[1]} input features are far from unit scale (largest |mean| "
        f"{abs_mean.max():.3g}, feature std from {vstd.min() if len(vstd) else 0:.3g} to "
        f"{vstd.max() if len(vstd) else 0:.3g}); large or uneven inputs saturate units and make "
        "one learning rate wrong for most weights.",
        evidence={"features": worst[:_MAX_ROWS], "n_features": len(worst),
                  "max_abs_mean": float(abs_mean.max()),
                  "min_std": float(vstd.min()) if len(vstd) else 0.0,
                  "max_std": float(vstd.max()) if len(vstd) else 0.0,
                  "limits": {"mean_max": t.mean_max, "std_min": t.std_min, "std_max": t.std_max}},
        remedy="standardise the inputs: scaler = bpnet.data.Standardizer().fit(X_train); "
               "X = scaler.transform(X) (fit on the training split only).",
        where="X"))


def _outliers(out, Xc, S, t, stats):
    n_unique, med, mad = stats["n_unique"], stats["median"], stats["mad"]
    q_lo, q_hi = stats["q"][0], stats["q"][3]
    spread = q_hi - q_lo
    # only features whose extreme values could qualify get the full |x - median| matrix
    reach = np.maximum(Xc.max(axis=0) - med, med - Xc.min(axis=0))
    cols = np.flatnonzero((n_unique >= t.outlier_min_unique) & (mad > 0) & (spread > 0) &
                          (reach > t.outlier_z * mad) & (reach > t.outlier_range * spread))
    if not len(cols):
        return
    dev = np.abs(Xc[:, cols] - med[cols])
    z = dev / mad[cols]
    mask = _isolated((z > t.outlier_z) & (dev > t.outlier_range * spread[cols]), dev, t)
    if not mask.any():
        return
    rows = np.flatnonzero(mask.any(axis=1))
    feats = cols[np.flatnonzero(mask.any(axis=0))]
    i, j = np.unravel_index(np.argmax(np.where(mask, z, 0)), z.shape)
    out.append(Finding(
        F.OUTLIERS, "warning",
        f"{int(mask.sum())} values in {len(rows)} rows lie far outside their feature's range (robust "
        f"z-score up to {z[i, j]:.3g}: row {rows[0] if len(rows) == 1 else int(i)}, feature {int(cols[j])} "
        f"= {Xc[i, cols[j]]:.6g} where the median is {med[cols[j]]:.6g}); a few huge inputs produce huge "
        "gradients and can dominate training.",
        evidence={"rows": rows[:_MAX_ROWS].tolist(), "n_rows": int(len(rows)), "n_values": int(mask.sum()),
                  "features": feats[:_MAX_ROWS].tolist(), "max_robust_z": float(z[i, j]),
                  "worst": {"row": int(i), "feature": int(cols[j]), "value": float(Xc[i, cols[j]]),
                            "median": float(med[cols[j]])}},
        remedy="check those rows for recording or unit errors; drop or clip them, or use "
               "bpnet.data.RobustScaler (median/IQR) instead of a Standardizer.",
        where="X"))


def _isolated(mask, dev, t):
    """Keep, per feature, only candidates set apart from the rest by a gap.

    Real data sets have heavy tails (breast-cancer areas reach robust z-scores of 36 after
    standardising), but a tail is a continuum: sorted by distance from the median, each value
    is within a small factor of the next.  A unit error (x1000) jumps: the smallest flagged
    distance is ``outlier_gap`` times the next value's or more.  The cut goes at the largest
    ratio between consecutive distances among the candidates."""
    keep = np.zeros_like(mask)
    gap = getattr(t, "outlier_gap", 4.0)
    for j in np.flatnonzero(mask.any(axis=0)):
        c = int(mask[:, j].sum())
        order = np.argsort(-dev[:, j], kind="stable")
        top = dev[order[:c + 1], j]
        if len(top) <= c:                     # every value is a candidate: no bulk to stand apart from
            continue
        ratios = top[:-1] / np.maximum(top[1:], 1e-300)
        cut = int(np.argmax(ratios))
        if ratios[cut] >= gap:
            keep[order[:cut + 1], j] = True
    return keep & mask


def _n_outputs(model):
    if model is not None and getattr(model, "built", False):
        return int(np.prod(model.output_shape))
    return None


def _labels(out, y, loss, model, t):
    n_out = _n_outputs(model)
    if loss is None:
        if y.ndim == 1 and y.dtype.kind in "iub":
            _imbalance(out, y, t)
        return
    name = type(loss).__name__
    if loss.kind == "classification":
        width = n_out
        if width is None:
            width = y.shape[1] if y.ndim == 2 else (int(y.max()) + 1 if y.size else 1)
            if getattr(loss, "name", "") == "bce_with_logits":
                width = y.shape[1] if y.ndim == 2 else 1
        try:
            loss.check_target(y, width)
        except LabelError as e:
            out.append(_label_finding(str(e), y, name, width))
            return
        if y.ndim == 1 and y.dtype.kind in "iu" and y.size and name != "BCEWithLogits" \
                and int(y.min()) >= 1 and (n_out is None or (int(y.min()) == 1 and int(y.max()) == n_out - 1)):
            out.append(_label_finding(
                f"{name} expects class labels 0..K-1 but the labels run from {int(y.min())} to "
                f"{int(y.max())}; class 0 never occurs, which usually means 1-based labels.", y, name, width,
                severity="warning"))
        if name == "BCEWithLogits":
            labels = (y > 0.5).astype(np.int64).ravel() if y.ndim == 1 or y.shape[1] == 1 else None
        else:
            labels = y if y.ndim == 1 else y.argmax(axis=1)
        if labels is not None:
            _imbalance(out, np.asarray(labels).astype(np.int64), t)
    else:                                   # regression: class labels fed to MSE/MAE?
        _target_scale(out, y, t)
        integral = y.dtype.kind in "iub" or (y.dtype.kind == "f" and y.size and bool(np.all(y == np.round(y))))
        if y.ndim == 1 and integral and n_out is not None and n_out > 1:
            out.append(_label_finding(
                f"{name} is a regression loss but y holds integer labels of shape {y.shape} for a model "
                f"with {n_out} outputs: it looks like class labels for a classifier.", y, name, n_out,
                remedy="for classification compile with loss='cross_entropy' (integer labels, logits out); "
                       "for regression give y one column per output."))
        elif n_out is not None and y.ndim == 2 and y.shape[1] != n_out:
            out.append(_label_finding(
                f"{name}: y has {y.shape[1]} columns but the model has {n_out} outputs.", y, name, n_out,
                remedy="make the last Dense layer as wide as y has columns."))
        elif integral and (y.ndim == 1 or y.shape[1] == 1) and n_out in (None, 1) \
                and 3 <= len(values := np.unique(y)) <= 20 and np.array_equal(values, np.arange(len(values))):
            stored = "the integers" if y.dtype.kind in "iu" else f"whole numbers (stored as {y.dtype})"
            out.append(_label_finding(
                f"{name} is a regression loss but y holds {stored} 0..{len(values) - 1} and nothing else: "
                "they look like class labels. As numbers they claim an order and distances between classes "
                "(a 7 'between' a 6 and an 8), and the squared error pulls ambiguous inputs toward "
                "the mean label.", y, name, len(values), severity="warning",
                remedy=f"for classification use {len(values)} outputs and loss='cross_entropy' (integer labels, "
                       "logits out); keep MSE only if the integers really are quantities."))


def _target_scale(out, y, t):
    """UNNORMALIZED_TARGETS: regression targets of std or |mean| far above 1 (house prices in
    dollars): the initial errors and gradients are that large, and one learning rate cannot suit
    both the first steps and the last."""
    if y.dtype.kind not in "iuf" or not y.size:
        return
    Y = y.reshape(len(y), -1).astype(np.float64)
    if Y.dtype.kind == "f" and np.all(Y == np.round(Y)) and len(np.unique(Y)) <= 20:
        return                                 # counts or class ids: _labels speaks about those
    mean, std = np.abs(Y.mean(axis=0)), Y.std(axis=0)
    if not (mean.max() > t.mean_max or std.max() > t.std_max):
        return
    out.append(Finding(
        F.UNNORMALIZED_TARGETS, "warning",
        f"the regression targets are far from unit scale (largest |mean| {mean.max():.4g}, std "
        f"{std.max():.4g}): the initial squared errors are ~{max(mean.max(), std.max()) ** 2:.3g}, so the first "
        "gradients are huge and a learning rate small enough for them is too small afterwards.",
        evidence={"max_abs_mean": float(mean.max()), "max_std": float(std.max()),
                  "limits": {"mean_max": t.mean_max, "std_max": t.std_max}},
        remedy="standardise y too (y_scaler = bpnet.data.Standardizer().fit(y_train)) and invert the "
               "transform on predictions (y_scaler.inverse_transform).",
        where="y"))


def _label_finding(message, y, loss_name, width, severity="error", remedy=None) -> Finding:
    lo, hi = (float(y.min()), float(y.max())) if y.size else (0.0, 0.0)
    return Finding(
        F.LABEL_FORMAT, severity, message,
        evidence={"loss": loss_name, "y_shape": list(y.shape), "y_dtype": str(y.dtype), "min": lo, "max": hi,
                  "n_outputs": width},
        remedy=remedy or ("CrossEntropy takes integer labels 0..K-1 (shape (N,)) or one-hot rows (N, K); "
                          "re-map labels with np.unique(y, return_inverse=True); BCEWithLogits takes 0/1 "
                          "targets; MSE/MAE take real-valued targets shaped like the output."),
        where="y")


def _imbalance(out, labels, t):
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        return
    ratio = counts.max() / counts.min()
    if ratio <= t.imbalance_ratio:
        return
    maj, mino = classes[counts.argmax()], classes[counts.argmin()]
    out.append(Finding(
        F.CLASS_IMBALANCE, "warning",
        f"class {maj} has {counts.max()} samples but class {mino} only {counts.min()} (ratio {ratio:.1f}); "
        "a model can score well by ignoring the rare classes, and accuracy hides it.",
        evidence={"counts": {str(c): int(n) for c, n in zip(classes.tolist(), counts.tolist())},
                  "ratio": float(ratio), "majority": maj.item(), "minority": mino.item()},
        remedy="weight the loss (CrossEntropy(class_weights=...) or FocalLoss), resample the rare classes, "
               "and judge the model by per-class recall or balanced accuracy.",
        where="y"))


# Output activations and the target ranges they can reach.
_RANGES = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "ReLU": (0.0, np.inf), "Softmax": (0.0, 1.0)}


def _output_range(out, y, loss, model):
    if model is None or loss is None or loss.kind != "regression" or not getattr(model, "layers", None):
        return
    last = type(model.layers[-1]).__name__
    if last not in _RANGES or y.dtype.kind not in "iuf" or not y.size:
        return
    lo, hi = _RANGES[last]
    y_lo, y_hi = float(y.min()), float(y.max())
    if y_lo >= lo and y_hi <= hi:
        return
    out.append(Finding(
        F.OUTPUT_LOSS_MISMATCH, "error",
        f"the model ends with {last}, whose outputs lie in [{lo:g}, {hi:g}], but the {type(loss).__name__} "
        f"targets range over [{y_lo:.4g}, {y_hi:.4g}]: those targets can never be reached, and the "
        f"{last} saturates trying.",
        evidence={"output_layer": last, "output_range": [lo, hi], "target_range": [y_lo, y_hi],
                  "loss": type(loss).__name__},
        remedy=f"end the model with a plain Dense layer (linear output) or rescale the targets into "
               f"[{lo:g}, {hi:g}] (e.g. MinMaxScaler on y).",
        where=f"layer {len(model.layers) - 1}"))
