"""Backpropagation through time by hand, checked against bpnet.RNN, then made to vanish and explode.

The recurrence h_t = tanh(x_t W + h_{t-1} U + b), h_0 = 0, unrolled over T steps,
is a T-layer network that shares W, U, b.  Going back from g_T = ∂L/∂h_T:

    δ_t     = g_t ⊙ (1 - h_t²)          ∂L/∂a_t, through tanh
    g_{t-1} = δ_t Uᵀ                    ∂L/∂h_{t-1}, through h_{t-1} U
    dW += x_tᵀ δ_t,  dU += h_{t-1}ᵀ δ_t,  db += Σ_n δ_t,  dx_t = δ_t Wᵀ

so ∂L/∂h_t is multiplied by diag(1 - h_t²) Uᵀ at every step back.
"""
import numpy as np

import bpnet
from bpnet import RNN, gradcheck, init
from bpnet.layers import BuildContext

rng = np.random.default_rng(0)
N, T, F, H = 4, 8, 3, 5
x = rng.standard_normal((N, T, F))
target = rng.standard_normal((N, H))

layer = RNN(H)
layer.build((T, F), BuildContext(bpnet.get_backend("numpy"), np.dtype(np.float64), rng))
W, U, b = (layer.params[k] for k in ("W", "U", "b"))

# -- forward, one step at a time; loss L = ½ Σ (h_T - target)² -----------------------------
h = [np.zeros((N, H))]
for t in range(1, T + 1):
    h.append(np.tanh(x[:, t - 1] @ W + h[t - 1] @ U + b))
loss = 0.5 * ((h[T] - target) ** 2).sum()
print(f"forward: {T} steps, h_T {h[T].shape}, loss {loss:.6f}")

# -- backward through time, printing ∂L/∂h_t at every step ---------------------------------
g = h[T] - target                                     # g_T = ∂L/∂h_T
dW, dU, db, dx = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b), np.zeros_like(x)
print(f"\n{'t':>3} {'‖∂L/∂h_t‖':>12} {'factor':>8}   (factor = ‖g_t‖ / ‖g_(t+1)‖)")
previous = None
for t in range(T, 0, -1):
    norm = np.linalg.norm(g)
    print(f"{t:>3} {norm:>12.4e} {'' if previous is None else f'{norm / previous:8.3f}'}")
    previous = norm
    delta = g * (1 - h[t] ** 2)                       # δ_t = g_t ⊙ tanh'(a_t)
    dW += x[:, t - 1].T @ delta
    dU += h[t - 1].T @ delta
    db += delta.sum(axis=0)
    dx[:, t - 1] = delta @ W.T
    g = delta @ U.T                                   # g_{t-1}

# -- the same numbers from bpnet.RNN, and a float64 gradient check --------------------------
y = layer.forward(x, training=True)
layer_dx = layer.backward(y - target)
pairs = ((layer_dx, dx), (layer.grads["W"], dW), (layer.grads["U"], dU), (layer.grads["b"], db))
diff = max(np.abs(got - mine).max() for got, mine in pairs)
print(f"\nbpnet.RNN agrees with the hand-written BPTT: max |difference| = {diff:.1e}")
report = gradcheck(RNN(H), x)
print("gradient check of RNN (central differences, float64):")
print(report)

# -- the product of T Jacobians: vanishing, kept, exploding ---------------------------------
print("\n‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ over T = 30 steps (tanh, x ~ N(0, 0.1²)), for U = gain · orthogonal:")
xs = 0.1 * rng.standard_normal((N, 30, F))
for gain in (0.5, 1.0, 3.0):
    rnn = RNN(16, recurrent_init=lambda shape, r, dtype, g=gain: init.orthogonal(shape, r, dtype, gain=g))
    rnn.build((30, F), BuildContext(bpnet.get_backend("numpy"), np.dtype(np.float64), np.random.default_rng(1)))
    out = rnn.forward(xs, training=True)
    rnn.backward(np.ones_like(out))
    ratio = np.linalg.norm(rnn.state_grads[1]) / np.linalg.norm(rnn.state_grads[30])
    verdict = "vanishing" if ratio < 1e-3 else "exploding" if ratio > 1e2 else "kept"
    print(f"  gain {gain:<4} ρ(U) = {rnn.spectral_radius():.2f}   ratio {ratio:.3e}   {verdict}")
