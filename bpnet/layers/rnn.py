"""A recurrent layer (Elman RNN) with backpropagation through time written out."""
from __future__ import annotations

import numpy as np

from .. import init as initializers
from ..errors import ConfigError, ShapeError
from ..validation import whole
from .base import Layer

_PHI = ("tanh", "linear", "relu")


class RNN(Layer):
    r"""Elman recurrence h_t = φ(x_t W + h_{t-1} U + b), h_0 = 0, t = 1..T, φ = tanh by default.

    Shapes: x (N, T, F), W (F, H), U (H, H), b (H,), every h_t (N, H), with
    H = ``units``.  The output is h_T (N, H), or with ``return_sequences=True``
    all states (N, T, H), h_1..h_T.  The same W, U, b serve every step.

    Backpropagation through time.  Unroll the loop: it is a T-layer network
    whose layers share their weights.  Write a_t = x_t W + h_{t-1} U + b and
    let the upstream gradient be dy_t = ∂L/∂h_t as seen by the layers above
    (with ``return_sequences=False`` only dy_T is non-zero).  h_t reaches L
    directly and through h_{t+1} = φ(x_{t+1} W + h_t U + b), so the total
    gradient g_t = ∂L/∂h_t obeys, going backwards from g_T = dy_T,

        δ_t = ∂L/∂a_t = g_t ⊙ φ'(a_t)          (tanh: φ'(a_t) = 1 - h_t², read off the output)
        g_{t-1}       = dy_{t-1} + δ_t Uᵀ        (a_t depends on h_{t-1} through h_{t-1} U)

    and, because W, U, b are shared, each parameter's gradient is the sum over
    the steps of what the step alone would give (the Dense rule, step by step):

        dW = Σ_t x_tᵀ δ_t,    dU = Σ_t h_{t-1}ᵀ δ_t,    db = Σ_t Σ_n δ_t,    dx_t = δ_t Wᵀ.

    Why gradients vanish or explode.  Without the direct terms dy, one step
    back maps g_t to g_{t-1} = (g_t ⊙ φ'(a_t)) Uᵀ = g_t · diag(φ'(a_t)) Uᵀ, so

        ∂L/∂h_{t-k} = ∂L/∂h_t · Π_{s=0}^{k-1} diag(φ'(a_{t-s})) Uᵀ:

    k factors of the same kind.  The norm of a product of k such matrices goes
    like r^k, where r is the typical gain per step (at most ρ(U) · max φ',
    with ρ the spectral radius of U and φ' ≤ 1 for tanh).  r < 1: the gradient
    from step T reaching step 1 is r^(T-1), e.g. 0.5^29 ≈ 2e-9 over 30 steps,
    and nothing early in the sequence can be learnt (vanishing through time).
    r > 1: it grows as r^(T-1) and one step of gradient descent throws the
    weights away (exploding through time; clip the gradient norm).  An
    orthogonal U (every |eigenvalue| = 1, ‖h U‖ = ‖h‖) starts at the border.

    The loop over t is the derivation line by line; the products that do not
    depend on the previous step (x_t W for every t, and dW, dU, db, dx) are
    done for all steps at once as single matrix products.

    Parameters
    ----------
    units : size H of the state.
    return_sequences : output every state (N, T, H) instead of the last (N, H).
    init, recurrent_init, bias_init : initialisers of W, U and b (names or
        callables ``f(shape, rng, dtype)``, as in :class:`Dense`).
    activation : φ, "tanh" (default), "relu" or "linear".
    """

    recurrent = True        # the doctor records ∂L/∂h_t through time for layers like this one

    def __init__(self, units: int, return_sequences: bool = False, init="xavier_uniform",
                 recurrent_init="orthogonal", bias_init="zeros", activation: str = "tanh",
                 name: str | None = None):
        super().__init__(name)
        units = whole(units, "RNN(units=...)", minimum=1)             # RNN(2.5) is not 2 units
        if activation not in _PHI:
            raise ConfigError(f"RNN(activation={activation!r}): choose one of {', '.join(_PHI)}")
        self.units, self.return_sequences, self.activation = units, bool(return_sequences), activation
        self.init, self.recurrent_init, self.bias_init = init, recurrent_init, bias_init
        for spec in (init, recurrent_init, bias_init):
            initializers.get_initializer(spec)          # fail early on a bad name
        self.cache = None
        self.state_grads: dict = {}     # {t: ∂L/∂h_t} at the first, middle and last step, after backward
        self.needs_input_grad = True

    # -- building -------------------------------------------------------------
    def _create(self, input_shape, ctx):
        if len(input_shape) != 2:
            raise ConfigError(
                f"{self.name}: RNN expects inputs of shape (batch, steps, features) but the per-sample "
                f"input shape is {input_shape}; reshape the data to (N, T, F) (one feature: x[..., None])")
        features, h = input_shape[1], self.units
        make = lambda spec, shape: initializers.get_initializer(spec)(shape, ctx.rng, ctx.dtype)  # noqa: E731
        self._add_param("W", make(self.init, (features, h)))
        self._add_param("U", make(self.recurrent_init, (h, h)))
        self._add_param("b", make(self.bias_init, (h,)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    # -- computing ------------------------------------------------------------
    def forward(self, x, training=False):
        self._ensure_built(x)
        self._check_sequences(x)
        xp = self.backend.xp
        W, U, b = self.params["W"], self.params["U"], self.params["b"]
        n, steps, features = x.shape
        xs = x.transpose(1, 0, 2)                                   # time-major: xs[t-1] = x_t
        xw = (xs.reshape(steps * n, features) @ W + b).reshape(steps, n, self.units)
        hs = xp.zeros((steps + 1, n, self.units), dtype=xw.dtype)   # hs[0] = h_0 = 0
        for t in range(1, steps + 1):
            hs[t] = self._phi(xw[t - 1] + hs[t - 1] @ U)
        self.cache = (xs, hs)
        return hs[1:].transpose(1, 0, 2) if self.return_sequences else hs[steps]

    def backward(self, dy):
        self._require_forward("cache")
        xs, hs = self.cache
        xp = self.backend.xp
        W, U = self.params["W"], self.params["U"]
        steps, n, features = xs.shape
        dys = dy.transpose(1, 0, 2) if self.return_sequences else None      # dys[t-1] = dy_t
        deltas = xp.empty((steps, n, self.units), dtype=hs.dtype)
        probes = {1, (steps + 1) // 2, steps}
        self.state_grads = {}
        g = dys[steps - 1] if dys is not None else dy                      # g_T = dy_T
        for t in range(steps, 0, -1):
            if t in probes:
                self.state_grads[t] = g
            deltas[t - 1] = g * self._phi_grad(hs[t])                     # δ_t = g_t ⊙ φ'(a_t)
            g = deltas[t - 1] @ U.T                                       # δ_t Uᵀ ...
            if dys is not None and t > 1:
                g += dys[t - 2]                                           # ... + dy_{t-1} = g_{t-1}
        flat = deltas.reshape(steps * n, self.units)
        self.grads["W"][...] = xs.reshape(steps * n, features).T @ flat       # Σ_t x_tᵀ δ_t
        self.grads["U"][...] = hs[:-1].reshape(steps * n, self.units).T @ flat  # Σ_t h_{t-1}ᵀ δ_t
        self.grads["b"][...] = flat.sum(axis=0)                                 # Σ_t Σ_n δ_t
        if not self.needs_input_grad:
            return None
        return (flat @ W.T).reshape(steps, n, features).transpose(1, 0, 2)    # dx_t = δ_t Wᵀ

    def _phi(self, a):
        if self.activation == "tanh":
            return self.backend.xp.tanh(a)
        return self.backend.xp.maximum(a, 0) if self.activation == "relu" else a

    def _phi_grad(self, h):
        """φ'(a_t) written with the output h_t = φ(a_t): 1 - h², [h > 0], or 1."""
        if self.activation == "tanh":
            return 1 - h * h
        return (h > 0).astype(h.dtype) if self.activation == "relu" else 1

    # -- inspection -----------------------------------------------------------
    def spectral_radius(self) -> float:
        """ρ(U) = max |eigenvalue of U|: the gain per step of a linear recurrence (NaN if U is not finite)."""
        U = np.asarray(self.backend.to_numpy(self.params["U"]), dtype=np.float64)
        return float(np.abs(np.linalg.eigvals(U)).max()) if np.isfinite(U).all() else float("nan")

    def kept_size(self) -> int:
        """Values per sample that forward keeps for backward: the T + 1 states h_0..h_T."""
        return (self.input_shape[0] + 1) * self.units

    def reset_parameters(self, rng, init=None):
        """Draw fresh W (with ``init`` or the layer's own initialiser) and U, and zero b."""
        for key, spec in (("W", init or self.init), ("U", self.recurrent_init)):
            p = self.params[key]
            p[...] = self.backend.asarray(initializers.get_initializer(spec)(p.shape, rng, self.dtype),
                                          dtype=self.dtype)
        self.params["b"][...] = 0

    def get_config(self):
        name_or = lambda spec, default: spec if isinstance(spec, str) else default  # noqa: E731
        return {"units": self.units, "return_sequences": self.return_sequences,
                "init": name_or(self.init, "xavier_uniform"),
                "recurrent_init": name_or(self.recurrent_init, "orthogonal"),
                "bias_init": name_or(self.bias_init, "zeros"), "activation": self.activation, "name": self.name}

    def _check_sequences(self, x):
        features = self.input_shape[1]
        if x.ndim != 3 or x.shape[2] != features or x.shape[1] < 1:
            raise ShapeError(
                f"{self.name}: expected input of shape (batch, steps, {features}) but got {tuple(x.shape)}; "
                f"the layer was built for {features} features per step. Pass sequences as (N, T, F).")
