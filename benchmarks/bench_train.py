"""Training speed and memory: bpnet vs PyTorch, JAX and scikit-learn on the CPU.

Each framework runs in its own worker process (so peak RSS is its own), with
the same thread count for BLAS / intra-op parallelism, on the same batches.
The workers stay up for the whole run and time blocks of steps in turn,
interleaved (``--rounds`` × ``--repeats`` cycles of one block per framework,
in a shuffled order, with a pause between blocks for the last framework's
threads to go to sleep), so that a slow spell on a shared machine hits every
framework alike.  Cases (Adam, float32):

* MLP 784-512-256-10, ReLU, softmax cross-entropy; batch 32, 128, 1024;
* tiny 2-16-16-1, tanh, MSE; batch 32 (per-step overhead dominates);
* deep 64-(256x8)-10, ReLU, softmax cross-entropy; batch 256 (per-layer overhead).

A step is forward + loss + backward + optimizer update.  For every case and
framework the figure is the median over the cycles' blocks; the table shows
samples/s, bpnet's ratio to each peer, GFLOP/s (6 · batch · Σ in·out per
step), and the **step efficiency**: the time the step's matrix products take
when each is timed alone (with the product library of bpnet's default
backend: MKL where it is installed and chosen for the CPU, else NumPy's BLAS;
same shapes and layouts, no dL/dX for the input) divided by the measured
step, so 1.0 is the limit of a step made only of matrix products.  The
products are timed in every cycle, right after bpnet's block, and their
median is taken, so that they sample the same spells as the steps.  JAX
jit-compiles the whole step (XLA); scikit-learn's
``MLPClassifier``/``MLPRegressor.partial_fit`` on one batch is one Adam step
of its NumPy backprop.  Peers that are not installed are skipped with a note
(``pip install jax scikit-learn torch==2.13.0``).

Under the table, the **floor** of a bpnet step: its matrix products timed
alone plus one Adam update timed alone (in cache, as the backend runs it), and each peer's
measured step over that floor, the largest ratio any bpnet step could show on
that machine with that product library; a '<' marks a floor below 1.15x.

bpnet is also timed through ``Sequential.fit`` on the same 16 batches as one
data set (shuffled gathers, accuracy, callbacks), after its worker's peak RSS
is taken.  The share of CPU time the hypervisor stole during the rounds is
printed with the table: on a shared host it is the noise the figures carry.

bpnet runs in three workers: ``bpnet-numpy`` (the reference backend),
``bpnet-numba`` (the default for a long run: the numba backend on the
kernels compiled ahead of time, which the benchmark first builds as
``bpnet build-kernels`` does; no Numba or LLVM in the process) and
``bpnet-jit`` (the same backend on Numba's JIT kernels, ``BPNET_AOT=0``,
whose Adam runs on two threads where the products run on MKL).

Start-up: a 20-line script that trains a tiny net is timed end to end (wall
time and peak RSS) with bpnet's default backend and with ``backend="numpy"``;
and the cost, in seconds and peak RSS, of loading each form of the kernels.

    python benchmarks/bench_train.py [--threads N] [--repeats 5] [--rounds 3] [--quick]
    OPENBLAS_CORETYPE=Haswell python benchmarks/bench_train.py   # the AVX2 kernels on an AVX-512 CPU

With ``OPENBLAS_CORETYPE=Haswell`` the other kernel libraries are held to AVX2
as well (MKL and oneDNN in PyTorch; XLA's code generator and, with YNNPACK's
fusions off, oneDNN's products in JAX; MKL in bpnet's numba backend), so that
the picture is the one an AVX2 machine gives rather than AVX2 products
against AVX-512 ones (see ``AVX2_ENV``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

CASES = [
    ("mlp", (784, 512, 256, 10), 32),
    ("mlp", (784, 512, 256, 10), 128),
    ("mlp", (784, 512, 256, 10), 1024),
    ("tiny", (2, 16, 16, 1), 32),
    ("deep", (64,) + (256,) * 8 + (10,), 256),
]
PEERS = ["torch", "jax", "sklearn"]
FRAMEWORKS = PEERS + ["bpnet-numpy", "bpnet-numba", "bpnet-jit"]
# bpnet's workers: the backend each runs on.  bpnet-numba is the default, on the ahead-of-time
# kernel module, which the benchmark builds first as ``bpnet build-kernels`` does; bpnet-jit
# is the numba backend on Numba's JIT kernels (BPNET_AOT=0), whose Adam runs on two threads
# where MKL multiplies.
BPNET_BACKENDS = {"bpnet-numpy": "numpy", "bpnet-numba": "numba", "bpnet-jit": "numba"}
PEER_PACKAGES = {"torch": "torch", "jax": "jax", "sklearn": "sklearn"}


def middle(values):
    """The median of an odd count, the upper middle of an even one: how every figure here is taken."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


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
    act = torch.nn.Tanh if kind == "tiny" else torch.nn.ReLU
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss() if kind == "tiny" else torch.nn.CrossEntropyLoss()

    def convert(xs, ys):
        return [torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return convert, step


def bpnet_model(kind, sizes, backend, seed=0):
    from bpnet import Adam, Dense, ReLU, Sequential, Tanh
    act = Tanh if kind == "tiny" else ReLU
    layers = []
    for i, b in enumerate(sizes[1:]):
        layers.append(Dense(b, init="xavier_uniform" if kind == "tiny" else "he_uniform"))
        if i < len(sizes) - 2:
            layers.append(act())
    model = Sequential(layers, seed=seed, backend=backend)
    model.compile(loss="mse" if kind == "tiny" else "cross_entropy", optimizer=Adam(lr=1e-3))
    return model


def bpnet_stepper(kind, sizes, backend, seed=0):
    model = bpnet_model(kind, sizes, backend, seed)
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


def jax_stepper(kind, sizes, seed=0):
    """The whole step (forward, loss, gradient, Adam) jit-compiled by XLA."""
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        bound = (6.0 / (a + b)) ** 0.5 if kind == "tiny" else (6.0 / a) ** 0.5
        params.append((jax.random.uniform(sub, (a, b), jnp.float32, -bound, bound), jnp.zeros((b,), jnp.float32)))
    act = jnp.tanh if kind == "tiny" else jax.nn.relu

    def loss_fn(params, x, y):
        h = x
        for i, (W, b) in enumerate(params):
            h = h @ W + b
            if i < len(params) - 1:
                h = act(h)
        if kind == "tiny":
            return jnp.mean((h - y) ** 2)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3

    @jax.jit
    def update(params, m, v, t, x, y):
        g = jax.grad(loss_fn)(params, x, y)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        step = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        params = jax.tree_util.tree_map(lambda p, m, v: p - step * m / (jnp.sqrt(v) + eps), params, m, v)
        return params, m, v, t

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = [params, zeros, zeros, jnp.float32(0)]

    def convert(xs, ys):
        return [jnp.asarray(x) for x in xs], [jnp.asarray(y) for y in ys]

    def step(x, y):
        state[:] = update(*state, x, y)
        state[0][0][0].block_until_ready()
    return convert, step


def sklearn_stepper(kind, sizes, seed=0):
    """``partial_fit`` on one batch: one Adam step of scikit-learn's NumPy backprop."""
    import warnings
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    hidden = tuple(sizes[1:-1])
    common = dict(hidden_layer_sizes=hidden, solver="adam", learning_rate_init=1e-3, random_state=seed,
                  alpha=0.0)
    if kind == "tiny":
        net = MLPRegressor(activation="tanh", **common)
    else:
        net = MLPClassifier(activation="relu", **common)
    classes = list(range(sizes[-1]))
    warnings.filterwarnings("ignore")

    def convert(xs, ys):
        return xs, [y.ravel() for y in ys] if kind == "tiny" else ys

    def step(x, y):
        net.set_params(batch_size=len(x))
        if kind == "tiny":
            net.partial_fit(x, y)
        else:
            net.partial_fit(x, y, classes=classes)
    return convert, step


STEPPERS = {"torch": torch_stepper, "jax": jax_stepper, "sklearn": sklearn_stepper}


def matmul_bound(sizes, batch, backend, repeats=7):
    """Seconds the step's matrix products take, each timed alone with the backend's own
    product (NumPy's BLAS, or MKL on the numba backend where it is installed), in the step's
    shapes and layouts: forward x W, backward xᵀ dy and dy Wᵀ (no dL/dX for the input)."""
    import numpy as np
    from bpnet.backends import get_backend
    matmul = get_backend(backend).matmul
    rng = np.random.default_rng(0)
    total = 0.0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        x = rng.standard_normal((batch, a)).astype(np.float32)
        W = rng.standard_normal((a, b)).astype(np.float32)
        dy = rng.standard_normal((batch, b)).astype(np.float32)
        products = [(x, W), (x.T, dy)] + ([(dy, W.T)] if i > 0 else [])
        for p, q in products:
            out = np.empty((p.shape[0], q.shape[1]), np.float32)
            reps = max(3, int(2e-3 / max(1e-7, 2 * p.shape[0] * p.shape[1] * q.shape[1] / 1e11)))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(reps):
                    matmul(p, q, out=out)
                times.append((time.perf_counter() - t0) / reps)
            total += middle(times)
    return total


def optimizer_bound(sizes, backend, repeats=7):
    """Seconds one Adam update over the case's parameters takes alone, in cache, as the
    backend runs it (on one core, or split between threads beside MKL): with the products'
    bound, the floor of a bpnet step."""
    import numpy as np
    from bpnet.backends import get_backend
    be = get_backend(backend)
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    reps = max(3, int(2e-3 / (n * 0.6e-9)))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for t in range(1, reps + 1):
            be.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, t, False)
        times.append((time.perf_counter() - t0) / reps)
    return middle(times[1:])


