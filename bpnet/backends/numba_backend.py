"""The Numba backend: NumPy arrays, fused CPU kernels from ``bpnet.kernels``.

The kernels are Numba's JIT-compiled ones, or the same functions compiled ahead
of time where ``bpnet build-kernels`` has built them for this machine
(``numba_aot.py``: no Numba or LLVM in the process).

Every method keeps the signature, return value and in-place effects of the
:class:`NumpyBackend` method it overrides, and computes the same formula in one
compiled sweep instead of several array expressions (see the docstring of
``kernels/numba_kernels.py`` for the compilation choices).  Matrix products
go to Intel MKL where the ``mkl`` package is installed and the CPU is one MKL
is tuned for (``mkl_gemm.py``), and to NumPy's BLAS otherwise.

Activations: the layer's ``code`` (``kernels/activation_codes.py``) selects
the fused kernel; a layer without one runs its own ``f`` / ``dz`` code.

The kernels take C-contiguous float32/float64 arrays of one dtype.  Anything
else (strided views, float16, mixed dtypes, empty arrays) goes to the NumPy
reference, so a caller never has to care which path ran.
"""
from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import numpy as np

from . import numba_aot
from .heap import keep_heap_top
from .mkl_gemm import large_enough, products_gemm
from .numpy_backend import NumpyBackend


def _kernels():
    """The ahead-of-time kernel module where ``bpnet build-kernels`` has built one for this
    machine (no Numba, no LLVM in the process: ``numba_aot.py``) and ``BPNET_AOT`` is not 0,
    else the JIT kernels.  The JIT has one kernel more: the parallel Adam beside MKL
    (:func:`adam_runs_parallel`)."""
    aot = numba_aot.load()
    if aot is not None:
        return aot
    from bpnet.kernels import numba_kernels
    return numba_kernels


K = _kernels()
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Exponent bits of each float width: a value is NaN/Inf iff all are set.
_EXP_BITS = {np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000)),
             np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000))}
_FINITE_BLOCK = 4096        # elements scanned between early-exit tests
# Activations computed wholly in a kernel; the others (elu, sigmoid, tanh) run
# their exp/expm1/tanh through NumPy's vectorised ufunc between two kernels.
_ARITHMETIC = (K.IDENTITY, K.RELU, K.LEAKY_RELU)
_KERNEL_CODES = frozenset(_ARITHMETIC) | {K.ELU, K.SIGMOID, K.TANH}
_UFUNC = {K.SIGMOID: np.exp, K.ELU: np.expm1}
_PARALLEL_ADAM_MIN = 1 << 16    # parameters from which splitting Adam between threads pays
_ADAM_CHUNK = 1 << 14           # elements per piece of the parallel Adam


def _plain(*arrays):
    """True when every array is a C-contiguous ndarray of one float32/64 dtype."""
    first = arrays[0]
    if not isinstance(first, np.ndarray) or first.dtype not in _FLOATS:
        return False
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.dtype == first.dtype
                and a.flags.c_contiguous):
            return False
    return True


def _writable(*arrays):
    return all(a.flags.writeable for a in arrays)


def _same_shape(*arrays):
    return all(a.shape == arrays[0].shape for a in arrays)


def _flat(a):
    """1-D view of a C-contiguous array (no copy)."""
    return a.reshape(-1)


