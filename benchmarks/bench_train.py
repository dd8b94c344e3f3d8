"""Training speed and memory: bpnet (numpy, numba backends) vs PyTorch on the CPU.

Each framework runs in its own worker process (so peak RSS is its own), with
the same thread count for BLAS / intra-op parallelism, on the same batches,
in interleaved rounds (``--rounds``) so that a slow spell on a shared machine
hits every framework alike:

* MLP 784-512-256-10, ReLU, softmax cross-entropy, Adam; batch 32, 128, 1024;
* tiny 2-16-16-1, tanh, MSE, Adam; batch 32 (per-step overhead dominates).

A step is forward + loss + backward + optimizer update.  For every case the
worker times ``--repeats`` blocks of steps after a warm-up and reports the
median; the table shows samples/s, the ratio to PyTorch, GFLOP/s
(6 · batch · Σ in·out per step) against the measured float32 matmul ceiling,
and each worker's peak RSS.

    python benchmarks/bench_train.py [--threads N] [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CASES = [
    ("mlp", (784, 512, 256, 10), 32),
    ("mlp", (784, 512, 256, 10), 128),
    ("mlp", (784, 512, 256, 10), 1024),
    ("tiny", (2, 16, 16, 1), 32),
]
FRAMEWORKS = ["torch", "bpnet-numpy", "bpnet-numba"]


def flops_per_step(sizes, batch):
    """The conventional count: 2·batch·in·out for each layer's forward, twice that for backward."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_done_per_step(sizes, batch):
    """What both frameworks actually compute: neither forms dL/dX for the first layer's input."""
    return flops_per_step(sizes, batch) - 2 * batch * sizes[0] * sizes[1]


def target_seconds(sizes, batch, quick):
    return (0.15 if quick else 0.4) * (2.0 if batch >= 1024 else 1.0)


def make_data(sizes, batch, n_batches, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, sizes[0])).astype(np.float32) for _ in range(n_batches)]
    if sizes[-1] == 1:
        ys = [rng.standard_normal((batch, 1)).astype(np.float32) for _ in range(n_batches)]
    else:
        ys = [rng.integers(0, sizes[-1], batch) for _ in range(n_batches)]
    return xs, ys