def stepper(framework, kind, sizes):
    if framework in STEPPERS:
        return STEPPERS[framework](kind, sizes)
    return bpnet_stepper(kind, sizes, BPNET_BACKENDS[framework])


class CaseTimer:
    """One case set up in a worker: its step, its 16 batches, and blocks of steps timed on request."""

    def __init__(self, framework, index):
        self.kind, self.sizes, self.batch = CASES[index]
        convert, self.step = stepper(framework, self.kind, self.sizes)
        self.xs, self.ys = convert(*make_data(self.sizes, self.batch, 16))
        for i in range(8):                                  # warm-up (and JIT compile)
            self.step(self.xs[i % 16], self.ys[i % 16])

    def estimate(self):
        """Seconds per step, roughly: what sizes the timed blocks."""
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 0.05 or n < 5:
            self.step(self.xs[n % 16], self.ys[n % 16])
            n += 1
        return (time.perf_counter() - t0) / n

    def block(self, steps):
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(self.xs[i % 16], self.ys[i % 16])
        return (time.perf_counter() - t0) / steps


def time_fit(kind, sizes, batch, backend, step_s, repeats, quick):
    """Seconds per step of ``Sequential.fit`` on the case's 16 batches as one data set: what a
    user's run costs, with the batches shuffled and gathered each epoch, the accuracy counted
    and the callbacks called (``step_s``, the bare step's time, sizes the run)."""
    import numpy as np
    xs, ys = make_data(sizes, batch, 16)
    X, y = np.concatenate(xs), np.concatenate(ys)
    model = bpnet_model(kind, sizes, backend)
    model.fit(X, y, epochs=1, batch_size=batch, verbose=0)           # warm-up
    epochs = max(1, int(target_seconds(sizes, batch, quick) / (16 * step_s)))
    times = []
    for _ in range(max(3, repeats // 2)):
        t0 = time.perf_counter()
        model.fit(X, y, epochs=epochs, batch_size=batch, verbose=0)
        times.append((time.perf_counter() - t0) / (16 * epochs))
    return middle(times)


def avx2_only():
    """OpenBLAS told to use its Haswell kernels: every other kernel library is held to AVX2 too."""
    return os.environ.get("OPENBLAS_CORETYPE", "").lower() == "haswell"


# What holds each framework's own kernels to AVX2 (read when its library loads): MKL and oneDNN
# in PyTorch, MKL in bpnet's numba backend.  In JAX, XLA's flag caps only the code XLA
# generates: its matrix products run in YNNPACK, which picks its instructions at run time and
# has no cap (a 1024x784x512 product ran at 200-267 GFLOP/s with the flag set to AVX2, and to
# SSE4.2, against 120-130 for OpenBLAS's Haswell kernel).  With YNNPACK's fusions turned off
# XLA sends the products to oneDNN, which ran them as fast (216-230 GFLOP/s) and obeys
# ONEDNN_MAX_CPU_ISA (108-135 at AVX2).  On a real AVX2 machine these settings do nothing but
# the YNNPACK switch.
AVX2_ENV = {"torch": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
            "jax": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2 --xla_cpu_experimental_ynn_fusion_type=",
                    "ONEDNN_MAX_CPU_ISA": "AVX2"},
            "bpnet-numba": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
            "bpnet-jit": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def set_threads(framework, n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)
    if avx2_only():
        for key, value in AVX2_ENV.get(framework, {}).items():
            os.environ[key] = (os.environ.get(key, "") + " " + value).strip()
    if framework == "bpnet-jit":      # read when the numba backend loads its kernels
        os.environ["BPNET_AOT"] = "0"
    if framework == "torch":          # only the torch worker imports torch
        import torch
        torch.set_num_threads(n)
    if framework == "jax":            # XLA's CPU thread pool, set before jax is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}"
                                   f" intra_op_parallelism_threads={n}").strip()


def serve(framework, threads, repeats, quick):
    """A worker: one framework in this process, answering one JSON request per line on stdin
    with one JSON line on stdout, until stdin closes.  Requests: ``case`` (set up case
    ``index``, answer a per-step estimate), ``block`` (time ``steps`` steps of it), ``bounds``
    (bpnet: its products and Adam update alone, ``repeats`` timings each), ``drop`` (free
    the case), ``rss`` (the peak so far) and ``fit`` (bpnet: seconds per step of
    ``Sequential.fit`` on case ``index``)."""
    set_threads(framework, threads)
    backend = BPNET_BACKENDS.get(framework)
    case = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "case":
            case = CaseTimer(framework, req["index"])
            reply = {"estimate_s": case.estimate()}
        elif op == "block":
            reply = {"step_s": case.block(req["steps"])}
        elif op == "bounds":
            reply = {"bound_s": matmul_bound(case.sizes, case.batch, backend, req["repeats"]),
                     "optimizer_s": optimizer_bound(case.sizes, backend, req["repeats"])}
        elif op == "drop":
            case = None
            reply = {}
        elif op == "rss":
            reply = {"peak_rss_mb": peak_rss_mb(), "kernels": kernels_loaded()}
        elif op == "fit":
            kind, sizes, batch = CASES[req["index"]]
            reply = {"fit_step_s": time_fit(kind, sizes, batch, backend, req["step_s"], repeats, quick)}
        else:
            raise ValueError(f"unknown request {op!r}")
        print(json.dumps(reply), flush=True)


def kernels_loaded():
    """Which numba kernels this worker ran: "ahead-of-time", "JIT", or None (no numba backend)."""
    module = sys.modules.get("bpnet.backends.numba_backend")
    if module is None:
        return None
    return "ahead-of-time" if getattr(module.K, "ahead_of_time", False) else "JIT"


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


PEAK_RSS_LINE = ("\nimport sys; print([int(l.split()[1]) for l in open('/proc/self/status') "
                 "if l.startswith('VmHWM:')][0], file=sys.stderr)")


def numba_products():
    """Which library the numba backend multiplies matrices with (from the environment report,
    which finds it without loading it into this process)."""
    import bpnet
    return bpnet.show_versions(print_fn=None)["numba_products"]


# Loading the numba backend (its kernels' module, Numba itself for the JIT ones) and calling
# each kernel once: the start-up a training process pays for the fused kernels.
LOAD_KERNELS = ("import time; from bpnet.backends import get_backend; t0 = time.perf_counter(); "
                "get_backend('numba').warmup('float32'); print(time.perf_counter() - t0)")


def aot_first_call():
    """Seconds to load the ahead-of-time kernels and call each once in a fresh process, and
    the extra peak RSS (MB) against one that only imports bpnet's backends; None where the
    fresh process did not find the module (its sources changed since it was built)."""
    plain = "import bpnet.backends; print(0)"
    check = "\nimport bpnet.backends.numba_backend as nb; assert nb.K.ahead_of_time"
    env = {k: v for k, v in os.environ.items() if k != "BPNET_AOT"}
    runs = [subprocess.run([sys.executable, "-c", code + PEAK_RSS_LINE], capture_output=True,
                           text=True, env=env) for code in (LOAD_KERNELS + check, plain)]
    if any(r.returncode for r in runs):
        return None
    extra_mb = (int(runs[0].stderr.split()[-1]) - int(runs[1].stderr.split()[-1])) / 1024
    return float(runs[0].stdout.strip().splitlines()[-1]), extra_mb


def numba_first_call():
    """First-call cost of the Numba kernels, each in a fresh process: seconds with a cold cache,
    seconds with the warm on-disk cache, and the extra peak RSS (MB) of loading them (the warm
    process against one that only imports bpnet's backends)."""
    plain = "import bpnet.backends; print(0)"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "BPNET_AOT": "0"}
        runs = [subprocess.run([sys.executable, "-c", code + PEAK_RSS_LINE], capture_output=True,
                               text=True, env=env) for code in (LOAD_KERNELS, LOAD_KERNELS, plain)]
    if any(r.returncode for r in runs):
        return None
    cold, warm = (float(r.stdout.strip().splitlines()[-1]) for r in runs[:2])
    extra_mb = (int(runs[1].stderr.split()[-1]) - int(runs[2].stderr.split()[-1])) / 1024
    return cold, warm, extra_mb


