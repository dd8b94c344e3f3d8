"""Anomaly mode: stop at the first NaN or Inf and say where it came from.

With ``model.fit(..., detect_anomaly=True)``, or inside ``with
bpnet.detect_anomaly():`` for a hand-written loop, every layer's forward
output, every gradient of the backward pass, the loss and (in ``fit``) the
parameters after each optimizer step are checked with the backend's
``all_finite``.  The first non-finite value raises
:class:`~bpnet.errors.NonFiniteError` whose message and attributes say

* ``phase``: ``"forward"``, ``"loss"``, ``"backward"`` or ``"update"``;
* ``layer_index`` (top-level position in ``model.layers``), ``layer_path``
  (``"3.0.1"`` inside containers), ``layer_name``, ``layer_class``;
* ``operation``: the computation that produced it, e.g. ``"Dense forward x@W+b"``;
* ``rows``: the batch rows holding a non-finite value;
* ``data_to_blame``: True when the input batch itself was already non-finite.

With a mixed-precision loss scaler the backward pass is not checked: its
float16 gradients overflow by design, and the scaler skips those steps.

Because the checks run in order, the first failure is the origin: the layer
whose *input* was finite but whose *output* is not.  Locating rows and
culprit parameters costs extra work only after a check has failed.

How it hooks in: the checker is an *observer* of the container
(:mod:`bpnet.container`): told about every step of the forward and backward
pass, fused Dense + activation steps included (a failure inside one is
traced to the Dense product or the activation).  ``fit(detect_anomaly=True)``
registers it on the model and adds :class:`AnomalyCallback` for the loss
and the update; ``detect_anomaly()`` registers it on every model for a
hand-written loop.  With no observers the container runs its plain loop, so
anomaly mode costs nothing when it is off.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from ..callbacks import Callback
from ..container import LayerStack
from ..errors import NonFiniteError
from ..layers.activations import Activation
from ..training import register_fit_option
from ._paths import layer_at

_SHOWN_ROWS = 10

# What the layers without a derivation line of their own compute, for the error message:
# (forward, backward).  An activation's formulas are read from its own docstring instead.
OPERATIONS = {
    "Dense": ("x@W+b", "dW=x.T@dy, db=sum(dy), dx=dy@W.T"),
    "Softmax": ("exp(z-max)/sum(exp(z-max))", "dz=y*(dy-sum(dy*y))"),
    "BatchNorm1d": ("(x-mean)/sqrt(var+eps)*gamma+beta", "dx=s/N*(N*g-sum(g)-x_hat*sum(g*x_hat))"),
    "Dropout": ("x*mask", "dx=dy*mask"),
    "Flatten": ("reshape", "reshape"),
    "Residual": ("x+F(x)", "dx=dy+F.backward(dy)"),
    "Sequential": ("layers in order", "layers in reverse"),
}


def _docstring_formulas(layer):
    """An activation's "forward; backward" first docstring line, e.g. ReLU's "y = max(z, 0); f'(z) = ..."."""
    doc = (type(layer).__doc__ or "").strip().splitlines()
    parts = [p.strip().rstrip(".") for p in doc[0].split(";", 1)] if doc and ";" in doc[0] else []
    return tuple(parts) if len(parts) == 2 else None


def operation(layer, phase: str) -> str:
    """``"Dense forward x@W+b"``: the class, the phase and the formula (if known)."""
    cls = type(layer).__name__
    formulas = _docstring_formulas(layer) if isinstance(layer, Activation) else None
    for klass in type(layer).__mro__:
        if formulas is not None:
            break
        formulas = OPERATIONS.get(klass.__name__)
    formula = formulas[0 if phase == "forward" else 1] if formulas else ""
    return f"{cls} {phase} {formula}".rstrip()


def bad_rows(bk, a) -> list[int]:
    """Batch rows of ``a`` (axis 0) that hold a NaN or Inf."""
    a = np.asarray(bk.to_numpy(a))
    if a.ndim == 0:
        return [] if np.isfinite(a) else [0]
    return np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)).tolist()


def nonfinite_kind(bk, a) -> str:
    """``"NaN"``, ``"Inf"`` or ``"NaN and Inf"``."""
    a = np.asarray(bk.to_numpy(a))
    has_nan, has_inf = bool(np.isnan(a).any()), bool(np.isinf(a).any())
    return "NaN and Inf" if has_nan and has_inf else ("NaN" if has_nan else "Inf")


def _rows_text(rows) -> str:
    shown = rows[:_SHOWN_ROWS]
    more = f" (and {len(rows) - _SHOWN_ROWS} more)" if len(rows) > _SHOWN_ROWS else ""
    return f"{shown}{more}"


def _bad_params(bk, layer) -> list[str]:
    """Descriptions of the layer's non-finite parameters, e.g. ``"W (3 Inf)"``."""
    out = []
    for name, owner, key in layer.named_parameters():
        p = owner.params[key]
        if not bk.all_finite(p):
            pn = np.asarray(bk.to_numpy(p))
            n_nan, n_inf = int(np.isnan(pn).sum()), int(np.isinf(pn).sum())
            parts = ([f"{n_nan} NaN"] if n_nan else []) + ([f"{n_inf} Inf"] if n_inf else [])
            out.append(f"{name} ({', '.join(parts)})")
    return out


