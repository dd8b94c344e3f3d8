"""Exceptions raised by bpnet.

Every error bpnet raises derives from :class:`BpnetError`, so a caller can
catch them all at once.  Messages name what is wrong (the layer, the shapes,
the values) and say how to fix it.
"""


class BpnetError(Exception):
    """Base class of every error raised by bpnet."""


class ShapeError(BpnetError, ValueError):
    """An array has the wrong shape for the layer or loss that received it."""


class LabelError(BpnetError, ValueError):
    """Targets are in the wrong format or range for the loss."""


class DataError(BpnetError, ValueError):
    """Training data is empty, non-numeric, non-finite or misaligned."""


class ConfigError(BpnetError, ValueError):
    """A model, layer, loss or optimizer was configured inconsistently."""


class NotBuiltError(BpnetError, RuntimeError):
    """A layer or model was used before its shapes were known."""


class BackendError(BpnetError, RuntimeError):
    """The requested array backend is unavailable."""


class GradcheckError(BpnetError, AssertionError):
    """An analytic gradient disagrees with central differences."""


class NonFiniteError(BpnetError, FloatingPointError):
    """A NaN or Inf appeared during training (see ``bpnet.detect_anomaly``)."""


class MemoryBudgetError(BpnetError, MemoryError):
    """A batch would need more memory than the configured budget."""


class CheckpointError(BpnetError, OSError):
    """A checkpoint could not be written or read."""


class MissingDependencyError(BpnetError, ImportError):
    """An optional package that a bpnet function needs is not installed."""
