"""bpnet's doctor: detect, name and explain what goes wrong in training.

* Signals: :class:`Monitor` records gradient/weight/update norms and
  activation statistics every few steps into ``history.steps``.
* Anomaly mode: ``fit(..., detect_anomaly=True)`` or ``with detect_anomaly():``
  stops at the first NaN/Inf and names the layer, phase, operation and rows.
"""
from .anomaly import AnomalyChecker, detect_anomaly
from .monitor import Monitor

__all__ = ["Monitor", "detect_anomaly", "AnomalyChecker"]
