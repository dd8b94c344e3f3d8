"""Plots of a training run: loss/metric curves, per-layer gradient norms, activations, lr.

Each function returns a matplotlib ``Figure`` and, given ``path``, saves it as
a PNG.  Figures are drawn with the Agg canvas directly, without pyplot, so
nothing here changes the user's matplotlib backend or opens a window.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .history import History

_SKIP = {"time", "lr"}


def _figure(nrows=1, ncols=1, size=(6.0, 4.0)):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("bpnet.plot needs matplotlib: pip install 'bpnet-framework[plot]'") from exc
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _save(fig, path):
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def _epochs(history, n):
    ep = list(getattr(history, "epoch", []))[:n]
    return [e + 1 for e in ep] if len(ep) == n else list(range(1, n + 1))


def plot_history(history, path=None, keys=None):
    """One panel per quantity (loss, accuracy, ...), training and validation curves together.

    ``keys`` limits the panels (e.g. ``["loss"]``); by default every logged
    quantity except ``time`` and ``lr`` (see :func:`plot_lr`).
    """
    data = history.history
    if keys is None:
        keys = [k for k in data if not k.startswith("val_") and k not in _SKIP]
        keys += [k[4:] for k in data if k.startswith("val_") and k[4:] not in data]
    if not keys:
        raise ConfigError("plot_history: the history has no recorded epochs to plot")
    fig, axes = _figure(1, len(keys), size=(5.0, 3.6))
    for ax, key in zip(axes, keys):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if name in data and data[name]:
                values = np.asarray(data[name], dtype=float)
                ax.plot(_epochs(history, len(values)), values, style, marker="o", markersize=3,
                        label="validation" if name.startswith("val_") else "training")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        if key == "loss" and np.all(np.asarray(data.get("loss", [1.0]), dtype=float) > 0):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_grad_norms(history, path=None, which: str = "layers", prefix: str = "grad_norm/"):
    """Gradient norms over the training steps, one curve per layer, on a log scale.

    Reads ``history.steps`` records with keys like ``"grad_norm/0.W"`` (per
    parameter), ``"grad_norm/0"`` (per layer) and ``"grad_norm/total"``, as
    written by the doctor's Monitor.  ``which``: ``"layers"`` (per-layer
    curves, or per-parameter ones when no per-layer keys were recorded),
    ``"params"`` or ``"all"``; the total, when recorded, is drawn in black.
    Zero and non-finite norms cannot sit on a log axis: they are marked in red
    along the bottom edge, so the step where gradients died or blew up shows.
    """
    if which not in ("layers", "params", "all"):
        raise ConfigError(f"plot_grad_norms(which={which!r}): use 'layers', 'params' or 'all'")
    steps = [r for r in getattr(history, "steps", []) if any(k.startswith(prefix) for k in r)]
    if not steps:
        raise ConfigError("plot_grad_norms: the history has no per-step gradient norms "
                          f"(keys '{prefix}...'); train with fit(..., doctor=True) to record them")
    keys = {k[len(prefix):] for r in steps for k in r if k.startswith(prefix)}
    layer_keys = {k for k in keys if all(p.isdigit() for p in k.split("."))}
    param_keys = keys - layer_keys - {"total"}
    chosen = {"layers": layer_keys or param_keys, "params": param_keys, "all": layer_keys | param_keys}[which]
    order = lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")]  # noqa: E731
    names = sorted(chosen, key=order) + (["total"] if "total" in keys else [])
    x = np.asarray([r.get("step", i) for i, r in enumerate(steps)], dtype=float)
    fig, (ax,) = _figure(size=(7.0, 4.2))
    layers = [n for n in names if n != "total"]
    colours = layer_colours(fig, ax, layers)
    bad_x = []
    for name in names:
        key = prefix + name
        present = np.asarray([key in r for r in steps])
        y = np.asarray([_as_float(r.get(key)) for r in steps])
        ok = present & np.isfinite(y) & (y > 0)
        bad_x += list(x[present & ~ok])
        style = {"color": "black", "linewidth": 2.0} if name == "total" else \
            {"linewidth": 1.2, "color": colours[name]}
        ax.plot(x[ok], y[ok], label=name, **style)
    if bad_x:
        ax.plot(bad_x, np.full(len(bad_x), 0.02), "|", color="red", markersize=12,
                transform=ax.get_xaxis_transform(), label="zero / non-finite")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient norm per layer" if which == "layers" else "gradient norms")
    ax.grid(alpha=0.3, which="both")
    _legend_for_extras(ax, layers)
    return _save(fig, path)


def layer_colours(fig, ax, names, label: str = "layer") -> dict:
    """One viridis colour per layer name, in order, with a colour bar beside ``ax`` naming them.

    Returns ``{name: colour}``.  With many layers the colour bar labels every
    few (always the first and the last), so each curve can still be read off
    by its colour.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    names = list(names)
    if not names:
        return {}
    base = colormaps["viridis"]
    colours = [base(0.5) if len(names) == 1 else base(j / (len(names) - 1)) for j in range(len(names))]
    mappable = ScalarMappable(norm=BoundaryNorm(np.arange(len(names) + 1) - 0.5, len(names)),
                              cmap=ListedColormap(colours))
    bar = fig.colorbar(mappable, ax=ax, pad=0.01, fraction=0.05, aspect=30)
    every = max(1, math.ceil(len(names) / 12))
    ticks = sorted(set(range(0, len(names), every)) | {len(names) - 1})
    bar.set_ticks(ticks, labels=[str(names[t]) for t in ticks])
    bar.ax.tick_params(labelsize="small")
    bar.set_label(label)
    return dict(zip(names, colours))


