"""Numerical gradient checking: the test every hand-derived backward must pass.

For a layer (or model) f and a fixed random direction R, the scalar
L(x, θ) = Σ R ⊙ f(x; θ) has ∂L/∂f = R, so ``backward(R)`` yields the analytic
∂L/∂x and ∂L/∂θ.  Each is compared, element by element, with the central
difference  (L(u + h) - L(u - h)) / 2h  in float64, whose error is O(h²).
For a loss, L is the loss itself and the check is on ∂L/∂output.

The relative error of a tensor is ‖analytic - numeric‖ / max(‖analytic‖, ‖numeric‖)
(norms over the tensor); below about 1e-7 in float64 the derivative is right.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends import get_backend
from .errors import ConfigError, GradcheckError
from .losses import Loss


@dataclass
class TensorCheck:
    name: str
    rel_error: float
    max_abs_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    n_checked: int


@dataclass
class GradcheckReport:
    checks: list = field(default_factory=list)
    tolerance: float = 1e-6

    @property
    def max_rel_error(self) -> float:
        return max((c.rel_error for c in self.checks), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_rel_error < self.tolerance

    def __getitem__(self, name) -> TensorCheck:
        return next(c for c in self.checks if c.name == name)

    def __str__(self):
        lines = [f"{'tensor':<16}{'rel. error':>12}{'checked':>9}  worst element (analytic vs numeric)"]
        for c in self.checks:
            flag = "" if c.rel_error < self.tolerance else "   <-- FAIL"
            lines.append(f"{c.name:<16}{c.rel_error:>12.2e}{c.n_checked:>9}  {c.worst_index}: "
                         f"{c.analytic:.6g} vs {c.numeric:.6g}{flag}")
        return "\n".join(lines)


def _snapshot_state(obj):
    """Save random-generator and buffer state so every forward sees the same randomness."""
    layers = list(obj.walk()) if hasattr(obj, "walk") else []
    rngs = [(l, l.rng.bit_generator.state) for l in layers if getattr(l, "rng", None) is not None]
    bufs = [(l, {k: v.copy() for k, v in l.buffers.items()}) for l in layers if l.buffers]

    def restore():
        for layer, state in rngs:
            layer.rng.bit_generator.state = state
        for layer, saved in bufs:
            for k, v in saved.items():
                layer.buffers[k][...] = v
    return restore


def _compare(name, analytic, objective, target, eps, indices):
    """Central differences of ``objective`` w.r.t. the array ``target`` at ``indices``."""
    numeric = np.zeros(len(indices))
    for j, idx in enumerate(indices):
        old = target[idx]
        target[idx] = old + eps
        plus = objective()
        target[idx] = old - eps
        minus = objective()
        target[idx] = old
        numeric[j] = (plus - minus) / (2 * eps)
    a = np.asarray([analytic[idx] for idx in indices], dtype=np.float64)
    diff = np.abs(a - numeric)
    scale = max(np.linalg.norm(a), np.linalg.norm(numeric))
    rel = float(np.linalg.norm(a - numeric) / scale) if scale > 0 else 0.0
    w = int(diff.argmax()) if len(diff) else 0
    return TensorCheck(name, rel, float(diff.max(initial=0.0)), tuple(int(i) for i in indices[w]) if len(indices) else (),
                       float(a[w]) if len(a) else 0.0, float(numeric[w]) if len(a) else 0.0, len(indices))


def _indices(shape, max_elements, rng):
    all_idx = list(np.ndindex(*shape))
    if max_elements is not None and len(all_idx) > max_elements:
        pick = rng.choice(len(all_idx), size=max_elements, replace=False)
        all_idx = [all_idx[i] for i in sorted(pick)]
    return all_idx


def gradcheck(obj, inputs, target=None, *, eps: float = 1e-6, tol: float = 1e-6, training: bool = True,
              max_elements: int | None = 400, seed: int = 0, loss=None, raise_on_fail: bool = True,
              check_inputs: bool = True) -> GradcheckReport:
    """Check ``obj``'s backward against central differences; return a report.

    ``obj`` is a layer or model (checked on ``inputs`` for the input and every
    parameter) or a :class:`~bpnet.losses.Loss` (checked on the output
    ``inputs`` against ``target``).  A model may be checked through a loss with
    ``loss=`` and ``target=``.  Everything runs in float64; a layer must be
    built in float64 (a layer used on its own builds in the dtype of its first
    input).  Raises :class:`GradcheckError` naming the worst tensor and element
    when a relative error reaches ``tol`` (unless ``raise_on_fail=False``).
    """
    rng = np.random.default_rng(seed)
    x = np.array(inputs, dtype=np.float64)
    report = GradcheckReport(tolerance=tol)

    # Arrays live on the object's backend (host NumPy, or the GPU for cupy); the
    # comparison itself is done on host copies in float64.
    if isinstance(obj, Loss):
        bk = obj._bk()
        xd = bk.asarray(x)

        def objective():
            return obj.forward(xd, target)
        objective()
        analytic = np.array(bk.to_numpy(obj.backward()), dtype=np.float64)
        report.checks.append(_compare("output", analytic, objective, xd, eps, _indices(x.shape, max_elements, rng)))
        return _finish(report, raise_on_fail, type(obj).__name__)

    if getattr(obj, "dtype", None) is not None and obj.built and np.dtype(obj.dtype) != np.float64:
        raise ConfigError(f"gradcheck needs float64 parameters but {obj.name} is {np.dtype(obj.dtype).name}; "
                          "build it with dtype='float64' (e.g. Sequential(..., dtype='float64'))")
    if hasattr(obj, "seed") and not obj.built:
        obj.dtype = np.dtype(np.float64)
    bk = getattr(obj, "backend", None) or get_backend("numpy")   # an unbuilt layer builds on numpy
    xd = bk.asarray(x)
    if loss is not None and loss.backend is None:
        loss.backend = bk
    restore = None

    def objective():
        restore()
        out = obj.forward(xd, training=training)
        if loss is not None:
            return loss.forward(out, target)
        return float((np.asarray(bk.to_numpy(out), dtype=np.float64) * direction).sum())

    out = obj.forward(xd, training=training)          # builds a lazily-built layer
    restore = _snapshot_state(obj)
    direction = rng.standard_normal(np.shape(out))
    restore()
    out = obj.forward(xd, training=training)
    if loss is not None:
        loss.forward(out, target)
        upstream = loss.backward()
    else:
        upstream = bk.asarray(direction.copy())
    dx = np.array(bk.to_numpy(obj.backward(upstream)), dtype=np.float64)
    grads = {name: np.array(bk.to_numpy(owner.grads[key]), dtype=np.float64)
             for name, owner, key in obj.named_parameters()}

    if check_inputs:
        report.checks.append(_compare("input", dx, objective, xd, eps, _indices(x.shape, max_elements, rng)))
    for name, owner, key in obj.named_parameters():
        param = owner.params[key]
        report.checks.append(_compare(name, grads[name], objective, param, eps,
                                      _indices(param.shape, max_elements, rng)))
    restore()
    return _finish(report, raise_on_fail, getattr(obj, "name", type(obj).__name__))


def _finish(report, raise_on_fail, what):
    if raise_on_fail and not report.passed:
        worst = max(report.checks, key=lambda c: c.rel_error)
        raise GradcheckError(
            f"gradient check failed for {what}: d/d{worst.name} has relative error {worst.rel_error:.2e} "
            f"(tolerance {report.tolerance:.0e}); worst element {worst.worst_index}: analytic "
            f"{worst.analytic:.6g} vs numeric {worst.numeric:.6g}\n{report}")
    return report