# ----------------------------------------------------------------------------- step functions
def torch_stepper(kind, sizes, seed=0):
    import torch
    torch.manual_seed(seed)
    act = torch.nn.ReLU if kind == "mlp" else torch.nn.Tanh
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss() if kind == "mlp" else torch.nn.MSELoss()

    def convert(xs, ys):
        return [torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return convert, step


def bpnet_stepper(kind, sizes, backend, seed=0):
    from bpnet import Adam, Dense, ReLU, Sequential, Tanh
    act = ReLU if kind == "mlp" else Tanh
    layers = []
    for i, b in enumerate(sizes[1:]):
        layers.append(Dense(b, init="he_uniform" if kind == "mlp" else "xavier_uniform"))
        if i < len(sizes) - 2:
            layers.append(act())
    model = Sequential(layers, seed=seed, backend=backend)
    model.compile(loss="cross_entropy" if kind == "mlp" else "mse", optimizer=Adam(lr=1e-3))
    model.build((sizes[0],))
    model.layers[0].needs_input_grad = False      # as in fit: nobody reads dL/dX
    model.loss.trusted = True                     # labels validated once, as in fit
    opt, loss = model.optimizer, model.loss

    def convert(xs, ys):
        return xs, ys

    def step(x, y):
        out = model.forward(x, training=True)
        loss.forward(out, y)
        model.backward(loss.backward())
        opt.step()
    return convert, step


def time_case(framework, kind, sizes, batch, repeats, quick):
    if framework == "torch":
        convert, step = torch_stepper(kind, sizes)
    else:
        convert, step = bpnet_stepper(kind, sizes, framework.split("-")[1])
    xs, ys = convert(*make_data(sizes, batch, 16))
    for i in range(8):                                  # warm-up (and JIT compile)
        step(xs[i % 16], ys[i % 16])
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.05 or n < 5:
        step(xs[n % 16], ys[n % 16])
        n += 1
    per_step = (time.perf_counter() - t0) / n
    steps = max(5, int(target_seconds(sizes, batch, quick) / per_step))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(xs[i % 16], ys[i % 16])
        times.append((time.perf_counter() - t0) / steps)
    times.sort()
    return {"median_step_s": times[len(times) // 2], "min_step_s": times[0], "steps": steps}


def set_threads(framework, n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)
    if framework == "torch":          # only the torch worker imports torch
        import torch
        torch.set_num_threads(n)


def worker(framework, threads, repeats, quick):
    set_threads(framework, threads)
    out = {"framework": framework, "cases": []}
    for kind, sizes, batch in CASES:
        res = time_case(framework, kind, sizes, batch, repeats, quick)
        res.update(kind=kind, sizes=list(sizes), batch=batch)
        out["cases"].append(res)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def peak_rss_mb():
    """This process's peak resident memory.  VmHWM belongs to the current address space;
    ru_maxrss would also count the parent's peak, which survives fork + exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_ceiling(threads, quick):
    """Median float32 GFLOP/s of large square matmuls: the machine's practical ceiling."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    with threadpool_limits(threads):
        n = 1024 if quick else 2048
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        b = a.copy()
        c = np.empty_like(a)
        np.matmul(a, b, out=c)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9        # the best run: a ceiling, not a typical value


def blas_info():
    from threadpoolctl import threadpool_info
    import numpy  # noqa: F401  (loads its BLAS)
    return [{k: v for k, v in d.items() if k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def numba_compile_seconds():
    """First-call cost of the Numba kernels: (cold cache, warm on-disk cache), each in a fresh process."""
    import tempfile
    code = "from bpnet.backends import get_backend; print(get_backend('numba').warmup('float32'))"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                for _ in range(2)]
    if any(r.returncode for r in runs):
        return None
    return tuple(float(r.stdout.strip().splitlines()[-1]) for r in runs)


def run_worker_process(framework, args):
    cmd = [sys.executable, __file__, "--worker", framework, "--threads", str(args.threads),
           "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{framework}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine_rounds(runs):
    out = dict(runs[0])
    out["cases"] = []
    for i, case in enumerate(runs[0]["cases"]):
        steps = sorted(r["cases"][i]["median_step_s"] for r in runs)
        out["cases"].append({**case, "median_step_s": steps[len(steps) // 2],
                             "round_step_s": [r["cases"][i]["median_step_s"] for r in runs]})
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per case in each worker")
    p.add_argument("--rounds", type=int, default=3, help="worker runs per framework, interleaved")
    p.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads, args.repeats, args.quick)

    import importlib.util
    if importlib.util.find_spec("torch") is not None:      # imported only in its own worker
        frameworks = FRAMEWORKS
    else:
        print("PyTorch is not installed (pip install torch==2.13.0); comparing bpnet backends only")
        frameworks = FRAMEWORKS[1:]
    ceiling = matmul_ceiling(args.threads, args.quick)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, threads per framework: {args.threads}")
    print(f"BLAS: {blas_info()}   OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"float32 matmul ceiling (best 2048^3 product): {ceiling:.1f} GFLOP/s; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    # Rounds interleave the frameworks, so a slow spell on a shared machine hits all of them;
    # each case's figure is the median over rounds of each worker's median.
    rounds = {fw: [] for fw in frameworks}
    for _ in range(args.rounds):
        for fw in frameworks:
            res = run_worker_process(fw, args)
            if res:
                rounds[fw].append(res)
    results = {fw: combine_rounds(runs) for fw, runs in rounds.items() if runs}
    base = results.get("torch")
    header = (f"{'case':<28}{'framework':<14}{'samples/s':>12}{'vs torch':>10}{'GFLOP/s':>9}{'% ceil':>8}"
              f"{'done %':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for i, (kind, sizes, batch) in enumerate(CASES):
        name = f"{kind} {'-'.join(map(str, sizes))} b{batch}"
        for fw, res in results.items():
            c = res["cases"][i]
            sps = batch / c["median_step_s"]
            ratio = (base["cases"][i]["median_step_s"] / c["median_step_s"]) if base else float("nan")
            gf = flops_per_step(sizes, batch) / c["median_step_s"] / 1e9
            done = flops_done_per_step(sizes, batch) / c["median_step_s"] / 1e9
            print(f"{name:<28}{fw:<14}{sps:>12,.0f}{ratio:>9.2f}x{gf:>9.1f}{100 * gf / ceiling:>7.0f}%"
                  f"{100 * done / ceiling:>7.0f}%")
    print("GFLOP/s counts 6·batch·Σ in·out per step; 'done %' counts only the products computed "
          "(no dL/dX for the input), against the ceiling")
    print("\npeak RSS (MB): " + ", ".join(f"{fw} {res['peak_rss_mb']:.0f}" for fw, res in results.items()))
    if "bpnet-numba" in results:
        compile_s = numba_compile_seconds()
        if compile_s:
            print(f"numba kernels, first call in a new process: {compile_s[0]:.2f} s with an empty cache "
                  f"(compiling), {compile_s[1]:.2f} s with the on-disk cache (cache=True)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ceiling_gflops": ceiling, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
