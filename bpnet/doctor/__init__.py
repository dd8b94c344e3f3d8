"""bpnet's doctor: detect, name and explain what goes wrong in training.

* Signals: :class:`Monitor` records gradient/weight/update norms and
  activation statistics every few steps into ``history.steps``.
* Anomaly mode: ``fit(..., detect_anomaly=True)`` or ``with detect_anomaly():``
  stops at the first NaN/Inf and names the layer, phase, operation and rows.
* Diagnosis: :func:`diagnose` (a run's history), :func:`check_data` (X, y
  before training), :func:`check_model` (model vs loss) return
  :class:`Finding` objects with evidence and a remedy; ``fit(..., doctor=True)``
  runs them all and prints each finding once.  :func:`check_gradients`
  gradient-checks every layer and names the one whose backward is wrong.
* Repair: :func:`repair` trains, diagnoses, applies the remedy for the root
  cause and restarts until the doctor is quiet (``fit(..., doctor="repair")``).
* Inspection: :func:`trace` (one batch, layer by layer), :func:`overfit_check`
  (can the pipeline memorise 10 samples?).
"""
from .anomaly import AnomalyChecker, detect_anomaly
from .callback import Doctor
from .data_checks import check_data
from .diagnose import diagnose
from .findings import Finding
from .gradients import check_gradients
from .model_checks import check_memory, check_model
from .monitor import Monitor
from .overfit import OverfitReport, overfit_check
from .repair import Baseline, RepairReport, fit_repair, repair
from .thresholds import Thresholds
from .trace import trace
from ..model import register_model_tool

register_model_tool("trace", trace)       # model.trace(x)
register_model_tool("repair", fit_repair)  # model.fit(..., doctor="repair")

__all__ = ["diagnose", "check_data", "check_model", "check_gradients", "check_memory", "overfit_check", "trace",
           "Monitor", "detect_anomaly",
           "Finding", "Thresholds", "Doctor", "OverfitReport", "AnomalyChecker", "repair", "RepairReport"]
