"""The memory budget: before the first step, compare the memory estimate with what is really available.

A step that needs more memory than the machine (or the container, or the
process's address-space limit) allows dies with NumPy's raw
``_ArrayMemoryError`` in the middle of a batch, or gets the process killed.
``fit``, ``evaluate`` and ``predict`` therefore compare
:func:`bpnet.summary.memory_estimate` with :func:`available_memory`, the
smallest of

* ``MemAvailable`` in ``/proc/meminfo`` (what the kernel can hand out without swapping),
* the cgroup limit less the cgroup's usage (v2 ``memory.max``/``memory.current``,
  v1 ``memory.limit_in_bytes``/``memory.usage_in_bytes``): a container's limit,
* ``RLIMIT_AS`` less the process's current address space (``ulimit -v``),

and raise :class:`~bpnet.errors.MemoryBudgetError` with the bytes needed, the
bytes available and the largest batch that fits.  Only what is not allocated
yet counts as needed: parameters and gradients exist once the model is built.
Arrays on a GPU are not host memory, so device backends are not checked here.
"""
from __future__ import annotations

import math
import resource

from .errors import MemoryBudgetError
from .summary import _fmt_bytes, memory_estimate

_MEMINFO = "/proc/meminfo"
_SELF_STATUS = "/proc/self/status"
_CGROUP_V2 = "/sys/fs/cgroup"
_CGROUP_V1 = "/sys/fs/cgroup/memory"


def _read_int(path: str):
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available():
    try:
        with open(_MEMINFO) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available():
    for limit_file, usage_file in ((f"{_CGROUP_V2}/memory.max", f"{_CGROUP_V2}/memory.current"),
                                   (f"{_CGROUP_V1}/memory.limit_in_bytes", f"{_CGROUP_V1}/memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:            # v1 writes ~2^63 for "no limit"
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def _address_space_available():
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open(_SELF_STATUS) as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except OSError:
        pass
    return max(0, soft - used)


def available_memory() -> tuple[int | None, str]:
    """(bytes this process can still allocate, which limit says so); (None, ...) when nothing is known."""
    limits = {"free memory (MemAvailable)": _meminfo_available(),
              "the cgroup memory limit": _cgroup_available(),
              "the address-space limit (RLIMIT_AS)": _address_space_available()}
    known = {name: value for name, value in limits.items() if value is not None}
    if not known:
        return None, "unknown"
    name = min(known, key=known.get)
    return known[name], name


def _allocated(model) -> int:
    """Bytes of the estimate that already exist: parameters, gradients, optimizer state, master copies."""
    est = memory_estimate(model, 0)
    have = est["parameters"] + est["gradients"]
    opt = model.optimizer
    if opt is not None and any(v is not None for v in opt.state.values()):
        have += est["optimizer_state"]
    scaler = model.loss_scaler
    if scaler is not None and scaler.master_params is not None:
        have += est.get("master_weights", 0)
    return have


def needed_bytes(model, batch_size: int, training: bool = True, extra_bytes: int = 0) -> dict:
    """What a step (``training``) or a forward pass over a batch still has to allocate, by purpose."""
    est = memory_estimate(model, batch_size)
    if training:
        parts = {k: v for k, v in est.items() if k != "total"}
        already = _allocated(model)
    else:            # evaluation keeps each layer's output once; nothing for gradients or the optimizer
        parts = {"activations": est["activations"] // 2}
        already = 0
    if extra_bytes:
        parts["inputs and outputs"] = int(extra_bytes)
    parts["total"] = max(0, sum(parts.values()) - already)
    return parts


def require_memory(model, batch_size: int, purpose: str = "fit", training: bool = True,
                   extra_bytes: int = 0, per_row_bytes: int = 0):
    """Raise MemoryBudgetError before the first step if a batch would not fit in the available memory.

    ``extra_bytes`` are arrays the call makes besides the step (a cast copy
    of X, the outputs); ``per_row_bytes`` is how much of them grows with the
    batch (for the largest batch that fits).
    """
    if not getattr(model.backend, "is_host", True) or not model.built:
        return
    available, source = available_memory()
    if available is None:
        return
    need = needed_bytes(model, batch_size, training, extra_bytes)
    if need["total"] <= available:
        return
    fits = _largest_batch(model, training, available, extra_bytes - per_row_bytes * batch_size, per_row_bytes)
    parts = ", ".join(f"{k.replace('_', ' ')} {_fmt_bytes(v)}" for k, v in need.items() if k != "total")
    hint = (f"the largest batch that fits is {fits} samples (pass batch_size={fits}"
            + (f", or accumulate gradients over {math.ceil(batch_size / fits)} micro-batches)" if training else ")")
            if fits else "even one sample does not fit: use a smaller model, or free memory")
    err = MemoryBudgetError(
        f"{purpose} with batches of {batch_size} samples needs {_fmt_bytes(need['total'])} more memory than "
        f"is allocated now (estimate: {parts}) but only {_fmt_bytes(available)} are available ({source}); {hint}")
    err.needed, err.available, err.max_batch_size, err.limit = need["total"], available, fits, source
    err.budget = available
    raise err


def _largest_batch(model, training: bool, available: int, fixed_extra: int, per_row: int) -> int:
    """The largest batch whose step (estimate affine in the batch size) fits in ``available`` bytes."""
    per_sample = memory_estimate(model, 1)["activations"] - memory_estimate(model, 0)["activations"]
    per_sample = (per_sample if training else per_sample // 2) + per_row
    fixed = needed_bytes(model, 0, training)["total"] + max(0, fixed_extra)
    return max(0, int((available - fixed) // per_sample)) if per_sample > 0 else 0


def host_bytes(*arrays) -> int:
    """Bytes of NumPy arrays (0 for None)."""
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays if a is not None)