class Worker:
    """A framework's worker process (:func:`serve`), kept alive for the whole run."""

    def __init__(self, framework, args):
        self.framework = framework
        cmd = [sys.executable, __file__, "--worker", framework, "--threads", str(args.threads),
               "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        # stderr goes to a file: a pipe nobody reads would stall a worker that logs a lot
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def ask(self, op, **fields):
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"[{self.framework}] worker failed:\n{self.log.read()[-2000:]}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


# Between two timed blocks the orchestrator waits this long, so that the thread pool of the
# framework that ran last (OpenBLAS, Intel OpenMP: 0.2 s by default) has gone to sleep
# instead of spinning against the next one.
PAUSE_S = 0.3


def time_cases(workers, args):
    """Every case in every worker, in blocks interleaved across the frameworks.

    For each case, each framework's block of steps is sized to about the same time, and
    ``rounds × repeats`` cycles each time one block of every framework, in a shuffled order
    per cycle.  On a shared host whose speed changes from second to second (a CPU taken by
    another guest for a second or two at a time), every framework is sampled across the
    same spells, and a cycle's blocks are close enough in time to be compared as a pair."""
    import random
    results = {w.framework: {"framework": w.framework, "cases": []} for w in workers}
    cycles = args.rounds * args.repeats
    for index, (kind, sizes, batch) in enumerate(CASES):
        steps = {}
        for w in workers:
            per_step = w.ask("case", index=index)["estimate_s"]
            steps[w] = max(5, int(target_seconds(sizes, batch, args.quick) / per_step))
        blocks = {w: [] for w in workers}
        bounds = {w: [] for w in workers}
        order = list(workers)
        for cycle in range(cycles):
            random.Random(cycle).shuffle(order)
            for w in order:
                time.sleep(PAUSE_S)
                blocks[w].append(w.ask("block", steps=steps[w])["step_s"])
                if w.framework.startswith("bpnet"):   # bpnet's own products alone, same shapes and spell
                    bounds[w].append(w.ask("bounds", repeats=3))
        for w in workers:
            res = {"kind": kind, "sizes": list(sizes), "batch": batch, "steps": steps[w],
                   "block_step_s": blocks[w], "median_step_s": middle(blocks[w]),
                   "min_step_s": min(blocks[w])}
            if bounds[w]:
                res.update({key: middle([b[key] for b in bounds[w]]) for key in ("bound_s", "optimizer_s")})
            w.ask("drop")
            results[w.framework]["cases"].append(res)
    for w in workers:
        reply = w.ask("rss")                                              # before fit's data set
        results[w.framework]["peak_rss_mb"] = reply["peak_rss_mb"]
        results[w.framework]["kernels"] = reply["kernels"]
    for w in workers:
        if w.framework.startswith("bpnet"):
            for index, res in enumerate(results[w.framework]["cases"]):
                res["fit_step_s"] = w.ask("fit", index=index, step_s=res["median_step_s"])["fit_step_s"]
    return results


STARTUP_SCRIPT = """
import time
t0 = time.perf_counter()
import numpy as np
from bpnet import Adam, Dense, Sequential, Tanh
from bpnet.data import make_moons
X, y = make_moons(400, noise=0.1, seed=0)
model = Sequential([Dense(16), Tanh(), Dense(16), Tanh(), Dense(2)], seed=0, backend=BACKEND)
model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-2))
history = model.fit(X, y, epochs=20, batch_size=32, verbose=0)
print(model.backend.name, history["accuracy"][-1])
"""


def startup(backend, runs=3):
    """Median wall time and peak RSS of the 20-line script, each run in a fresh process."""
    code = STARTUP_SCRIPT.replace("BACKEND", repr(backend))
    walls, rss = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code + PEAK_RSS_LINE], capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        if proc.returncode:
            return None
        rss.append(int(proc.stderr.strip().splitlines()[-1]) / 1024)
        used = proc.stdout.split()[0]
    return {"wall_s": middle(walls), "peak_rss_mb": middle(rss), "backend": used}


