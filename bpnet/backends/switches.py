"""On/off/auto switches read from the environment (``BPNET_MKL``, ``BPNET_HEAP_PAD``)."""
from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")


def env_switch(name: str) -> str:
    """The variable as "off", "on" or "auto" (unset, empty or anything else)."""
    value = os.environ.get(name, "").strip().lower()
    return "off" if value in OFF else "on" if value in ON else "auto"
