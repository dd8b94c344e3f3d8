"""The CUDA C kernels in kernels/cuda and the CuPy backend that launches them.

Three kinds of test:

* every ``kernels/cuda/*.cu`` compiles on its own with ``nvcc --ptx`` for
  sm_70/75/80/90, without warnings, and defines exactly the kernels listed
  in ``EXPECTED_KERNELS`` (needs ``nvcc``, no GPU);
* ``@pytest.mark.gpu``: every method CupyBackend overrides returns what
  NumpyBackend returns on the same random data (needs CuPy and a GPU);
* without a GPU, asking for the "cupy" backend raises a BackendError that
  says what is missing.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bpnet.backends import NumpyBackend, get_backend
from bpnet.backends import cupy_backend
from bpnet.backends.cupy_backend import CupyBackend
from bpnet.errors import BackendError, LabelError, ShapeError

CUDA_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))

EXPECTED_KERNELS = {
    "activations.cu": [
        "act_forward_f32", "act_forward_f64",
        "bias_act_forward_f32", "bias_act_forward_f64",
        "act_backward_f32", "act_backward_f64",
    ],
    "softmax_xent.cu": [
        "softmax_xent_f32", "softmax_xent_f64",
        "softmax_xent_labels_f32", "softmax_xent_labels_f64",
    ],
    "optimizers.cu": [
        "sgd_step_f32", "sgd_step_f64",
        "adam_step_f32", "adam_step_f64",
        "rmsprop_step_f32", "rmsprop_step_f64",
    ],
    "reductions.cu": [
        "sum_squares_f32", "sum_squares_f64",
        "any_nonfinite_f32", "any_nonfinite_f64",
    ],
}

ARCHS = ("sm_70", "sm_75", "sm_80", "sm_90")
NVCC = shutil.which("nvcc")


# -- the sources, statically ---------------------------------------------------
def _declared_kernels(text):
    return re.findall(r'extern\s+"C"\s+__global__\s+void\s+([A-Za-z_]\w*)\s*\(', text)


def test_every_cuda_file_is_listed():
    assert sorted(p.name for p in CU_FILES) == sorted(EXPECTED_KERNELS)


@pytest.mark.parametrize("filename", sorted(EXPECTED_KERNELS))
def test_sources_declare_the_expected_kernels(filename):
    text = cupy_backend.read_kernel_source(filename)  # through bpnet.kernels
    assert sorted(_declared_kernels(text)) == sorted(EXPECTED_KERNELS[filename])
    assert "#include" not in text  # NVRTC compiles it without headers


def test_backend_kernel_table_matches_sources():
    for name, filename in cupy_backend.KERNEL_FILES.items():
        for suffix in ("f32", "f64"):
            assert f"{name}_{suffix}" in EXPECTED_KERNELS[filename]
    assert set(cupy_backend.ACTIVATION_CODES) == {
        "identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh"}
    # the codes the kernels switch on
    text = cupy_backend.read_kernel_source("activations.cu")
    for name, code in cupy_backend.ACTIVATION_CODES.items():
        assert re.search(rf"#define BP_{name.upper()} {code}\b", text), name


# -- the sources, through nvcc --------------------------------------------------
@functools.lru_cache(maxsize=None)
def _nvcc_archs():
    """The sm_XX this nvcc can target (CUDA 13 dropped sm_70, for example)."""
    proc = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    return {"sm_" + a.split("_", 1)[1] for a in proc.stdout.split() if a.startswith("compute_")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cuda_file_compiles_to_ptx(path, arch, tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found")
    if arch not in _nvcc_archs():
        pytest.skip(f"this nvcc cannot target {arch}")
    ptx = tmp_path / (path.stem + ".ptx")
    # The same dialect and fmad setting CupyBackend gives NVRTC.
    proc = subprocess.run(
        [NVCC, "--ptx", f"-arch={arch}", *cupy_backend.NVRTC_OPTIONS,
         "-Werror", "all-warnings", "-o", str(ptx), str(path)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    entries = re.findall(r"\.entry\s+([A-Za-z_]\w*)\s*\(", ptx.read_text())
    assert sorted(entries) == sorted(EXPECTED_KERNELS[path.name])


# -- without a GPU ----------------------------------------------------------------
def _try_cupy_backend():
    """(backend, None) when CuPy and a GPU are usable, else (None, why not)."""
    try:
        return get_backend("cupy"), None
    except BackendError as exc:
        why = "CuPy not installed" if "not installed" in str(exc) else "no CUDA GPU"
        return None, f"{why} ({exc})"


def test_cupy_backend_unavailable_says_why():
    backend, _ = _try_cupy_backend()
    if backend is not None:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert 'pip install "bpnet[gpu]"' in message or "no CUDA GPU" in message


def test_missing_cupy_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendError, match=re.escape('CuPy is not installed: pip install "bpnet[gpu]"')):
        CupyBackend()


def test_no_device_message(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError, match="no CUDA GPU found: .*cudaErrorNoDevice"):
        CupyBackend()
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(BackendError, match="no CUDA GPU found"):
        CupyBackend()


# -- on a GPU: CupyBackend against NumpyBackend ---------------------------------------
REF = NumpyBackend()
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
ACTS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh")
ALPHA = {"leaky_relu": 0.1, "elu": 0.7}


@pytest.fixture(scope="module")
def gpu():
    backend, why = _try_cupy_backend()
    if backend is None:
        pytest.skip(why)
    return backend


def _check(gpu, actual, expected, dtype):
    """actual (device or host) equals expected to dtype's tolerance: relative,
    with the absolute floor set by the array's largest entry."""
    actual = gpu.to_numpy(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    tol = TOL[dtype]
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTS)
def test_act_forward_matches_numpy(gpu, kind, dtype):
    rng = np.random.default_rng(1)
    z = (3 * rng.standard_normal((37, 53))).astype(dtype)
    alpha = ALPHA.get(kind, 0.0)
    expected = REF.act_forward(kind, z.copy(), alpha)
    _check(gpu, gpu.act_forward(kind, gpu.asarray(z), alpha), expected, dtype)
    zd = gpu.asarray(z)  # in place, through out=
    y = gpu.act_forward(kind, zd, alpha, out=zd)
    assert y is zd
    _check(gpu, zd, expected, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTS)
