"""``check_validation``: is the validation data the same kind of data as the training data?

A validation set that skipped the training set's scaler, holds NaN, or labels
its classes differently makes every validation number meaningless while the
training numbers look fine.  Checks, each reported with ``where`` starting
with ``"validation"`` and a message that says it is the validation data:

* everything :func:`check_data` checks, on the validation data itself
  (class balance excepted: a small validation set is noisy);
* UNNORMALIZED_INPUTS -- a feature whose validation mean lies more than
  5 training standard deviations from the training mean, or whose validation
  spread is more than 5x the training spread (stds floored at a tenth of
  the typical feature's, so rarely-on features of small samples do not count);
* LABEL_FORMAT -- validation classes that never occur in the training labels.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import findings as F
from .data_checks import check_data
from .findings import Finding

VAL_SHIFT = 5.0
VAL_SPREAD = 5.0


def check_validation(X, y, X_val, y_val, loss=None, model=None, thresholds=None) -> list[Finding]:
    """Findings about ``(X_val, y_val)`` judged on its own and against the training ``(X, y)``."""
    X_val = np.asarray(X_val)
    out = [_relabel(f) for f in check_data(X_val, y_val, loss=loss, model=model, thresholds=thresholds)
           if f.code != F.CLASS_IMBALANCE]
    shift = _scale_shift(np.asarray(X), X_val)
    if shift is not None:
        out = [f for f in out if f.key != shift.key]
        out.insert(0, shift)
    classes = _new_classes(y, y_val)
    if classes is not None:                 # more precise than the label check on its own
        out = [f for f in out if f.key != classes.key] + [classes]
    return out


def _relabel(f: Finding) -> Finding:
    where = f"validation {f.where}" if f.where else "validation data"
    return replace(f, where=where, message=f"in the validation data: {f.message}",
                   evidence={**f.evidence, "data": "validation"})


def _as_float_rows(A):
    if A.ndim < 2 or A.dtype.kind not in "biuf" or not len(A):
        return None
    A = A.reshape(len(A), -1).astype(np.float64)
    rows = np.isfinite(A).all(axis=1)
    return A[rows] if rows.any() else None


def _scale_shift(X, X_val):
    A, B = _as_float_rows(X), _as_float_rows(X_val)
    if A is None or B is None or A.shape[1] != B.shape[1] or len(B) < 5:
        return None
    mu, sd = A.mean(axis=0), A.std(axis=0)
    mu_v, sd_v = B.mean(axis=0), B.std(axis=0)
    if not (sd > 0).any():
        return None
    # a floor of a tenth of the typical feature std: a feature almost constant in a small
    # training set (a rarely inked pixel) must not make a tiny difference look like a shift
    floor = 0.1 * float(np.median(sd[sd > 0]))
    shift = np.abs(mu_v - mu) / (sd + floor)
    spread = (sd_v + floor) / (sd + floor)
    bad = np.flatnonzero((shift > VAL_SHIFT) | (spread > VAL_SPREAD))     # less spread: a small sample
    if not len(bad):
        return None
    j = int(bad[np.argmax(shift[bad] + np.abs(np.log(spread[bad])))])
    return Finding(
        F.UNNORMALIZED_INPUTS, "error",
        f"the validation data is not on the training data's scale: {len(bad)} of {A.shape[1]} features differ "
        f"(feature {j}: validation mean {mu_v[j]:.4g}, std {sd_v[j]:.4g}; training mean {mu[j]:.4g}, std "
        f"{sd[j]:.4g}, a shift of {shift[j]:.3g} training stds). The model never saw inputs like these, so "
        "every validation number is meaningless; usually the validation data skipped the scaler fitted on "
        "the training data.",
        evidence={"features": bad[:20].tolist(), "n_features": int(len(bad)), "worst_feature": j,
                  "val_mean": float(mu_v[j]), "val_std": float(sd_v[j]), "train_mean": float(mu[j]),
                  "train_std": float(sd[j]), "shift_in_train_stds": float(shift[j]),
                  "spread_ratio": float(spread[j]), "data": "validation"},
        remedy="transform the validation (and test) data with the scaler fitted on the training data: "
               "X_val = scaler.transform(X_val), never a scaler of its own and never the raw values.",
        where="validation X")


def _new_classes(y, y_val):
    if y is None or y_val is None:
        return None
    y, y_val = np.asarray(y), np.asarray(y_val)
    if y.ndim != 1 or y_val.ndim != 1 or y.dtype.kind not in "iu" or y_val.dtype.kind not in "iu":
        return None
    new = np.setdiff1d(np.unique(y_val), np.unique(y))
    if not len(new):
        return None
    return Finding(
        F.LABEL_FORMAT, "error",
        f"the validation labels hold classes the training labels never have ({new[:10].tolist()}; training "
        f"classes {int(y.min())}..{int(y.max())}, validation {int(y_val.min())}..{int(y_val.max())}): the "
        "two sets are labelled differently (e.g. 1-based validation labels), so validation accuracy "
        "measures the labelling, not the model.",
        evidence={"new_classes": new[:20].tolist(), "train_range": [int(y.min()), int(y.max())],
                  "val_range": [int(y_val.min()), int(y_val.max())], "data": "validation"},
        remedy="encode both sets with one mapping (np.unique on the training labels, then "
               "np.searchsorted for the validation labels).",
        where="validation y")
