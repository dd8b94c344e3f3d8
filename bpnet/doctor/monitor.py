"""``Monitor``: the per-step signals the doctor reads, recorded every few steps.

Every ``every`` optimizer steps, after backward and before the update, the
monitor writes one flat record to ``model.history.steps`` (and to
``monitor.records``).  Keys, with ``<p>`` a parameter name such as ``"0.W"``
and ``<l>`` a layer path such as ``"1"`` (see ``model.parameters()``):

=========================  =======================================================
``step``, ``epoch``        global step number (counting from 0) and epoch
``loss``, ``loss_finite``  the batch loss and whether it is finite
``grad_norm/<p>``          ‖∂L/∂p‖₂
``grad_norm/<l>``          ‖∂L/∂θ‖₂ over all parameters of the layer
``grad_norm/total``        over the whole model
``weight_norm/<p>``        ‖p‖₂ before the update
``zero_grad_frac/<p>``     fraction of gradient entries that are exactly 0
``lr_grad_ratio/<p>``      lr · ‖∂L/∂p‖ / ‖p‖ (the step plain SGD would take)
``update_ratio/<p>``       ‖p_new - p_old‖ / ‖p_old‖, the step the optimizer
                           really took (added after the update; equals
                           lr_grad_ratio for plain SGD, not for Adam)
``update_grad_cos``        cosine between the whole update Δp and the gradient
                           (added after the update): -1 for plain SGD, below 0
                           for any descent method; above 0 means the weights
                           moved uphill
``act_mean/<l>``,          mean and std of an activation layer's output
``act_std/<l>``
``dead_frac/<l>``          ReLU: fraction of units whose output is 0 for every
                           sample of the batch
``batch_rows``             the number of samples those activation statistics saw
``sat_frac/<l>``           Sigmoid/Tanh: fraction of outputs in the flat tails,
                           |z| > 5, read off the output: sigmoid y < σ(-5) or
                           y > σ(5); tanh |y| > tanh(5)
=========================  =======================================================

Recurrent layers (:class:`~bpnet.RNN`) add ‖∂L/∂h_t‖ at the first, middle and
last step and the spectral radius of U (``dh_norm/<l>/first`` ...; see
:mod:`bpnet.doctor.through_time`).

Cost: a handful of reductions over the parameters and activations, once per
``every`` steps; ``benchmarks/bench_monitor.py`` measures it.
"""
from __future__ import annotations

import math

from ..callbacks import Callback
from ..layers.activations import Activation
from ._paths import leaf_layers, param_layer
from .through_time import measure as through_time_stats

SIGMOID_LO = 1.0 / (1.0 + math.exp(5.0))      # σ(-5) ≈ 0.00669
SIGMOID_HI = 1.0 / (1.0 + math.exp(-5.0))     # σ(5)  ≈ 0.99331
TANH_HI = math.tanh(5.0)                      # ≈ 0.99991