def test_bias_act_forward_matches_numpy(gpu, kind, dtype):
    rng = np.random.default_rng(2)
    z = (2 * rng.standard_normal((41, 29))).astype(dtype)
    b = rng.standard_normal(29).astype(dtype)
    alpha = ALPHA.get(kind, 0.0)
    expected = REF.act_forward(kind, z + b, alpha)
    zd = gpu.asarray(z)
    assert gpu.bias_act_forward(kind, zd, gpu.asarray(b), alpha) is zd
    _check(gpu, zd, expected, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTS)
def test_act_backward_matches_numpy(gpu, kind, dtype):
    rng = np.random.default_rng(3)
    alpha = ALPHA.get(kind, 0.0)
    y = REF.act_forward(kind, (2 * rng.standard_normal((33, 45))).astype(dtype), alpha)
    y = np.ascontiguousarray(y, dtype=dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = REF.act_backward(kind, y, dy, alpha)
    _check(gpu, gpu.act_backward(kind, gpu.asarray(y), gpu.asarray(dy), alpha), expected, dtype)
    out = gpu.zeros(y.shape, dtype)
    assert gpu.act_backward(kind, gpu.asarray(y), gpu.asarray(dy), alpha, out=out) is out
    _check(gpu, out, expected, dtype)


def _targets(rng, n, c, dtype, kind):
    if kind == "onehot":
        q = np.zeros((n, c), dtype)
        q[np.arange(n), rng.integers(c, size=n)] = 1
        return q
    return rng.dirichlet(np.ones(c), size=n).astype(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(67, 10), (5, 1000), (1, 1)])
