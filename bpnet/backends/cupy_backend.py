"""The CuPy backend: arrays on a CUDA GPU, cuBLAS for matrix products and the
CUDA C kernels in ``kernels/cuda`` for the fused parts.

Matrix products (the layers' own ``xp.matmul``), ``log_softmax`` and the small
helpers are inherited from :class:`NumpyBackend` and
:class:`~bpnet.backends.base.Backend`: they only call ``self.xp``, which here
is ``cupy``.  The methods below replace NumPy expressions with one kernel launch each and
return the same numbers as the reference (to float32 rounding):

* ``activation_forward``, ``bias_activation_forward``, ``activation_backward``
  -- ``activations.cu``, for the activation layers that name a kernel code
  (``kernels/activation_codes.py``, passed to NVRTC as ``-DACT_<NAME>=<code>``);
  any other activation runs its own ``f`` / ``dz`` code on CuPy arrays
* ``softmax_cross_entropy`` (and ``softmax_cross_entropy_labels``, the same
  loss for integer labels with label smoothing) -- ``softmax_xent.cu``
* ``sgd_step``, ``adam_step``, ``rmsprop_step`` -- ``optimizers.cu``
* ``sum_squares``, ``all_finite`` -- ``reductions.cu``

Each ``.cu`` file is compiled by NVRTC (through ``cupy.RawModule``) the first
time one of its kernels is needed, and the kernel handles are cached.  The
files are compiled with ``--fmad=false`` so that ``a * b + c`` is rounded
twice, as NumPy rounds it, instead of once in a fused multiply-add.

Kernels exist for float32 and float64 (suffixes ``_f32``/``_f64``); any other
dtype, or arrays that are not C-contiguous where a kernel writes in place,
fall back to the inherited NumPy-style code running on CuPy arrays.
"""
from __future__ import annotations

import importlib.resources

import numpy as np

from ..errors import BackendError
from ..kernels.activation_codes import ACT_CODES, cuda_defines
from .numpy_backend import NumpyBackend

#: the activation codes activations.cu has a kernel for (all of the table)
KERNEL_CODES = frozenset(ACT_CODES.values())

#: NVRTC options for every kernel file (see the module docstring for fmad),
#: with the activation code table as -DACT_<NAME>=<code> definitions.
NVRTC_OPTIONS = ("-std=c++14", "--fmad=false", *cuda_defines())

#: kernel name (without dtype suffix) -> the file in kernels/cuda defining it
KERNEL_FILES = {
    "act_forward": "activations.cu",
    "bias_act_forward": "activations.cu",
    "act_backward": "activations.cu",
    "softmax_xent": "softmax_xent.cu",
    "softmax_xent_labels": "softmax_xent.cu",
    "sgd_step": "optimizers.cu",
    "adam_step": "optimizers.cu",
    "rmsprop_step": "optimizers.cu",
    "sum_squares": "reductions.cu",
    "any_nonfinite": "reductions.cu",
}

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

THREADS = 256          # threads per block (a multiple of 32: the kernels use warps)
MAX_BLOCKS = 4096      # grid-stride loops cover the rest
REDUCE_BLOCKS = 1024   # partial sums written by sum_squares
ROWS_PER_BLOCK = THREADS // 32  # softmax: one warp per row


