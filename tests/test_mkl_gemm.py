"""MKL's gemm behind the numba backend's matrix products (bpnet/backends/mkl_gemm.py).

Its products are compared with an independent float64 reference (NumPy's
product of the operands in float64): float64 to 1e-12 and float32 to 1e-5 of
Σ_k |a_ik||b_kj|, the size a rounding error of the sum can reach.  Operands
MKL cannot take (other dtypes or ranks, strided or overlapping arrays) must
come back from ``NumbaBackend.matmul`` as NumPy's product, as must products
too small to repay a call into MKL, and the same product must not depend on
how its operands are aligned in memory.
"""
import numpy as np
import pytest

pytest.importorskip("numba")

from bpnet.backends import mkl_gemm  # noqa: E402
from bpnet.backends import numba_backend  # noqa: E402
from bpnet.backends.numba_backend import NumbaBackend  # noqa: E402

GEMM = mkl_gemm.load_mkl_gemm()
needs_mkl = pytest.mark.skipif(GEMM is None, reason="the mkl package is not installed "
                               "(pip install 'bpnet-framework[mkl]')")
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
SHAPES = [(64, 65, 64), (32, 784, 64), (130, 17, 256), (600, 300, 2), (1, 262145, 1), (300, 5, 200)]
LAYOUTS = ["C C", "F C", "C F", "F F"]