def _error(message, *, phase, layer_index=None, layer_path=None, layer=None, op="", rows=(),
           kind="NaN", data_to_blame=False) -> NonFiniteError:
    err = NonFiniteError(message)
    err.phase = phase
    err.layer_index = layer_index
    err.layer_path = layer_path
    err.layer_name = getattr(layer, "name", None)
    err.layer_class = type(layer).__name__ if layer is not None else None
    err.operation = op
    err.rows = list(rows)
    err.kind = kind
    err.data_to_blame = data_to_blame
    return err


class AnomalyChecker:
    """Checks every step's output and gradients for NaN/Inf; raises at the first one.

    An observer of the container (``after_forward``, ``before_backward``,
    ``after_backward``), plus ``check_loss`` and ``check_update`` for the loop.
    """

    def __init__(self):
        self._path: tuple = ()

    # -- forward ----------------------------------------------------------------------
    def after_forward(self, model, path, step, x, y):
        bk = model.backend
        if bk.all_finite(y):
            return
        layer, self._path = self._culprit_forward(bk, path, step, x)
        raise self._forward_error(bk, layer, x, y)

    def _culprit_forward(self, bk, path, step, x):
        """The layer of a step to blame: in a fused Dense + activation step, the Dense
        product x@W+b when it is already non-finite, else the activation."""
        dense = getattr(step, "dense", None)
        if dense is None:
            return step, path
        z = bk.xp.matmul(x, dense.params["W"]) + dense.params["b"]
        if not bk.all_finite(z) or not bk.all_finite(x):
            return dense, path
        return step.activation, path[:-1] + (path[-1] + 1,)

    def _forward_error(self, bk, layer, x, y):
        kind = nonfinite_kind(bk, y)
        where = self._where(layer)
        op = operation(layer, "forward")
        at_input = len(self._path) == 1 and self._path[0] == 0
        if at_input and not bk.all_finite(x):
            rows = bad_rows(bk, x)
            in_kind = nonfinite_kind(bk, x)
            return _error(
                f"{in_kind} in the forward pass at {where}: the input batch already contains {in_kind} "
                f"in rows {_rows_text(rows)}: the data is to blame. Drop or impute those samples "
                "(bpnet.doctor.check_data(X) lists every such row).",
                phase="forward", layer=layer, op=op, rows=rows, kind=in_kind, data_to_blame=True,
                **self._index())
        rows = bad_rows(bk, y)
        cause = ""
        params = _bad_params(bk, layer)
        if params:
            cause = (f" Its parameters are already non-finite: {', '.join(params)}; an earlier "
                     "update or a bad initialisation/load put them there.")
        elif np.isfinite(np.asarray(bk.to_numpy(x))).all():
            amax = float(np.abs(np.asarray(bk.to_numpy(x))).max()) if x.size else 0.0
            cause = (f" Its input was finite (max |x| = {amax:.3g}) and so are its parameters, so this "
                     "operation overflowed or divided by zero: look for large activations "
                     "(normalise inputs, lower the learning rate) or an unguarded exp/log/division.")
        return _error(
            f"{kind} in the forward pass at {where}: {op} produced {kind} in batch rows "
            f"{_rows_text(rows)}.{cause}",
            phase="forward", layer=layer, op=op, rows=rows, kind=kind, **self._index())

    # -- backward ---------------------------------------------------------------------
    def before_backward(self, model, path, dy):
        bk = model.backend
        if path or model.loss_scaler is not None or bk.all_finite(dy):
            return
        rows, kind = bad_rows(bk, dy), nonfinite_kind(bk, dy)
        loss = getattr(model, "loss", None)
        what = f"{type(loss).__name__} backward" if loss is not None else "the loss backward"
        raise _error(
            f"{kind} in the gradient of the loss with respect to the model output (rows "
            f"{_rows_text(rows)}), before the backward pass began: the loss ({what}) produced it; "
            "check the targets of those rows and that the loss receives what it expects "
            "(logits vs probabilities).",
            phase="loss", layer=None, op=what, rows=rows, kind=kind)

    def after_backward(self, model, path, step, dy, dx):
        """Check dx and every parameter gradient of the step.  (Under a loss scaler float16
        gradients overflow by design and the scaler skips those steps: not checked.)"""
        bk = model.backend
        if model.loss_scaler is not None:
            return
        bad = self._first_bad_gradient(bk, step, dx)
        if bad is None:
            return
        layer, what, g = bad
        self._path = path
        if getattr(step, "dense", None) is not None and layer is step.dense:
            dz = step.activation.backward(dy)
            if not bk.all_finite(dz):          # the activation's backward produced it
                layer, what, g = step.activation, "dx", dz
                self._path = path[:-1] + (path[-1] + 1,)
        raise self._backward_error(bk, layer, g, what)

    @staticmethod
    def _first_bad_gradient(bk, step, dx):
        layer = getattr(step, "dense", step)
        if dx is not None and not bk.all_finite(dx):
            return layer, "dx", dx
        for name, owner, key in layer.named_parameters():
            if not bk.all_finite(owner.grads[key]):
                return layer, f"d{name}", owner.grads[key]
        return None

    def _backward_error(self, bk, layer, g, what):
        kind = nonfinite_kind(bk, g)
        op = operation(layer, "backward")
        rows = bad_rows(bk, g) if what == "dx" else []
        row_text = f" in batch rows {_rows_text(rows)}" if rows else ""
        return _error(
            f"{kind} in the backward pass at {self._where(layer)}: {op} produced {kind} in {what}{row_text}, "
            "although the gradient it received was finite. If this is your own layer, check its "
            "backward against bpnet.gradcheck; otherwise the forward values it kept are extreme "
            "(lower the learning rate, clip gradients, normalise inputs).",
            phase="backward", layer=layer, op=op, rows=rows, kind=kind, **self._index())

    # -- loss and update (called by fit) ------------------------------------------------
    def check_loss(self, model, value, output, target):
        """Raise if the loss value or its gradient is non-finite (the output was checked)."""
        bk = model.backend
        grad = getattr(model.loss, "grad", None)
        if math.isfinite(value) and (grad is None or bk.all_finite(grad)):
            return
        name = type(model.loss).__name__
        if target is not None and np.asarray(bk.to_numpy(target)).dtype.kind == "f" and not bk.all_finite(target):
            rows = bad_rows(bk, target)
            kind = nonfinite_kind(bk, target)
            raise _error(f"{kind} in the loss ({name}): the targets already contain {kind} in rows "
                         f"{_rows_text(rows)}: the labels are to blame.",
                         phase="loss", op=f"{name} forward", rows=rows, kind=kind, data_to_blame=True)
        rows = bad_rows(bk, grad) if grad is not None else []
        kind = "NaN" if math.isnan(value) else ("Inf" if math.isinf(value) else nonfinite_kind(bk, grad))
        amax = float(np.abs(np.asarray(bk.to_numpy(output))).max())
        raise _error(
            f"{kind} in the loss ({name} forward gave {value}) although the model output was finite "
            f"(max |output| = {amax:.3g}); rows {_rows_text(rows)}. The outputs or targets are too "
            "large for the loss's arithmetic: scale the targets, lower the learning rate, or use a "
            "loss that takes logits.",
            phase="loss", op=f"{name} forward", rows=rows, kind=kind)

    def check_update(self, model):
        """Raise if the optimizer step left a parameter non-finite."""
        bk = model.backend
        if model.flat_params is None or bk.all_finite(model.flat_params):
            return
        bad = [name for name, owner, key in model.named_parameters() if not bk.all_finite(owner.params[key])]
        first = bad[0] if bad else "?"
        path = first.rsplit(".", 1)[0]
        layer = layer_at(model, path)
        opt = model.optimizer
        grads_ok = model.flat_grads is None or bk.all_finite(model.flat_grads)
        cause = ("every gradient was finite, so the update rule itself overflowed: lower the learning "
                 f"rate (now {getattr(opt, 'lr', '?')}) or check the optimizer's eps"
                 if grads_ok else "the gradients were already non-finite; run backward under detect_anomaly")
        op = f"{type(opt).__name__} step"
        raise _error(f"non-finite parameters after the optimizer step ({op}): {', '.join(bad)}; {cause}.",
                     phase="update", layer_index=int(path.split(".")[0]) if path[:1].isdigit() else None,
                     layer_path=path, layer=layer, op=op, kind="NaN/Inf")

    # -- helpers ----------------------------------------------------------------------
    def _index(self) -> dict:
        return {"layer_index": self._path[0], "layer_path": ".".join(map(str, self._path))}

    def _where(self, layer) -> str:
        return f"layer {'.'.join(map(str, self._path))} ({layer.name}, {type(layer).__name__})"


