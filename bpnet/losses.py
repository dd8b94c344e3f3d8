"""Loss functions: ``forward(output, target) -> float`` and ``backward() -> d_output``.

Each loss is a mean over the batch and caches ∂loss/∂output during forward,
so ``backward`` is free.  Targets are validated: a loss told the wrong label
format says which format it expects.
"""
from __future__ import annotations

import numpy as np

from .backends import get_backend
from .errors import ConfigError, LabelError, ShapeError
from .layers.activations import Sigmoid
from .validation import non_negative, real, weight_vector

_SIGMOID = Sigmoid()          # its f (the overflow-free σ), run by the backend's kernel where it has one


class Loss:
    """Base class.  ``kind`` is "classification" or "regression"."""
    kind = "regression"
    expects_logits = False
    name = "loss"
    # The denominator of the last forward when it is not the batch size (a weighted
    # mean, L = Σ_i ℓ_i / Σ_i a_i); None for a plain mean.  Averaging several batches'
    # losses with these weights gives the loss over all of them (evaluate, fit's logs).
    batch_weight = None

    def __init__(self):
        self.backend = None
        self.grad = None
        self.trusted = False   # set by fit after validating the whole target array once

    # -- protocol ---------------------------------------------------------------
    def forward(self, output, target) -> float:
        raise NotImplementedError

    def backward(self):
        if self.grad is None:
            raise ConfigError(f"{type(self).__name__}.backward() called before forward()")
        return self.grad

    def __call__(self, output, target):
        return self.forward(output, target)

    # -- helpers ------------------------------------------------------------------
    def _bk(self):
        return self.backend or get_backend("numpy")

    def check_target(self, target, n_outputs: int):
        """Raise ``LabelError`` if ``target`` cannot be used with outputs of width ``n_outputs``."""

    def predict_labels(self, output):
        """Class predictions from the model output (classification losses only)."""
        raise ConfigError(f"{type(self).__name__} is a regression loss; accuracy is undefined")

    def true_labels(self, target):
        return target

    def count_correct(self, output, target) -> int:
        """How many samples the output classifies as the target says (the accuracy numerator)."""
        return int((self.predict_labels(output).ravel() == self.true_labels(target).ravel()).sum())

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _as_2d_like(output, target, loss_name):
    """Regression targets of shape (N,) are accepted for outputs of shape (N, 1)."""
    if target.shape == output.shape:
        return target
    if output.ndim == 2 and output.shape[1] == 1 and target.shape == (output.shape[0],):
        return target.reshape(-1, 1)
    raise ShapeError(f"{loss_name}: output has shape {tuple(output.shape)} but target has shape "
                     f"{tuple(target.shape)}; they must match")


class MSE(Loss):
    r"""Mean squared error: L = (1/M) Σ (y - t)², M = number of elements.

    Backward: ∂L/∂y = 2 (y - t) / M.
    """
    name = "mse"

    def forward(self, output, target):
        bk = self._bk()
        t = _as_2d_like(output, bk.asarray(target, dtype=output.dtype), "MSE")
        diff = output - t
        self.grad = diff * (2.0 / diff.size)
        return float((diff * diff).sum() / diff.size)


class MAE(Loss):
    r"""Mean absolute error: L = (1/M) Σ |y - t|.

    Backward: ∂L/∂y = sign(y - t) / M (the subgradient 0 at y = t).
    """
    name = "mae"

    def forward(self, output, target):
        bk = self._bk()
        t = _as_2d_like(output, bk.asarray(target, dtype=output.dtype), "MAE")
        diff = output - t
        self.grad = bk.xp.sign(diff) * (1.0 / diff.size)
        return float(bk.xp.abs(diff).sum() / diff.size)


