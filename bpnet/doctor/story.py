"""One story per run: the root cause first, its symptoms attached to it, no contradictions.

Many findings follow from one another: inputs ×1000 make the gradients
explode and the loss NaN; a learning rate far too high kills the ReLUs; dead
units make the loss flat.  Listing those as rivals sends the user after a
symptom.  :func:`tell` orders the findings by *causal rank* (what can cause
what: data and model before the training signals, the learning rate before
what it breaks), sets ``caused_by`` on each finding that an earlier, more
basic finding explains, and drops the weaker of two findings that cannot both
be true (``LR_TOO_HIGH`` and ``LR_TOO_LOW``).  Within a rank, errors come
before warnings and warnings before infos; a symptom is listed right after
its root.
"""
from __future__ import annotations

import re
from dataclasses import replace

from . import findings as F

# Earlier = more basic.  A finding may be explained only by one of higher rank.
RANK = [F.NONFINITE_DATA, F.LABEL_FORMAT, F.UNNORMALIZED_INPUTS, F.UNNORMALIZED_TARGETS, F.OUTLIERS,
        F.CLASS_IMBALANCE,
        F.EPS_UNDERFLOW, F.WRONG_GRADIENT, F.DOUBLE_SOFTMAX, F.OUTPUT_LOSS_MISMATCH, F.SYMMETRIC_WEIGHTS,
        F.MEMORY_BUDGET,
        F.GRADIENT_ASCENT, "STEP_SIZE/growing", F.LR_TOO_HIGH, F.EXPLODING_THROUGH_TIME, F.EXPLODING_GRADIENTS,
        F.VANISHING_THROUGH_TIME, F.SATURATED_ACTIVATIONS, F.VANISHING_GRADIENTS, F.DYING_RELU, F.LR_TOO_LOW,
        F.NONFINITE_LOSS, F.STEP_SIZE, F.PLATEAU, F.OVERFITTING]

_TRAINING = {F.EXPLODING_GRADIENTS, F.VANISHING_GRADIENTS, F.DYING_RELU, F.SATURATED_ACTIVATIONS,
             F.NONFINITE_LOSS, F.LR_TOO_HIGH, F.LR_TOO_LOW, F.PLATEAU, F.STEP_SIZE, F.GRADIENT_ASCENT,
             F.VANISHING_THROUGH_TIME, F.EXPLODING_THROUGH_TIME, F.OVERFITTING}
_BLOWUP = {F.EXPLODING_GRADIENTS, F.NONFINITE_LOSS, F.STEP_SIZE, F.LR_TOO_HIGH, F.DYING_RELU,
           F.SATURATED_ACTIVATIONS, F.VANISHING_GRADIENTS, F.PLATEAU, F.LR_TOO_LOW}
_STALL = {F.PLATEAU, F.LR_TOO_LOW, F.STEP_SIZE, F.VANISHING_GRADIENTS}

# root code -> the codes it explains
EXPLAINS = {
    F.NONFINITE_DATA: _TRAINING,
    F.LABEL_FORMAT: _TRAINING - {F.OVERFITTING},
    F.UNNORMALIZED_INPUTS: _BLOWUP | {F.GRADIENT_ASCENT},
    F.UNNORMALIZED_TARGETS: _BLOWUP | {F.GRADIENT_ASCENT},
    F.OUTLIERS: _BLOWUP,
    F.EPS_UNDERFLOW: _TRAINING,
    F.WRONG_GRADIENT: _TRAINING - {F.OVERFITTING},
    F.DOUBLE_SOFTMAX: _STALL | {F.LR_TOO_HIGH, F.SATURATED_ACTIVATIONS},
    F.OUTPUT_LOSS_MISMATCH: _TRAINING - {F.OVERFITTING},
    F.SYMMETRIC_WEIGHTS: _TRAINING - {F.OVERFITTING},
    F.GRADIENT_ASCENT: _BLOWUP,
    "STEP_SIZE/growing": _BLOWUP | {F.EXPLODING_GRADIENTS},
    F.LR_TOO_HIGH: _BLOWUP,
    F.EXPLODING_THROUGH_TIME: _BLOWUP,
    F.EXPLODING_GRADIENTS: {F.NONFINITE_LOSS, F.STEP_SIZE, F.DYING_RELU, F.SATURATED_ACTIVATIONS, F.PLATEAU,
                            F.LR_TOO_HIGH},
    F.VANISHING_THROUGH_TIME: _STALL,
    F.SATURATED_ACTIVATIONS: _STALL,
    F.VANISHING_GRADIENTS: _STALL | {F.SATURATED_ACTIVATIONS},
    F.DYING_RELU: _STALL,
    F.LR_TOO_LOW: {F.PLATEAU, F.STEP_SIZE},
}

