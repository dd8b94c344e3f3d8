"""``trace``: one batch through the model, layer by layer, as a table of statistics.

The first place a column turns odd (a NaN count above 0, a max of 1e30, a std
of 0) is where to look.
"""
from __future__ import annotations

import numpy as np

def array_stats(a) -> dict:
    """min, max, mean, std over the finite entries of ``a``, and its NaN and Inf counts."""
    a = np.asarray(a)
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a.ravel()
    f64 = finite.astype(np.float64)
    stats = {"min": float(f64.min()) if f64.size else float("nan"),
             "max": float(f64.max()) if f64.size else float("nan"),
             "mean": float(f64.mean()) if f64.size else float("nan"),
             "std": float(f64.std()) if f64.size else float("nan")}
    stats["nan"] = int(np.isnan(a).sum()) if a.dtype.kind == "f" else 0
    stats["inf"] = int(np.isinf(a).sum()) if a.dtype.kind == "f" else 0
    return stats


class TraceTable(list):
    """The rows of :func:`trace` (a list of dicts) that show themselves as the table.

    In a REPL ``model.trace(x)`` then shows the table once: as the result's
    repr when nothing printed it, as a one-line summary when ``print_fn``
    already did.  ``str(table)`` is always the table.
    """
    printed = False

    def __str__(self):
        return format_table(self)

    def __repr__(self):
        if not self.printed:
            return format_table(self)
        bad = [r["name"] for r in self if r["nan"] or r["inf"]]
        state = f"first NaN/Inf at {bad[0]!r}" if bad else "no NaN/Inf"
        return f"<TraceTable: {len(self)} rows, {state}; printed above, str() gives the table>"


def trace(model, x, print_fn=None, training: bool = False) -> TraceTable:
    """Run ``x`` through ``model`` one layer at a time; return one row per layer.

    Each row: ``index`` (None for the input row), ``name``, ``layer`` (class),
    ``shape``, ``dtype``, ``min``, ``max``, ``mean``, ``std`` (over finite
    values) and ``nan`` / ``inf`` counts.  The rows come back as a
    :class:`TraceTable`, whose repr is the table; ``print_fn`` (e.g. ``print``)
    also prints it.  Runs in evaluation mode unless ``training=True``.
    """
    bk = model.backend
    x = np.asarray(x)
    if not model.built:
        model.build(tuple(x.shape[1:]))
    h = bk.asarray(x, dtype=model.dtype)
    rows = TraceTable([_row(None, "input", "-", bk.to_numpy(h))])
    for i, layer in enumerate(model.layers):
        h = layer.forward(h, training)
        rows.append(_row(i, layer.name, type(layer).__name__, bk.to_numpy(h)))
    if print_fn is not None:
        print_fn(format_table(rows))
        rows.printed = True
    return rows


def _row(index, name, cls, a) -> dict:
    return {"index": index, "name": name, "layer": cls, "shape": tuple(a.shape), "dtype": str(a.dtype),
            **array_stats(a)}


def format_table(rows) -> str:
    head = f"{'#':>3}  {'name':<14}{'layer':<12}{'shape':<14}{'dtype':<9}" \
           f"{'min':>11}{'max':>11}{'mean':>11}{'std':>11}{'nan':>7}{'inf':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        idx = "" if r["index"] is None else str(r["index"])
        flag = "   <-- non-finite" if r["nan"] or r["inf"] else ""
        lines.append(f"{idx:>3}  {r['name'][:13]:<14}{r['layer'][:11]:<12}{str(r['shape']):<14}{r['dtype']:<9}"
                     f"{r['min']:>11.4g}{r['max']:>11.4g}{r['mean']:>11.4g}{r['std']:>11.4g}"
                     f"{r['nan']:>7}{r['inf']:>7}{flag}")
    return "\n".join(lines)
