"""Broken run next to repaired run: loss curves, per-layer gradient norms, activation histograms.

Drawn on matplotlib's Agg canvas without pyplot (nothing opens a window or
changes the user's backend), like :mod:`bpnet.plot`.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..plot import layer_colours

_LAYER_KEY = re.compile(r"^grad_norm/(\d+(?:\.\d+)*)$")
_MAX_HIST_LAYERS = 4


def _figure(nrows, ncols, size):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:                      # pragma: no cover - matplotlib is in the dev extra
        raise ImportError("bpnet.lab.plot needs matplotlib: pip install 'bpnet-framework[plot]'") from exc
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _note(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize="small", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _loss_panel(ax, run):
    loss = np.asarray(run.step_loss, dtype=np.float64)
    if not len(loss):
        _note(ax, "no training step was taken\n" + "\n".join(n[:90] for n in run.notes[:1]))
        return
    steps = np.arange(len(loss))
    ok = np.isfinite(loss)
    positive = bool(ok.any() and (loss[ok] > 0).all())
    marker = "o" if ok.sum() <= 30 else None
    ax.plot(steps[ok], loss[ok], lw=1.0, marker=marker, ms=3, label="training loss (per step)")
    if "val_loss" in run.history and len(run.history["val_loss"]):
        per_epoch = max(1, len(loss) // max(1, len(run.history["val_loss"])))
        v = np.asarray(run.history["val_loss"], dtype=np.float64)
        x = (np.arange(len(v)) + 1) * per_epoch - 1
        good = np.isfinite(v)
        ax.plot(x[good], v[good], "o--", ms=3, lw=1.0, label="validation loss (per epoch)")
    _mark_first_nonfinite(ax, run)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def first_nonfinite(run):
    """``(step, what)`` of the run's first NaN/Inf, in the loss or in any gradient norm, or None.

    A gradient can overflow one step before the loss it feeds does, so both
    panels mark this one step rather than each its own signal's first.
    """
    loss = np.asarray(run.step_loss, dtype=np.float64)
    candidates = []
    if (~np.isfinite(loss)).any():
        candidates.append((int(np.flatnonzero(~np.isfinite(loss))[0]), "loss"))
    for i, r in enumerate(run.history.steps):
        if any(_LAYER_KEY.match(k) and not math.isfinite(float(v)) for k, v in r.items()):
            candidates.append((int(r.get("step", i)), "gradient"))
            break
    return min(candidates) if candidates else None


def _mark_first_nonfinite(ax, run):
    first = first_nonfinite(run)
    if first is not None:
        ax.axvline(first[0], color="red", ls=":", lw=1.2, label=f"first NaN/Inf (step {first[0]}, {first[1]})")


def _layer_keys(run):
    keys = {m.group(1) for r in run.history.steps for k in r if (m := _LAYER_KEY.match(k))}
    return sorted(keys, key=lambda p: tuple(int(x) for x in p.split(".")))


def _grad_panel(ax, run):
    steps = run.history.steps
    keys = _layer_keys(run)
    if not steps or not keys:
        _note(ax, "no gradient norms recorded")
        return
    x = np.asarray([r.get("step", i) for i, r in enumerate(steps)], dtype=np.float64)
    colours = layer_colours(ax.figure, ax, keys)
    bad_x = []
    for key in keys:
        y = np.asarray([float(r.get(f"grad_norm/{key}", math.nan)) for r in steps])
        good = np.isfinite(y) & (y > 0)
        bad_x += list(x[~np.isfinite(y)])
        ax.plot(x[good], y[good], lw=1.0, color=colours[key], label=f"layer {key}",
                marker="o" if good.sum() <= 30 else None, ms=3)
    if bad_x:
        ax.plot(bad_x, np.full(len(bad_x), 0.03), "|", color="red", ms=10, transform=ax.get_xaxis_transform(),
                label="NaN/Inf norms")
    _mark_first_nonfinite(ax, run)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖∂L/∂θ‖ per layer")
    ax.grid(alpha=0.3, which="both")
    extras = [h for h in ax.get_lines() if not h.get_label().startswith("layer ")]
    if extras:
        ax.legend(handles=extras, fontsize="x-small")


def _probe_activations(run):
    """``(layer name -> finite values, when)`` for the histogram panel, first, last and a few between."""
    when = "after training"
    source = run.activations
    if not any(np.isfinite(v).all() and v.size for v in source.values()) and run.initial_activations:
        source, when = run.initial_activations, "before training (the run went non-finite)"
    acts = [(k, v[np.isfinite(v)]) for k, v in source.items()]
    acts = [(k, v) for k, v in acts if v.size]
    if len(acts) > _MAX_HIST_LAYERS:                # first, last and evenly spaced ones between
        pick = np.unique(np.linspace(0, len(acts) - 1, _MAX_HIST_LAYERS).round().astype(int))
        acts = [acts[i] for i in pick]
    return acts, when, bool(source)


def _hist_panel(ax, run, logscale: bool):
    acts, when, any_layers = _probe_activations(run)
    if not acts:
        _note(ax, "no finite activations to show" if any_layers else "no activation layers")
        return
    for name, v in acts:
        zero = float(np.mean(v == 0))
        shown = np.log10(np.abs(v[v != 0])) if logscale else v
        ax.hist(shown, bins=40, alpha=0.45, label=f"{name}: zero {zero:.0%}")
    ax.set_yscale("log")
    ax.set_xlabel(("log10 |activation|" if logscale else "activation value") + f" (probe batch, {when})",
                  fontsize="small")
    ax.set_ylabel("count")
    ax.legend(fontsize="x-small")


def _hist_scale(runs) -> bool:
    """One scale for both runs' histograms: log10 |a| when either run's activations exceed 1e3."""
    tops = [float(np.abs(v).max()) for run in runs for _, v in _probe_activations(run)[0]]
    return bool(tops) and max(tops) > 1e3


def _share_x(axes):
    """Give the drawn histogram panels the same x range."""
    drawn = [ax for ax in axes if ax.patches]
    if len(drawn) > 1:
        lo = min(ax.get_xlim()[0] for ax in drawn)
        hi = max(ax.get_xlim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_xlim(lo, hi)


def plot_result(result, path=None):
    """Broken (left) vs repaired (right): loss, per-layer gradient norms, activation histograms.

    Returns the matplotlib ``Figure``; with ``path`` it is also saved as PNG.
    """
    fig, axes = _figure(3, 2, size=(12.0, 10.5))
    runs = (result.broken, result.repaired)
    logscale = _hist_scale(runs)
    for col, run in enumerate(runs):
        ok = result.reproduced if col == 0 else result.repaired_ok
        head = "broken" if col == 0 else "repaired"
        cfg = ", ".join(f"{k}={v}" for k, v in run.config.items())
        axes[0, col].set_title(f"{head}: {cfg}\n" + ("failure reproduced" if col == 0 and ok else
                               "remedy met its bar" if ok else "check failed"), fontsize="small")
        _loss_panel(axes[0, col], run)
        _grad_panel(axes[1, col], run)
        _hist_panel(axes[2, col], run, logscale)
    _share_x(axes[2])
    fig.suptitle(f"{result.scenario}: {result.metric} = {result.value:.4g} (needs {result.bar}); doctor: "
                 f"{', '.join(result.broken.codes) or 'nothing'}", fontsize="medium")
    if path is not None:
        fig.savefig(path, format="png", dpi=90)
    return fig
