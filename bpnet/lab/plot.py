"""Broken run next to repaired run: loss curves, per-layer gradient norms, activation histograms.

Drawn on matplotlib's Agg canvas without pyplot (nothing opens a window or
changes the user's backend), like :mod:`bpnet.plot`.
"""
from __future__ import annotations

import math
import re

import numpy as np

_LAYER_KEY = re.compile(r"^grad_norm/(\d+(?:\.\d+)*)$")
_MAX_HIST_LAYERS = 4


def _figure(nrows, ncols, size):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:                      # pragma: no cover - matplotlib is in the dev extra
        raise ImportError("bpnet.lab.plot needs matplotlib: pip install 'bpnet[plot]'") from exc
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
    if (~ok).any():
        first = int(np.flatnonzero(~ok)[0])
        ax.axvline(first, color="red", ls=":", lw=1.2, label=f"first NaN/Inf (step {first})")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


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
    cmap = __import__("matplotlib").colormaps["viridis"]
    bad_x = []
    for j, key in enumerate(keys):
        y = np.asarray([float(r.get(f"grad_norm/{key}", math.nan)) for r in steps])
        good = np.isfinite(y) & (y > 0)
        bad_x += list(x[~np.isfinite(y)])
        color = cmap(j / max(1, len(keys) - 1))
        label = f"layer {key}" if len(keys) <= 8 or j in (0, len(keys) - 1) else None
        ax.plot(x[good], y[good], lw=1.0, color=color, label=label, marker="o" if good.sum() <= 30 else None,
                ms=3)
    if bad_x:
        ax.plot(bad_x, np.full(len(bad_x), 0.03), "|", color="red", ms=10, transform=ax.get_xaxis_transform(),
                label="NaN/Inf")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖∂L/∂θ‖ per layer")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", ncol=2)


def _hist_panel(ax, run):
    when = "after training"
    source = run.activations
    if not any(np.isfinite(v).all() and v.size for v in source.values()) and run.initial_activations:
        source, when = run.initial_activations, "before training (the run went non-finite)"
    acts = [(k, v[np.isfinite(v)]) for k, v in source.items()]
    acts = [(k, v) for k, v in acts if v.size]
    if not acts:
        _note(ax, "no finite activations to show" if source else "no activation layers")
        return
    if len(acts) > _MAX_HIST_LAYERS:                # first, last and evenly spaced ones between
        pick = np.unique(np.linspace(0, len(acts) - 1, _MAX_HIST_LAYERS).round().astype(int))
        acts = [acts[i] for i in pick]
    top = max(float(np.abs(v).max()) for _, v in acts)
    logscale = top > 1e3                            # exploding activations: show orders of magnitude
    for name, v in acts:
        zero = float(np.mean(v == 0))
        shown = np.log10(np.abs(v[v != 0])) if logscale else v
        ax.hist(shown, bins=40, alpha=0.45, label=f"{name}: zero {zero:.0%}")
    ax.set_yscale("log")
    ax.set_xlabel(("log10 |activation|" if logscale else "activation value") + f" (probe batch, {when})",
                  fontsize="small")
    ax.set_ylabel("count")
    ax.legend(fontsize="x-small")


def plot_result(result, path=None):
    """Broken (left) vs repaired (right): loss, per-layer gradient norms, activation histograms.

    Returns the matplotlib ``Figure``; with ``path`` it is also saved as PNG.
    """
    fig, axes = _figure(3, 2, size=(12.0, 10.5))
    runs = (result.broken, result.repaired)
    for col, run in enumerate(runs):
        ok = result.reproduced if col == 0 else result.repaired_ok
        head = "broken" if col == 0 else "repaired"
        cfg = ", ".join(f"{k}={v}" for k, v in run.config.items())
        axes[0, col].set_title(f"{head}: {cfg}\n" + ("failure reproduced" if col == 0 and ok else
                               "remedy met its bar" if ok else "check failed"), fontsize="small")
        _loss_panel(axes[0, col], run)
        _grad_panel(axes[1, col], run)
        _hist_panel(axes[2, col], run)
    fig.suptitle(f"{result.scenario}: {result.metric} = {result.value:.4g} (needs {result.bar}); doctor: "
                 f"{', '.join(result.broken.codes) or 'nothing'}", fontsize="medium")
    if path is not None:
        fig.savefig(path, format="png", dpi=90)
    return fig