@functools.cache
def adam_runs_parallel():
    """True where Adam's update is split between threads: the products run on MKL, and
    Numba's threads are OpenMP's, started after MKL's Intel OpenMP runtime was loaded, so
    that both use one pool of threads.  Next to OpenBLAS's threads, which spin between
    products, a second thread of Numba's slows the update down instead (see
    kernels/numba_kernels.py).  Numba's threading layer is set to OpenMP here unless the
    user chose one (NUMBA_THREADING_LAYER) or another layer is already running.  Never with
    the ahead-of-time kernels, which keep Numba out of the process."""
    if getattr(K, "ahead_of_time", False):
        return False
    import numba
    from numba.np.ufunc import parallel
    if products_gemm() is None or numba.config.NUMBA_NUM_THREADS < 2 or \
            numba.config.THREADING_LAYER not in ("default", "omp") or \
            getattr(parallel, "_is_initialized", True):      # started already, by someone else
        return False
    numba.config.THREADING_LAYER = "omp"
    p = np.zeros(4, np.float32)
    try:
        K.adam_step_parallel(p, p, p.copy(), p.copy(), 0.9, 0.1, 0.999, 0.001, 1e-3, 1.0, 1e-8,
                             0.0, 1.0, False, 2)
    except Exception:   # noqa: BLE001 (no OpenMP layer in this Numba build)
        return False
    return numba.threading_layer() == "omp"


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        super().__init__()
        keep_heap_top()          # a step's temporaries reuse mapped pages (heap.py)

    # -- matrix products ----------------------------------------------------------
    def matmul(self, a, b, out=None):
        """a @ b on MKL's gemm where the backend multiplies on MKL (``mkl_gemm.products_gemm``)
        and it takes the operands, else on NumPy's BLAS."""
        gemm = products_gemm() if large_enough(a, b) else None
        product = None if gemm is None else gemm.gemm(a, b, out)
        return np.matmul(a, b, out=out) if product is None else product

    # -- pointwise activations --------------------------------------------------
    # An activation whose code has no kernel here (a layer of the user's own,
    # code None) runs its own f / dz code through the NumPy reference.
    def bias_activation_forward(self, act, z, b):
        """z = f(z + b) in place for z (..., M) and b (M,); returns z."""
        code = act.code
        if code not in _KERNEL_CODES:
            return super().bias_activation_forward(act, z, b)
        if not (z.ndim >= 1 and _plain(z, b) and b.ndim == 1 and z.shape[-1] == b.shape[0]
                and z.size and _writable(z)):
            z += b
            return self.activation_forward(act, z, out=z)
        z2 = z.reshape(-1, b.shape[0])
        alpha = float(act.alpha)
        if code in _ARITHMETIC:
            K.bias_act_forward(z2, b, code, alpha)
        elif code == K.TANH:
            K.bias_act_forward(z2, b, K.IDENTITY, 0.0)
            np.tanh(z, out=z)
        else:
            t = np.empty_like(z2)
            K.bias_pre(z2, b, t, code)
            _UFUNC[code](t, out=t)
            K.act_post(_flat(z), _flat(t), code, alpha, True)
        return z

    def activation_forward(self, act, z, out=None):
        code = act.code
        # identity is a copy and tanh is one vectorised ufunc pass already.
        if code not in _KERNEL_CODES or code in (K.IDENTITY, K.TANH) or not _plain(z) or \
                (out is not None and not (_plain(z, out) and _same_shape(z, out)
                                          and _writable(out))):
            return super().activation_forward(act, z, out)
        if out is not None and out is not z and np.may_share_memory(z, out):
            return super().activation_forward(act, z, out)   # partial overlap
        zf = _flat(z)
        alpha = float(act.alpha)
        if code in _ARITHMETIC:
            if out is z:
                K.act_forward_(zf, code, alpha)
                return out
            if out is None:
                out = np.empty_like(z)
            K.act_forward(zf, _flat(out), code, alpha)
            return out
        # sigmoid, elu: pre pass, NumPy's vectorised exp/expm1, post pass.
        in_place = out is z
        t = np.empty_like(z) if (in_place or out is None) else out
        tf = _flat(t)
        K.act_pre(zf, tf, code)
        _UFUNC[code](tf, out=tf)
        K.act_post(zf, tf, code, alpha, in_place)
        return z if in_place else t

    def activation_backward(self, act, y, dy, out=None):
        code = act.code
        if code not in _KERNEL_CODES or code == K.IDENTITY or \
                not (_plain(y, dy) and _same_shape(y, dy)) or \
                (out is not None and not (_plain(y, out) and _same_shape(y, out)
                                          and _writable(out))):
            return super().activation_backward(act, y, dy, out)
        if out is None:
            out = np.empty_like(y)
        elif out is not dy and out is not y and \
                (np.may_share_memory(out, y) or np.may_share_memory(out, dy)):
            return super().activation_backward(act, y, dy, out)   # partial overlap
        K.act_backward(_flat(y), _flat(dy), _flat(out), code, float(act.alpha))
        return out

    def activation_bias_backward(self, act, y, dy, db):
        """dz = dy ⊙ f'(z) and db = Σ_n dz in one kernel pass (the reference's
        numbers bit for bit: rows summed in NumPy's order; one column, which
        NumPy sums pairwise, goes to the reference)."""
        code = act.code
        if code not in _KERNEL_CODES or code == K.IDENTITY or \
                not (y.ndim == 2 and y.shape[0] >= 1 and y.shape[1] >= 2 and _plain(y, dy, db)
                     and _same_shape(y, dy) and db.shape == (y.shape[1],) and _writable(db)):
            return super().activation_bias_backward(act, y, dy, db)
        dz = np.empty_like(y)
        K.act_backward_bias(y, dy, dz, db, code, float(act.alpha))
        return dz

    # -- softmax cross-entropy ----------------------------------------------------
    def softmax_cross_entropy(self, z, q, class_weights=None):
        if not (z.ndim == 2 and z.size and _plain(z, q) and _same_shape(z, q)):
            return super().softmax_cross_entropy(z, q, class_weights)
        w = self._class_weights(class_weights, z)
        if w is None:
            return super().softmax_cross_entropy(z, q, class_weights)
        s = np.empty_like(z)
        K.xent_shift(z, s)
        dz = np.exp(s)
        loss = K.xent_finish(s, dz, q, w)
        return float(loss), dz

    def softmax_cross_entropy_labels(self, z, y, class_weights=None, smoothing=0.0):
        """Loss and dz for integer labels y (N,), as softmax_cross_entropy with
        q = (1-ε)·onehot(y) + ε/C (ε = smoothing), without building q."""
        y = np.asarray(y)
        w = self._class_weights(class_weights, z) if z.ndim == 2 and z.size else None
        if not (_plain(z) and z.ndim == 2 and z.size) or w is None or \
                y.shape != (z.shape[0],) or y.dtype.kind not in "iu":
            return super().softmax_cross_entropy_labels(z, y, class_weights, smoothing)
        if y.dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
            y = y.astype(np.int64)
        s = np.empty_like(z)
        K.xent_shift(z, s)
        dz = np.exp(s)
        loss, bad = K.xent_finish_labels(s, dz, np.ascontiguousarray(y), w, float(smoothing))
        if bad >= 0:
            self.check_labels(z, y)
        return float(loss), dz

    @staticmethod
    def _class_weights(class_weights, z):
        """Class weights as a contiguous (C,) array of z's dtype (ones when None),
        or None when they do not fit the kernel."""
        c = z.shape[1]
        if class_weights is None:
            return np.ones(c, dtype=z.dtype)
        w = np.asarray(class_weights)
        if w.shape != (c,):
            return None
        return np.ascontiguousarray(w, dtype=z.dtype)

    # -- reductions used by clipping and diagnostics ------------------------------
    def sum_squares(self, x):
        if not _plain(x):
            return super().sum_squares(x)
        return float(K.sum_squares(_flat(x)))

    def all_finite(self, x):
        if not _plain(x):
            return super().all_finite(x)
        utype, mask = _EXP_BITS[x.dtype]
        return not K.has_nonfinite(_flat(x).view(utype), mask, _FINITE_BLOCK)

    def clip_norm_(self, x, max_norm):
        """The reference's clip (factor max_norm / (‖x‖ + 1e-6), applied when it
        is below 1 and ‖x‖ is finite) in one kernel call; returns ‖x‖₂."""
        if not (_plain(x) and _writable(x)):
            return super().clip_norm_(x, max_norm)
        return float(K.clip_grad_norm(_flat(x), float(max_norm)))

    # -- optimizer updates over a flat parameter buffer ---------------------------
    def sgd_step(self, p, g, velocity, lr, momentum, nesterov, weight_decay):
        state = (velocity,) if momentum else ()
        if not self._fused(p, g, *state):
            return super().sgd_step(p, g, velocity, lr, momentum, nesterov, weight_decay)
        vel = _flat(velocity) if momentum else _flat(p)     # p: unused placeholder
        K.sgd_step(_flat(p), _flat(g), vel, float(lr), float(momentum),
                   bool(nesterov), float(weight_decay))

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, decoupled):
        if not self._fused(p, g, m, v):
            return super().adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay,
                                     t, decoupled)
        c = self.adam_coefficients(lr, beta1, beta2, weight_decay, t)
        args = (_flat(p), _flat(g), _flat(m), _flat(v),
                float(beta1), float(1 - beta1), float(beta2), float(1 - beta2),
                float(c.step), float(c.inv_sqrt_bias2), float(eps),
                float(weight_decay), float(c.decay_factor), bool(decoupled))
        if p.size >= _PARALLEL_ADAM_MIN and adam_runs_parallel():
            K.adam_step_parallel(*args, _ADAM_CHUNK)
        else:
            K.adam_step(*args)

    def rmsprop_step(self, p, g, sq, velocity, lr, alpha, eps, momentum, weight_decay):
        state = (velocity,) if momentum else ()
        if not self._fused(p, g, sq, *state):
            return super().rmsprop_step(p, g, sq, velocity, lr, alpha, eps, momentum,
                                        weight_decay)
        vel = _flat(velocity) if momentum else _flat(p)     # p: unused placeholder
        K.rmsprop_step(_flat(p), _flat(g), _flat(sq), vel, float(lr), float(alpha),
                       float(1 - alpha), float(eps), float(momentum), float(weight_decay))

    @staticmethod
    def _fused(p, *others):
        """p and its gradient/state arrays fit the flat-buffer kernels."""
        arrays = (p,) + others
        return _plain(*arrays) and _same_shape(*arrays) and \
            _writable(p, *others[1:])

    # -- compilation ----------------------------------------------------------------
    def warmup(self, dtype=np.float32):
        """Call every kernel once on tiny arrays of ``dtype`` so that Numba
        compiles (or loads from its cache) each one; return the seconds taken.

        This is the first-call cost a training run pays once per process.
        """
        dt = np.dtype(dtype)
        start = time.perf_counter()
        z = np.linspace(-2, 2, 12, dtype=dt).reshape(3, 4)
        b = np.ones(4, dt)
        for code in sorted(_KERNEL_CODES):
            act = SimpleNamespace(code=code, alpha=0.1)    # a code is all a kernel reads
            self.bias_activation_forward(act, z.copy(), b)
            if code not in (K.IDENTITY, K.TANH):
                self.activation_forward(act, z)
                in_place = z.copy()
                self.activation_forward(act, in_place, out=in_place)
            if code != K.IDENTITY:
                self.activation_backward(act, z, z)
                self.activation_bias_backward(act, z, z, b.copy())
        q = np.full_like(z, 0.25)
        self.softmax_cross_entropy(z, q)
        self.softmax_cross_entropy_labels(z, np.array([0, 1, 3]))
        p = np.ones(8, dt)
        g, s1, s2 = np.full_like(p, 0.1), np.zeros_like(p), np.zeros_like(p)
        self.sgd_step(p, g, s1, 0.1, 0.9, True, 0.01)
        self.adam_step(p, g, s1, s2, 0.1, 0.9, 0.999, 1e-8, 0.01, 1, True)
        adam_runs_parallel()                    # compiles the parallel Adam where it is used
        self.rmsprop_step(p, g, s1, s2, 0.1, 0.99, 1e-8, 0.9, 0.01)
        self.sum_squares(p)
        self.all_finite(p)
        self.clip_norm_(p, 1.0)
        return time.perf_counter() - start

