"""The diagnosis report: one self-contained HTML page about a training run.

``history.report("report.html")`` or ``bpnet doctor RUN.json --html report.html``
writes a page that needs nothing but a browser (no network, no scripts): the
headline diagnosis and its remedy, every finding with its evidence, the loss
and metric curves, per-layer gradient norms (coloured by layer, with a colour
bar), activation histograms, the learning rate and, when the run record holds
them, the repair attempts.  Figures are matplotlib PNGs embedded as base64.

The engine's ``History`` does not import this module; importing it (``import
bpnet`` does) registers :func:`write_html_report` as ``History.report``'s writer.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math

import numpy as np

from ..errors import ConfigError
from ..history import History
from .findings import Finding

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:24px;
color:#1d1d1f;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
.headline{border-left:6px solid #888;background:#f6f6f6;padding:12px 16px;margin:16px 0}
.headline.error{border-color:#c62828}.headline.warning{border-color:#ef6c00}.headline.ok{border-color:#2e7d32}
.headline .what{font-size:1.15em;font-weight:600}.remedy{margin-top:6px}
.finding{border:1px solid #e0e0e0;border-radius:4px;padding:10px 14px;margin:10px 0}
.sev{display:inline-block;border-radius:3px;padding:0 6px;color:#fff;font-size:.8em;font-weight:600}
.sev.error{background:#c62828}.sev.warning{background:#ef6c00}.sev.info{background:#1565c0}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
table{border-collapse:collapse;font-size:.88em;margin-top:6px}td,th{border:1px solid #e0e0e0;padding:2px 8px;
text-align:left;vertical-align:top}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.88em}
pre{background:#f6f6f6;padding:8px 12px;overflow-x:auto;font-size:.85em}
"""


# --------------------------------------------------------------------------- public API
def write_html_report(history, path, *, findings=None, model=None, x=None, histograms=None, repairs=None,
                      title: str | None = None) -> str:
    """Write the report of ``history`` to ``path`` (HTML); return ``path``.

    findings : the findings to show; by default :func:`diagnose` on the
        history plus those saved in ``history.findings`` while it trained.
    model, x : a model and a batch, for histograms of every layer's output
        (else ``histograms``, as :func:`activation_histograms` returns; else
        the activation statistics the Monitor recorded over training).
    repairs : the repair attempts: a :class:`~bpnet.doctor.repair.RepairReport`
        (default: ``history.repair``, which ``fit(doctor="repair")`` sets), its
        ``attempts``, or a list of dicts (a run record's ``"repairs"``).  With a
        report, the default findings start with the broken run's.
    """
    if not isinstance(history, History):
        raise ConfigError(f"write_html_report needs a bpnet History, got {type(history).__name__}")
    if histograms is None and model is not None and x is not None:
        histograms = activation_histograms(model, x)
    if repairs is None:
        repairs = getattr(history, "repair", None) or getattr(history, "repairs", None)
    if findings is None:
        findings = run_findings(history)
        broken = list(getattr(repairs, "attempts", None) or [None])[0]
        if broken is not None and hasattr(broken, "findings"):
            keys = {f.key for f in broken.findings}
            findings = list(broken.findings) + [f for f in findings if f.key not in keys]
    page = render_html(history, [_as_finding(f) for f in findings], histograms=histograms, repairs=repairs,
                       title=title or "training run")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return str(path)


def run_findings(history) -> list:
    """:func:`diagnose` of the final signals, then what was saved while training (each problem once)."""
    from .diagnose import diagnose
    final = list(diagnose(history))
    known = {f.key for f in final}
    saved = [_as_finding(f) for f in history.findings]
    return final + [f for f in saved if getattr(f, "key", None) not in known]


def activation_histograms(model, x, bins: int = 40, max_samples: int = 1024) -> dict:
    """``{"3: ReLU": {"counts", "edges", "zero_frac", "nonfinite", "n"}}`` for every layer's output on ``x``.

    JSON-ready (plain lists), so it can be saved with a run and drawn later.
    Runs in evaluation mode and clears the layers' caches afterwards.
    """
    x = np.asarray(x)[:max_samples]
    if not model.built:
        model.build(tuple(x.shape[1:]))
    bk = model.backend
    h = bk.asarray(x, dtype=model.dtype)
    out = {}
    with np.errstate(all="ignore"):
        for i, layer in enumerate(model.layers):
            h = layer.forward(h, training=False)
            values = bk.to_numpy(h).astype(np.float64).ravel()
            finite = values[np.isfinite(values)]
            counts, edges = np.histogram(finite, bins=bins) if finite.size else (np.zeros(0), np.zeros(0))
            out[f"{i}: {type(layer).__name__}"] = {
                "counts": counts.astype(int).tolist(), "edges": edges.tolist(), "n": int(values.size),
                "zero_frac": float(np.mean(values == 0)) if values.size else 0.0,
                "nonfinite": int(values.size - finite.size)}
    model.clear_cache()
    return out


