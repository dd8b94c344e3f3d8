"""``Doctor``: the callback behind ``model.fit(..., doctor=True)``.

Before training it runs :func:`check_data` on the raw (X, y) and
:func:`check_model` on the built model; after every epoch it runs
:func:`diagnose` on the history so far.  Each finding is printed once, the
first time it is seen, and kept in ``history.findings``.  A
:class:`Monitor` is attached when the callbacks have none, so the step
signals exist.
"""
from __future__ import annotations

from ..callbacks import Callback
from ..errors import BpnetError
from ..training import register_fit_option
from .data_checks import check_data
from .diagnose import diagnose
from .model_checks import check_model
from .monitor import Monitor
from .thresholds import Thresholds


class Doctor(Callback):
    """``fit(..., doctor=Doctor(thresholds=..., print_fn=...))`` to tune it; ``doctor=True`` for defaults.

    ``print_fn=None`` keeps quiet (the findings are still in ``history.findings``).
    """

    def __init__(self, thresholds: Thresholds | None = None, print_fn=print, every: int = 10):
        self.thresholds = thresholds or Thresholds()
        self.print_fn = print_fn
        self.every = every
        self.findings: list = []
        self._seen: set = set()
        self._history = None          # this run's History, from on_train_begin on

    def report(self, new):
        """Keep and print the findings not seen before; return them."""
        fresh = [f for f in new if f.key not in self._seen]
        for f in fresh:
            self._seen.add(f.key)
            self.findings.append(f)
            if self._history is not None:
                self._history.findings.append(f)
            if self.print_fn is not None:
                self.print_fn(f"doctor: {f}")
        return fresh

    def check_data(self, X, y):
        return self.report(check_data(X, y, loss=self.model.loss, model=self.model, thresholds=self.thresholds))

    def on_train_begin(self, logs=None):
        self._history = self.model.history
        self._history.findings.extend(self.findings)   # the data findings, made before it existed
        self.report(check_model(self.model, thresholds=self.thresholds))

    def on_epoch_end(self, epoch, logs=None):
        self.report(diagnose(self.model.history, model=self.model, thresholds=self.thresholds))

    def on_train_end(self, logs=None):
        if not self.findings and self.print_fn is not None:
            self.print_fn("doctor: no problems found")


def attach_doctor(model, doctor, X, y, callbacks) -> list:
    """Check the raw (X, y), and return the callbacks with the Doctor (and a Monitor, if
    there is none) added.  This is what ``fit(doctor=...)`` does before validating the data."""
    doc = doctor if isinstance(doctor, Doctor) else Doctor()
    doc.set_model(model)
    if not model.built:               # build now (as fit would) so the checks know the output width
        shape = getattr(X, "shape", None)
        if shape is not None and len(shape) >= 2 and shape[0] > 0:
            try:
                model.build(tuple(shape[1:]))
            except BpnetError:        # fit's own validation explains it
                pass
    callbacks = list(callbacks or [])
    if not any(isinstance(c, Monitor) for c in callbacks):
        callbacks.insert(0, Monitor(every=doc.every))
    doc.check_data(X, y)
    return callbacks + [doc]


def _fit_plugin(loop, doctor, X, y):
    """``fit(doctor=...)``: the doctor joins the loop's callbacks (printing on the root process only)."""
    loop.user_callbacks = attach_doctor(loop.model, doctor, X, y, loop.user_callbacks)
    if not loop.strategy.is_root:
        for cb in loop.user_callbacks:
            if isinstance(cb, Doctor):
                cb.print_fn = None         # findings are kept in the history on every process


register_fit_option("doctor", _fit_plugin)
