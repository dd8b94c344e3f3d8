"""Data-parallel training over MPI: samples/s on 1 and 2 ranks, and the all-reduce cost.

MLP 784-512-256-10 (ReLU, softmax cross-entropy, Adam, float32) on random
data, global batch 1024 (per-rank batch 1024 / N).  The script launches itself
under ``mpiexec -n N`` once per configuration; every rank runs BLAS on one
thread (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS = 1 and
threadpoolctl), so N ranks use N cores.  A reference row runs 1 rank with 2
BLAS threads: the same 2 cores used by threading inside one process instead.

Each worker trains one warm-up epoch, then ``--epochs`` timed epochs through
``DistributedTrainer.fit``; rank 0 reports samples/s (all ranks together), the
time per step, and the mean time of the one gradient all-reduce per step
(535,824 float32 values with alignment padding, about 2.1 MB).  Each row is
run ``--repeats`` times, interleaved, and the fastest run is shown (other load
on the machine only ever slows a run down).

    python benchmarks/bench_distributed.py [--samples 16384] [--epochs 3] [--repeats 3] [--backend numpy]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (784, 512, 256, 10)
GLOBAL_BATCH = 1024


# ----------------------------------------------------------------------------- worker (under mpiexec)
def worker(args):
    import numpy as np
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bpnet import Adam, Dense, ReLU, Sequential
    from bpnet.distributed import DistributedTrainer

    comm = MPI.COMM_WORLD
    threadpool_limits(args.threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], args.samples)
    model = Sequential([Dense(SIZES[1], init="he_normal"), ReLU(), Dense(SIZES[2], init="he_normal"), ReLU(),
                        Dense(SIZES[3])], seed=0, backend=args.backend)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    trainer = DistributedTrainer(model)
    per_rank = GLOBAL_BATCH // comm.size
    trainer.fit(X, y, epochs=1, batch_size=per_rank, verbose=0)            # warm-up (JIT, caches)
    trainer.stats.update(allreduce_s=0.0, steps=0)
    comm.Barrier()
    start = time.perf_counter()
    trainer.fit(X, y, epochs=args.epochs, batch_size=per_rank, verbose=0)
    comm.Barrier()
    elapsed = time.perf_counter() - start
    steps = args.epochs * -(-args.samples // GLOBAL_BATCH)
    allreduce = comm.gather(trainer.stats["allreduce_s"] / max(trainer.stats["steps"], 1), root=0)
    if comm.rank == 0:
        result = {"ranks": comm.size, "threads": args.threads, "samples_per_s": args.epochs * args.samples / elapsed,
                  "step_ms": 1e3 * elapsed / steps, "allreduce_ms": 1e3 * max(allreduce) if comm.size > 1 else 0.0,
                  "params": int(model.flat_params.size), "backend": model.backend.name}
        Path(args.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- driver
def run_config(mpiexec, ranks, threads, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--out", str(out), "--threads", str(threads), "--samples", str(args.samples),
               "--epochs", str(args.epochs), "--backend", args.backend]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return json.loads(out.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the best is shown")
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from bpnet.distributed import find_mpiexec
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit("no mpiexec found: pip install 'bpnet-framework[mpi]' (mpi4py + the mpich wheel)")
    from mpi4py import MPI  # noqa: F401  (fail early, with the import error, when mpi4py is missing)
    configs = [(1, 1), (2, 1), (1, 2)]
    runs = {c: [] for c in configs}
    for _ in range(args.repeats):                 # interleaved, so a busy spell hits every row alike
        for ranks, threads in configs:
            runs[(ranks, threads)].append(run_config(mpiexec, ranks, threads, args))
    rows = [max(runs[c], key=lambda r: r["samples_per_s"]) for c in configs]   # best of the repeats
    base = rows[0]["samples_per_s"]
    print(f"bpnet data-parallel over MPI: MLP {'-'.join(map(str, SIZES))} ({rows[0]['params']:,} parameters), "
          f"float32, Adam, global batch {GLOBAL_BATCH}, {args.samples} random samples x {args.epochs} epochs, "
          f"{rows[0]['backend']} backend, best of {args.repeats}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{' '.join(MPI.Get_library_version().splitlines()[0].split())}, load average {load:.1f} at the end")
    print()
    print("| ranks x BLAS threads | per-rank batch | samples/s | speed-up | ms/step | all-reduce ms/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ar = f"{r['allreduce_ms']:.2f}" if r["ranks"] > 1 else "-"
        print(f"| {r['ranks']} x {r['threads']} | {GLOBAL_BATCH // r['ranks']} | {r['samples_per_s']:,.0f} | "
              f"{r['samples_per_s'] / base:.2f}x | {r['step_ms']:.1f} | {ar} |")


if __name__ == "__main__":
    main()
