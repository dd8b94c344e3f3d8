"""Per-layer profiler: where the time and the activation memory of a training step go.

    report = model.profile(X_batch, y_batch, steps=20)     # prints a table
    report.rows[0]["forward_ms"], report.measured_step_ms

A training step is forward through every layer, the loss (forward and its
gradient), backward through every layer in reverse, and the optimizer update.
:func:`profile` times each of these parts separately with
``time.perf_counter`` -- calling ``backend.synchronize()`` before reading the
clock, so that on a GPU a part is charged for its own kernels and not for
work queued earlier -- and reports the median over ``steps`` steps.

It also times whole steps without the per-part clocks (``measured_step_ms``),
alternating them with the instrumented ones so that both see the same
machine load.  The sum of the part medians should be close to it; a large gap
means the per-part synchronisation or timer calls distort the picture (tiny
layers on a GPU) or the machine is busy.

Profiling trains on the batch, then puts everything back: parameters,
buffers (e.g. BatchNorm running statistics), optimizer state and step count,
and the dropout generators, so a profiled model continues exactly as before.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

from . import state
from .errors import ConfigError
from .model import register_model_tool
from .state import TrainingState

__all__ = ["profile", "ProfileReport"]


@dataclass
class ProfileReport:
    """What :func:`profile` measured.

    ``rows`` holds one dict per step of the model's forward pass -- a top-level
    layer, or a Dense layer and its activation where the model runs them as
    one fused step (then ``name`` is e.g. ``"0 dense+relu"`` and ``type``
    ``"Dense+ReLU"``) -- then one for the loss and one for the optimizer, with keys ``name``, ``kind`` ("layer", "loss",
    "optimizer"), ``type``, ``forward_ms``, ``backward_ms``, ``total_ms``
    (medians), ``share`` (of ``parts_ms``; the shares sum to 1) and
    ``activation_bytes`` (bytes of the layer's output for the batch; 0 for loss
    and optimizer).

    ``total_ms`` adds up the parts of each instrumented step and takes the
    median over steps; ``measured_step_ms`` is the median of whole steps timed
    without per-part clocks.  Their ratio shows what the instrumentation
    costs (it should be within a few percent).  ``parts_ms``, the sum of the
    per-part medians, is a little smaller than both on a busy machine because
    each median drops that part's own slow outliers.

    ``page_faults_per_step`` is the process's minor page faults during the
    whole steps, per step (None where ``resource`` is missing): pages the step
    touched for the first time.  A steady step that faults is mapping its
    temporaries afresh each time, which costs a microsecond or more a page.
    """
    rows: list = field(default_factory=list)
    total_ms: float = 0.0            # median over steps of the step's summed parts
    measured_step_ms: float = 0.0    # median of whole, un-instrumented steps
    parts_ms: float = 0.0            # sum of the per-part medians (what the shares divide)
    batch_size: int = 0
    steps: int = 0
    backend: str = ""
    page_faults_per_step: float | None = None   # minor faults of the whole steps (None: not counted here)

    @property
    def optimizer_share(self) -> float:
        return next(r["share"] for r in self.rows if r["kind"] == "optimizer")

    @property
    def activation_bytes(self) -> int:
        """Bytes of every layer's output for the batch (what forward keeps alive for backward, roughly)."""
        return int(sum(r["activation_bytes"] for r in self.rows))

    def table(self) -> str:
        head = f"{'part':<28}{'forward ms':>11}{'backward ms':>12}{'total ms':>10}{'share':>8}{'activation':>12}"
        lines = [f"profile: {self.steps} steps, batch {self.batch_size}, backend {self.backend!r} (medians)",
                 head, "-" * len(head)]
        for r in self.rows:
            label = f"{r['name']} ({r['type']})"
            act = _human_bytes(r["activation_bytes"]) if r["kind"] == "layer" else ""
            lines.append(f"{label[:27]:<28}{r['forward_ms']:>11.3f}{r['backward_ms']:>12.3f}"
                         f"{r['total_ms']:>10.3f}{100 * r['share']:>7.1f}%{act:>12}")
        lines.append("-" * len(head))
        gap = 100.0 * (self.total_ms / self.measured_step_ms - 1) if self.measured_step_ms else 0.0
        lines.append(f"{'sum of part medians':<28}{'':>11}{'':>12}{self.parts_ms:>10.3f}{'':>8}"
                     f"{_human_bytes(self.activation_bytes):>12}")
        lines.append(f"{'step, parts summed':<28}{'':>11}{'':>12}{self.total_ms:>10.3f}")
        lines.append(f"{'step, measured (no timers)':<28}{'':>11}{'':>12}{self.measured_step_ms:>10.3f}"
                     f"   (parts summed {gap:+.1f}%)")
        if self.page_faults_per_step is not None:
            lines.append(f"page faults per step: {self.page_faults_per_step:.1f}" +
                         ("  (memory the step maps afresh each time: its temporaries' pages were handed "
                          "back to the system; see bpnet/backends/heap.py)" if self.page_faults_per_step >= 1 else ""))
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"      # pragma: no cover


def _minor_faults() -> int:
    """The process's minor page faults so far (pages mapped on first touch), or -1 where unknown."""
    try:
        import resource
    except ImportError:          # not on Unix
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _State:
    """Copies of everything a training step changes (:mod:`bpnet.state`), to put back afterwards."""

    def __init__(self, model):
        self.model = model
        self.arrays = TrainingState(model)
        self.values = state.values(model)

    def restore(self):
        self.arrays.restore(self.model)
        state.load_values(self.model, self.values)
        self.model.clear_cache()