def operand(rng, shape, layout, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    return np.asfortranarray(a) if layout == "F" else a


def assert_product(got, a, b):
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert got.dtype == a.dtype and got.shape == want.shape
    err = np.abs(got - want) / np.maximum(scale, np.finfo(np.float64).tiny)
    assert err.max() <= RTOL[a.dtype], f"relative error {err.max():.2e}"


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_product_matches_float64_reference(m, k, n, layout, dtype):
    rng = np.random.default_rng(m * 1000 + k + n)
    la, lb = layout.split()
    a, b = operand(rng, (m, k), la, dtype), operand(rng, (k, n), lb, dtype)
    assert_product(GEMM.gemm(a, b), a, b)
    out = np.full((m, n), np.nan, dtype)
    assert GEMM.gemm(a, b, out) is out
    assert_product(out, a, b)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_views_as_the_layers_pass_them(dtype):
    """dW = xᵀ dy and dx = dy Wᵀ: the operands are transposed views, not copies."""
    rng = np.random.default_rng(1)
    x, dy, W = (rng.standard_normal(s).astype(dtype) for s in ((256, 64), (256, 40), (64, 40)))
    dW = np.empty((64, 40), dtype)
    assert GEMM.gemm(x.T, dy, dW) is dW
    assert_product(dW, x.T, dy)
    assert_product(GEMM.gemm(dy, W.T), dy, W.T)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_result_does_not_depend_on_alignment(dtype):
    """MKL_CBWR_AUTO: the same operands at another address give the same bits."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((257, 300)).astype(dtype), rng.standard_normal((300, 129)).astype(dtype)
    results = []
    for shift in range(0, 64, 8):
        buf = np.empty(a.nbytes + 128, np.uint8)
        start = (-buf.ctypes.data) % 64 + shift
        moved = buf[start:start + a.nbytes].view(dtype).reshape(a.shape)
        moved[...] = a
        results.append(GEMM.gemm(moved, b))
    assert all(np.array_equal(results[0], r) for r in results[1:])


N = 100      # 100³ multiply-adds: large enough for MKL, so only the listed defect sends it away


def square(r, dtype=np.float64):
    return r.standard_normal((N, N)).astype(dtype)


UNSUPPORTED = {
    "3-d operand": lambda r: (r.standard_normal((2, N, N)), square(r), None),
    "integer dtype": lambda r: (np.arange(N * N).reshape(N, N), np.arange(N * N).reshape(N, N), None),
    "mixed dtypes": lambda r: (square(r, np.float32), square(r), None),
    "float16": lambda r: (square(r, np.float16), square(r, np.float16), None),
    "strided operand": lambda r: (square(r), r.standard_normal((N, 2 * N))[:, ::2], None),
    "strided out": lambda r: (square(r), square(r), np.empty((N, 2 * N))[:, ::2]),
    "out of another dtype": lambda r: (square(r), square(r), np.empty((N, N), np.float32)),
    "empty inner dimension": lambda r: (np.empty((N, 0)), np.empty((0, N)), None),
    "small product": lambda r: (r.standard_normal((64, 64)), r.standard_normal((64, 64)), None),
}


@needs_mkl
@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_operands_mkl_cannot_take_go_to_numpy(case):
    rng = np.random.default_rng(3)
    a, b, out = UNSUPPORTED[case](rng)
    assert GEMM.gemm(a, b, out) is None
    want = np.matmul(a, b, out=None if out is None else np.empty_like(out))
    got = NumbaBackend().matmul(a, b, out=out)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@needs_mkl
def test_out_overlapping_an_operand_goes_to_numpy():
    a = np.random.default_rng(4).standard_normal((N, N))
    want = a @ a
    assert GEMM.gemm(a, a, out=a) is None
    NumbaBackend().matmul(a, a.copy(), out=a)
    np.testing.assert_allclose(a, want, rtol=1e-12)


def test_bpnet_mkl_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("BPNET_MKL", "0")
    assert mkl_gemm._load() is None


@pytest.mark.parametrize("value,setting", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("0", "off"),
                                           ("Off", "off"), ("no", "off"), ("1", "on"), (" yes ", "on"),
                                           ("TRUE", "on"), ("maybe", "auto")])
def test_bpnet_mkl_is_read_as_off_on_or_auto(monkeypatch, value, setting):
    if value is None:
        monkeypatch.delenv("BPNET_MKL", raising=False)
    else:
        monkeypatch.setenv("BPNET_MKL", value)
    assert mkl_gemm.mkl_setting() == setting


@pytest.mark.parametrize("setting,vendor,chosen", [
    ("auto", "GenuineIntel", True), ("auto", "AuthenticAMD", False), ("auto", "", False),
    ("on", "AuthenticAMD", True), ("on", "GenuineIntel", True), ("off", "GenuineIntel", False)])
def test_mkl_multiplies_by_default_only_on_the_cpus_it_is_tuned_for(setting, vendor, chosen):
    assert mkl_gemm.mkl_for_products(setting, vendor) is chosen


def test_cpu_vendor_is_the_one_proc_cpuinfo_names():
    try:
        with open("/proc/cpuinfo") as fh:
            named = [line.split(":", 1)[1].strip() for line in fh if line.startswith("vendor_id")]
    except OSError:
        named = []
    assert mkl_gemm.cpu_vendor() == (named[0] if named else "")


def test_environment_report_names_the_library_the_backend_multiplies_with():
    from bpnet import env
    products = env.show_versions(print_fn=None)["numba_products"]
    if mkl_gemm.products_gemm() is not None:
        assert products.startswith("MKL")
    else:
        assert products.startswith("NumPy's BLAS")
        if GEMM is not None:       # installed, but not chosen for this CPU
            assert mkl_gemm.cpu_vendor() != "GenuineIntel" and "BPNET_MKL=1" in products


@needs_mkl
def test_dense_layers_multiply_on_mkl_where_it_is_chosen(monkeypatch):
    """A numba model's Dense products go through MKL (counted), a numpy model's never do.
    Both products here (128·64·64 and 128·64·40 multiply-adds) are above the small limit."""
    from bpnet import Dense, ReLU, Sequential
    calls = []
    real = GEMM.gemm
    monkeypatch.setattr(GEMM, "gemm", lambda a, b, out=None: calls.append(a.shape) or real(a, b, out))
    monkeypatch.setattr(numba_backend, "products_gemm", lambda: GEMM)    # as on an Intel CPU
    X = np.random.default_rng(5).standard_normal((128, 64))
    for backend in ("numpy", "numba"):
        model = Sequential([Dense(64), ReLU(), Dense(40)], seed=0, backend=backend)
        model.forward(X)
        assert len(calls) == (0 if backend == "numpy" else 2)


# -- Adam split between threads, where MKL's OpenMP runtime holds the threads ------------------
from bpnet.kernels import numba_kernels as K  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,chunk", [(1, 4), (7, 3), (1000, 128), (70001, 16384)])
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.01, False), (0.01, True)])
def test_parallel_adam_is_the_serial_kernel_bit_for_bit(n, chunk, weight_decay, decoupled, dtype):
    rng = np.random.default_rng(n)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = (0.1 * rng.standard_normal(n)).astype(dtype), rng.random(n).astype(dtype)
    args = (0.9, 0.1, 0.999, 0.001, 1e-3 / 0.1, 1 / np.sqrt(0.001), 1e-8, weight_decay,
            1 - 1e-3 * weight_decay, decoupled)
    serial = [a.copy() for a in (p, g, m, v)]
    K.adam_step(*serial, *args)
    K.adam_step_parallel(p, g, m, v, *args, chunk)
    for got, want in zip((p, m, v), (serial[0], serial[2], serial[3])):
        assert np.array_equal(got, want)


PARALLEL_ADAM_SCRIPT = """
import numpy as np
from bpnet.backends import numba_backend
from bpnet.backends.numba_backend import NumbaBackend
from bpnet.kernels import numba_kernels as K
assert numba_backend.adam_runs_parallel(), "Adam did not run in parallel beside MKL"
calls = []
real = K.adam_step_parallel
K.adam_step_parallel = lambda *a: calls.append(a[0].size) or real(*a)
n = numba_backend._PARALLEL_ADAM_MIN + 5
rng = np.random.default_rng(6)
start = rng.standard_normal(n).astype(np.float32)
grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
results = []
for parallel in (True, False):
    numba_backend._PARALLEL_ADAM_MIN = n if parallel else n + 1
    p, m, v = start.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t, g in enumerate(grads, 1):
        NumbaBackend().adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, t, False)
    results.append(p)
