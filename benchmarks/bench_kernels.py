"""Why bpnet's Numba kernels are serial: serial vs ``parallel=True`` vs NumPy.

Times two memory-bound kernels of a training step, the Adam update over the
flat buffer of MLP 784-512-256-10 (535,040 float32) and bias + ReLU on a
(1024, 512) activation, three ways: the NumPy reference backend, bpnet's
numba backend (serial kernels; Adam split between threads only where the
products run on MKL) and the same loop compiled with ``parallel=True`` /
``prange``.  Each is timed alone and right after the matrix product that
precedes it in a real step (1024x784 @ 784x512 on every core, by the product
library of the kernel's own backend), which is where thread pools meet.

A second table shows why the backward activation kernel is a single loop:
dz = dy * f'(z) for relu and tanh in the deep net's (256, 256) and the MLP's
(1024, 512) shapes, by the NumPy reference, by bpnet's kernel, by the kernel
as first written (one loop per destination array, which LLVM does not
vectorise), and by the fused dz + bias-gradient kernel.  Medians of
``--repeats`` blocks.

    python benchmarks/bench_kernels.py [--repeats 15]
"""
import argparse
import os
import time

import numpy as np
from numba import njit, prange

from bpnet.backends import get_backend
from bpnet.backends.mkl_gemm import products_gemm
from bpnet.backends.numba_backend import adam_runs_parallel
from bpnet.layers import ReLU, Tanh
from bpnet.kernels import numba_kernels as K
from bpnet.kernels.numba_kernels import _bwd


@njit(parallel=True, cache=True, error_model="numpy")
def adam_parallel(p, g, m, v, lr, b1, b2, eps, bias1, bias2):
    for i in prange(p.size):
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
        p[i] -= (lr / bias1) * m[i] / (np.sqrt(v[i] / bias2) + eps)


@njit(parallel=True, cache=True, error_model="numpy")
def bias_relu_parallel(z, b):
    n, k = z.shape
    for i in prange(n):
        for j in range(k):
            t = z[i, j] + b[j]
            z[i, j] = t if t > 0 else 0


@njit(cache=True, error_model="numpy")
def act_backward_code_in_loop(y, dy, out, code, dest):
    """bpnet's act_backward as first written: one loop per destination, the
    activation's code tested inside each (α = 0: relu and tanh read none)."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    alpha = zero
    if dest == 1:
        for i in range(y.size):
            dy[i] = _bwd(code, y[i], dy[i], alpha, zero, one)
    elif dest == 2:
        for i in range(y.size):
            y[i] = _bwd(code, y[i], dy[i], alpha, zero, one)
    else:
        for i in range(y.size):
            out[i] = _bwd(code, y[i], dy[i], alpha, zero, one)


def median_ms(fn, repeats, inner=20):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return 1e3 * sorted(times)[len(times) // 2]


def after_product_ms(product, fn, repeats, inner=20):
    """Median over blocks of (product then fn) minus the product alone, timed side by side."""
    product(), fn()
    diffs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            product()
        t1 = time.perf_counter()
        for _ in range(inner):
            product()
            fn()
        diffs.append(((time.perf_counter() - t1) - (t1 - t0)) / inner)
    return 1e3 * sorted(diffs)[len(diffs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = 535_040
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    z, b = rng.standard_normal((1024, 512)).astype(np.float32), rng.standard_normal(512).astype(np.float32)
    a, w = rng.standard_normal((1024, 784)).astype(np.float32), rng.standard_normal((784, 512)).astype(np.float32)
    out = np.empty((1024, 512), np.float32)
    ref, nb = get_backend("numpy"), get_backend("numba")

    adam = {"numpy reference": lambda: ref.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, False),
            "bpnet numba": lambda: nb.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, False),
            "numba parallel=True": lambda: adam_parallel(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8,
                                                         1 - 0.9 ** 10, 1 - 0.999 ** 10)}
    relu = {"numpy reference": lambda: ref.bias_activation_forward(ReLU(), z, b),
            "bpnet numba": lambda: nb.bias_activation_forward(ReLU(), z, b),
            "numba parallel=True": lambda: bias_relu_parallel(z, b)}
    # Each kernel follows the product its own backend's step would run before it.
    gemm = {"numpy reference": lambda: ref.matmul(a, w, out=out),
            "bpnet numba": lambda: nb.matmul(a, w, out=out)}
    gemm_ms = {label: median_ms(fn, args.repeats) for label, fn in gemm.items()}
    gemm["numba parallel=True"] = gemm["bpnet numba"]
    on_mkl = products_gemm() is not None
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; the 1024x784x512 "
          f"matmul alone: {gemm_ms['numpy reference']:.3f} ms on NumPy's BLAS, "
          f"{gemm_ms['bpnet numba']:.3f} ms on bpnet numba's ({'MKL' if on_mkl else 'NumPy'}); "
          f"bpnet's Adam is {'split between threads' if adam_runs_parallel() else 'serial'}")
    print(f"{'kernel':<20}{'variant':<24}{'alone ms':>10}{'after matmul ms':>17}")
    for name, variants in (("Adam 535k", adam), ("bias+relu 1024x512", relu)):
        for label, fn in variants.items():
            alone = median_ms(fn, args.repeats)
            paired = after_product_ms(gemm[label], fn, args.repeats)
            print(f"{name:<20}{label:<24}{alone:>10.3f}{paired:>17.3f}")
    backward_table(ref, rng, args.repeats)


def backward_table(ref, rng, repeats):
    """The kernels called directly (the backend's checks add a few µs to each call)."""
    print("\n" + "dz = dy f'(z), µs".ljust(24) + f"{'numpy reference':>17}{'bpnet':>9}"
          f"{'as first written':>18}{'bpnet dz+db':>13}")
    for dtype in (np.float32, np.float64):
        for shape in ((256, 256), (1024, 512)):
            for act in (ReLU(), Tanh()):
                y = ref.activation_forward(act, rng.standard_normal(shape).astype(dtype))
                dy = rng.standard_normal(shape).astype(dtype)
                out, db = np.empty_like(y), np.empty(shape[1], dtype)
                y1, dy1, out1 = y.ravel(), dy.ravel(), out.ravel()
                us = [1e3 * median_ms(fn, repeats, inner=50) for fn in (
                    lambda: ref.activation_backward(act, y, dy, out=out),
                    lambda: K.act_backward(y1, dy1, out1, act.code, 0.0),
                    lambda: act_backward_code_in_loop(y1, dy1, out1, act.code, 0),
                    lambda: K.act_backward_bias(y, dy, out, db, act.code, 0.0))]
                label = f"{type(act).__name__} {shape[0]}x{shape[1]} {np.dtype(dtype).name}"
                print(f"{label:<24}{us[0]:>17.1f}{us[1]:>9.1f}{us[2]:>18.1f}{us[3]:>13.1f}")


if __name__ == "__main__":
    main()