# pairs that cannot both be true: the second is dropped when the first is there
CONTRADICTS = [(F.LR_TOO_HIGH, F.LR_TOO_LOW), (F.GRADIENT_ASCENT, F.LR_TOO_LOW), (F.OVERFITTING, F.LR_TOO_LOW),
               (F.OVERFITTING, F.PLATEAU), (F.EXPLODING_GRADIENTS, F.VANISHING_GRADIENTS),
               ("STEP_SIZE/too large", "STEP_SIZE/too small"), (F.LR_TOO_HIGH, "STEP_SIZE/too small"),
               (F.LR_TOO_LOW, "STEP_SIZE/too small")]
_SEVERITY = {"error": 0, "warning": 1, "info": 2}


def _name(f) -> str:
    """The finding's name in RANK / EXPLAINS / CONTRADICTS (STEP_SIZE's kinds are told apart)."""
    if f.code == F.STEP_SIZE and f.where in ("growing", "too large", "too small"):
        return f"STEP_SIZE/{f.where}"
    return f.code


def _rank(f) -> int:
    name = _name(f)
    if name in RANK:
        return RANK.index(name)
    return RANK.index(f.code) if f.code in RANK else len(RANK)


def _explains(root, f) -> bool:
    if root.severity == "info" or root is f:
        return False
    name = _name(root)
    return f.code in EXPLAINS.get(name, EXPLAINS.get(root.code, ())) and _rank(root) < _rank(f)


def tell(findings) -> list:
    """The findings as one story: roots first (by rank, then severity), each followed by its symptoms."""
    found = list(findings)
    names = {_name(f) for f in found if f.severity != "info"} | {f.code for f in found if f.severity != "info"}
    found = [f for f in found if not any(a in names and (_name(f) == b or f.code == b) and f.severity != "error"
                                         for a, b in CONTRADICTS)]
    found.sort(key=lambda f: (_rank(f), _SEVERITY.get(f.severity, 3)))
    roots, symptoms = [], {}
    for f in found:
        root = next((r for r in roots if _explains(r, f)), None)
        if root is None:
            roots.append(replace(f, caused_by=None) if f.caused_by else f)
        else:
            symptoms.setdefault(id(root), []).append(replace(f, caused_by=root.code))
    ordered = sorted(roots, key=lambda f: f.severity == "info")      # stable: infos after the rest
    out = []
    for r in ordered:
        out.append(r)
        out.extend(symptoms.get(id(r), []))
    return out


def headline(findings) -> str:
    """One line: the main problem and its remedy (or that there is none)."""
    main = next((f for f in findings if f.severity in ("error", "warning") and not f.caused_by), None)
    if main is None:
        notes = len(findings)
        return "doctor: no problems found" + (f" ({notes} note{'s' * (notes != 1)} in history.findings)"
                                              if notes else "")
    more = sum(1 for f in findings if f is not main and f.severity in ("error", "warning"))
    what = re.split(r"[:;(]| \(|\. ", main.message, maxsplit=1)[0].strip()
    what = what if len(what) <= 100 else what[:97] + "..."
    where = f" at {main.where}" if main.where else ""
    tail = f" (+{more} more below)" if more else ""
    return f"doctor: main problem: {main.code}{where} ({main.severity}) -- {what}; remedy: {main.remedy}{tail}"