def available_frameworks():
    import importlib.util
    present, missing = [], []
    for fw in FRAMEWORKS:
        pkg = PEER_PACKAGES.get(fw)
        (present if pkg is None or importlib.util.find_spec(pkg) is not None else missing).append(fw)
    return present, missing


def build_aot_kernels():
    """Build the ahead-of-time kernel module for this machine where it is not built (what
    ``bpnet build-kernels`` does); where it cannot be, bpnet-numba runs the JIT kernels."""
    import importlib.util
    if importlib.util.find_spec("numba") is None:
        return False
    from bpnet.backends import numba_aot
    from bpnet.errors import BackendError
    t0 = time.perf_counter()
    try:
        folder = numba_aot.build(quiet=True)
    except BackendError as exc:
        print(f"bpnet-numba runs the JIT kernels: {exc}")
        return False
    print(f"bpnet's ahead-of-time kernels: {folder} ({time.perf_counter() - t0:.1f} s to find or build)")
    return True


def cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None where there is none.
    Steal is time the hypervisor gave this VM's CPUs to someone else: on a shared
    host it is the noise every figure here carries."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(start, stop):
    if start is None or stop is None or stop[1] == start[1]:
        return None
    return (stop[0] - start[0]) / (stop[1] - start[1])


def ratio_range(results, peer, fw, i):
    """The quartiles over cycles of peer's block time over fw's in the same cycle (a pair
    measured within a second or two of each other)."""
    a = results[peer]["cases"][i]["block_step_s"]
    b = results[fw]["cases"][i]["block_step_s"]
    return quartiles([x / y for x, y in zip(a, b)])