@pytest.mark.parametrize("target", ["onehot", "soft"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_matches_numpy(gpu, dtype, shape, target, weighted):
    rng = np.random.default_rng(4)
    n, c = shape
    z = (4 * rng.standard_normal(shape)).astype(dtype)
    z[0, 0] += 80  # a large logit: the row-max shift must keep exp finite
    q = _targets(rng, n, c, dtype, target)
    w = rng.uniform(0.5, 2.0, c).astype(dtype) if weighted else None
    loss, dz = REF.softmax_cross_entropy(z, q, w)
    gloss, gdz = gpu.softmax_cross_entropy(gpu.asarray(z), gpu.asarray(q),
                                           None if w is None else gpu.asarray(w))
    assert isinstance(gloss, float)
    assert gloss == pytest.approx(loss, rel=TOL[dtype], abs=TOL[dtype])
    _check(gpu, gdz, dz, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(131, 17), (3, 700)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_labels_matches_numpy(gpu, dtype, shape, smoothing, weighted):
    rng = np.random.default_rng(5)
    n, c = shape
    z = (3 * rng.standard_normal((n, c))).astype(dtype)
    labels = rng.integers(c, size=n)
    w = rng.uniform(0.5, 2.0, c).astype(dtype) if weighted else None
    loss, dz = REF.softmax_cross_entropy_labels(z, labels, w, smoothing)
    gloss, gdz = gpu.softmax_cross_entropy_labels(
        gpu.asarray(z), gpu.asarray(labels), None if w is None else gpu.asarray(w), smoothing)
    assert isinstance(gloss, float)
    assert gloss == pytest.approx(loss, rel=TOL[dtype], abs=TOL[dtype])
    _check(gpu, gdz, dz, dtype)


@pytest.mark.gpu
def test_softmax_cross_entropy_labels_rejects_bad_labels(gpu):
    z = gpu.asarray(np.zeros((4, 3), np.float32))
    with pytest.raises(LabelError, match="label 3 at row 2 is outside 0..2"):
        gpu.softmax_cross_entropy_labels(z, gpu.asarray(np.array([0, 1, 3, 2])))
    with pytest.raises(LabelError, match="label -1 at row 0"):
        gpu.softmax_cross_entropy_labels(z, gpu.asarray(np.array([-1, 1, 2, 2])))
    with pytest.raises(LabelError, match=r"integers of shape \(4,\)"):
        gpu.softmax_cross_entropy_labels(z, gpu.asarray(np.zeros(4, np.float32)))
    with pytest.raises(ShapeError, match=r"logits must be \(N, C\)"):
        gpu.softmax_cross_entropy_labels(gpu.asarray(np.zeros(4, np.float32)),
                                         gpu.asarray(np.zeros(4, np.int64)))


def _buffers(dtype, n=10_007, k=4, seed=6):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


def _run_steps(gpu, method, host, grads, kwargs, steps=3):
    """Apply `steps` updates with NumpyBackend and CupyBackend; return both states."""
    dev = [gpu.asarray(a) for a in host]
    for t in range(1, steps + 1):
        g = grads * t
        extra = {"t": t} if method == "adam_step" else {}
        getattr(REF, method)(host[0], g, *host[1:], **kwargs, **extra)
        getattr(gpu, method)(dev[0], gpu.asarray(g), *dev[1:], **kwargs, **extra)
    return host, dev


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2), (0.0, False, 1e-2)])
def test_sgd_step_matches_numpy(gpu, dtype, momentum, nesterov, weight_decay):
    p, g, v = _buffers(dtype, k=3)
    v[:] = 0
    host, dev = _run_steps(gpu, "sgd_step", [p, v], g,
                           dict(lr=0.05, momentum=momentum, nesterov=nesterov,
                                weight_decay=weight_decay))
    for h, d in zip(host, dev):
        _check(gpu, d, h, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_step_matches_numpy(gpu, dtype, weight_decay, decoupled):
    p, g, m, v = _buffers(dtype)
    m[:] = 0
    v[:] = 0
    host, dev = _run_steps(gpu, "adam_step", [p, m, v], g,
                           dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                weight_decay=weight_decay, decoupled=decoupled))
    for h, d in zip(host, dev):
        _check(gpu, d, h, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2)])
