"""What the doctor's signals cost: Monitor and anomaly mode vs plain training.

MLP 784-512-256-10 (ReLU, softmax cross-entropy, Adam) on random data,
batch 128.  Configurations, run round-robin so that machine noise hits them
alike, one epoch per run:

* plain          -- ``model.fit(...)``
* monitor/10     -- with ``callbacks=[Monitor(every=10)]``
* monitor/1      -- with ``callbacks=[Monitor(every=1)]`` (every step, for scale)
* anomaly        -- with ``detect_anomaly=True`` (every layer, every step)

Reported: median epoch wall time (``history["time"]``, the training loop
only), median CPU time of the process per epoch (``time.process_time``, far
less sensitive to other programs competing for the cores), and the
overheads relative to plain.  For comparison, PyTorch documents its
``autograd.detect_anomaly`` as slow; a factor of 2.4-3x is commonly measured.

    python benchmarks/bench_monitor.py [--backend numpy] [--repeats 9] [--threads 1] [--samples 4096]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (784, 512, 256, 10)


def make_model(backend, seed=0):
    from bpnet import Adam, Dense, ReLU, Sequential
    layers = []
    for units in SIZES[1:-1]:
        layers += [Dense(units, init="he_normal"), ReLU()]
    model = Sequential(layers + [Dense(SIZES[-1])], seed=seed, backend=backend)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    model.build((SIZES[0],))
    return model


def configs():
    from bpnet import Monitor
    return {
        "plain": lambda: {},
        "monitor/10": lambda: {"callbacks": [Monitor(every=10)]},
        "monitor/1": lambda: {"callbacks": [Monitor(every=1)]},
        "anomaly": lambda: {"detect_anomaly": True},
    }


def bench(backend, repeats, samples, batch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((samples, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], samples)
    cfgs = configs()
    models = {name: make_model(backend) for name in cfgs}
    times = {name: [] for name in cfgs}
    cpu = {name: [] for name in cfgs}
    for name, model in models.items():                      # warm-up (kernels, caches)
        model.fit(X[:batch * 4], y[:batch * 4], epochs=1, batch_size=batch, verbose=0, **cfgs[name]())
    for _ in range(repeats):
        for name, model in models.items():
            c0 = time.process_time()
            h = model.fit(X, y, epochs=1, batch_size=batch, verbose=0, **cfgs[name]())
            cpu[name].append(time.process_time() - c0)
            times[name].append(h["time"][0])
    return ({name: statistics.median(ts) for name, ts in times.items()},
            {name: statistics.median(ts) for name, ts in cpu.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", help="numpy, numba or cupy (default numpy)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads)
    except ImportError:                      # pragma: no cover - threadpoolctl is in the bench extra
        limiter = None
    med, cpu = bench(args.backend, args.repeats, args.samples, args.batch)
    base, cbase = med["plain"], cpu["plain"]
    steps = -(-args.samples // args.batch)
    print(f"MLP {'-'.join(map(str, SIZES))}, batch {args.batch}, {steps} steps/epoch, backend {args.backend}, "
          f"{args.threads} BLAS thread(s), median of {args.repeats} epochs")
    print(f"{'configuration':<14}{'wall/epoch (ms)':>16}{'overhead':>10}{'CPU/epoch (ms)':>16}{'overhead':>10}")
    for name, t in med.items():
        c = cpu[name]
        print(f"{name:<14}{t * 1e3:>16.1f}{(t / base - 1):>+10.1%}{c * 1e3:>16.1f}{(c / cbase - 1):>+10.1%}")
    if limiter is not None:
        limiter.unregister() if hasattr(limiter, "unregister") else None
    return med, cpu


if __name__ == "__main__":
    main()