def case_name(kind, sizes, batch):
    """The case's label in every table, e.g. "mlp 784-512-256-10 b32"."""
    return f"{kind} {'-'.join(map(str, sizes)) if kind != 'deep' else '64-(256x8)-10'} b{batch}"


def print_table(results, ceiling):
    from bpnet.backends import default_backend_name
    backend = default_backend_name()
    default = "bpnet-numba" if backend == "auto" else f"bpnet-{backend}"     # auto picks Numba for a long run
    peers = [p for p in PEERS if p in results]
    bound = results.get(default) or next((r for r in results.values() if "bound_s" in r["cases"][0]), None)
    header = (f"{'case':<26}{'framework':<13}{'samples/s':>11}{'GFLOP/s':>9}{'% ceil':>7}{'step eff':>9}"
              + "".join(f"{'vs ' + p:>11}" for p in peers))
    print("\n" + header + "\n" + "-" * len(header))
    for i, (kind, sizes, batch) in enumerate(CASES):
        name = case_name(kind, sizes, batch)
        for fw, res in results.items():
            step = res["cases"][i]["median_step_s"]
            gf = flops_per_step(sizes, batch) / step / 1e9
            eff = bound["cases"][i]["bound_s"] / step if bound else float("nan")
            ratios = "".join(f"{results[p]['cases'][i]['median_step_s'] / step:>10.2f}x"
                             if fw.startswith("bpnet") else f"{'':>11}" for p in peers)
            if fw == default and peers:
                spread = [ratio_range(results, p, fw, i) for p in peers]
                ratios += "   pairs: " + ", ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in spread)
            mark = "*" if fw == default else " "
            print(f"{name:<26}{fw + mark:<13}{batch / step:>11,.0f}{gf:>9.1f}{100 * gf / ceiling:>6.0f}%"
                  f"{eff:>9.2f}{ratios}")
    print(f"* bpnet's default backend for a run this long ({backend!r}).  'vs X' is X's step time over bpnet's (> 1: bpnet is faster).  "
          "GFLOP/s counts 6·batch·Σ in·out per step; 'step eff' is the step's matrix products timed "
          f"alone with {default}'s product library over the measured step (1.0 is the limit).  'pairs' is the middle half "
          "(quartiles) of the ratios of blocks timed in the same cycle, default backend to each peer, in the order of the columns.")


