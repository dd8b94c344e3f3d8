"""Fused CPU kernels for the ``numba`` backend.

Each kernel computes in one sweep over memory what the NumPy reference
backend (``bpnet/backends/numpy_backend.py``) computes with several array
expressions and temporaries.  The formulas are the reference's, written in
the same order of operations, so float64 results agree to rounding and the
purely arithmetic kernels (optimizers, relu/leaky_relu, every activation
backward) agree bit for bit.  ``NumbaBackend`` checks shapes, dtypes and
contiguity; kernels assume C-contiguous float32/float64 arrays of one dtype.

Compilation choices, shared by every kernel:

* ``@njit`` without signatures: nothing is compiled at import time; each
  kernel compiles on its first call for the dtypes it meets, and
  ``cache=True`` stores the machine code so later processes load it instead
  (``NumbaBackend.warmup`` triggers and times this).  ``bpnet build-kernels``
  compiles these same functions ahead of time, with the same options, into a
  module that loads without Numba (``bpnet/backends/numba_aot.py``).
* ``fastmath=False``: no reassociation, so results do not depend on how LLVM
  vectorises a loop, and NaN/Inf propagate exactly as in NumPy (the anomaly
  detector relies on seeing them).  Reductions that should use SIMD are
  written with explicit independent partial sums (see ``sum_squares``).
* ``error_model="numpy"``: division by zero gives Inf/NaN instead of raising.
  The default ("python") model tests every divisor for zero, which stops the
  loop from being vectorised: an Adam step over 535k float32 takes 1.75 ms
  that way and 0.22 ms this way.
* Serial, no ``parallel=True``: these loops are memory-bound and short; on a
  machine with few cores Numba's worker threads spin against OpenBLAS's
  threads, which run the matrix products of the same training step, and
  whole steps become many times slower.  BLAS already uses the cores.  The
  one exception is ``adam_step_parallel`` (the serial kernel on pieces, over
  ``prange``): the backend runs it only where the products run on MKL and
  Numba's threads are OpenMP's, the runtime MKL's products already keep busy
  (``NumbaBackend.adam_step``).
* Scalars arrive as Python floats and are cast to the array dtype inside the
  kernel (``x.dtype.type(s)``), so float32 data is computed in float32 as
  NumPy does, and one compiled version serves every scalar value.
* Sums (losses, norms, normalisers) accumulate in float64.
* exp, expm1 and tanh are left to NumPy's vectorised ufuncs between two
  kernels (see the note above the activations).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation_codes import ELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

__all__ = [
    "IDENTITY", "RELU", "LEAKY_RELU", "ELU", "SIGMOID", "TANH",
    "bias_act_forward", "bias_pre", "act_forward", "act_forward_", "act_pre",
    "act_post", "act_backward", "act_backward_bias",
    "xent_shift", "xent_finish", "xent_finish_labels",
    "sgd_step", "adam_step", "adam_step_parallel", "rmsprop_step",
    "sum_squares", "clip_grad_norm", "has_nonfinite",
]

_jit = njit(cache=True, fastmath=False, error_model="numpy")
_jit_parallel = njit(cache=True, fastmath=False, error_model="numpy", parallel=True)


# -- activations ------------------------------------------------------------
# Each kernel is the fused form of one activation layer's own ``f`` / ``dz``
# code (bpnet/layers/activations.py), selected by the layer's code from
# kernels/activation_codes.py, in the same order of operations.
# relu, leaky_relu and every backward are plain arithmetic and are fused
# whole.  sigmoid, elu and tanh need exp/expm1/tanh: Numba calls the platform
# libm for those one element at a time (2-16 ns each, no SIMD without Intel's
# SVML), while NumPy's own ufuncs are vectorised and 5-40x faster.  So the
# backend runs the transcendental function through NumPy's ufunc and these
# kernels fuse everything around it into one pass before (bias, -|x| or
# min(x, 0)) and one pass after (the stable-sigmoid select, the elu select).
#
# Loops never write an array they also read through a second argument: LLVM
# then cannot prove the two do not overlap and runs the scalar loop (3x
# slower), so the forward kernels' in-place variants take the shared array
# once (act_backward in place is the exception, below).

@_jit
def _fwd(code, x, a, zero):
    """f(x) for the arithmetic activations (identity, relu, leaky_relu)."""
    if code == RELU:
        return zero if x < zero else x      # keeps NaN, like np.maximum(z, 0)
    if code == LEAKY_RELU:
        return x if x > 0 else a * x
    return x


@_jit
def _pre(code, x, zero):
    """Argument of the ufunc: sigmoid -|x| (so exp never overflows), elu min(x, 0)."""
    if code == SIGMOID:
        return -np.abs(x)
    return zero if zero < x else x          # min(x, 0), keeps NaN


@_jit
def _post(code, x, e, a, one):
    """Finish f(x) from e = ufunc(pre(x)).

    sigmoid, e = exp(-|x|):  x >= 0: 1/(1+e);  x < 0: e/(1+e)
    elu,     e = expm1(min(x, 0)):  x > 0: x;  else α e
    """
    if code == SIGMOID:
        return one / (one + e) if x >= 0 else e / (one + e)
    return x if x > 0 else a * e


@_jit
def bias_act_forward(z, b, code, alpha):
    """z[i, j] = f(z[i, j] + b[j]) in place (identity, relu, leaky_relu)."""
    n, m = z.shape
    zero = z.dtype.type(0)
    a = z.dtype.type(alpha)
    for i in range(n):
        for j in range(m):
            z[i, j] = _fwd(code, z[i, j] + b[j], a, zero)


@_jit
def bias_pre(z, b, t, code):
    """z += b in place and t = pre(z), for the ufunc step (sigmoid, elu)."""
    n, m = z.shape
    zero = z.dtype.type(0)
    for i in range(n):
        for j in range(m):
            x = z[i, j] + b[j]
            z[i, j] = x
            t[i, j] = _pre(code, x, zero)


@_jit
def act_forward(z, out, code, alpha):
    """out = f(z) (identity, relu, leaky_relu); 1-D, out distinct from z."""
    zero = z.dtype.type(0)
    a = z.dtype.type(alpha)
    for i in range(z.size):
        out[i] = _fwd(code, z[i], a, zero)


@_jit
def act_forward_(z, code, alpha):
    """z = f(z) in place (identity, relu, leaky_relu); 1-D."""
    zero = z.dtype.type(0)
    a = z.dtype.type(alpha)
    for i in range(z.size):
        z[i] = _fwd(code, z[i], a, zero)


@_jit
def act_pre(z, t, code):
    """t = pre(z); 1-D, t distinct from z."""
    zero = z.dtype.type(0)
    for i in range(z.size):
        t[i] = _pre(code, z[i], zero)


@_jit
def act_post(x, e, code, alpha, into_x):
    """f(x) from e = ufunc(pre(x)), written into e, or into x if into_x."""
    one = x.dtype.type(1)
    a = x.dtype.type(alpha)
    if into_x:
        for i in range(x.size):
            x[i] = _post(code, x[i], e[i], a, one)
    else:
        for i in range(x.size):
            e[i] = _post(code, x[i], e[i], a, one)


@_jit
def _bwd(code, y, dy, a, zero, one):
    """dy * f'(z) with f' written from y = f(z):
    relu: [y > 0];  leaky: y > 0 ? 1 : α;  elu: y > 0 ? 1 : y + α
    (y = α(eᶻ-1) gives f' = α eᶻ = y + α);  sigmoid: y(1-y);  tanh: 1-y²."""
    if code == RELU:
        return dy * (one if y > 0 else zero)
    if code == LEAKY_RELU:
        return dy if y > 0 else a * dy
    if code == ELU:
        return dy if y > 0 else dy * (y + a)
    if code == SIGMOID:
        return dy * y * (one - y)
    if code == TANH:
        return dy * (one - y * y)
    return dy


# act_backward is a single loop, and that matters: LLVM takes the test of the
# code out of a lone loop (one vectorised copy of the loop per activation),
# but not out of the three loops this kernel once had, one per destination
# array, which then ran element by element: dz of 65,536 float32 took
# 15-19 µs that way and 10-13 µs now, float64 100-143 µs and 24-30 µs
# (benchmarks/bench_kernels.py).  In place (out is y or dy) it runs the same
# loop, unvectorised, since LLVM cannot rule out a partial overlap; no layer
# asks for that.

@_jit
def act_backward(y, dy, out, code, alpha):
    """out = dz = dy * f'(z); 1-D; out may be y or dy itself."""
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    a = y.dtype.type(alpha)
    for i in range(y.size):
        out[i] = _bwd(code, y[i], dy[i], a, zero, one)


# Rows per block of act_backward_bias: about 32 KiB of dz, still in the L1 or
# L2 cache when the block's rows are added to db.
_BIAS_BLOCK_BYTES = 32768


@_jit
def _add_rows(dz, db, start, stop):
    """db += rows start..stop-1 of dz, in order; row 0 starts db."""
    m = dz.shape[1]
    if start == 0:
        for j in range(m):
            db[j] = dz[0, j]
        start = 1
    for i in range(start, stop):
        for j in range(m):
            db[j] += dz[i, j]


@_jit
def act_backward_bias(y, dy, dz, db, code, alpha):
    """dz = dy * f'(z) and db[j] = Σ_i dz[i, j] for y, dy (N, M), N ≥ 1.

    The fused step's backward: the bias gradient of a Dense layer followed by
    the activation is the batch sum of dz.  dz is made a block of rows at a
    time (act_backward's loop), and the block's rows are added to db while
    they are still in cache; adding each dz to db in the loop that makes it
    keeps LLVM from vectorising that loop (about 1.5x slower).  The rows are
    added in NumPy's order for ``dz.sum(axis=0)`` (row 0, then + row 1,
    + row 2, ...), which makes db bit-identical to the reference for M ≥ 2;
    a single column NumPy sums pairwise, so the backend sends M = 1 to the
    reference.  dz is distinct from y and dy; all three are C-contiguous.
    """
    n, m = y.shape
    y1, dy1, dz1 = y.ravel(), dy.ravel(), dz.ravel()
    rows = max(1, _BIAS_BLOCK_BYTES // (m * y.itemsize))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        act_backward(y1[start * m:stop * m], dy1[start * m:stop * m],
                     dz1[start * m:stop * m], code, alpha)
        _add_rows(dz, db, start, stop)


# -- softmax cross-entropy, loss and gradient ---------------------------------
# With class weights w (all ones when unweighted) and a_i = Σ_c w_c q_ic:
#     s_ic     = z_ic - max_c z_ic                    (exp(s) never overflows)
#     log p_ic = s_ic - log Σ_c exp(s_ic)
#     loss     = -Σ_ic w_c q_ic log p_ic / Σ_i a_i
#     dz_ic    = (a_i p_ic - w_c q_ic) / Σ_i a_i
# Three steps, none of which materialises log p, p or w·q:
#   xent_shift:  s = z - rowmax                       (into the dz buffer)
#   np.exp:      e = exp(s)                            (NumPy's SIMD exp, see above)
#   xent_finish: per row Σe, log Σe, the row's loss and dz, written over e.
# A single kernel calling libm's exp per element measured twice as slow.

@_jit
def xent_shift(z, s):
    """s[i] = z[i] - max(z[i]) for each row of z (N, C)."""
    n, c = z.shape
    for i in range(n):
        mx = z[i, 0]
        for k in range(1, c):
            if z[i, k] > mx:
                mx = z[i, k]
        for k in range(c):
            s[i, k] = z[i, k] - mx


@_jit
def xent_finish(s, e, q, w):
    """Targets q (N, C): loss returned, dz written over e = exp(s)."""
    n, c = s.shape
    total = 0.0
    denom = 0.0
    for i in range(n):
        se = 0.0
        a = 0.0
        for k in range(c):
            se += e[i, k]
            a += w[k] * q[i, k]
        lse = s.dtype.type(np.log(se))
        inv_se = s.dtype.type(1.0 / se)
        ai = s.dtype.type(a)
        row = 0.0
        for k in range(c):
            wq = w[k] * q[i, k]
            row += wq * (s[i, k] - lse)
            e[i, k] = ai * (e[i, k] * inv_se) - wq
        total += row
        denom += a
    # Σ_i a_i is known only now: one vectorised pass finishes dz.
    den = s.dtype.type(denom)
    ef = e.reshape(-1)
    for j in range(ef.size):
        ef[j] = ef[j] / den
    return -total / denom


@_jit
def xent_finish_labels(s, e, y, w, eps):
    """Integer labels y (N,): q_ic = (1-ε)[c = y_i] + ε/C (ε: label smoothing).

    Returns (loss, bad): bad is the first row whose label lies outside
    [0, C), or -1.  a_i = Σ_c w_c q_ic needs only y, so Σ_i a_i is summed
    first and each row of dz is final when written.
    """
    n, c = s.shape
    lo = eps / c                      # q of every other class
    hi = (1.0 - eps) + lo             # q of the labelled class
    qlo = s.dtype.type(lo)
    qhi = s.dtype.type(hi)
    wlo = 0.0
    for k in range(c):
        wlo += w[k] * qlo
    denom = 0.0
    for i in range(n):
        lab = y[i]
        if lab < 0 or lab >= c:
            return np.nan, i
        denom += wlo + (w[lab] * qhi - w[lab] * qlo)
    den = s.dtype.type(denom)
    total = 0.0
    for i in range(n):
        lab = y[i]
        se = 0.0
        for k in range(c):
            se += e[i, k]
        lse = s.dtype.type(np.log(se))
        inv_se = s.dtype.type(1.0 / se)
        ai = s.dtype.type(wlo + (w[lab] * qhi - w[lab] * qlo))
        row = 0.0
        for k in range(c):
            wq = w[k] * (qhi if k == lab else qlo)
            row += wq * (s[i, k] - lse)
            e[i, k] = (ai * (e[i, k] * inv_se) - wq) / den
        total += row
    return -total / denom, -1


# -- optimizers over a flat parameter buffer -----------------------------------
# The scalar coefficients are computed by the caller in Python floats exactly
# as the reference does (1-β, lr/(1-β1ᵗ), ...) and cast once here, so every
# element sees the same float32/float64 operations as the NumPy expressions.
@_jit
def sgd_step(p, g, vel, lr, momentum, nesterov, weight_decay):
    """d = g + λp;  v = μv + d;  p -= lr·(d + μv if nesterov else v)."""
    t = p.dtype.type
    lr_, mu, wd = t(lr), t(momentum), t(weight_decay)
    use_wd = weight_decay != 0.0
    use_mom = momentum != 0.0
    for i in range(p.size):
        d = g[i] + wd * p[i] if use_wd else g[i]
        if use_mom:
            v = vel[i] * mu + d
            vel[i] = v
            d = d + mu * v if nesterov else v
        p[i] = p[i] - lr_ * d


@_jit
def adam_step(p, g, m, v, beta1, one_m_beta1, beta2, one_m_beta2,
              step, inv_sqrt_bias2, eps, weight_decay, decay_factor, decoupled):
    """m = β1m + (1-β1)g;  v = β2v + (1-β2)g²;  p -= (m / (√v · inv_sqrt_bias2 + ε)) · step.

    step = lr/(1-β1ᵗ) and inv_sqrt_bias2 = 1/√(1-β2ᵗ) come from the caller
    (once per call), and the element formula follows the reference's order of
    operations (√v̂ = √v / √(1-β2ᵗ)), so the result agrees bit for bit.
    AdamW (decoupled) first shrinks p by decay_factor = 1 - lr·λ; Adam adds
    λp to g instead.
    """
    t = p.dtype.type
    b1, c1, b2, c2 = t(beta1), t(one_m_beta1), t(beta2), t(one_m_beta2)
    st, isb2, ep = t(step), t(inv_sqrt_bias2), t(eps)
    wd, df = t(weight_decay), t(decay_factor)
    use_wd = weight_decay != 0.0
    for i in range(p.size):
        gi = g[i]
        pi = p[i]
        if use_wd:
            if decoupled:
                pi = pi * df
            else:
                gi = gi + wd * pi
        mi = m[i] * b1 + c1 * gi
        vi = v[i] * b2 + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - (mi / (np.sqrt(vi) * isb2 + ep)) * st


@_jit_parallel
def adam_step_parallel(p, g, m, v, beta1, one_m_beta1, beta2, one_m_beta2,
                       step, inv_sqrt_bias2, eps, weight_decay, decay_factor, decoupled, chunk):
    """``adam_step`` on consecutive pieces of ``chunk`` elements, the pieces shared among
    Numba's threads.  Each element's update reads and writes only its own p, m and v, so
    the numbers are the serial kernel's, bit for bit."""
    n = p.size
    for c in prange((n + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(n, lo + chunk)
        adam_step(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], beta1, one_m_beta1, beta2, one_m_beta2,
                  step, inv_sqrt_bias2, eps, weight_decay, decay_factor, decoupled)


@_jit
def rmsprop_step(p, g, sq, vel, lr, alpha, one_m_alpha, eps, momentum, weight_decay):
    """sq = α sq + (1-α)g²;  s = g/(√sq + ε);  v = μv + s;  p -= lr·(v or s)."""
    t = p.dtype.type
    lr_, al, c, ep, mu, wd = t(lr), t(alpha), t(one_m_alpha), t(eps), t(momentum), t(weight_decay)
    use_wd = weight_decay != 0.0
    use_mom = momentum != 0.0
    for i in range(p.size):
        gi = g[i] + wd * p[i] if use_wd else g[i]
        s = sq[i] * al + c * (gi * gi)
        sq[i] = s
        step = gi / (np.sqrt(s) + ep)
        if use_mom:
            step = vel[i] * mu + step
            vel[i] = step
        p[i] = p[i] - lr_ * step


# -- norms, clipping, finiteness -------------------------------------------------
_LANES = 64


@_jit
def sum_squares(x):
    """Σ x² in float64 over a 1-D x.

    Without fastmath a single running sum is one long dependency chain that
    cannot use SIMD.  Viewing x as rows of 64 and summing the squares down the
    columns gives 64 independent partial sums, which vectorise; the order is
    fixed, so the result is reproducible run to run.
    """
    n = x.size
    rows = n // _LANES
    acc = np.zeros(_LANES, np.float64)
    x2 = x[:rows * _LANES].reshape(rows, _LANES)
    for r in range(rows):
        for j in range(_LANES):
            v = np.float64(x2[r, j])
            acc[j] += v * v
    tail = x[rows * _LANES:]
    for j in range(tail.size):
        v = np.float64(tail[j])
        acc[j] += v * v
    total = 0.0
    for j in range(_LANES):
        total += acc[j]
    return total


@_jit
def clip_grad_norm(x, max_norm):
    """Return ‖x‖₂ (before clipping); scale x in place by PyTorch's
    coefficient f = max_norm / (‖x‖ + 1e-6) when f < 1 and ‖x‖ is finite
    (the reference's rule, so a norm just below max_norm is clipped too)."""
    norm = np.sqrt(sum_squares(x))
    factor = max_norm / (norm + 1e-6)
    if np.isfinite(norm) and factor < 1.0:
        f = x.dtype.type(factor)
        for i in range(x.size):
            x[i] = x[i] * f
    return norm


@_jit
def has_nonfinite(bits, exp_mask, block):
    """True if any element is NaN or Inf, scanning block by block and
    stopping after the first block that holds one.

    ``bits`` is the float array viewed as unsigned integers of the same width;
    a value is non-finite exactly when all its exponent bits (exp_mask) are
    set, so max(bits & exp_mask) == exp_mask.  Integer max vectorises (float
    tests on NaN would not without fastmath).
    """
    n = bits.size
    for start in range(0, n, block):
        chunk = bits[start:start + block]      # a view indexed from 0
        worst = bits.dtype.type(0)
        for i in range(chunk.size):
            worst = max(worst, chunk[i] & exp_mask)
        if worst == exp_mask:
            return True
    return False