def _legend_for_extras(ax, layer_names):
    """A legend for what the colour bar does not name (the total, the red markers)."""
    handles = [h for h in ax.get_lines() if h.get_label() not in set(layer_names)
               and not h.get_label().startswith("_")]
    if handles:
        ax.legend(handles=handles, fontsize="small")


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_activation_histograms(model, x, path=None, bins: int = 50, max_samples: int = 2048):
    """Histogram of every layer's output for one batch ``x`` (evaluation mode).

    Each panel's title gives the layer, the mean and std, and the fraction of
    exact zeros (dead ReLUs show up as a spike at 0 and a large zero fraction).
    """
    if not model.built:
        model.build(tuple(np.asarray(x).shape[1:]))
    bk = model.backend
    h = bk.asarray(np.asarray(x[:max_samples]), dtype=model.dtype)
    outputs = []
    for i, layer in enumerate(model.layers):
        h = layer.forward(h, training=False)
        outputs.append((f"{i}: {type(layer).__name__}", bk.to_numpy(h).astype(np.float64).ravel()))
    model.clear_cache()
    cols = min(4, len(outputs))
    rows = -(-len(outputs) // cols)
    fig, axes = _figure(rows, cols, size=(3.6, 2.8))
    for ax, (title, values) in zip(axes, outputs):
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.hist(finite, bins=bins, color="tab:blue", alpha=0.8)
            zero = float(np.mean(values == 0))
            ax.set_title(f"{title}\nmean {finite.mean():.3g}  std {finite.std():.3g}  zero {zero:.0%}",
                         fontsize="small")
        else:
            ax.set_title(f"{title}\nno finite values", fontsize="small", color="red")
    for ax in axes[len(outputs):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_lr(history, path=None):
    """The learning rate over training: per step when recorded in ``history.steps``, else per epoch."""
    steps = [r for r in getattr(history, "steps", []) if "lr" in r]
    fig, (ax,) = _figure(size=(6.0, 3.6))
    if steps:
        ax.plot([r.get("step", i) for i, r in enumerate(steps)], [float(r["lr"]) for r in steps])
        ax.set_xlabel("step")
    elif "lr" in history.history:
        values = history.history["lr"]
        ax.plot(_epochs(history, len(values)), values, marker="o", markersize=3)
        ax.set_xlabel("epoch")
    else:
        raise ConfigError("plot_lr: the history records no learning rate ('lr')")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["plot_history", "plot_grad_norms", "plot_activation_histograms", "plot_lr"]


History._plotter = plot_history     # what History.plot(path) calls