class _Categorical(Loss):
    """Shared label handling for losses over C classes from logits."""
    kind = "classification"
    expects_logits = True

    def check_target(self, target, n_outputs):
        target = np.asarray(target)
        name = type(self).__name__
        expected = (f"{name} expects integer class labels of shape (N,) with values in "
                    f"0..{n_outputs - 1}, or one-hot / probability rows of shape (N, {n_outputs})")
        if target.ndim == 1:
            if target.dtype.kind == "f":
                if not np.all(np.mod(target, 1) == 0):
                    raise LabelError(f"{expected}; got non-integer float labels (e.g. {target[np.mod(target, 1) != 0][0]!r})")
            elif target.dtype.kind not in "iub":
                raise LabelError(f"{expected}; got labels of dtype {target.dtype}")
            lo, hi = (int(target.min()), int(target.max())) if target.size else (0, 0)
            if lo < 0 or hi >= n_outputs:
                raise LabelError(
                    f"{name}: labels range over {lo}..{hi} but the model has {n_outputs} outputs, "
                    f"so labels must lie in 0..{n_outputs - 1} (re-map them, e.g. with "
                    "np.unique(y, return_inverse=True), or widen the last Dense layer)")
        elif target.ndim == 2:
            if target.shape[1] == 1 and n_outputs > 1:
                raise LabelError(f"{expected}; got a column of shape {target.shape}: pass y.ravel()")
            if target.shape[1] != n_outputs:
                raise LabelError(f"{expected}; got rows of width {target.shape[1]}")
            if target.dtype.kind not in "iubf":
                raise LabelError(f"{expected}; got labels of dtype {target.dtype}")
            if target.size and (target.min() < 0 or target.max() > 1 or
                                not np.allclose(target.sum(axis=1), 1.0, atol=1e-3)):
                raise LabelError(f"{expected}; the (N, {n_outputs}) rows must be probabilities "
                                 "(non-negative, summing to 1)")
        else:
            raise LabelError(f"{expected}; got an array of shape {target.shape}")

    def _validated(self, output, target):
        """Check the targets (on the host, before they meet the device) and move them to the backend."""
        if output.ndim != 2:
            raise ShapeError(f"{type(self).__name__}: expects logits of shape (N, C), got {tuple(output.shape)}")
        if not self.trusted:
            self.check_target(self._bk().to_host(target), output.shape[1])
        target = self._bk().asarray(target)
        if target.shape[0] != output.shape[0]:
            raise ShapeError(f"{type(self).__name__}: {output.shape[0]} outputs but {target.shape[0]} targets")
        return target

    def predict_labels(self, output):
        return output.argmax(axis=1)

    def true_labels(self, target):
        return target if target.ndim == 1 else target.argmax(axis=1)


