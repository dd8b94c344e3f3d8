"""Does the per-layer profile add up to the real step time?

Profiles MLP 784-512-256-10 at batch 128 (Adam) on each CPU backend and
prints, from the same run, the sum of the per-part timings against whole
training steps timed without the per-part clocks.  The goal is agreement
within 10%: the profile then explains where a step goes.

    python benchmarks/bench_profiler.py [--steps 100] [--threads 1]
"""
import argparse
import os

import numpy as np
from threadpoolctl import threadpool_limits

from bpnet import Adam, Dense, ReLU, Sequential


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    print(f"{os.cpu_count()} cores, BLAS threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':<8}{'parts summed ms':>17}{'measured ms':>13}{'ratio':>8}")
    for backend in ("numpy", "numba"):
        model = Sequential([Dense(512, init="he_normal"), ReLU(), Dense(256, init="he_normal"), ReLU(),
                            Dense(10)], seed=0, backend=backend)
        model.compile("cross_entropy", Adam(lr=1e-3))
        with threadpool_limits(args.threads):
            report = model.profile(X, y, steps=args.steps, print_fn=None)
        print(f"{backend:<8}{report.total_ms:>17.3f}{report.measured_step_ms:>13.3f}"
              f"{report.total_ms / report.measured_step_ms:>8.3f}")
    print("\nlast profile:\n" + report.table())


if __name__ == "__main__":
    main()
