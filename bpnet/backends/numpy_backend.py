"""The NumPy backend: the reference implementation of every kernel.

Each method is the plain array expression of a formula derived in the
docstring of the layer, loss or optimizer that calls it; for activations it
simply runs the layer's own ``f`` / ``dz`` code.  The Numba and CuPy backends
override these methods with fused kernels and must return the same numbers
(to float32 rounding).  Methods that take ``out`` write their result there
when it is given, so the hot loop can reuse buffers.
"""
from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    # -- pointwise activations: the layer's own code ------------------------------
    def activation_forward(self, act, z, out=None):
        """y = f(z) by the activation layer's own code, ``act.f``."""
        y = act.f(self.xp, z)
        return y if out is None else _assign(out, y)

    def bias_activation_forward(self, act, z, b):
        """y = f(z + b) for z a fresh x W product, which it may overwrite (z += b here;
        the fused kernels also write y over it and return z)."""
        z += b
        return act.f(self.xp, z)

    def activation_backward(self, act, y, dy, out=None):
        """dz = dy ⊙ f'(z) by the layer's own code, ``act.dz`` (f' written from y = f(z))."""
        d = act.dz(self.xp, y, dy)
        return d if out is None else _assign(out, d)

    def activation_bias_backward(self, act, y, dy, db):
        """The backward of a Dense + activation step up to the weights: returns
        dz = dy ⊙ f'(z) (``activation_backward``) and writes the Dense layer's
        bias gradient db = Σ_n dz (the batch sum) into ``db``."""
        dz = self.activation_backward(act, y, dy)
        dz.sum(axis=0, out=db)
        return dz

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