class Monitor(Callback):
    """Record gradient, weight, update and activation statistics every ``every`` steps.

    ``model.fit(X, y, callbacks=[Monitor(every=10)])``; then
    ``history.steps`` holds the records and ``bpnet.doctor.diagnose(history)``
    reads them.  In a hand-written loop call ``on_backward_end(step, {"loss": loss})``
    after ``model.backward`` and ``on_batch_end(step)`` after ``opt.step()``
    (the records then live in ``monitor.records``).
    """

    def __init__(self, every: int = 10, activations: bool = True):
        if int(every) < 1:
            raise ValueError(f"Monitor(every={every}): every must be >= 1")
        self.every = int(every)
        self.activations = bool(activations)
        self.records: list[dict] = []
        self.step = 0
        self.epoch = 0
        self._sink = None
        self._pending = None      # this step's record, until the update is known
        self._before: dict = {}   # {name: weights before the update} (reused buffers)
        self._zero_mask = None    # reused boolean buffer for counting zero gradients

    # -- callback events --------------------------------------------------------------
    def on_train_begin(self, logs=None):
        history = getattr(self.model, "history", None)
        self._sink = history.steps if history is not None else None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)

    def on_backward_end(self, batch, logs=None):
        if self.step % self.every:
            return
        loss = float((logs or {}).get("loss", math.nan))
        record = self.measure(loss)
        xp = self.model.backend.xp
        before = self._before
        for name, owner, key in self.model.named_parameters():
            p = owner.params[key]
            buf = before.get(name)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                buf = before[name] = xp.empty_like(p)
            xp.copyto(buf, p)                    # kept to measure the real update afterwards
        self._pending = record
        self.records.append(record)
        if self._sink is not None:
            self._sink.append(record)

    def on_batch_end(self, batch, logs=None):
        record, self._pending = self._pending, None
        if record is not None:
            bk = self.model.backend
            xp = bk.xp
            dot = step_sq = grad_sq = 0.0
            for name, owner, key in self.model.named_parameters():
                diff = self._before[name]
                xp.subtract(owner.params[key], diff, out=diff)       # p_new - p_old, in place
                step_sq_p = bk.sum_squares(diff)
                step = math.sqrt(step_sq_p)
                w = record[f"weight_norm/{name}"]
                record[f"update_ratio/{name}"] = step / w if w > 0 else (0.0 if step == 0 else math.inf)
                g = owner.grads[key]                  # as stored (scaled under a loss scaler): the
                dot += _dot(xp, diff, g)              # cosine does not depend on the scale
                step_sq += step_sq_p
                grad_sq += bk.sum_squares(g)
            den = math.sqrt(step_sq * grad_sq)
            record["update_grad_cos"] = dot / den if den > 0 and math.isfinite(den) else math.nan
        self.step += 1

    # -- the measurements -------------------------------------------------------------
    def measure(self, loss: float = math.nan) -> dict:
        """One record of the model's current gradients, weights and activations."""
        model = self.model
        bk = model.backend
        lr = getattr(getattr(model, "optimizer", None), "lr", None)
        rec = {"step": self.step, "epoch": self.epoch, "loss": loss, "loss_finite": math.isfinite(loss)}
        layer_sq: dict[str, float] = {}
        total_sq = 0.0
        params = list(model.named_parameters())
        largest = max((owner.params[key].size for _, owner, key in params), default=0)
        if self._zero_mask is None or self._zero_mask.size < largest:
            self._zero_mask = bk.xp.empty((largest,), dtype=bool)
        unscale = _loss_scale(model) ** -2          # mixed precision: the float16 grads are scaled by S
        for name, owner, key in params:
            g, p = owner.grads[key], owner.params[key]
            g_sq = bk.sum_squares(g) * unscale
            gn, wn = math.sqrt(g_sq), math.sqrt(bk.sum_squares(p))
            rec[f"grad_norm/{name}"] = gn
            rec[f"weight_norm/{name}"] = wn
            mask = self._zero_mask[:g.size].reshape(g.shape)
            bk.xp.equal(g, 0, out=mask)
            rec[f"zero_grad_frac/{name}"] = int(bk.xp.count_nonzero(mask)) / max(g.size, 1)
            if lr is not None:
                rec[f"lr_grad_ratio/{name}"] = lr * gn / wn if wn > 0 else (0.0 if gn == 0 else math.inf)
            layer = param_layer(name)
            layer_sq[layer] = layer_sq.get(layer, 0.0) + g_sq
            total_sq += g_sq
        for layer, sq in layer_sq.items():
            rec[f"grad_norm/{layer}"] = math.sqrt(sq)
        rec["grad_norm/total"] = math.sqrt(total_sq)
        if self.activations:
            for path, layer in leaf_layers(model):
                y = getattr(layer, "y", None)
                if y is None or not isinstance(layer, Activation) or y.size == 0:
                    continue
                rec.update(activation_stats(layer.kind, y, path))
                rec.setdefault("batch_rows", int(y.shape[0]))     # what "dead for a whole batch" means
        rec.update(through_time_stats(model))
        return rec


def _loss_scale(model) -> float:
    """The factor S the model's gradients currently carry (1 without a float16 loss scaler).

    A :class:`~bpnet.mixed_precision.LossScaler` leaves the float16 gradients
    multiplied by the scale S of this step (the true ones go to its float32
    master buffer); S may have grown right after unscaling, which shows as
    ``good_steps == 0`` on a step that was not skipped.
    """
    scaler = getattr(model, "loss_scaler", None)
    if scaler is None or not getattr(scaler, "separate_master", False):
        return 1.0
    scale = float(scaler.scale)
    if scaler.good_steps == 0 and not getattr(model, "skip_step", False):
        scale /= scaler.growth_factor
    return scale


def _dot(xp, a, b) -> float:
    """Σ a ⊙ b as one BLAS dot product (float16 is widened first)."""
    a, b = a.ravel(), b.ravel()
    if a.dtype.itemsize < 4:
        a, b = a.astype(xp.float32), b.astype(xp.float32)
    return float(xp.vdot(a, b))


def activation_stats(kind: str, y, path: str) -> dict:
    """Mean, std and dead / saturated fraction of one activation output ``y`` (batch first)."""
    out = {f"act_mean/{path}": float(y.mean()), f"act_std/{path}": float(y.std())}
    if kind == "relu":
        per_unit_max = y.reshape(y.shape[0], -1).max(axis=0)
        out[f"dead_frac/{path}"] = float((per_unit_max <= 0).mean())
    elif kind == "sigmoid":
        out[f"sat_frac/{path}"] = float(((y < SIGMOID_LO) | (y > SIGMOID_HI)).mean())
    elif kind == "tanh":
        xp_abs = abs(y)
        out[f"sat_frac/{path}"] = float((xp_abs > TANH_HI).mean())
    return out