# --------------------------------------------------------------------------- the page
def render_html(history, findings, histograms=None, repairs=None, title="training run") -> str:
    """The page as a string (see :func:`write_html_report`)."""
    parts = [f"<h1>bpnet diagnosis: {_e(title)}</h1>", f'<div class="meta">{_e(_run_summary(history))}</div>',
             _headline(findings)]
    if repairs:
        parts += ["<h2>Repair attempts</h2>", _repair_section(repairs)]
    parts += ["<h2>Findings</h2>", _findings_section(findings), "<h2>Training curves</h2>"]
    for caption, draw in _figures(history, histograms):
        parts.append(_figure_html(caption, draw))
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts.append(f'<p class="meta">written by bpnet {_e(_version())} on {_e(stamp)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>bpnet diagnosis: {_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _headline(findings) -> str:
    if not findings:
        return ('<div class="headline ok"><div class="what">No problems found</div>'
                "<div class=\"remedy\">The doctor's checks all passed on this run's signals.</div></div>")
    # the main problem as the doctor's headline names it: the first root cause that is not a note
    top = next((f for f in findings if f.severity in ("error", "warning") and not getattr(f, "caused_by", None)),
               findings[0])
    remedy = f'<div class="remedy"><b>Remedy:</b> {_e(top.remedy)}</div>' if top.remedy else ""
    more = len(findings) - 1
    rest = f'<div class="meta">and {more} more finding{"s" * (more != 1)} below</div>' if more else ""
    return (f'<div class="headline {_e(top.severity)}"><div class="what">{_e(top.code)}: {_e(top.message)}</div>'
            f"{remedy}{rest}</div>")


def _findings_section(findings) -> str:
    if not findings:
        return "<p>None.</p>"
    blocks = []
    for f in findings:                    # the doctor's order: each root cause, then what follows from it
        where = f" <span class=\"meta\">({_e(f.where)})</span>" if f.where else ""
        if getattr(f, "caused_by", None):
            where += f" <span class=\"meta\">follows from {_e(f.caused_by)}</span>"
        remedy = f"<div class=\"remedy\"><b>Remedy:</b> {_e(f.remedy)}</div>" if f.remedy else ""
        evidence = _table([{"evidence": k, "value": _fmt(v)} for k, v in f.evidence.items()]) if f.evidence else ""
        blocks.append(f'<div class="finding"><span class="sev {_e(f.severity)}">{_e(f.severity)}</span> '
                      f"<code>{_e(f.code)}</code>{where}<div>{_e(f.message)}</div>{remedy}{evidence}</div>")
    return "\n".join(blocks)


def _repair_section(repairs) -> str:
    """The attempts as a table; for a RepairReport also its verdict and the change set to apply."""
    rows = repair_rows(repairs)
    head = str(repairs).splitlines()[0] if hasattr(repairs, "attempts") else ""
    diff = repairs.diff() if hasattr(repairs, "diff") else ""
    return ((f"<p><b>{_e(head)}</b></p>" if head else "") + _table(rows)
            + (f"<p>Change set to apply to the script:</p><pre><code>{_e(diff)}</code></pre>" if diff else ""))


def repair_rows(repairs) -> list:
    """One JSON-ready dict per repair attempt, from a RepairReport, its attempts or such dicts."""
    attempts = getattr(repairs, "attempts", repairs) or []
    return [a if isinstance(a, dict) else _attempt_row(a) for a in attempts]


def _attempt_row(a) -> dict:
    target = getattr(a, "target", None)
    problems = getattr(a, "problems", getattr(a, "findings", []))
    return {"attempt": a.number, "for": getattr(target, "code", "") if a.number else "(broken run)",
            "remedy": a.remedy or "", "change": a.change or "", "restart from": a.restart or "",
            "result": f"{a.metric_name} {_fmt(a.metric)}",
            "doctor found": ", ".join(f.code for f in problems) or "nothing", "verdict": a.verdict,
            "seconds": round(float(a.seconds), 2)}


def _figures(history, histograms):
    """``(caption, draw)`` pairs for the figures this run has data for; ``draw()`` returns a Figure."""
    from .. import plot
    steps = history.steps
    out = []
    if any(k not in ("time", "lr") for k in history.history):
        out.append(("Loss and metrics per epoch (training solid, validation dashed).",
                    lambda: plot.plot_history(history)))
    if any(k.startswith("grad_norm/") for r in steps for k in r):
        out.append(("Gradient norm of each layer's parameters, per recorded step; the colour bar names the "
                    "layers, red ticks mark zero or non-finite norms.", lambda: plot.plot_grad_norms(history)))
    if histograms:
        out.append(("Histogram of each layer's output on a probe batch (counts on a log scale).",
                    lambda: _draw_histograms(histograms)))
    elif any(k.startswith("act_mean/") for r in steps for k in r):
        out.append(("Activation statistics over training: mean ± std of each activation layer's output, and "
                    "the fraction of dead (ReLU) or saturated (sigmoid/tanh) units. The run record holds no raw "
                    "activations; history.report(path, model=model, x=X[:256]) adds their histograms.",
                    lambda: _draw_activation_stats(steps)))
    if "lr" in history.history or any("lr" in r for r in steps):
        out.append(("Learning rate.", lambda: plot.plot_lr(history)))
    return out


def _figure_html(caption, draw) -> str:
    try:
        with np.errstate(all="ignore"):
            fig = draw()
    except (ConfigError, ValueError, ImportError) as exc:   # no matplotlib, or a signal not usable as recorded
        return f"<p class=\"meta\">{_e(caption)} Not drawn: {_e(exc)}</p>"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _draw_histograms(histograms):
    from ..plot import _figure
    items = [(k, v) for k, v in histograms.items()]
    cols = min(4, len(items))
    fig, axes = _figure(-(-len(items) // cols), cols, size=(3.4, 2.6))
    for ax, (name, h) in zip(axes, items):
        if len(h.get("counts", [])):
            ax.stairs(h["counts"], h["edges"], fill=True, color="tab:blue", alpha=0.8)
            ax.set_yscale("log")
            ax.locator_params(axis="x", nbins=4)
            ax.tick_params(labelsize="small")
            bad = f", {h['nonfinite']} NaN/Inf" if h.get("nonfinite") else ""
            ax.set_title(f"{name}\nzero {h.get('zero_frac', 0):.0%}{bad}", fontsize="small")
        else:
            ax.set_title(f"{name}\nno finite values", fontsize="small", color="red")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    return fig


def _draw_activation_stats(steps):
    from ..plot import _figure, layer_colours
    layers = sorted({k.split("/", 1)[1] for r in steps for k in r if k.startswith("act_mean/")},
                    key=lambda p: [int(t) if t.isdigit() else t for t in p.split(".")])
    x = np.asarray([r.get("step", i) for i, r in enumerate(steps)], dtype=float)
    fig, (ax_mean, ax_frac) = _figure(1, 2, size=(5.2, 3.6))
    colours = layer_colours(fig, ax_frac, layers)
    for name in layers:
        mean = np.asarray([_num(r.get(f"act_mean/{name}")) for r in steps])
        std = np.asarray([_num(r.get(f"act_std/{name}")) for r in steps])
        ax_mean.plot(x, mean, color=colours[name], lw=1.2)
        ax_mean.fill_between(x, mean - std, mean + std, color=colours[name], alpha=0.15)
        for key, style in (("dead_frac", "-"), ("sat_frac", "--")):
            frac = np.asarray([_num(r.get(f"{key}/{name}")) for r in steps])
            if np.isfinite(frac).any():
                ax_frac.plot(x, frac, style, color=colours[name], lw=1.2)
    ax_mean.set_title("activation mean ± std")
    ax_frac.set_title("dead (solid) / saturated (dashed) fraction")
    ax_frac.set_ylim(-0.02, 1.02)
    for ax in (ax_mean, ax_frac):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- small helpers
def _run_summary(history) -> str:
    parts = [f"{len(history)} epochs", f"{len(history.steps)} step records"]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        if history.history.get(key):
            parts.append(f"final {key} {_fmt(history.history[key][-1])}")
    return ", ".join(parts)


def _table(rows) -> str:
    rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _as_finding(f):
    if isinstance(f, Finding):
        return f
    if isinstance(f, dict):
        try:
            return Finding.from_dict(f)
        except TypeError:
            pass
    return Finding("NOTE", "info", str(f))


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return ", ".join(_fmt(v) for v in value[:8]) + f", ... ({len(value)} values)"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _version() -> str:
    from .. import __version__
    return __version__


History._report_writer = write_html_report      # what History.report(path) calls

__all__ = ["write_html_report", "render_html", "activation_histograms", "run_findings", "repair_rows"]