def print_limits(results, target=1.15):
    """The floor of a bpnet step on this machine: its matrix products, each timed alone, plus one
    Adam update, alone and in cache.  Each peer's measured step over that floor is the
    largest ratio any bpnet step could show here: below the target, the target is out of
    reach whatever the rest of the step costs."""
    fw = next((f for f in ("bpnet-numba", "bpnet-numpy") if f in results
               and "optimizer_s" in results[f]["cases"][0]), None)
    peers = [p for p in PEERS if p in results]
    if fw is None or not peers:
        return
    print(f"\nthe floor of a step ({fw}: products alone + one Adam update alone) and each peer's "
          f"step over it, the most any bpnet step could reach here ('<' marks below {target}x):")
    header = (f"  {'case':<26}{'products':>10}{'Adam':>8}{'floor':>9}{'measured':>10}"
              + "".join(f"{'vs ' + p:>11}" for p in peers))
    print(header + "\n  " + "-" * (len(header) - 2))
    for i, (kind, sizes, batch) in enumerate(CASES):
        name = case_name(kind, sizes, batch)
        case = results[fw]["cases"][i]
        floor = case["bound_s"] + case["optimizer_s"]
        cells = ""
        for p in peers:
            r = results[p]["cases"][i]["median_step_s"] / floor
            cells += f"{r:>9.2f}x" + ("<" if r < target else " ")
        print(f"  {name:<26}{1e3 * case['bound_s']:>8.3f}ms{1e3 * case['optimizer_s']:>6.3f}ms"
              f"{1e3 * floor:>7.3f}ms{1e3 * case['median_step_s']:>8.3f}ms{cells}")


