"""The one table of activation codes.

A fused kernel cannot call a layer's Python method, so it switches on a small
integer instead.  This table is the only place those integers are written:
each activation layer names its code (``ReLU.code = ACT_CODES["relu"]``), the
Numba kernels import the constants below, and the CUDA sources receive them
from the compiler command line as ``-DACT_RELU=1`` ... (:func:`cuda_defines`,
passed to NVRTC by the CuPy backend and to ``nvcc`` by the tests).

A layer whose code is ``None`` has no kernel: every backend runs its own
``f`` / ``dz`` code.
"""
from __future__ import annotations

ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "elu": 3, "sigmoid": 4, "tanh": 5}

IDENTITY = ACT_CODES["identity"]
RELU = ACT_CODES["relu"]
LEAKY_RELU = ACT_CODES["leaky_relu"]
ELU = ACT_CODES["elu"]
SIGMOID = ACT_CODES["sigmoid"]
TANH = ACT_CODES["tanh"]


def cuda_defines() -> tuple[str, ...]:
    """The table as compiler definitions: ``("-DACT_IDENTITY=0", "-DACT_RELU=1", ...)``."""
    return tuple(f"-DACT_{name.upper()}={code}" for name, code in ACT_CODES.items())