def _blocks(n, per_block=THREADS, cap=MAX_BLOCKS):
    return max(1, min(cap, -(-n // per_block)))


def read_kernel_source(filename):
    """The text of ``kernels/cuda/<filename>`` as installed in ``bpnet.kernels``."""
    root = importlib.resources.files("bpnet.kernels")
    return root.joinpath("cuda").joinpath(filename).read_text(encoding="utf-8")


class CupyBackend(NumpyBackend):
    name = "cupy"
    xp = None  # the cupy module, set in __init__

    def __init__(self):
        try:
            import cupy
        except ImportError as exc:
            raise BackendError(
                'CuPy is not installed: pip install "bpnet-framework[gpu]" '
                f"(or use backend='numpy'); importing cupy failed with: {exc}") from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
            reason = "CuPy reports 0 devices"
        except Exception as exc:  # CUDARuntimeError: no driver, no device, ...
            count, reason = 0, f"{type(exc).__name__}: {exc}"
        if count < 1:
            raise BackendError(
                f"no CUDA GPU found: {reason}. Check the NVIDIA driver and "
                "CUDA_VISIBLE_DEVICES, or use backend='numpy'")
        self.xp = cupy
        self._modules = {}   # file name -> cupy.RawModule
        self._kernels = {}   # kernel name with suffix -> RawKernel

    # -- arrays and devices -------------------------------------------------
    def to_numpy(self, x):
        return self.xp.asnumpy(x)

    def to_host(self, a, out=None):
        """``a`` as a host NumPy array; with ``out``, copied straight into it."""
        if out is None or not isinstance(a, self.xp.ndarray):
            return super().to_host(a, out)
        return self.xp.asnumpy(a, out=out)

    def address(self, a):
        return int(a.data.ptr) if isinstance(a, self.xp.ndarray) else super().address(a)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    # -- kernel table -------------------------------------------------------------
    def _kernel(self, name, dtype):
        """The compiled kernel ``<name>_f32`` or ``<name>_f64``, built on first use."""
        key = f"{name}_{_SUFFIX[np.dtype(dtype)]}"
        kernel = self._kernels.get(key)
        if kernel is None:
            filename = KERNEL_FILES[name]
            module = self._modules.get(filename)
            if module is None:
                module = self.xp.RawModule(code=read_kernel_source(filename),
                                           options=NVRTC_OPTIONS)
                self._modules[filename] = module
            try:
                kernel = module.get_function(key)
            except Exception as exc:  # NVRTC CompileException, missing symbol
                raise BackendError(
                    f"could not build CUDA kernel {key} from kernels/cuda/{filename}: "
                    f"{exc}") from exc
            self._kernels[key] = kernel
        return kernel

    def _launch(self, name, dtype, n, args, per_block=THREADS, cap=MAX_BLOCKS):
        """Launch ``name`` with enough blocks of THREADS for ``n`` work items."""
        self._kernel(name, dtype)((_blocks(n, per_block, cap),), (THREADS,), args)

    def _is_dev(self, x, dtype):
        """True when ``x`` is a device array of ``dtype`` that a kernel can index."""
        return (isinstance(x, self.xp.ndarray) and x.dtype == dtype
                and x.flags.c_contiguous)

    def _dev(self, x, dtype):
        """``x`` as a C-contiguous device array of ``dtype`` (no copy when it is one)."""
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    # -- randomness -------------------------------------------------------------
    def uniform(self, rng, shape):
        """float32 draws from [0, 1) made on the GPU, from a seed taken from ``rng``.

        The seed comes from the host generator, so one seed still fixes the
        whole run; the draws themselves (and so dropout masks) differ from
        NumpyBackend's.
        """
        seed = int(rng.integers(2**63))
        return self.xp.random.default_rng(seed).random(shape, dtype=np.float32)

    # -- pointwise activations --------------------------------------------------
    # The layer's code selects the kernel; a layer without one (code None, an
    # activation of the user's own) runs its own f / dz code on CuPy arrays.
    def activation_forward(self, act, z, out=None):
        code = act.code
        dt = getattr(z, "dtype", None)
        if (code not in KERNEL_CODES or code == ACT_CODES["identity"] or dt not in _SUFFIX
                or not isinstance(z, self.xp.ndarray)
                or (out is not None and not (self._is_dev(out, dt) and out.shape == z.shape))):
            return super().activation_forward(act, z, out)
        z = self._dev(z, dt)
        y = self.xp.empty_like(z) if out is None else out
        if z.size:
            self._launch("act_forward", dt, z.size,
                         (z, y, np.int64(z.size), np.int32(code), dt.type(act.alpha)))
        return y

    def bias_activation_forward(self, act, z, b):
        """z = f(z + b) in place for z of shape (..., M) and b of shape (M,); returns z."""
        code = act.code
        dt = getattr(z, "dtype", None)
        if code not in KERNEL_CODES:
            return super().bias_activation_forward(act, z, b)      # the layer's own f
        if (dt not in _SUFFIX or not self._is_dev(z, dt) or getattr(b, "ndim", None) != 1
                or z.ndim < 1 or z.shape[-1] != b.shape[0]):
            z += b
            return self.activation_forward(act, z, out=z)
        b = self._dev(b, dt)
        if z.size:
            self._launch("bias_act_forward", dt, z.size,
                         (z, b, np.int64(z.size), np.int64(b.size), np.int32(code),
                          dt.type(act.alpha)))
        return z

    def activation_backward(self, act, y, dy, out=None):
        code = act.code
        dt = getattr(dy, "dtype", None)
        if (code not in KERNEL_CODES or code == ACT_CODES["identity"] or dt not in _SUFFIX
                or not isinstance(y, self.xp.ndarray) or not isinstance(dy, self.xp.ndarray)
                or y.dtype != dt or y.shape != dy.shape
                or (out is not None and not (self._is_dev(out, dt) and out.shape == dy.shape))):
            return super().activation_backward(act, y, dy, out)
        y, dy = self._dev(y, dt), self._dev(dy, dt)
        dz = self.xp.empty_like(dy) if out is None else out
        if dy.size:
            self._launch("act_backward", dt, dy.size,
                         (y, dy, dz, np.int64(dy.size), np.int32(code), dt.type(act.alpha)))
        return dz

    # -- softmax cross-entropy ----------------------------------------------------
    def _class_weights(self, class_weights, c, dt):
        if class_weights is None:
            return None
        w = self._dev(class_weights, dt)
        return w.ravel() if w.size == c else None

    def _finish_xent(self, dz, row_loss, row_weight):
        """D = Σ a_i;  loss = Σ ℓ_i / D;  dz /= D (see softmax_xent.cu)."""
        denom = row_weight.sum()
        dz /= denom
        return float(row_loss.sum() / denom), dz

    def softmax_cross_entropy(self, z, q, class_weights=None):
        dt = getattr(z, "dtype", None)
        w = None
        ok = (dt in _SUFFIX and isinstance(z, self.xp.ndarray) and z.ndim == 2
              and z.size > 0 and getattr(q, "shape", None) == z.shape)
        if ok and class_weights is not None:
            w = self._class_weights(class_weights, z.shape[1], dt)
            ok = w is not None
        if not ok:
            return super().softmax_cross_entropy(z, q, class_weights)
        n, c = z.shape
        z, q = self._dev(z, dt), self._dev(q, dt)
        dz = self.xp.empty_like(z)
        row_loss = self.xp.empty(n, dtype=dt)
        row_weight = self.xp.empty(n, dtype=dt)
        self._launch("softmax_xent", dt, n,
                     (z, q, w, dz, row_loss, row_weight, np.int64(n), np.int64(c)),
                     per_block=ROWS_PER_BLOCK)
        return self._finish_xent(dz, row_loss, row_weight)

    def softmax_cross_entropy_labels(self, z, y, class_weights=None, smoothing=0.0):
        """``softmax_cross_entropy`` for integer labels y (N,) and label smoothing ε.

        The target q_ic = (1-ε)·[c = y_i] + ε/C is built inside the kernel, one
        row at a time, instead of as an (N, C) array.  A label outside [0, C)
        raises LabelError.
        """
        xp = self.xp
        dt = getattr(z, "dtype", None)
        y = xp.asarray(y)
        self.check_labels(z, y)
        n, c = z.shape
        w = None
        ok = dt in _SUFFIX and isinstance(z, xp.ndarray) and z.size > 0
        if ok and class_weights is not None:
            w = self._class_weights(class_weights, c, dt)
            ok = w is not None
        if not ok:
            return super().softmax_cross_entropy_labels(z, y, class_weights, smoothing)
        y = self._dev(y, np.int64)
        smoothing = float(smoothing)
        z = self._dev(z, dt)
        dz = xp.empty_like(z)
        row_loss = xp.empty(n, dtype=dt)
        row_weight = xp.empty(n, dtype=dt)
        self._launch("softmax_xent_labels", dt, n,
                     (z, y, w, dz, row_loss, row_weight, np.int64(n), np.int64(c),
                      dt.type(1.0 - smoothing), dt.type(smoothing / c)),
                     per_block=ROWS_PER_BLOCK)
        return self._finish_xent(dz, row_loss, row_weight)

    # -- reductions ---------------------------------------------------------------
    def sum_squares(self, x):
        dt = getattr(x, "dtype", None)
        if dt not in _SUFFIX or not isinstance(x, self.xp.ndarray):
            return super().sum_squares(x)
        if x.size == 0:
            return 0.0
        x = self._dev(x, dt)
        blocks = _blocks(x.size, cap=REDUCE_BLOCKS)
        partial = self.xp.empty(blocks, dtype=np.float64)
        self._launch("sum_squares", dt, x.size, (x, partial, np.int64(x.size)),
                     cap=REDUCE_BLOCKS)
        return float(partial.sum())

    def all_finite(self, x):
        dt = getattr(x, "dtype", None)
        if dt not in _SUFFIX or not isinstance(x, self.xp.ndarray):
            return super().all_finite(x)
        if x.size == 0:
            return True
        x = self._dev(x, dt)
        flag = self.xp.zeros(1, dtype=np.int32)
        self._launch("any_nonfinite", dt, x.size, (x, flag, np.int64(x.size)))
        return not bool(self.to_numpy(flag)[0])

    # -- optimizer updates over a flat parameter buffer ---------------------------
    def _updatable(self, p, *others):
        """Kernels update p (and the state buffers) in place: all must be
        contiguous device arrays of one float dtype and one shape."""
        dt = getattr(p, "dtype", None)
        return dt in _SUFFIX and all(
            self._is_dev(a, dt) and a.shape == p.shape for a in (p,) + others)

    def sgd_step(self, p, g, velocity, lr, momentum, nesterov, weight_decay):
        use_momentum = bool(momentum)
        state = (velocity,) if use_momentum else ()
        if not self._updatable(p, g, *state):
            return super().sgd_step(p, g, velocity, lr, momentum, nesterov, weight_decay)
        T = p.dtype.type
        self._launch("sgd_step", p.dtype, p.size,
                     (p, g, velocity if use_momentum else None, np.int64(p.size),
                      T(lr), T(momentum), T(weight_decay), np.int32(use_momentum),
                      np.int32(bool(nesterov)), np.int32(bool(weight_decay))))

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, decoupled):
        if not self._updatable(p, g, m, v):
            return super().adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay,
                                     t, decoupled)
        T = p.dtype.type
        c = self.adam_coefficients(lr, beta1, beta2, weight_decay, t)
        decay_mode = 0 if not weight_decay else (2 if decoupled else 1)
        self._launch("adam_step", p.dtype, p.size,
                     (p, g, m, v, np.int64(p.size), T(c.step), T(beta1), T(1 - beta1),
                      T(beta2), T(1 - beta2), T(c.inv_sqrt_bias2), T(eps), T(weight_decay),
                      T(c.decay_factor), np.int32(decay_mode)))

    def rmsprop_step(self, p, g, sq, velocity, lr, alpha, eps, momentum, weight_decay):
        use_momentum = bool(momentum)
        state = (sq, velocity) if use_momentum else (sq,)
        if not self._updatable(p, g, *state):
            return super().rmsprop_step(p, g, sq, velocity, lr, alpha, eps, momentum,
                                        weight_decay)
        T = p.dtype.type
        self._launch("rmsprop_step", p.dtype, p.size,
                     (p, g, sq, velocity if use_momentum else None, np.int64(p.size),
                      T(lr), T(alpha), T(1 - alpha), T(eps), T(momentum), T(weight_decay),
                      np.int32(use_momentum), np.int32(bool(weight_decay))))
