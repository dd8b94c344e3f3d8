"""``model.summary()`` and the memory estimate behind it."""
from __future__ import annotations

import math


def _layer_rows(model):
    for i, layer in enumerate(model.layers):
        yield i, layer, layer.output_shape, layer.count_params()


def memory_estimate(model, batch_size: int) -> dict:
    """Bytes for parameters, gradients, optimizer state and one batch's activations.

    Activations: every layer keeps its output (or input) for backward, and
    backward holds one gradient of the same size at a time, so the estimate
    is 2 × Σ_layers batch × output size × itemsize.  A layer that keeps more
    than its output (an RNN keeps the state of every step) reports its
    per-sample count with ``kept_size()``.

    Under mixed precision (a float16 model compiled with a ``LossScaler``) the
    optimizer state is float32, and the float32 master weights and gradients
    are listed as ``master_weights``.
    """
    model._require_built()
    item = model.dtype.itemsize
    n_params = model.count_params()
    n_state = len(getattr(model.optimizer, "state_names", ()) or ()) if model.optimizer else 0
    scaler = getattr(model, "loss_scaler", None)
    master = scaler is not None and scaler.model is not None and scaler.separate_master
    state_item = scaler.master_dtype.itemsize if master else item
    act = sum(batch_size * (layer.kept_size() if hasattr(layer, "kept_size") else math.prod(layer.output_shape))
              for layer in model.walk() if layer is not model and layer.output_shape)
    act += batch_size * math.prod(model.input_shape)
    out = {"parameters": n_params * item, "gradients": n_params * item,
           "optimizer_state": n_state * n_params * state_item, "activations": 2 * act * item}
    if master:
        out["master_weights"] = 2 * n_params * state_item        # float32 weights and gradients
    out["total"] = sum(out.values())
    return out


def max_batch_size(model, budget_bytes: float) -> int:
    """The largest batch whose :func:`memory_estimate` fits in ``budget_bytes`` (0 if none does).

    The estimate is affine in the batch size (fixed parameter, gradient and
    optimizer bytes plus activations per sample), so this is one division.
    """
    fixed = memory_estimate(model, 0)["total"]
    per_sample = memory_estimate(model, 1)["total"] - fixed
    return max(0, int((budget_bytes - fixed) // per_sample)) if per_sample > 0 else 0


def require_memory(model, batch_size: int, budget_bytes: float) -> dict:
    """The estimate for ``batch_size``; :class:`~bpnet.errors.MemoryBudgetError` if it exceeds the budget.

    The error names both numbers, what the bytes are for, and the largest
    batch that fits (``err.needed``, ``err.budget``, ``err.max_batch_size``).
    """
    from .errors import MemoryBudgetError
    need = memory_estimate(model, batch_size)
    if need["total"] <= budget_bytes:
        return need
    fit = max_batch_size(model, budget_bytes)
    parts = ", ".join(f"{k.replace('_', ' ')} {_fmt_bytes(v)}" for k, v in need.items() if k != "total")
    hint = (f"use batches of at most {fit} samples (to keep the step of a {batch_size}-sample batch, "
            f"accumulate gradients over {-(-batch_size // fit)} micro-batches)" if fit else
            "even one sample does not fit: use a smaller model or a larger budget")
    err = MemoryBudgetError(
        f"a batch of {batch_size} samples needs {_fmt_bytes(need['total'])} ({parts}) but the memory "
        f"budget is {_fmt_bytes(budget_bytes)}; {hint}")
    err.needed, err.budget, err.max_batch_size = need["total"], budget_bytes, fit
    raise err


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def summary_table(model, batch_size: int = 32) -> str:
    model._require_built()
    header = f"{'#':>3}  {'layer':<22}{'output shape':<18}{'params':>10}"
    lines = [f"{model.name} (backend={model.backend.name}, dtype={model.dtype.name}, "
             f"input=(batch, {', '.join(map(str, model.input_shape))}))", header, "-" * len(header)]
    for i, layer, shape, n in _layer_rows(model):
        label = f"{layer.name} ({type(layer).__name__})" if layer.name != type(layer).__name__.lower() \
            else type(layer).__name__
        lines.append(f"{i:>3}  {label:<22}{str(('batch',) + tuple(shape)):<18}{n:>10,}")
    mem = memory_estimate(model, batch_size)
    lines += ["-" * len(header), f"total parameters: {model.count_params():,}",
              f"memory at batch {batch_size}: parameters {_fmt_bytes(mem['parameters'])}, "
              f"gradients {_fmt_bytes(mem['gradients'])}, optimizer state {_fmt_bytes(mem['optimizer_state'])}, "
              + (f"float32 master weights and gradients {_fmt_bytes(mem['master_weights'])}, "
                 if "master_weights" in mem else "")
              + f"activations {_fmt_bytes(mem['activations'])}; total {_fmt_bytes(mem['total'])}"]
    return "\n".join(lines)
