"""Signals through time: how ∂L/∂h_t changes along a recurrent layer's sequence.

Backpropagation through time multiplies the gradient by diag(φ'(a_t)) Uᵀ at
every step back (see :class:`bpnet.RNN`), so the ratio

    ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖

says at once whether the first steps of a sequence can learn anything.  The
:class:`~bpnet.doctor.Monitor` records, for every layer with ``recurrent =
True`` (path ``<l>``):

=========================  =========================================================
``dh_norm/<l>/first``      ‖∂L/∂h_1‖, at the first step (the batch's Frobenius norm)
``dh_norm/<l>/middle``     ‖∂L/∂h_t‖ at t = ⌈T/2⌉
``dh_norm/<l>/last``       ‖∂L/∂h_T‖, at the last step
``seq_len/<l>``            T
``spectral_radius/<l>``    ρ(U) = max |eigenvalue| of the recurrent matrix (exact up to 64
                           units; above, estimated by power iteration, see below)
=========================  =========================================================

and :func:`diagnose` reads them:

======================  ===================================================================
VANISHING_THROUGH_TIME  first/last ratio < ``time_vanish_ratio`` (1e-5), both at the start
                        of training and recently (medians of ``recent`` records)
EXPLODING_THROUGH_TIME  first/last ratio > ``time_explode_ratio`` (1e2) in one of the first
                        records, or recently
======================  ===================================================================

The limits can be overridden by attributes of the same name on the
:class:`~bpnet.doctor.Thresholds` passed to ``diagnose``.  An orthogonal U
with tanh keeps the ratio near 1e-1..1e-3 over 30 steps; ρ(U) = 0.5 gives
about 1e-9, ρ(U) = 3 about 1e3 or more.
"""
from __future__ import annotations

import math

import numpy as np

from . import findings as F
from ._paths import leaf_layers
from .findings import Finding

TIME_VANISH_RATIO = 1e-5
TIME_EXPLODE_RATIO = 1e2
EXACT_RHO_UNITS = 64        # eigvals costs O(H³) per record: 0.1 s at H = 128 on a busy CPU, 2 s at 512
_PROBES = ("first", "middle", "last")