def quartiles(values):
    """(lower, upper) quartile, taken as :func:`middle` takes the median."""
    ordered = sorted(values)
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


def lower_quartile(values):
    return quartiles(values)[0]


def print_quiet_table(results):
    """The same ratios from each framework's lower quartile of blocks.  On a host whose speed
    flips between two levels for seconds at a time (a core shared with another guest), the
    median of a framework's blocks lands in either level by chance; the lower quartile is its
    speed in the quiet spells, as long as a quarter of its blocks fell in them."""
    from bpnet.backends import default_backend_name
    backend = default_backend_name()
    default = "bpnet-numba" if backend == "auto" else f"bpnet-{backend}"
    peers = [p for p in PEERS if p in results]
    if default not in results or not peers:
        return
    print(f"\nthe same from the lower quartile of each framework's blocks (the machine's quiet spells), {default}:")
    header = f"  {'case':<26}{'ms/step':>9}{'median':>9}" + "".join(f"{'vs ' + p:>11}" for p in peers)
    print(header + "\n  " + "-" * (len(header) - 2))
    for i, (kind, sizes, batch) in enumerate(CASES):
        mine = results[default]["cases"][i]
        q1 = lower_quartile(mine["block_step_s"])
        cells = "".join(f"{lower_quartile(results[p]['cases'][i]['block_step_s']) / q1:>10.2f}x" for p in peers)
        print(f"  {case_name(kind, sizes, batch):<26}{1e3 * q1:>9.3f}{1e3 * mine['median_step_s']:>9.3f}{cells}")