assert calls == [n] * 3, calls
assert np.array_equal(results[0], results[1]), "parallel and serial Adam differ"
print("ok")
"""


@needs_mkl
def test_adam_runs_parallel_beside_mkl_and_gives_the_serial_numbers():
    """With MKL loaded first (BPNET_MKL=1: on any CPU), Numba's threads are OpenMP's and the
    update is split; the parameters after three steps are those of the serial kernel.  A fresh
    process, because Numba's threading layer is chosen once per process."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "BPNET_MKL": "1", "NUMBA_NUM_THREADS": "2", "BPNET_AOT": "0"}
    env.pop("NUMBA_THREADING_LAYER", None)
    run = subprocess.run([sys.executable, "-c", PARALLEL_ADAM_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_adam_stays_serial_where_the_products_are_not_on_mkl(monkeypatch):
    monkeypatch.setattr(numba_backend, "products_gemm", lambda: None)
    numba_backend.adam_runs_parallel.cache_clear()
    try:
        assert numba_backend.adam_runs_parallel() is False
    finally:
        numba_backend.adam_runs_parallel.cache_clear()


def test_only_products_above_the_small_limit_load_mkl():
    """2¹⁸ = 64·64·64 multiply-adds: up to it NumPy multiplies and MKL is never loaded."""
    def arrays(*shape):
        return np.empty(shape, np.float32)
    assert not mkl_gemm.large_enough(arrays(64, 64), arrays(64, 64))
    assert mkl_gemm.large_enough(arrays(65, 64), arrays(64, 64))
    assert not mkl_gemm.large_enough(arrays(2, 65, 64), arrays(64, 64))
    assert not mkl_gemm.large_enough([[1.0]], arrays(1, 1))