def measure(model) -> dict:
    """The through-time keys above for every recurrent layer that has run a backward pass."""
    rec = {}
    for path, layer in leaf_layers(model):
        grads = getattr(layer, "state_grads", None) if getattr(layer, "recurrent", False) else None
        if not grads:
            continue
        steps = max(grads)
        at = {"first": 1, "middle": (steps + 1) // 2, "last": steps}
        for probe, t in at.items():     # Σ in float64: a vanished 1e-24 would square to 0 in float32
            rec[f"dh_norm/{path}/{probe}"] = math.sqrt(layer.backend.sum_squares(grads[t]))
        rec[f"seq_len/{path}"] = steps
        rec[f"spectral_radius/{path}"] = spectral_radius(layer)
    return rec


def spectral_radius(layer, burn_in: int = 16, steps: int = 64) -> float:
    """ρ(U) of a recurrent layer: exact (``layer.spectral_radius()``) up to ``EXACT_RHO_UNITS``
    units, else the growth rate of power iteration, (‖U^k V‖ / ‖U^j V‖)^(1/(k-j)) with
    j = ``burn_in`` and k = j + ``steps``, for 4 fixed random vectors V.

    Gelfand: ‖U^k v‖^(1/k) → ρ(U) for almost every v; after the burn-in the
    estimate is within about 2 % (slightly low) for Gaussian, orthogonal and
    trained matrices of 128-256 units, in about 1 ms.
    """
    U = layer.params["U"]
    if U.shape[0] <= EXACT_RHO_UNITS:
        return layer.spectral_radius()
    U = np.asarray(layer.backend.to_numpy(U), dtype=np.float64)
    if not np.isfinite(U).all():
        return math.nan
    v = np.random.default_rng(0).standard_normal((U.shape[0], 4))
    log_growth = 0.0
    for i in range(burn_in + steps):
        v = U @ v
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return 0.0
        log_growth += math.log(norm) if i >= burn_in else 0.0
        v /= norm
    return math.exp(log_growth / steps)


def diagnose(run) -> list[Finding]:
    """VANISHING_/EXPLODING_THROUGH_TIME findings from a diagnose ``_Run`` (history records)."""
    t = run.t
    vanish = getattr(t, "time_vanish_ratio", TIME_VANISH_RATIO)
    explode = getattr(t, "time_explode_ratio", TIME_EXPLODE_RATIO)
    out = []
    for path in run.keys("seq_len/"):
        records = [r for r in run.finite_steps if f"dh_norm/{path}/last" in r]
        if len(records) == 0 or records[-1][f"seq_len/{path}"] < 2:
            continue
        start, late = _ratios(records[:t.recent], path), _ratios(records[-t.recent:], path)
        early = max(start, default=1.0)       # an explosion at initialisation may last one step only
        late = float(np.median(late)) if late else 1.0
        where, worst = run.where(path), max(early, late)
        if worst > explode:
            out.append(_exploding(where, path, _evidence(records, path, early, late, worst, t.recent), explode))
        elif late < vanish and float(np.median(start or [1.0])) < vanish:
            # vanished from the start and still: a gradient that only fades once the task is learnt
            # (saturated states that latch a memory) does not stop learning
            out.append(_vanishing(where, path, _evidence(records, path, early, late, late, t.recent), vanish))
    return out


def _ratios(records, path) -> list:
    """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ of each record (inf where the first is inf or the last 0; NaN skipped)."""
    vals = []
    for r in records:
        first, last = r[f"dh_norm/{path}/first"], r[f"dh_norm/{path}/last"]
        if math.isnan(first) or math.isnan(last):
            continue
        vals.append(first / last if last > 0 else (math.inf if first > 0 else 1.0))
    return vals


def _evidence(records, path, early, late, ratio, k) -> dict:
    recent = records[-k:]
    med = lambda key: float(np.median([r[key] for r in recent]))  # noqa: E731
    steps = int(recent[-1][f"seq_len/{path}"])
    return {"layer": path, "steps": steps, "ratio_first_to_last": ratio,
            "ratio_at_start": early, "ratio_recent": late,
            "per_step_factor": ratio ** (1.0 / (steps - 1)) if 0 < ratio < math.inf else ratio,
            "dh_norm": {p: med(f"dh_norm/{path}/{p}") for p in _PROBES},
            "spectral_radius_start": float(records[0][f"spectral_radius/{path}"]),
            "spectral_radius": med(f"spectral_radius/{path}")}


def _exploding(where, path, ev, limit):
    rho = ev["spectral_radius_start"]
    return Finding(
        F.EXPLODING_THROUGH_TIME, "error",
        f"the gradient grows {ev['ratio_first_to_last']:.3g}x from the last step to the first in {where} "
        f"(T = {ev['steps']}, about {ev['per_step_factor']:.3g}x per step; limit {limit:g}): exploding through "
        f"time. Each step back multiplies ∂L/∂h by diag(φ') Uᵀ, and ρ(U) was {rho:.3g} at the start "
        f"(> 1), so the early steps get huge gradients and one update can throw the weights away.",
        evidence=ev,
        remedy="clip the gradient norm (callbacks=[GradientClipping(5.0)] or clip_grad_norm(model, 5.0)) and "
               "initialise U with spectral radius 1: RNN(..., recurrent_init='orthogonal'); shorter "
               "sequences (truncated BPTT) or a lower learning rate also help.",
        where=f"layer {path}")


def _vanishing(where, path, ev, limit):
    return Finding(
        F.VANISHING_THROUGH_TIME, "error",
        f"the gradient shrinks {ev['ratio_first_to_last']:.3g}x from the last step to the first in {where} "
        f"(T = {ev['steps']}, about {ev['per_step_factor']:.3g}x per step; limit {limit:g}): vanishing through "
        f"time. Each step back multiplies ∂L/∂h by diag(φ') Uᵀ with ρ(U) = {ev['spectral_radius']:.3g} and "
        "φ' ≤ 1 for tanh, so the early steps of a sequence get no learning signal and the model cannot "
        "use what it saw there.",
        evidence=ev,
        remedy="initialise the recurrent matrix orthogonally, RNN(..., recurrent_init='orthogonal') "
               "(ρ(U) = 1, ‖hU‖ = ‖h‖), keep the inputs normalised so tanh is not saturated, or "
               "shorten the sequences; gated cells (LSTM/GRU) are the lasting fix.",
        where=f"layer {path}")
