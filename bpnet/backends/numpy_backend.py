"""The NumPy backend: the reference implementation of every kernel.

Each method is the plain array expression of a formula derived in the
docstring of the layer, loss or optimizer that calls it.  The Numba and CuPy
backends override these methods with fused kernels and must return the same
numbers (to float32 rounding).  Methods that take ``out`` write their result
there when it is given, so the hot loop can reuse buffers.
"""
from __future__ import annotations

import numpy as np

from .base import Backend

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh")


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    # -- dense layer ----------------------------------------------------------
    def linear_forward(self, x, W, b, out=None):
        """y = x W + b."""
        y = self.xp.matmul(x, W, out=out)
        y += b
        return y

    def linear_backward(self, x, W, dy, dW, db, need_dx=True):
        """dW = xᵀ dy, db = Σ_rows dy, dx = dy Wᵀ (dW, db written in place)."""
        self.xp.matmul(x.T, dy, out=dW)
        dy.sum(axis=0, out=db)
        return self.xp.matmul(dy, W.T) if need_dx else None

    # -- pointwise activations --------------------------------------------------
    def act_forward(self, kind, z, alpha=0.0, out=None):
        """y = f(z) for the activation called ``kind``."""
        xp = self.xp
        if kind == "identity":
            return z if out is None else xp.copyto(out, z) or out
        if kind == "relu":
            return xp.maximum(z, 0, out=out)
        if kind == "leaky_relu":
            return xp.where(z > 0, z, alpha * z) if out is None else \
                _assign(out, xp.where(z > 0, z, alpha * z))
        if kind == "elu":
            y = xp.where(z > 0, z, alpha * xp.expm1(xp.minimum(z, 0)))
            return y if out is None else _assign(out, y)
        if kind == "sigmoid":
            # 1/(1+e^-z) written so that exp never overflows:
            # z >= 0: 1/(1+e^-z);  z < 0: e^z/(1+e^z)
            e = xp.exp(-xp.abs(z))
            y = xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)
            return y if out is None else _assign(out, y)
        if kind == "tanh":
            return xp.tanh(z, out=out)
        raise ValueError(f"unknown activation {kind!r}")

    def bias_act_forward(self, kind, z, b, alpha=0.0):
        """z ← f(z + b) in place (z is a fresh x W product), returns z."""
        z += b
        return self.act_forward(kind, z, alpha, out=z)

    def act_backward(self, kind, y, dy, alpha=0.0, out=None):
        """dz = dy ⊙ f'(z), with f'(z) written in terms of the output y = f(z)."""
        xp = self.xp
        if kind == "identity":
            d = dy
        elif kind == "relu":
            d = dy * (y > 0)
        elif kind == "leaky_relu":
            d = xp.where(y > 0, dy, alpha * dy)
        elif kind == "elu":
            d = xp.where(y > 0, dy, dy * (y + alpha))
        elif kind == "sigmoid":
            d = dy * y * (1 - y)
        elif kind == "tanh":
            d = dy * (1 - y * y)
        else:
            raise ValueError(f"unknown activation {kind!r}")
        return d if out is None else _assign(out, d)

    # -- softmax cross-entropy (forward and backward in one pass) ---------------
    def log_softmax(self, z):
        """log softmax(z) along rows, shifted by the row max so exp never overflows."""
        shifted = z - z.max(axis=1, keepdims=True)
        return shifted - self.xp.log(self.xp.exp(shifted).sum(axis=1, keepdims=True))

    def softmax_cross_entropy(self, z, q, class_weights=None):
        """Loss and d loss / d z for logits z and target distributions q.

        ℓ_i = -Σ_c w_c q_ic log p_ic,  loss = Σ_i ℓ_i / Σ_i a_i with a_i = Σ_c w_c q_ic
        dz_ic = (a_i p_ic - w_c q_ic) / Σ_i a_i          (w ≡ 1 when unweighted)
        """
        xp = self.xp
        logp = self.log_softmax(z)
        p = xp.exp(logp)
        wq = q if class_weights is None else q * class_weights
        a = wq.sum(axis=1, keepdims=True)
        denom = a.sum()
        loss = float(-(wq * logp).sum() / denom)
        dz = (a * p - wq) / denom
        return loss, dz.astype(z.dtype, copy=False)

    def softmax_cross_entropy_labels(self, z, y, class_weights=None, smoothing=0.0):
        """``softmax_cross_entropy`` for integer labels y (N,), q = one-hot mixed with
        the uniform distribution: q = (1-ε) onehot(y) + ε/C.

        Without weights or smoothing q is one-hot and the formulas reduce to
        loss = -mean_i log p_{i,y_i} and dz = (p - onehot(y)) / N.

        Labels outside 0..C-1 raise LabelError (a negative label would
        otherwise index from the end and give a wrong loss without a word)."""
        self.check_labels(z, y)
        if class_weights is None and not smoothing:
            xp = self.xp
            logp = self.log_softmax(z)
            rows = xp.arange(z.shape[0])
            loss = float(-logp[rows, y].astype(np.float64).mean())
            dz = xp.exp(logp)
            dz[rows, y] -= 1
            dz *= 1.0 / z.shape[0]
            return loss, dz
        q = _labels_to_distribution(self.xp, y, z.shape[1], smoothing, z.dtype)
        return self.softmax_cross_entropy(z, q, class_weights)

    # -- optimizer updates over a flat parameter buffer ---------------------------
    def sgd_step(self, p, g, velocity, lr, momentum, nesterov, weight_decay):
        """PyTorch's SGD: d = g + λp; v = μv + d; step = d + μv (Nesterov) or v."""
        d = g + weight_decay * p if weight_decay else g
        if momentum:
            velocity *= momentum
            velocity += d
            d = d + momentum * velocity if nesterov else velocity
        p -= lr * d

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, decoupled):
        """Adam (L2 decay folded into g) or AdamW (decay applied to p directly).

        m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
        p -= lr · m̂ / (√v̂ + ε), with m̂ = m/(1-β1ᵗ), v̂ = v/(1-β2ᵗ)

        Written with in-place operations on one scratch buffer: the flat
        buffer holds every parameter, and fresh temporaries of that size
        would cost more than the arithmetic.
        """
        xp = self.xp
        tmp = self.scratch(p.shape, p.dtype)
        c = self.adam_coefficients(lr, beta1, beta2, weight_decay, t)
        if weight_decay and decoupled:
            p *= c.decay_factor
        elif weight_decay:
            g = g + weight_decay * p
        m *= beta1
        xp.multiply(g, 1 - beta1, out=tmp)
        m += tmp
        v *= beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - beta2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp *= c.inv_sqrt_bias2                     # √v̂ = √v / √(1-β2ᵗ)
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= c.step                               # lr / (1-β1ᵗ)
        p -= tmp

    def rmsprop_step(self, p, g, sq, velocity, lr, alpha, eps, momentum, weight_decay):
        """sq = α sq + (1-α) g²;  step = g / (√sq + ε), with optional momentum."""
        if weight_decay:
            g = g + weight_decay * p
        sq *= alpha
        sq += (1 - alpha) * (g * g)
        step = g / (self.xp.sqrt(sq) + eps)
        if momentum:
            velocity *= momentum
            velocity += step
            step = velocity
        p -= lr * step


def _assign(out, value):
    out[...] = value
    return out


def _labels_to_distribution(xp, y, num_classes, smoothing, dtype):
    """One-hot rows for integer labels, mixed with the uniform distribution by ``smoothing``."""
    q = xp.full((y.shape[0], num_classes), smoothing / num_classes, dtype=dtype)
    q[xp.arange(y.shape[0]), y] += 1.0 - smoothing
    return q
