"""``Doctor``: the callback behind ``model.fit(..., doctor=True)``.

Before training it runs :func:`check_data` on the raw (X, y),
:func:`~bpnet.doctor.validation_checks.check_validation` on the validation
data, :func:`check_model` on the built model (the optimizer's eps in the
model's dtype included) and gradient-checks every user-written layer in
float64 on a few real samples; after every epoch it runs :func:`diagnose`
on the history so far.  The verdict is the run's whole course: at the end
the history is diagnosed once more, a condition seen during training but
gone by the end is kept only as ``info`` ("gone by the end"), and the
findings are told as one story (:mod:`bpnet.doctor.story`): the root cause
first, its symptoms after it with ``caused_by``.  The printed output starts
with one line naming the main problem and its remedy (or "no problems
found", one line for a healthy run, its infos kept in ``history.findings``),
then one entry per finding.  A :class:`Monitor` is attached when
the callbacks have none, so the step signals exist.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..callbacks import Callback
from ..errors import BpnetError
from ..training import register_fit_option
from .data_checks import check_data
from .diagnose import diagnose
from .gradients import check_user_layers
from .model_checks import check_model
from .monitor import Monitor
from .story import headline, tell
from .thresholds import Thresholds
from .validation_checks import check_validation


class Doctor(Callback):
    """``fit(..., doctor=Doctor(thresholds=..., print_fn=...))`` to tune it; ``doctor=True`` for defaults.

    ``print_fn=None`` keeps quiet (the findings are still in ``history.findings``).
    ``findings`` is the story so far (the final one once training ended).
    """

    def __init__(self, thresholds: Thresholds | None = None, print_fn=print, every: int = 10):
        self.thresholds = thresholds or Thresholds()
        self.print_fn = print_fn
        self.every = every
        self.findings: list = []
        self._before: list = []       # data, model and gradient findings, made before the first step
        self._during: dict = {}       # {key: (epoch, finding)} from the per-epoch diagnoses
        self._history = None          # this run's History, from on_train_begin on
        self._printed = False

    def _add_before(self, new):
        seen = {f.key for f in self._before}
        self._before += [f for f in new if f.key not in seen]
        self.findings = tell(self._before)

    # -- before training --------------------------------------------------------------
    def check_data(self, X, y, validation_data=None):
        loss, t = self.model.loss, self.thresholds
        found = check_data(X, y, loss=loss, model=self.model, thresholds=t)
        if validation_data is not None and len(validation_data) == 2:
            train = {(f.code, f.where) for f in found}
            found += [f for f in check_validation(X, y, *validation_data, loss=loss, model=self.model, thresholds=t)
                      if (f.code, f.where.replace("validation ", "", 1) if f.where else None) not in train]
            # (a problem the training data has too is said once, about the training data)
        self._add_before(found)
        return found

    def check_model(self, X):
        """The model against its loss and optimizer, and its user-written layers on a few rows of X."""
        found = check_model(self.model, thresholds=self.thresholds)
        if getattr(self.model, "built", False):
            found += check_user_layers(self.model, X)
        self._add_before(found)
        return found

    def on_train_begin(self, logs=None):
        self._history = self.model.history
        self._publish(self.findings)

    # -- during and after -------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        for f in diagnose(self.model.history, model=self.model, thresholds=self.thresholds, static=False):
            self._during.setdefault(f.key, (int(epoch), f))

    def on_train_end(self, logs=None):
        final = diagnose(self.model.history, model=self.model, thresholds=self.thresholds, static=False)
        now = {f.key for f in final}
        gone = [_gone(f, epoch) for key, (epoch, f) in self._during.items()
                if key not in now and f.severity != "info"]
        seen = {f.key for f in self._before}
        self.findings = tell(self._before + [f for f in final if f.key not in seen] + gone)
        self._publish(self.findings)
        self.flush()

    def _publish(self, findings):
        if self._history is not None:
            self._history.findings[:] = list(findings)

    def flush(self):
        """Print the verdict once: the headline, then each finding (also when training failed)."""
        if self._printed or self.print_fn is None:
            return
        self._printed = True
        self.print_fn(headline(self.findings))
        if not any(f.severity in ("error", "warning") for f in self.findings):
            return                     # a healthy run: one line (its notes stay in history.findings)
        for f in self.findings:
            self.print_fn(f"doctor: {f}")

    def report(self, new):
        """Add findings made outside the callback's own checks (kept in the story)."""
        self._add_before(new)
        self._publish(self.findings)
        return new


def _gone(f, epoch):
    return replace(f, severity="info", caused_by=None,
                   message=f"gone by the end (seen at epoch {epoch}, not at the end of training): {f.message}",
                   evidence={**f.evidence, "seen_at_epoch": epoch, "gone_by_end": True})


def attach_doctor(model, doctor, X, y, callbacks, validation_data=None) -> list:
    """Check the raw (X, y) and the validation data, and return the callbacks with the Doctor (and a
    Monitor, if there is none) added.  This is what ``fit(doctor=...)`` does before validating the data."""
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
    with np.errstate(all="ignore"):
        doc.check_data(X, y, validation_data)
        doc.check_model(X)            # before fit's own checks, which may refuse to start
    return callbacks + [doc]


def _fit_plugin(loop, doctor, X, y):
    """``fit(doctor=...)``: the doctor joins the loop's callbacks (printing on the root process only).
    What it found is printed at the end of training, or when training stops on an error."""
    callbacks = attach_doctor(loop.model, doctor, X, y, loop.user_callbacks,
                              getattr(loop, "validation_data", None))
    loop.user_callbacks = callbacks
    doc = callbacks[-1]
    if not loop.strategy.is_root:
        doc.print_fn = None            # findings are kept in the history on every process
    loop.cleanups.append(doc.flush)


register_fit_option("doctor", _fit_plugin)
