"""The environment report: keys, versions that match the imported modules, and the warnings."""
import os
import sys
import types

import numpy
import pytest
import scipy

import bpnet
from bpnet import env

KEYS = {"python", "python_executable", "platform", "machine", "cpu_count", "usable_cores", "bpnet", "numpy",
        "scipy", "numba", "numba_threading_layer", "numba_num_threads", "bpnet_kernels_parallel",
        "numba_threads_used", "numba_products", "numba_kernels_aot", "cupy", "cupy_cuda_major", "cuda_runtime",
        "cuda_driver", "cuda_devices",
        "threadpoolctl", "blas", "blas_threads", "default_backend", "default_backend_reason", "env",
        "warnings"}


def test_keys_and_versions_match_the_imported_modules():
    lines = []
    info = bpnet.show_versions(print_fn=lines.append)
    assert set(info) == KEYS
    assert info["bpnet"] == bpnet.__version__
    assert info["numpy"] == numpy.__version__ and info["scipy"] == scipy.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["python_executable"] == sys.executable
    assert 1 <= info["usable_cores"] <= os.cpu_count()
    text = lines[0]
    assert f"numpy: {numpy.__version__}" in text and f"bpnet: {bpnet.__version__}" in text
    assert isinstance(info["warnings"], list)


def test_numba_and_blas_details():
    numba = pytest.importorskip("numba")
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info
    info = env.show_versions(print_fn=None)
    assert info["numba"] == numba.__version__
    assert info["numba_num_threads"] == numba.config.NUMBA_NUM_THREADS
    assert info["bpnet_kernels_parallel"] is False and info["numba_threads_used"] == 1
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert info["blas_threads"] == max(p["num_threads"] for p in blas)
    assert {p["filepath"] for p in blas} <= {p["filepath"] for p in info["blas"]}


def test_default_backend_and_reason(monkeypatch):
    monkeypatch.setenv("BPNET_BACKEND", "numpy")
    info = env.show_versions(print_fn=None)
    assert info["default_backend"] == "numpy" and "BPNET_BACKEND=numpy" in info["default_backend_reason"]
    assert info["env"]["BPNET_BACKEND"] == "numpy"
    monkeypatch.delenv("BPNET_BACKEND")
    info = env.show_versions(print_fn=None)
    from bpnet.backends import default_backend_name
    assert info["default_backend"] == default_backend_name()
    assert ("Numba is installed" in info["default_backend_reason"]) == (info["default_backend"] == "auto")


def test_openblas_coretype_is_reported(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    info = env.show_versions(print_fn=None)
    assert info["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert any("OPENBLAS_CORETYPE=Haswell" in w for w in info["warnings"])


def _base(**kw):
    return {"cupy_cuda_major": None, "cuda_driver": None, "blas_threads": 1, "numba_threads_used": 1,
            "usable_cores": 4, **kw}


def test_oversubscription_warning(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert env._warnings(_base(blas_threads=4)) == []
    [w] = env._warnings(_base(blas_threads=4, numba_threads_used=2))
    assert "2 Numba thread(s) x 4 BLAS threads = 8 > 4 usable cores" in w
    assert "OPENBLAS_NUM_THREADS=2" in w and "NUMBA_NUM_THREADS=1" in w
    [w] = env._warnings(_base(blas_threads=8))
    assert "8 > 4" in w and "OPENBLAS_NUM_THREADS=4" in w


def test_cuda_major_mismatch_warnings(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert env._warnings(_base(cupy_cuda_major=12, cuda_driver="12.4")) == []
    [w] = env._warnings(_base(cupy_cuda_major=12, cuda_driver="11.8"))
    assert "built for CUDA 12" in w and "will fail" in w and "cupy-cuda11x" in w
    [w] = env._warnings(_base(cupy_cuda_major=11, cuda_driver="12.2"))
    assert "backward compatibility" in w and "cupy-cuda12x" in w
    assert env._warnings(_base(cupy_cuda_major=12, cuda_driver="unavailable (CUDARuntimeError: x)")) == []


def test_cupy_section_with_a_stand_in_module(monkeypatch):
    """The guarded CuPy branch, exercised without a GPU through a module that answers like CuPy."""
    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: 12040, driverGetVersion=lambda: 11080,
                                    getDeviceCount=lambda: 1,
                                    getDeviceProperties=lambda i: {"name": b"Test GPU"})
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.9.9"
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    lines = []
    info = env.show_versions(print_fn=lines.append)
    assert info["cupy"] == "13.9.9" and info["cuda_runtime"] == "12.4" and info["cuda_driver"] == "11.8"
    assert info["cuda_devices"] == ["Test GPU"]
    assert info["cupy_cuda_major"] == 12          # from the runtime: no cupy-cudaNNx wheel installed here
    assert any("will fail" in w for w in info["warnings"])
    assert "Test GPU" in lines[0]


def test_broken_cupy_is_reported_not_raised(monkeypatch):
    def boom():
        raise RuntimeError("no CUDA driver found")
    runtime = types.SimpleNamespace(runtimeGetVersion=boom, driverGetVersion=boom, getDeviceCount=boom)
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.0.0"
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    info = env.show_versions(print_fn=None)
    assert info["cuda_driver"].startswith("unavailable (RuntimeError: no CUDA driver found")
    assert info["cuda_devices"] == []


@pytest.mark.parametrize("setting", ["1", "0", "auto"])
def test_numba_products_follow_bpnet_mkl_and_the_cpu_vendor(monkeypatch, setting):
    from bpnet.backends.mkl_gemm import cpu_vendor, mkl_libraries
    monkeypatch.setenv("BPNET_MKL", setting)
    chosen = mkl_libraries() is not None and (setting == "1" or
                                              (setting == "auto" and cpu_vendor() == "GenuineIntel"))
    info = env.show_versions(print_fn=None)
    assert info["numba_products"].startswith("MKL" if chosen else "NumPy's BLAS"), info["numba_products"]
    assert info["env"]["BPNET_MKL"] == setting


def test_the_report_says_whether_the_ahead_of_time_kernels_are_built(monkeypatch, tmp_path):
    from bpnet.backends import numba_aot
    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BPNET_AOT", "0")
    info = env.show_versions(print_fn=None)
    assert info["numba_kernels_aot"].startswith("not built") and "BPNET_AOT=0" in info["numba_kernels_aot"]
    folder = numba_aot.module_dir()
    folder.mkdir(parents=True)
    (folder / numba_aot.MANIFEST).write_text("{}")
    monkeypatch.delenv("BPNET_AOT")
    info = env.show_versions(print_fn=None)
    assert info["numba_kernels_aot"] == f"built ({folder})"
    assert info["env"]["BPNET_CACHE_DIR"] == str(tmp_path)