def _step_layers(step) -> list:
    """The layers one step of the execution plan runs (a fused Dense + activation is two)."""
    if hasattr(step, "dense") and hasattr(step, "activation"):
        return [step.dense, step.activation]
    return [step]


def profile(model, X, y, steps: int = 20, print_fn=print, batch_size: int | None = None,
            warmup: int = 3) -> ProfileReport:
    """Time each layer's forward and backward, the loss and the optimizer over ``steps`` steps.

    Parameters
    ----------
    model : a compiled :class:`~bpnet.Sequential`.
    X, y : the batch to train on (every step uses the same batch); with
        ``batch_size`` only the first ``batch_size`` samples are used.
    steps : number of instrumented steps (and as many un-instrumented ones) to
        take medians over, after ``warmup`` untimed steps of each kind
        (the first calls compile Numba kernels and fill caches).
    print_fn : called with the table; ``None`` to print nothing.

    Returns a :class:`ProfileReport`.  The model's parameters and optimizer
    state are restored afterwards.
    """
    if model.loss is None or model.optimizer is None:
        raise ConfigError("profile needs a compiled model: call model.compile(loss=..., optimizer=...) first")
    if int(steps) < 1:
        raise ConfigError(f"profile(steps={steps}): take at least one step")
    X, y = model._prepare(X, y)
    if batch_size is not None:
        X, y = X[:int(batch_size)], y[:int(batch_size)]
    bk = model.backend
    xb, yb = bk.asarray(X, dtype=model.dtype), bk.asarray(y)
    # time what the model runs: its execution plan, where a Dense and the activation after it
    # are one fused step (see Sequential.build), else the layers one by one
    layers = list(model.steps or model.layers)
    loss, opt = model.loss, model.optimizer
    n = len(layers)
    fwd = [[] for _ in range(n)]
    bwd = [[] for _ in range(n)]
    loss_t, opt_t, whole, summed = [], [], [], []
    act_bytes = [0] * n
    sync, clock = bk.synchronize, time.perf_counter

    def instrumented(record: bool):
        x = xb
        for i, layer in enumerate(layers):
            sync()
            t0 = clock()
            x = layer.forward(x, True)
            sync()
            t1 = clock()
            if record:
                fwd[i].append(t1 - t0)
                act_bytes[i] = int(x.nbytes)
        t0 = clock()
        loss.forward(x, yb)
        d = loss.backward()
        sync()
        t1 = clock()
        if record:
            loss_t.append(t1 - t0)
        for i in range(n - 1, -1, -1):
            t0 = clock()
            d = layers[i].backward(d)
            sync()
            t1 = clock()
            if record:
                bwd[i].append(t1 - t0)
        t0 = clock()
        opt.step()
        sync()
        t1 = clock()
        if record:
            opt_t.append(t1 - t0)
            summed.append(sum(f[-1] for f in fwd) + loss_t[-1] + sum(b[-1] for b in bwd) + opt_t[-1])

    faults = [0]

    def plain(record: bool):
        sync()
        f0 = _minor_faults()
        t0 = clock()
        model.train_step(xb, yb)
        opt.step()
        sync()
        t1 = clock()
        if record:
            whole.append(t1 - t0)
            faults[0] += _minor_faults() - f0

    saved = _State(model)
    first = model.layers[0]
    first_needs_dx = getattr(first, "needs_input_grad", None)
    if first_needs_dx is not None:
        first.needs_input_grad = False            # as in fit: nobody reads dL/dX
    trusted, loss.trusted = loss.trusted, True     # as in fit: targets validated once above
    gc_enabled = gc.isenabled()
    gc.disable()                                   # no collector pauses inside a timed step (as timeit)
    try:
        for _ in range(int(warmup)):
            instrumented(False)
            plain(False)
        for _ in range(int(steps)):                # alternate, so both kinds see the same load
            instrumented(True)
            plain(True)
    finally:
        if gc_enabled:
            gc.enable()
        loss.trusted = trusted
        if first_needs_dx is not None:
            first.needs_input_grad = first_needs_dx
        saved.restore()

    def med_ms(samples):
        return 1e3 * statistics.median(samples)

    rows, index = [], 0
    for i, step in enumerate(layers):
        parts = _step_layers(step)
        f, b = med_ms(fwd[i]), med_ms(bwd[i])
        rows.append({"name": f"{index} " + "+".join(p.name for p in parts), "kind": "layer",
                     "type": "+".join(type(p).__name__ for p in parts),
                     "forward_ms": f, "backward_ms": b, "total_ms": f + b,
                     "activation_bytes": act_bytes[i]})
        index += len(parts)
    lt, ot = med_ms(loss_t), med_ms(opt_t)
    rows.append({"name": "loss", "kind": "loss", "type": type(loss).__name__,
                 "forward_ms": lt, "backward_ms": 0.0, "total_ms": lt, "activation_bytes": 0})
    rows.append({"name": "optimizer", "kind": "optimizer", "type": type(opt).__name__,
                 "forward_ms": 0.0, "backward_ms": 0.0, "total_ms": ot, "activation_bytes": 0})
    parts = float(sum(r["total_ms"] for r in rows))
    for r in rows:
        r["share"] = r["total_ms"] / parts if parts > 0 else 0.0
    report = ProfileReport(rows=rows, total_ms=med_ms(summed), measured_step_ms=med_ms(whole), parts_ms=parts,
                           batch_size=int(len(X)), steps=int(steps), backend=bk.name,
                           page_faults_per_step=faults[0] / int(steps) if _minor_faults() >= 0 else None)
    if print_fn is not None:
        print_fn(report.table())
    return report


register_model_tool("profile", profile)   # model.profile(X, y)