def test_rmsprop_step_matches_numpy(gpu, dtype, momentum, weight_decay):
    p, g, sq, v = _buffers(dtype)
    sq[:] = 0
    v[:] = 0
    host, dev = _run_steps(gpu, "rmsprop_step", [p, sq, v], g,
                           dict(lr=1e-2, alpha=0.99, eps=1e-8, momentum=momentum,
                                weight_decay=weight_decay))
    for h, d in zip(host, dev):
        _check(gpu, d, h, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 1000, 300_001])
def test_sum_squares_matches_numpy(gpu, dtype, size):
    x = np.random.default_rng(7).standard_normal(size).astype(dtype)
    assert gpu.sum_squares(gpu.asarray(x)) == pytest.approx(REF.sum_squares(x), rel=1e-12)
    assert gpu.sum_squares(gpu.asarray(x.reshape(1, -1))) == pytest.approx(REF.sum_squares(x), rel=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_all_finite_matches_numpy(gpu, dtype, bad):
    x = np.random.default_rng(8).standard_normal((123, 457)).astype(dtype)
    if bad is not None:
        x[100, 400] = bad
    assert gpu.all_finite(gpu.asarray(x)) is REF.all_finite(x) is (bad is None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask(gpu, dtype):
    keep = 0.8
    mask = gpu.dropout_mask(np.random.default_rng(9), (200, 300), keep, dtype)
    again = gpu.dropout_mask(np.random.default_rng(9), (200, 300), keep, dtype)
    other = gpu.dropout_mask(np.random.default_rng(10), (200, 300), keep, dtype)
    m = gpu.to_numpy(mask)
    assert m.dtype == dtype and m.shape == (200, 300)
    assert set(np.unique(m)) <= {dtype(0), dtype(1 / keep)}
    assert abs((m > 0).mean() - keep) < 0.01  # 60,000 draws: sd 0.0016
    np.testing.assert_array_equal(gpu.to_numpy(again), m)  # one seed, one mask
    assert not np.array_equal(gpu.to_numpy(other), m)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_inherited_methods_run_on_the_gpu(gpu, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((16, 24)).astype(dtype)
    W = rng.standard_normal((24, 8)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    dy = rng.standard_normal((16, 8)).astype(dtype)
    xd = gpu.asarray(x)
    assert isinstance(xd, gpu.xp.ndarray) and type(gpu.to_numpy(xd)) is np.ndarray
    tol = {np.float32: 1e-4, np.float64: 1e-12}[dtype]  # cuBLAS sums in another order
    np.testing.assert_allclose(gpu.to_numpy(gpu.linear_forward(xd, gpu.asarray(W), gpu.asarray(b))),
                               REF.linear_forward(x, W, b), rtol=tol, atol=tol)
    dW, db = np.empty_like(W), np.empty_like(b)
    gdW, gdb = gpu.zeros(W.shape, dtype), gpu.zeros(b.shape, dtype)
    dx = REF.linear_backward(x, W, dy, dW, db)
    gdx = gpu.linear_backward(xd, gpu.asarray(W), gpu.asarray(dy), gdW, gdb)
    for actual, expected in ((gdx, dx), (gdW, dW), (gdb, db)):
        np.testing.assert_allclose(gpu.to_numpy(actual), expected, rtol=tol, atol=tol)
    gpu.synchronize()