class AnomalyCallback(Callback):
    """The loop's side of anomaly mode: check the loss before backward and the parameters after the update."""

    def __init__(self, checker: AnomalyChecker):
        self.checker = checker

    def on_loss_end(self, batch, logs=None):
        self.checker.check_loss(self.model, logs["loss"], logs["output"], logs["target"])

    def on_update_end(self, batch, logs=None):
        self.checker.check_update(self.model)


def enable(model):
    """Turn anomaly mode on for ``model``; return (the checker, a function that turns it off)."""
    missing = object()
    previous = vars(model).get("observers", missing)
    checker = AnomalyChecker()
    model.observers = tuple(model.observers) + (checker,)

    def restore():
        if previous is missing:
            vars(model).pop("observers", None)
        else:
            model.observers = previous
    return checker, restore


@contextmanager
def detect_anomaly(model=None):
    """Check every forward output and gradient for NaN/Inf inside the ``with`` block.

    ``with bpnet.detect_anomaly(): ...`` covers every model; ``detect_anomaly(model)``
    only that one.  Yields the :class:`AnomalyChecker`; in a hand-written loop
    call ``checker.check_loss(model, loss, output, target)`` after the loss and
    ``checker.check_update(model)`` after ``opt.step()`` to check those too
    (``fit(detect_anomaly=True)`` does so itself).
    """
    if model is not None:
        checker, restore = enable(model)
        try:
            yield checker
        finally:
            restore()
        return
    previous = LayerStack.__dict__.get("observers", ())
    checker = AnomalyChecker()
    LayerStack.observers = tuple(previous) + (checker,)
    try:
        yield checker
    finally:
        LayerStack.observers = previous


def _fit_plugin(loop, value, X, y):
    """``fit(detect_anomaly=True)``: the checker on the model, the callback in the loop."""
    checker, restore = enable(loop.model)
    loop.user_callbacks.insert(0, AnomalyCallback(checker))
    loop.cleanups.append(restore)


register_fit_option("detect_anomaly", _fit_plugin)
