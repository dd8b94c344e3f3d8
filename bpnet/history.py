"""The record of a training run, Keras-style, exportable as JSON or CSV."""
from __future__ import annotations

import csv
import json
import math

from .errors import ConfigError


class History:
    """Per-epoch metrics (``history["loss"]``, ``history["val_accuracy"]``, ...).

    ``steps`` holds optional per-step records (written by monitoring callbacks),
    each a flat dict such as ``{"step": 120, "loss": 0.31, "grad_norm/0.W": 1.2}``.
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.steps: list[dict] = []
        self.findings: list = []

    def append(self, epoch: int, logs: dict):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def keys(self):
        return self.history.keys()

    def __len__(self):
        return len(self.epoch)

    def __repr__(self):
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    # -- export -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"epoch": list(self.epoch), "history": self.history, "steps": self.steps,
                "findings": [f.to_dict() if hasattr(f, "to_dict") else f for f in self.findings]}

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        h = cls()
        h.epoch = list(data.get("epoch", []))
        h.history = {k: list(v) for k, v in data.get("history", {}).items()}
        h.steps = list(data.get("steps", []))
        h.findings = list(data.get("findings", []))
        return h

    @classmethod
    def load_json(cls, path) -> "History":
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    def to_csv(self, path, per_step: bool = False):
        """Write one row per epoch (or per recorded step with ``per_step=True``)."""
        if per_step:
            rows = self.steps
        else:
            rows = [{"epoch": e, **{k: v[i] for k, v in self.history.items() if i < len(v)}}
                    for i, e in enumerate(self.epoch)]
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("epoch", "step"), k))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    #: ``(history, path=None, **kwargs) -> Figure``; :mod:`bpnet.plot` sets it when imported
    _plotter = None

    def plot(self, path=None, **kwargs):
        """Loss and metric curves (needs matplotlib); see :mod:`bpnet.plot`."""
        if History._plotter is None:
            raise ConfigError("History.plot: no plotter is registered; it comes with bpnet.plot "
                              "(`import bpnet` loads it)")
        return History._plotter(self, path=path, **kwargs)

    #: ``(history, path, **kwargs) -> path``; the doctor's report module sets it when imported
    _report_writer = None

    def report(self, path, **kwargs):
        """Write a self-contained HTML diagnosis report of this run to ``path``; return ``path``.

        ``model=`` and ``x=`` add histograms of every layer's output; see
        ``bpnet.doctor.report.write_html_report`` for the rest.
        """
        writer = History._report_writer
        if writer is None:
            raise ConfigError("History.report: no report writer is registered; it comes with the doctor "
                              "(import bpnet, or import bpnet.doctor.report, before calling it)")
        return writer(self, path, **kwargs)


def _json_default(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
