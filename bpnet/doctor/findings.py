"""A ``Finding``: one named training problem, the evidence for it, and the remedy.

Every check in :mod:`bpnet.doctor` returns a list of findings.  A finding is
plain data (``to_dict`` gives JSON), so it can be printed, stored in
``History.findings``, exported with the history, or asserted on in a test.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The codes the doctor knows, grouped by where the evidence comes from.
# Training signals (from History.steps / History.history):
EXPLODING_GRADIENTS = "EXPLODING_GRADIENTS"
VANISHING_GRADIENTS = "VANISHING_GRADIENTS"
DYING_RELU = "DYING_RELU"
SATURATED_ACTIVATIONS = "SATURATED_ACTIVATIONS"
NONFINITE_LOSS = "NONFINITE_LOSS"
LR_TOO_HIGH = "LR_TOO_HIGH"
LR_TOO_LOW = "LR_TOO_LOW"
PLATEAU = "PLATEAU"
OVERFITTING = "OVERFITTING"
STEP_SIZE = "STEP_SIZE"
GRADIENT_ASCENT = "GRADIENT_ASCENT"
VANISHING_THROUGH_TIME = "VANISHING_THROUGH_TIME"    # a recurrent layer: ‖∂L/∂h_1‖ ≪ ‖∂L/∂h_T‖
EXPLODING_THROUGH_TIME = "EXPLODING_THROUGH_TIME"    # a recurrent layer: ‖∂L/∂h_1‖ ≫ ‖∂L/∂h_T‖
# Static checks of the model and loss:
SYMMETRIC_WEIGHTS = "SYMMETRIC_WEIGHTS"
DOUBLE_SOFTMAX = "DOUBLE_SOFTMAX"
OUTPUT_LOSS_MISMATCH = "OUTPUT_LOSS_MISMATCH"
WRONG_GRADIENT = "WRONG_GRADIENT"        # check_gradients: a layer's backward disagrees with finite differences
MEMORY_BUDGET = "MEMORY_BUDGET"          # check_memory: one batch needs more memory than the budget
EPS_UNDERFLOW = "EPS_UNDERFLOW"          # the optimizer's eps is 0 in the model's dtype (Adam's 1e-8 in float16)
# Checks of the data:
UNNORMALIZED_INPUTS = "UNNORMALIZED_INPUTS"
UNNORMALIZED_TARGETS = "UNNORMALIZED_TARGETS"     # regression targets far from unit scale
NONFINITE_DATA = "NONFINITE_DATA"
OUTLIERS = "OUTLIERS"
LABEL_FORMAT = "LABEL_FORMAT"
CLASS_IMBALANCE = "CLASS_IMBALANCE"

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One diagnosed problem.

    code : a stable name such as ``"EXPLODING_GRADIENTS"`` (constants in this module).
    severity : ``"error"`` (training cannot work), ``"warning"`` (it works badly)
        or ``"info"``.
    message : what was observed, in plain words, with the numbers.
    evidence : the numbers behind the message (JSON-serialisable).
    remedy : what to change.
    where : the layer, feature or series it concerns (``"layer 2 (relu)"``), or
        None for the whole run.  ``(code, where)`` identifies a finding, so the
        same problem seen again is not reported twice.
    caused_by : the code of the finding this one follows from (a symptom of
        that root cause, listed after it), or None for a root cause.
    """
    code: str
    severity: str
    message: str
    evidence: dict = field(default_factory=dict)
    remedy: str = ""
    where: str | None = None
    caused_by: str | None = None

    @property
    def key(self) -> tuple:
        return (self.code, self.where)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(**{k: d[k] for k in ("code", "severity", "message", "evidence", "remedy", "where",
                                         "caused_by") if k in d})

    def __str__(self):
        text = f"[{self.severity}] {self.code}: {self.message}"
        if self.caused_by:
            text = f"  [{self.severity}] {self.code} (follows from {self.caused_by}): {self.message}"
        return text + (f"\n    remedy: {self.remedy}" if self.remedy else "")
