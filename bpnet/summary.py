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
    is 2 × Σ_layers batch × output size × itemsize.
    """
    model._require_built()
    item = model.dtype.itemsize
    n_params = model.count_params()
    n_state = len(getattr(model.optimizer, "state_names", ()) or ()) if model.optimizer else 0
    act = sum(batch_size * math.prod(layer.output_shape) for layer in model.walk()
              if layer is not model and layer.output_shape)
    act += batch_size * math.prod(model.input_shape)
    out = {"parameters": n_params * item, "gradients": n_params * item,
           "optimizer_state": n_state * n_params * item, "activations": 2 * act * item}
    out["total"] = sum(out.values())
    return out


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
              f"activations {_fmt_bytes(mem['activations'])}; total {_fmt_bytes(mem['total'])}"]
    return "\n".join(lines)
