"""Mixed precision: float16 compute, float32 master weights, dynamic loss scaling.

float16 has 10 mantissa bits and a range of about 6e-8 .. 65504.  Training in
it directly fails two ways: gradients above 65504 overflow to inf (and one inf
in the flat gradient turns every weight into NaN), and weight updates smaller
than half a float16 ulp of the weight are rounded away.  The standard repair
(Micikevicius et al., 2018, "Mixed Precision Training") has three parts:

1. compute forward and backward in float16 (``Sequential(..., dtype="float16")``);
   the loss itself is evaluated in float32;
2. keep a float32 *master* copy of the weights; the optimizer updates the
   master copy and the result is rounded into the float16 model;
3. multiply the loss gradient by a scale S before backward, so that small
   gradients are lifted out of float16's underflow range, and divide the
   float16 gradients by S in float32 afterwards.  S is chosen dynamically:
   when any gradient is inf/NaN the step is skipped and S ← S·backoff; after
   ``growth_interval`` good steps in a row, S ← S·growth.  S may fall below 1,
   which also repairs gradients that overflow float16 *unscaled*.

Usage::

    model = Sequential([...], dtype="float16")
    model.compile(loss="mse", optimizer=Adam(1e-3), loss_scaler=LossScaler())
    model.fit(X, y)

By hand, the same step reads (``model.skip_step`` is set on overflow)::

    out = model.forward(xb, training=True)
    loss = loss_fn.forward(out.astype("float32"), yb)
    model.backward(scaler.scale_loss_grad(loss_fn.backward()))
    if scaler.unscale_grads():      # True when the gradients are finite
        opt.step()
    model.skip_step = False

``model.flat_grads`` holds the *scaled* float16 gradients; the true gradients
are ``scaler.master_grads`` (float32), which is what clipping and the
optimizer read.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, NotBuiltError


class LossScaler:
    """Dynamic loss scaling with float32 master weights (PyTorch's ``GradScaler`` rules).

    Parameters
    ----------
    init_scale : the first scale S.
    growth_factor : S ← S·growth_factor after ``growth_interval`` finite steps in a row.
    backoff_factor : S ← S·backoff_factor after a step with inf/NaN gradients (the step is skipped).
    growth_interval : finite steps needed before S grows.
    """

    master_dtype = np.dtype(np.float32)

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        if not init_scale > 0:
            raise ConfigError(f"LossScaler(init_scale={init_scale}) must be positive")
        if not growth_factor > 1.0:
            raise ConfigError(f"LossScaler(growth_factor={growth_factor}) must be > 1")
        if not 0.0 < backoff_factor < 1.0:
            raise ConfigError(f"LossScaler(backoff_factor={backoff_factor}) must be in (0, 1)")
        if int(growth_interval) < 1:
            raise ConfigError(f"LossScaler(growth_interval={growth_interval}) must be >= 1")
        self.init_scale = float(init_scale)
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0          # finite steps since the last change of scale
        self.overflows = 0           # skipped steps so far
        self.model = None
        self.master_params = None
        self.master_grads = None

    def bind(self, model):
        """Attach to a model (``compile(loss_scaler=...)`` does this); returns self."""
        self.model = model
        self.master_params = self.master_grads = None
        return self

    # -- master copies ------------------------------------------------------------------
    @property
    def separate_master(self) -> bool:
        """True when the model computes in a narrower dtype than the master (float16)."""
        return np.dtype(self.model.dtype).itemsize < self.master_dtype.itemsize

    def _ensure_master(self):
        if self.model is None or self.model.flat_params is None:
            raise NotBuiltError("LossScaler: the model has no parameters yet (build it or run fit)")
        if self.master_params is not None and self.master_params.shape == self.model.flat_params.shape:
            return
        bk, p = self.model.backend, self.model.flat_params
        if self.separate_master:
            self.master_params = p.astype(self.master_dtype)
            self.master_grads = bk.zeros(p.shape, self.master_dtype)
        else:                         # float32/float64 model: it is its own master copy
            self.master_params, self.master_grads = p, self.model.flat_grads

    def sync_from_model(self):
        """Refresh the master weights from the model's (after loading or restoring weights)."""
        if self.model is None or self.model.flat_params is None:
            return
        self._ensure_master()
        if self.master_params is not self.model.flat_params:
            self.master_params[...] = self.model.flat_params

    def copy_to_model(self):
        """Round the master weights into the model's compute dtype (after an optimizer step)."""
        if self.master_params is not self.model.flat_params:
            self.model.flat_params[...] = self.master_params

    # -- scaling ----------------------------------------------------------------------
    def scale_loss_grad(self, d_output):
        """∂(S·L)/∂output = S · ∂L/∂output, cast to the model's compute dtype."""
        self._ensure_master()
        return (d_output * self.scale).astype(self.model.dtype, copy=False)

    def unscale_grads(self) -> bool:
        """master_grads ← model grads / S (in float32); returns True when all are finite.

        On inf/NaN the model's ``skip_step`` is set and S backs off; after
        ``growth_interval`` finite steps in a row S grows.
        """
        self._ensure_master()
        bk, g = self.model.backend, self.master_grads
        if g is not self.model.flat_grads:
            g[...] = self.model.flat_grads
        bk.scale_(g, 1.0 / self.scale)
        finite = bk.all_finite(g)
        self.update(found_inf=not finite)
        if not finite:
            self.model.skip_step = True
        return finite

    def update(self, found_inf: bool):
        """Adjust the scale after a step: back off on overflow, grow after a run of good steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.overflows += 1
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    # -- saving -----------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"init_scale": self.init_scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval}

    def state_dict(self) -> dict:
        out = {"scale": np.asarray(self.scale), "good_steps": np.asarray(self.good_steps),
               "overflows": np.asarray(self.overflows)}
        if self.master_params is not None and self.separate_master:
            out["master_params"] = self.model.backend.to_numpy(self.master_params)
        return out

    def load_state_dict(self, state: dict):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.overflows = int(state.get("overflows", 0))
        if "master_params" in state and self.model is not None and self.model.flat_params is not None:
            self._ensure_master()
            self.master_params[...] = self.model.backend.asarray(state["master_params"],
                                                                 dtype=self.master_dtype)

    def __repr__(self):
        return (f"LossScaler(scale={self.scale:g}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")
