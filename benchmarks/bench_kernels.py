"""Why bpnet's Numba kernels are serial: serial vs ``parallel=True`` vs NumPy.

Times two memory-bound kernels of a training step, the Adam update over the
flat buffer of MLP 784-512-256-10 (535,040 float32) and bias + ReLU on a
(1024, 512) activation, three ways: the NumPy reference backend, bpnet's
serial Numba kernel, and the same loop compiled with ``parallel=True`` /
``prange``.  Each is timed alone and interleaved with the BLAS matrix product
that precedes it in a real step (1024x784 @ 784x512, BLAS on every core), which
is where thread pools meet.  Medians of ``--repeats`` blocks.

    python benchmarks/bench_kernels.py [--repeats 15]
"""
import argparse
import os
import time

import numpy as np
from numba import njit, prange

from bpnet.backends import get_backend
from bpnet.layers import ReLU


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


def median_ms(fn, repeats, inner=20):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return 1e3 * sorted(times)[len(times) // 2]


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
            "numba serial (bpnet)": lambda: nb.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, False),
            "numba parallel=True": lambda: adam_parallel(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8,
                                                         1 - 0.9 ** 10, 1 - 0.999 ** 10)}
    relu = {"numpy reference": lambda: ref.bias_activation_forward(ReLU(), z, b),
            "numba serial (bpnet)": lambda: nb.bias_activation_forward(ReLU(), z, b),
            "numba parallel=True": lambda: bias_relu_parallel(z, b)}
    gemm = lambda: np.matmul(a, w, out=out)            # noqa: E731
    gemm_ms = median_ms(gemm, args.repeats)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
          f"the 1024x784x512 matmul alone: {gemm_ms:.3f} ms")
    print(f"{'kernel':<20}{'variant':<24}{'alone ms':>10}{'after matmul ms':>17}")
    for name, variants in (("Adam 535k", adam), ("bias+relu 1024x512", relu)):
        for label, fn in variants.items():
            alone = median_ms(fn, args.repeats)
            paired = median_ms(lambda: (gemm(), fn()), args.repeats) - gemm_ms
            print(f"{name:<20}{label:<24}{alone:>10.3f}{paired:>17.3f}")


if __name__ == "__main__":
    main()