def print_fit_table(results):
    """bpnet through ``fit`` beside its bare step (the figure the peers are compared on)."""
    rows = [(fw, res) for fw, res in results.items() if "fit_step_s" in res["cases"][0]]
    if not rows:
        return
    print("\nthrough Sequential.fit (batches shuffled and gathered, accuracy, callbacks), ms per step "
          "and over the bare step:")
    for i, (kind, sizes, batch) in enumerate(CASES):
        name = case_name(kind, sizes, batch)
        cells = [f"{fw} {1e3 * r['cases'][i]['fit_step_s']:.3f} ms ({r['cases'][i]['fit_step_s'] / r['cases'][i]['median_step_s']:.2f}x)"
                 for fw, r in rows]
        print(f"  {name:<26}" + "   ".join(cells))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per case and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of interleaved blocks (rounds × repeats cycles)")
    p.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    p.add_argument("--frameworks", help="comma-separated subset of " + ",".join(FRAMEWORKS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.worker:
        return serve(args.worker, args.threads, args.repeats, args.quick)

    frameworks, missing = available_frameworks()
    if args.frameworks:
        frameworks = [f for f in frameworks if f in args.frameworks.split(",")]
    for fw in missing:
        print(f"{fw} is not installed: skipped (pip install {'torch==2.13.0' if fw == 'torch' else PEER_PACKAGES[fw]})")
    if "bpnet-numba" in frameworks:
        build_aot_kernels()
    ceiling = matmul_ceiling(args.threads, args.quick)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"threads per framework: {args.threads}")
    print(f"BLAS: {blas_info()}   OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"bpnet numba backend's matrix products: {numba_products()}")
    if avx2_only():
        print("AVX2 picture: the other kernel libraries are held to AVX2 too ("
              + "; ".join(f"{fw}: " + " ".join(f"{k}={v}" for k, v in env.items()) for fw, env in AVX2_ENV.items())
              + ")")
    print(f"float32 matmul ceiling (best 2048^3 product): {ceiling:.1f} GFLOP/s; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    ticks_start = cpu_ticks()
    workers = [Worker(fw, args) for fw in frameworks]
    try:
        results = time_cases(workers, args)
    finally:
        for w in workers:
            w.close()
    steal = steal_share(ticks_start, cpu_ticks())
    print_table(results, ceiling)
    print_quiet_table(results)
    print_limits(results)
    print_fit_table(results)
    if steal is not None:
        print(f"CPU steal during the timed blocks: {100 * steal:.1f}% of CPU time (time the hypervisor "
              "ran other guests; above a few percent, expect the rounds to disagree)")
    print("\npeak RSS (MB): " + ", ".join(
        f"{fw} {res['peak_rss_mb']:.0f}" + (f" ({res['kernels']} kernels)" if res.get("kernels") else "")
        for fw, res in results.items()))
    first = aot_first_call() if results.get("bpnet-numba", {}).get("kernels") == "ahead-of-time" else None
    if first:
        load_s, extra_mb = first
        print(f"ahead-of-time kernels, loaded and each called once in a new process: {load_s:.3f} s; "
              f"loading them adds {extra_mb:.0f} MB of peak RSS (no Numba, no LLVM; MKL loads with "
              "the first large product)")
    if "bpnet-numba" in results or "bpnet-jit" in results:
        first = numba_first_call()
        if first:
            cold, warm, extra_mb = first
            print(f"JIT kernels, loaded and each called once in a new process: {cold:.2f} s with an "
                  f"empty cache (compiling), {warm:.2f} s with the on-disk cache (cache=True); loading them "
                  f"adds {extra_mb:.0f} MB of peak RSS (Numba, LLVM and, where the backend multiplies on it, MKL)")
            if "bpnet-numpy" in results and "torch" in results:
                floor = results["bpnet-numpy"]["peak_rss_mb"] + extra_mb
                print(f"  so a worker on the JIT kernels needs at least the numpy worker's peak + "
                      f"{extra_mb:.0f} MB = {floor:.0f} MB, against half of PyTorch's: "
                      f"{results['torch']['peak_rss_mb'] / 2:.0f} MB")
    starts = {b: startup(b) for b in (None, "numpy")}
    if all(starts.values()):
        d, n = starts[None], starts["numpy"]
        print(f"\n20-line script (tiny net, 20 epochs), wall time and peak RSS, medians of 3 fresh processes:\n"
              f"  default backend ({d['backend']}): {d['wall_s']:.2f} s, {d['peak_rss_mb']:.0f} MB; "
              f"backend='numpy': {n['wall_s']:.2f} s, {n['peak_rss_mb']:.0f} MB; "
              f"difference {d['wall_s'] - n['wall_s']:+.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ceiling_gflops": ceiling, "results": results, "startup": starts,
                       "cpu_steal_share": steal}, fh, indent=1)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