class CrossEntropy(_Categorical):
    r"""Softmax cross-entropy from logits z (N, C), fused with a stable log-softmax.

    p = softmax(z), log p_ic = z_ic - m_i - log Σ_k e^{z_ik - m_i} with m_i = max_k z_ik
    (the shift keeps every exponent ≤ 0: no overflow, and log never sees 0).

    With target distribution q_i (one-hot for integer labels, optionally
    smoothed: q = (1-ε) q + ε/C) and class weights w (default 1):

        ℓ_i = -Σ_c w_c q_ic log p_ic,   L = Σ_i ℓ_i / Σ_i a_i,   a_i = Σ_c w_c q_ic

    (for integer labels without smoothing a_i = w_{y_i}: PyTorch's weighted mean;
    with smoothing or probability targets bpnet divides by Σ a_i, PyTorch by
    Σ w_{y_i} or N).  Backward,
    using ∂log p_ic/∂z_ij = δ_cj - p_ij:

        ∂L/∂z_ij = (a_i p_ij - w_j q_ij) / Σ_i a_i     (= (p - q)/N unweighted)
    """
    name = "cross_entropy"

    def __init__(self, class_weights=None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= real(label_smoothing, "CrossEntropy(label_smoothing=...)") < 1.0:
            raise ConfigError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.class_weights = None if class_weights is None else \
            weight_vector(class_weights, "CrossEntropy(class_weights=...)")
        self.label_smoothing = float(label_smoothing)

    def _weights(self, output):
        if self.class_weights is None:
            return None
        if self.class_weights.shape != (output.shape[1],):
            raise ConfigError(f"CrossEntropy: {self.class_weights.size} class_weights for {output.shape[1]} classes")
        return self._bk().asarray(self.class_weights, dtype=output.dtype)

    def forward(self, output, target):
        bk = self._bk()
        target = self._validated(output, target)
        w = self._weights(output)
        eps = self.label_smoothing
        if target.ndim == 1:
            y = target.astype(np.int64, copy=False)
            loss, self.grad = bk.softmax_cross_entropy_labels(output, y, w, eps)
            # Σ_i a_i with a_i = Σ_c w_c q_ic = (1-ε) w_{y_i} + ε mean(w)
            self.batch_weight = None if w is None else \
                float((1.0 - eps) * w[y].sum() + eps * len(y) * w.mean())
        else:
            q = target.astype(output.dtype, copy=False)
            if eps:
                q = (1.0 - eps) * q + eps / q.shape[1]
            loss, self.grad = bk.softmax_cross_entropy(output, q, w)
            self.batch_weight = None if w is None else float((q @ w).sum())
        return loss

    def get_config(self):
        cw = None if self.class_weights is None else self.class_weights.tolist()
        return {"class_weights": cw, "label_smoothing": self.label_smoothing}


class FocalLoss(_Categorical):
    r"""Focal loss from logits (Lin et al. 2017): down-weights easy examples.

    With p = softmax(z), p_t = p_{i,y_i} and per-class weights α (default 1):

        ℓ_i = -α_{y_i} (1 - p_t)^γ log p_t,     L = Σ_i ℓ_i / Σ_i α_{y_i}

    Backward.  dℓ/dp_t = α[γ (1-p_t)^{γ-1} log p_t - (1-p_t)^γ / p_t] and
    ∂p_t/∂z_j = p_t (δ_{j,y} - p_j), so

        ∂ℓ_i/∂z_ij = α_{y_i} [γ (1-p_t)^{γ-1} p_t log p_t - (1-p_t)^γ] (δ_{j,y_i} - p_ij)

    γ = 0 recovers cross-entropy.  One-hot targets are converted to labels.
    """
    name = "focal"

    def __init__(self, gamma: float = 2.0, alpha=None):
        super().__init__()
        self.gamma = non_negative(gamma, "FocalLoss(gamma=...)")
        self.alpha = None if alpha is None else weight_vector(alpha, "FocalLoss(alpha=...)")

    def forward(self, output, target):
        bk, xp = self._bk(), self._bk().xp
        target = self._validated(output, target)
        if self.alpha is not None and self.alpha.shape != (output.shape[1],):
            raise ConfigError(f"FocalLoss: {self.alpha.size} alpha weights for {output.shape[1]} classes; "
                              "pass one weight per class (the width of the last layer)")
        y = (target if target.ndim == 1 else target.argmax(axis=1)).astype(np.int64, copy=False)
        n = output.shape[0]
        logp = bk.log_softmax(output)
        p = xp.exp(logp)
        rows = xp.arange(n)
        logpt = logp[rows, y]
        pt = p[rows, y]
        a = xp.ones(n, dtype=output.dtype) if self.alpha is None else \
            bk.asarray(self.alpha, dtype=output.dtype)[y]
        one_minus = xp.clip(1.0 - pt, 0.0, None)
        g = self.gamma
        mod = one_minus ** g
        denom = a.sum()
        self.batch_weight = None if self.alpha is None else float(denom)
        loss = float(-(a * mod * logpt).sum() / denom)
        # γ(1-p_t)^{γ-1} p_t log p_t → 0 as p_t → 1 (log p_t ≈ -(1-p_t)), but for γ < 1 the
        # power alone is 0^{negative} = inf at a saturated p_t = 1: take the limit 0 there.
        sat = one_minus <= 0
        dmod = xp.where(sat, 0.0, g * xp.where(sat, 1.0, one_minus) ** (g - 1)) if g != 0 \
            else xp.zeros_like(pt)
        coef = a * (dmod * pt * logpt - mod) / denom          # (N,)
        grad = -coef[:, None] * p
        grad[rows, y] += coef
        self.grad = grad.astype(output.dtype, copy=False)
        return loss

    def get_config(self):
        return {"gamma": self.gamma, "alpha": None if self.alpha is None else self.alpha.tolist()}


class BCEWithLogits(Loss):
    r"""Binary cross-entropy on logits z with targets t ∈ [0, 1].

    ℓ = -[p_w t log σ(z) + (1 - t) log(1 - σ(z))], mean over all elements,
    computed stably with log σ(z) = -softplus(-z), log(1-σ(z)) = -softplus(z),
    softplus(u) = max(u, 0) + log1p(e^{-|u|}): no exp overflow, no log(0).

    Backward: ∂ℓ/∂z = σ(z)(1 - t + p_w t) - p_w t   (= σ(z) - t when p_w = 1).
    """
    kind = "classification"
    expects_logits = True
    name = "bce_with_logits"

    def __init__(self, pos_weight=None):
        super().__init__()
        if pos_weight is not None and not real(pos_weight, "BCEWithLogits(pos_weight=...)") >= 0:
            raise ConfigError(f"BCEWithLogits(pos_weight={pos_weight}): pos_weight must be >= 0 "
                              "(a negative weight makes the loss unbounded below)")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def check_target(self, target, n_outputs):
        target = np.asarray(target)
        if target.dtype.kind not in "iubf":
            raise LabelError(f"BCEWithLogits expects 0/1 (or probability) targets, got dtype {target.dtype}")
        if target.size and (target.min() < 0 or target.max() > 1):
            raise LabelError(
                f"BCEWithLogits expects targets in [0, 1] (one column per binary output); got values in "
                f"{target.min()}..{target.max()}. For more than two classes use CrossEntropy "
                "with integer labels")

    def forward(self, output, target):
        bk, xp = self._bk(), self._bk().xp
        if not self.trusted:
            self.check_target(bk.to_host(target), output.shape[-1])
        t = _as_2d_like(output, bk.asarray(target, dtype=output.dtype), "BCEWithLogits")
        pw = 1.0 if self.pos_weight is None else self.pos_weight
        softplus_pos = xp.maximum(output, 0) + xp.log1p(xp.exp(-xp.abs(output)))   # softplus(z)
        softplus_neg = softplus_pos - output                                        # softplus(-z)
        loss = (pw * t * softplus_neg + (1 - t) * softplus_pos).sum() / output.size
        sig = bk.activation_forward(_SIGMOID, output)
        self.grad = ((sig * (1 - t + pw * t) - pw * t) / output.size).astype(output.dtype, copy=False)
        return float(loss)

    def predict_labels(self, output):
        return (output > 0).astype(np.int64)

    def true_labels(self, target):
        return (target > 0.5).astype(np.int64)

    def get_config(self):
        return {"pos_weight": self.pos_weight}


LOSSES = {"mse": MSE, "mean_squared_error": MSE, "mae": MAE, "mean_absolute_error": MAE,
          "cross_entropy": CrossEntropy, "categorical_crossentropy": CrossEntropy,
          "sparse_categorical_crossentropy": CrossEntropy,
          "bce_with_logits": BCEWithLogits, "binary_crossentropy": BCEWithLogits, "focal": FocalLoss}


def get_loss(spec) -> Loss:
    """A loss from a name ("mse", "cross_entropy", ...) or an instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str) and spec.lower() in LOSSES:
        return LOSSES[spec.lower()]()
    raise ConfigError(f"unknown loss {spec!r}; choose one of {sorted(set(LOSSES))} or pass a Loss instance")


def loss_from_config(name: str, config: dict) -> Loss:
    cls = {c.__name__: c for c in (MSE, MAE, CrossEntropy, FocalLoss, BCEWithLogits)}[name]
    return cls(**config)
