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
from bpnet.kernels.activation_codes import ACT_CODES
from bpnet.layers import ACTIVATION_LAYERS, BuildContext, Dense

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
    assert set(ACT_CODES) == {"identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh"}
    assert cupy_backend.KERNEL_CODES == frozenset(ACT_CODES.values())


def test_cuda_source_sees_the_one_activation_code_table():
    """activations.cu switches on ACT_<NAME> and defines none of them: the values
    reach NVRTC (and nvcc here) only as -D definitions made from ACT_CODES."""
    text = cupy_backend.read_kernel_source("activations.cu")
    assert set(re.findall(r"\bACT_([A-Z_]+)\b", text)) == {name.upper() for name in ACT_CODES}
    assert not re.search(r"#\s*define\s+ACT_", text)
    defines = [opt for opt in cupy_backend.NVRTC_OPTIONS if opt.startswith("-DACT_")]
    assert defines == [f"-DACT_{name.upper()}={code}" for name, code in ACT_CODES.items()]
    assert len(set(ACT_CODES.values())) == len(ACT_CODES)          # one code per activation
    assert all(layer.code == ACT_CODES[layer.kind] for layer in
               (cls() for cls in set(ACTIVATION_LAYERS.values())))


def test_cuda_source_refuses_to_compile_without_the_table(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found")
    options = [o for o in cupy_backend.NVRTC_OPTIONS if not o.startswith("-DACT_")]
    proc = subprocess.run([NVCC, "--ptx", *options, "-o", str(tmp_path / "a.ptx"),
                           str(CUDA_DIR / "activations.cu")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "kernels/activation_codes.py" in proc.stderr


def test_cuda_switch_labels_are_the_table_codes(tmp_path):
    """Preprocessed with the backend's options, each case label is the table's number."""
    if NVCC is None:
        pytest.skip("nvcc not found")
    probe = tmp_path / "probe.cu"
    probe.write_text("".join(f"int probe_{name} = ACT_{name.upper()};\n" for name in ACT_CODES))
    proc = subprocess.run([NVCC, "-E", *cupy_backend.NVRTC_OPTIONS, str(probe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name, code in ACT_CODES.items():
        assert re.search(rf"int probe_{name} = {code};", proc.stdout), name


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
    assert 'pip install "bpnet-framework[gpu]"' in message or "no CUDA GPU" in message


def test_missing_cupy_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendError, match=re.escape('CuPy is not installed: pip install "bpnet-framework[gpu]"')):
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


def act(kind, alpha=0.0):
    """The activation layer called ``kind`` (with slope ``alpha`` where it takes one)."""
    return ACTIVATION_LAYERS[kind](alpha) if kind in ALPHA else ACTIVATION_LAYERS[kind]()


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
    a = act(kind, ALPHA.get(kind, 0.0))
    expected = REF.activation_forward(a, z.copy())
    _check(gpu, gpu.activation_forward(a, gpu.asarray(z)), expected, dtype)
    zd = gpu.asarray(z)  # in place, through out=
    y = gpu.activation_forward(a, zd, out=zd)
    assert y is zd
    _check(gpu, zd, expected, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTS)
def test_bias_act_forward_matches_numpy(gpu, kind, dtype):
    rng = np.random.default_rng(2)
    z = (2 * rng.standard_normal((41, 29))).astype(dtype)
    b = rng.standard_normal(29).astype(dtype)
    a = act(kind, ALPHA.get(kind, 0.0))
    expected = REF.activation_forward(a, z + b)
    zd = gpu.asarray(z)
    assert gpu.bias_activation_forward(a, zd, gpu.asarray(b)) is zd
    _check(gpu, zd, expected, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ACTS)
def test_act_backward_matches_numpy(gpu, kind, dtype):
    rng = np.random.default_rng(3)
    a = act(kind, ALPHA.get(kind, 0.0))
    y = REF.activation_forward(a, (2 * rng.standard_normal((33, 45))).astype(dtype))
    y = np.ascontiguousarray(y, dtype=dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = REF.activation_backward(a, y, dy)
    _check(gpu, gpu.activation_backward(a, gpu.asarray(y), gpu.asarray(dy)), expected, dtype)
    out = gpu.zeros(y.shape, dtype)
    assert gpu.activation_backward(a, gpu.asarray(y), gpu.asarray(dy), out=out) is out
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
    layers = []
    for backend in (REF, gpu):                          # Dense's own xp maths, on each device
        layer = Dense(8)
        layer.build((24,), BuildContext(backend, np.dtype(dtype), np.random.default_rng(0)))
        layer.params["W"][...] = backend.asarray(W)
        layer.params["b"][...] = backend.asarray(b)
        layers.append(layer)
    ref, dev = layers
    np.testing.assert_allclose(gpu.to_numpy(dev.forward(xd)), ref.forward(x), rtol=tol, atol=tol)
    dx, gdx = ref.backward(dy), dev.backward(gpu.asarray(dy))
    for actual, expected in ((gdx, dx), (dev.grads["W"], ref.grads["W"]),
                             (dev.grads["b"], ref.grads["b"])):
        np.testing.assert_allclose(gpu.to_numpy(actual), expected, rtol=tol, atol=tol)
    gpu.synchronize()
