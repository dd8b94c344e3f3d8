"""Intel MKL's matrix product for the Numba backend, when the ``mkl`` package is installed.

NumPy's wheels multiply matrices with OpenBLAS.  On an Intel AVX-512 machine (the
README's earlier benchmark), whole training steps of dense networks ran 1.16-1.41x
faster with their products on MKL's sgemm.  The products are not this
project's subject, so where MKL is installed (``pip install
"bpnet-framework[mkl]"``) and the CPU is an Intel one (below), the Numba
backend hands them to ``cblas_sgemm`` / ``cblas_dgemm``; everything else about
a step is unchanged.

* The libraries come from the ``mkl`` and ``intel-openmp`` wheels, which pip
  puts in ``<prefix>/lib``.  Intel's OpenMP runtime is loaded first and
  globally: MKL's threading layer resolves its symbols at the first product.
* ``MKL_CBWR_AUTO`` (conditional numerical reproducibility) makes the results
  independent of how the arrays happen to be aligned in memory, so two runs
  with one seed give the same weights, as they do on OpenBLAS.
* MKL's threads keep Intel OpenMP's default block time: after a product they
  wait, spinning, for the next one.  Sending them to sleep at once
  (``kmp_set_blocktime(0)``) made whole steps slower than on OpenBLAS, which
  spins the same way: waking the threads costs more than the products gain.
* Small products stay on NumPy: below m·n·k = 2¹⁸ a call into MKL costs more
  (about 7 µs) than the product, and OpenBLAS runs such products on the
  calling thread alone (its own threshold), so its thread pool never wakes
  to spin against MKL's.  A tiny network never loads MKL (about 0.5 s and
  15 MB in a new process).
* MKL runs its tuned kernels on Intel processors only; on others (an AMD
  EPYC in the README's benchmark: MKL reports "Intel(R) Architecture processors" and loads its
  generic ``mkl_def`` kernels) its sgemm ran 0.54-0.94x OpenBLAS's on one
  thread, and whole steps were up to 1.3x faster on OpenBLAS.  So by default
  (``BPNET_MKL`` unset or ``auto``) the backend multiplies on MKL only on a
  GenuineIntel CPU; ``BPNET_MKL=1`` uses it on any CPU, ``BPNET_MKL=0`` on
  none.  Without the libraries nothing changes.

The result agrees with ``numpy.matmul`` to rounding (the sums run in another
order), not bit for bit; the NumPy backend, the reference, never uses it.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

import numpy as np

from .switches import env_switch

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_CBWR_AUTO = 2
_SMALL = 4 * 65536          # m·n·k up to which OpenBLAS multiplies on one thread
_INT_MAX = 2 ** 31 - 1      # MKL's LP64 interface takes 32-bit dimensions


def _library(prefixes, pattern):
    for prefix in prefixes:
        found = sorted(glob.glob(os.path.join(prefix, "lib", pattern)))
        if found:
            return found[-1]
    return None


def large_enough(a, b):
    """True when a @ b is a 2-D product above the small limit: only then is MKL loaded."""
    return (getattr(a, "ndim", 0) == 2 and getattr(b, "ndim", 0) == 2
            and a.shape[0] * a.shape[1] * b.shape[-1] > _SMALL)


class MklGemm:
    """``gemm(a, b, out)``: out = a b through MKL for 2-D float32/float64 operands."""

    def __init__(self, lib):
        self.lib = lib
        P, I = ctypes.c_void_p, ctypes.c_int
        self._kernels = {}
        for dtype, name, scalar in ((np.float32, "cblas_sgemm", ctypes.c_float),
                                    (np.float64, "cblas_dgemm", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [I, I, I, I, I, I, scalar, P, I, P, I, scalar, P, I]
            self._kernels[np.dtype(dtype)] = fn

    @staticmethod
    def _operand(a):
        """(transpose flag, leading dimension) of a row-major view of ``a``, or None."""
        if a.flags.c_contiguous:
            return _NO_TRANS, max(1, a.shape[1])
        if a.flags.f_contiguous:
            return _TRANS, max(1, a.shape[0])
        return None

    def gemm(self, a, b, out=None):
        """a @ b into ``out`` (allocated when None); None when MKL cannot take these arrays."""
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2 and b.ndim == 2
                and a.dtype == b.dtype and a.dtype in self._kernels and a.shape[1] == b.shape[0]):
            return None
        m, k = a.shape
        n = b.shape[1]
        if not large_enough(a, b) or max(m, n, k) > _INT_MAX:
            return None
        ta, tb = self._operand(a), self._operand(b)
        if ta is None or tb is None:
            return None
        if out is None:
            out = np.empty((m, n), a.dtype)
        elif not (isinstance(out, np.ndarray) and out.shape == (m, n) and out.dtype == a.dtype
                  and out.flags.c_contiguous and out.flags.writeable
                  and not np.may_share_memory(out, a) and not np.may_share_memory(out, b)):
            return None
        self._kernels[a.dtype](_ROW_MAJOR, ta[0], tb[0], m, n, k, 1.0, a.ctypes.data, ta[1],
                               b.ctypes.data, tb[1], 0.0, out.ctypes.data, n)
        return out


def mkl_setting() -> str:
    """BPNET_MKL as "off", "on" or "auto" (unset, empty or anything else)."""
    return env_switch("BPNET_MKL")


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def mkl_for_products(setting: str, vendor: str) -> bool:
    """Whether the numba backend should multiply on MKL (where it is installed): always when
    BPNET_MKL says on, never when off, and under auto only on Intel CPUs, the ones MKL runs
    its tuned kernels on."""
    return setting == "on" or (setting == "auto" and vendor == "GenuineIntel")


def mkl_chosen() -> bool:
    """Whether this process's numba backend multiplies on MKL where it is installed."""
    return mkl_for_products(mkl_setting(), cpu_vendor())


def mkl_libraries():
    """Paths of (libmkl_rt, libiomp5) where both are installed and BPNET_MKL is not off, else
    None; nothing is loaded."""
    if mkl_setting() == "off":
        return None
    prefixes = list(dict.fromkeys([sys.prefix, sys.base_prefix, os.path.join(os.path.expanduser("~"), ".local")]))
    rt, omp = _library(prefixes, "libmkl_rt.so*"), _library(prefixes, "libiomp5.so")
    return None if rt is None or omp is None else (rt, omp)


@functools.cache
def load_mkl_gemm():
    """The process's :class:`MklGemm`, loaded on first call; None without MKL or with BPNET_MKL=0."""
    return _load()


@functools.cache
def products_gemm():
    """The :class:`MklGemm` the numba backend multiplies with, or None: NumPy's BLAS then.
    MKL is loaded only if :func:`mkl_chosen`."""
    return load_mkl_gemm() if mkl_chosen() else None


def _load():
    paths = mkl_libraries()
    if paths is None:
        return None
    rt, omp = paths
    try:
        ctypes.CDLL(omp, mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(rt, mode=ctypes.RTLD_GLOBAL)
        lib.MKL_CBWR_Set(_CBWR_AUTO)
        return MklGemm(lib)
    except (OSError, AttributeError):
        return None
