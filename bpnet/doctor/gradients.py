"""``check_gradients``: gradient-check every layer of a model and name the one whose backward is wrong.

A model-level gradient check says *that* a derivative is wrong; every tensor
upstream of the culprit fails with it.  Checking layer by layer, each on the
input it really receives, finds *where*: the first (and usually only) layer
whose own backward disagrees with central differences.

* WRONG_GRADIENT -- a layer's analytic gradient (w.r.t. its input or a
  parameter) differs from the numerical one by more than ``tol`` (relative).
"""
from __future__ import annotations

import numpy as np

from ..gradcheck import gradcheck
from ..layers.base import BuildContext
from . import findings as F
from ._paths import leaf_layers
from .findings import Finding


def _float64_copy(model):
    """The model rebuilt in float64 on the NumPy backend, with the same parameter values."""
    from ..backends import get_backend
    from ..model import Sequential

    clone = Sequential.from_config(model.get_config())
    clone.backend = get_backend("numpy")
    clone.dtype = np.dtype(np.float64)
    clone.build(model.input_shape, BuildContext(clone.backend, clone.dtype, np.random.default_rng(0)))
    clone._pack_parameters()
    src = {name: model.backend.to_numpy(p) for name, p in model.parameters().items()}
    for name, p in clone.parameters().items():
        p[...] = src[name]
    for (_, owner, key), (_, o2, k2) in zip(model.named_buffers(), clone.named_buffers()):
        o2.buffers[k2][...] = model.backend.to_numpy(owner.buffers[key])
    return clone


def check_gradients(model, X, y=None, loss=None, tol: float = 1e-4, seed: int = 0,
                    max_elements: int = 200, only=None) -> list[Finding]:
    """Gradient-check each leaf layer of ``model`` on the activations that ``X`` produces.

    The model is copied to float64 (its own weights are not touched); a few
    samples of ``X`` are enough.  Each layer is checked in training mode on
    its actual input, along a random output direction, for its input and
    every parameter.  Returns one WRONG_GRADIENT finding per failing layer.
    ``only(layer) -> bool`` restricts the check to some layers (the others
    still run forward to produce the inputs).
    (``y`` and ``loss`` are accepted for symmetry with ``check_data``; a
    loss is checked on its own with :func:`bpnet.gradcheck`.)
    """
    if not getattr(model, "built", False):
        model.build(tuple(np.asarray(X).shape[1:]))
    clone = _float64_copy(model)
    h = np.asarray(X, dtype=np.float64)
    out: list[Finding] = []
    for path, layer in leaf_layers(clone):
        x_in = h
        h = np.asarray(layer.forward(x_in.copy(), training=False), dtype=np.float64)
        if only is not None and not only(layer):
            continue
        report = gradcheck(layer, x_in, tol=tol, seed=seed, max_elements=max_elements, raise_on_fail=False,
                           training=False)
        if report.passed:
            continue
        worst = max(report.checks, key=lambda c: c.rel_error)
        out.append(Finding(
            F.WRONG_GRADIENT, "error",
            f"the backward pass of layer {path} ({layer.name}, {type(layer).__name__}) is wrong: its "
            f"gradient w.r.t. {worst.name} differs from central differences by {worst.rel_error:.2g} "
            f"(relative; tolerance {tol:g}); worst element {worst.worst_index}: analytic "
            f"{worst.analytic:.6g} vs numeric {worst.numeric:.6g}.",
            evidence={"layer": path, "class": type(layer).__name__, "tensor": worst.name,
                      "rel_error": float(worst.rel_error), "worst_index": list(worst.worst_index),
                      "analytic": float(worst.analytic), "numeric": float(worst.numeric),
                      "report": str(report)},
            remedy=f"re-derive {type(layer).__name__}.backward (write the derivative next to the code and "
                   "check each factor); bpnet.gradcheck(layer, x) must report errors below 1e-6 in float64.",
            where=f"layer {path}"))
    return out



def is_user_layer(layer) -> bool:
    """A layer class not defined in bpnet.layers (whose layers are gradient-checked in bpnet's tests)."""
    return not type(layer).__module__.startswith("bpnet.layers")


def check_user_layers(model, X, samples: int = 4) -> list[Finding]:
    """WRONG_GRADIENT for the model's user-written layers, checked in float64 on ``samples`` real rows."""
    if not any(is_user_layer(layer) for _, layer in leaf_layers(model)):
        return []
    X = np.asarray(X)
    rows = X[:samples]
    if X.dtype.kind not in "biuf" or not len(rows) or not np.isfinite(rows.astype(np.float64)).all():
        return []
    try:
        return check_gradients(model, rows, max_elements=48, only=is_user_layer)
    except Exception as e:        # noqa: BLE001  a layer the float64 copy cannot rebuild: say so, do not crash
        return [Finding(
            F.WRONG_GRADIENT, "info",
            f"the user-written layers could not be gradient-checked ({type(e).__name__}: {e}).",
            evidence={"error": str(e)},
            remedy="run bpnet.gradcheck(layer, x) on each of your layers in float64.",
            where="user layers")]
