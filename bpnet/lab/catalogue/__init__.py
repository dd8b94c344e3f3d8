"""The scenarios, registered on import in catalogue order."""
from . import optimisation  # noqa: F401
from . import gradients  # noqa: F401
from . import recurrent  # noqa: F401
from . import data_faults  # noqa: F401
from . import numerics  # noqa: F401
