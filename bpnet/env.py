"""The environment report: versions, BLAS and threads, the backend bpnet picks, and known-bad setups.

    >>> import bpnet
    >>> info = bpnet.show_versions()        # prints the report, returns it as a dict

Paste the printed report into a bug report.  ``bpnet doctor --env`` prints
the same.  Optional packages (Numba, CuPy, threadpoolctl) are reported when
importable; a missing one is ``None``, never an error.

Warnings name combinations known to slow down or break training:

* CuPy built for a CUDA major version other than the driver's (a driver
  older than the toolkit cannot run its kernels at all);
* more compute threads than cores: the threads Numba runs bpnet's kernels
  with, times BLAS threads, above the usable cores (CPU affinity and cgroup
  quota considered), so threads fight over cores;
* ``OPENBLAS_CORETYPE`` set: OpenBLAS then skips CPU detection and uses the
  named kernels, which is a frequent cause of "slow only on this machine".
"""
from __future__ import annotations

import importlib
import math
import os
import platform
import sys

__all__ = ["show_versions", "usable_cores"]

#: environment variables that change threading or backend choice, reported verbatim when set
ENV_VARS = ("BPNET_BACKEND", "BPNET_MKL", "BPNET_AOT", "BPNET_CACHE_DIR", "BPNET_HEAP_PAD",
            "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OPENBLAS_CORETYPE", "CUDA_VISIBLE_DEVICES", "CUDA_PATH")


def _version(module_name: str):
    """``module.__version__`` or None when the module cannot be imported."""
    try:
        module = importlib.import_module(module_name)
    except Exception:          # ImportError, or a broken install raising something else
        return None
    return getattr(module, "__version__", "unknown")


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, further capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _cuda_version(v) -> str | None:
    """12040 -> "12.4" (CUDA's integer encoding 1000 * major + 10 * minor)."""
    if not v:
        return None
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def _cupy_built_major(cupy) -> int | None:
    """The CUDA major CuPy was built for: from the wheel name (cupy-cuda12x), else its runtime."""
    try:
        from importlib import metadata
        for dist in metadata.distributions():
            name = (dist.metadata["Name"] or "").lower()
            if name.startswith("cupy-cuda") and name[9:11].isdigit():
                return int(name[9:11])
    except Exception:
        pass
    try:
        return int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:
        return None


def _cupy_info() -> dict:
    info = {"cupy": None, "cuda_runtime": None, "cuda_driver": None, "cupy_cuda_major": None,
            "cuda_devices": []}
    try:
        import cupy
    except Exception:
        return info
    info["cupy"] = getattr(cupy, "__version__", "unknown")
    info["cupy_cuda_major"] = _cupy_built_major(cupy)
    rt = cupy.cuda.runtime
    for key, getter in (("cuda_runtime", "runtimeGetVersion"), ("cuda_driver", "driverGetVersion")):
        try:
            info[key] = _cuda_version(getattr(rt, getter)())
        except Exception as exc:                     # no driver, no libcudart, ...
            info[key] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        for i in range(rt.getDeviceCount()):
            name = rt.getDeviceProperties(i)["name"]
            info["cuda_devices"].append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception:
        pass
    return info


def _numba_info() -> dict:
    info = {"numba": None, "numba_threading_layer": None, "numba_num_threads": None,
            "bpnet_kernels_parallel": False}
    try:
        import numba
    except Exception:
        return info
    info["numba"] = numba.__version__
    info["numba_num_threads"] = int(numba.config.NUMBA_NUM_THREADS)
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:       # no parallel region has run yet in this process
        info["numba_threading_layer"] = f"not initialised (configured: {numba.config.THREADING_LAYER})"
    try:
        kernels = importlib.import_module("bpnet.kernels.numba_kernels")
        # adam_step_parallel runs only on the OpenMP threads MKL's products already use
        # (NumbaBackend.adam_step), so it adds no threads to count against the cores.
        info["bpnet_kernels_parallel"] = any(
            getattr(obj, "targetoptions", {}).get("parallel", False)
            for name, obj in vars(kernels).items() if name != "adam_step_parallel")
    except Exception:
        pass
    return info


def _aot_kernels() -> str:
    """Whether ``bpnet build-kernels`` has built the kernel module for this machine (found
    without loading it), which the numba backend then uses unless ``BPNET_AOT=0``."""
    from .backends import numba_aot
    folder = numba_aot.module_dir()
    built = numba_aot.is_built(folder)
    state = f"built ({folder})" if built else "not built (`bpnet build-kernels` builds it)"
    return state + ("" if numba_aot.enabled() else "; not used (BPNET_AOT=0)")


def _numba_products() -> str:
    """What the numba backend multiplies matrices with, found without loading it."""
    from .backends.mkl_gemm import cpu_vendor, mkl_chosen, mkl_libraries
    paths = mkl_libraries()
    if paths is None:
        return "NumPy's BLAS (MKL not installed, or BPNET_MKL=0)"
    try:
        from importlib.metadata import version
        mkl = f"MKL {version('mkl')}"
    except Exception:
        mkl = "MKL"
    if not mkl_chosen():
        return (f"NumPy's BLAS ({mkl} is installed, but MKL runs its tuned kernels on Intel CPUs "
                f"only and this one is {cpu_vendor() or 'of unknown vendor'}; BPNET_MKL=1 uses it anyway)")
    return f"{mkl} ({paths[0]})"


def _blas_info() -> list | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture",
            "filepath")
    return [{k: pool.get(k) for k in keep} for pool in threadpool_info()]


def _default_backend() -> tuple[str, str]:
    from .backends import _numba_importable, default_backend_name
    name = default_backend_name()
    env = os.environ.get("BPNET_BACKEND", "").strip()
    if env:
        return name, f"BPNET_BACKEND={env} is set"
    if name == "auto":
        return name, ("Numba is installed: models start on NumPy and move to Numba when fit's run is "
                      "long enough to repay loading it (set BPNET_BACKEND to choose one)")
    reason = "Numba is not importable" if not _numba_importable() else "fallback"
    return name, f"fallback to the NumPy reference: {reason}"


def _warnings(info: dict) -> list[str]:
    out = []
    built, driver = info.get("cupy_cuda_major"), info.get("cuda_driver")
    if built is not None and driver and driver[0].isdigit():
        driver_major = int(driver.split(".")[0])
        if built > driver_major:
            out.append(f"CuPy is built for CUDA {built} but the driver supports CUDA {driver} only: GPU kernels "
                       f"will fail to load. Update the NVIDIA driver or install cupy-cuda{driver_major}x.")
        elif built < driver_major:
            out.append(f"CuPy is built for CUDA {built} while the driver is CUDA {driver}: this runs through "
                       f"the driver's backward compatibility, but cupy-cuda{driver_major}x matches it and "
                       "avoids JIT-compiling kernels for a newer GPU.")
    blas_threads = info.get("blas_threads")
    numba_threads = info.get("numba_threads_used") or 1
    cores = info["usable_cores"]
    if blas_threads and numba_threads * blas_threads > cores:
        out.append(f"oversubscription: {numba_threads} Numba thread(s) x {blas_threads} BLAS threads = "
                   f"{numba_threads * blas_threads} > {cores} usable cores; limit them, e.g. "
                   f"OPENBLAS_NUM_THREADS={max(1, cores // numba_threads)} (or threadpoolctl.threadpool_limits)"
                   + (f" or NUMBA_NUM_THREADS={max(1, cores // blas_threads)}" if numba_threads > 1 else ""))
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype:
        out.append(f"OPENBLAS_CORETYPE={coretype} is set: OpenBLAS uses those kernels instead of detecting "
                   "the CPU (unset it unless you know this CPU needs it).")
    return out


def show_versions(print_fn=print) -> dict:
    """Collect the environment report, print it with ``print_fn`` (None: silent), return it as a dict.

    Keys: ``python``, ``python_executable``, ``platform``, ``machine``, ``cpu_count``,
    ``usable_cores``, ``bpnet``, ``numpy``, ``scipy``, ``numba``, ``numba_threading_layer``,
    ``numba_num_threads``, ``bpnet_kernels_parallel``, ``numba_threads_used``,
    ``numba_products`` (the numba backend's matrix-product library), ``numba_kernels_aot``
    (whether the ahead-of-time kernel module is built for this machine), ``cupy``,
    ``cupy_cuda_major``, ``cuda_runtime``, ``cuda_driver``, ``cuda_devices``, ``threadpoolctl``,
    ``blas`` (one dict per loaded BLAS/OpenMP library, None without threadpoolctl),
    ``blas_threads``, ``default_backend``, ``default_backend_reason``, ``env`` (the threading
    and backend variables that are set) and ``warnings`` (a list of sentences).
    """
    from . import __version__
    info = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "bpnet": __version__,
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
    }
    info.update(_numba_info())
    info["numba_products"] = _numba_products()
    info["numba_kernels_aot"] = _aot_kernels()
    # bpnet's Numba kernels are serial unless compiled with parallel=True, so only then can
    # Numba's thread pool and BLAS's pools compete on the same cores.
    info["numba_threads_used"] = (info["numba_num_threads"] or 1) if info["bpnet_kernels_parallel"] else 1
    info.update(_cupy_info())
    info["threadpoolctl"] = _version("threadpoolctl")
    info["blas"] = _blas_info()
    blas_pools = [p for p in (info["blas"] or []) if p["user_api"] == "blas"]
    info["blas_threads"] = max((p["num_threads"] for p in blas_pools), default=None)
    info["default_backend"], info["default_backend_reason"] = _default_backend()
    info["env"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    info["warnings"] = _warnings(info)
    if print_fn is not None:
        print_fn(format_report(info))
    return info


def format_report(info: dict) -> str:
    """The printed form of :func:`show_versions`'s dict."""
    def row(key, value):
        return f"{key:>24}: {'-' if value is None else value}"

    lines = ["bpnet environment", "", "system"]
    for key in ("python", "python_executable", "platform", "machine", "cpu_count", "usable_cores"):
        lines.append(row(key, info[key]))
    lines += ["", "packages"]
    for key in ("bpnet", "numpy", "scipy", "numba", "cupy", "threadpoolctl"):
        lines.append(row(key, info[key]))
    lines += ["", "threads"]
    lines.append(row("numba_num_threads", info["numba_num_threads"]))
    lines.append(row("numba_threading_layer", info["numba_threading_layer"]))
    lines.append(row("bpnet_kernels_parallel", info["bpnet_kernels_parallel"]))
    lines.append(row("numba_products", info["numba_products"]))
    lines.append(row("numba_kernels_aot", info["numba_kernels_aot"]))
    if info["blas"] is None:
        lines.append(row("blas", "unknown (pip install threadpoolctl to see it)"))
    for pool in info["blas"] or []:
        lines.append(row(pool["user_api"], f"{pool['internal_api']} {pool['version']}, {pool['num_threads']} "
                                           f"threads ({pool['threading_layer']}) {pool['filepath']}"))
    if info["cupy"] is not None:
        lines += ["", "gpu"]
        for key in ("cupy_cuda_major", "cuda_runtime", "cuda_driver"):
            lines.append(row(key, info[key]))
        lines.append(row("cuda_devices", ", ".join(info["cuda_devices"]) or "none visible"))
    lines += ["", "backend", row("default_backend", info["default_backend"]),
              row("reason", info["default_backend_reason"])]
    if info["env"]:
        lines += ["", "environment variables"] + [row(k, v) for k, v in info["env"].items()]
    lines += ["", "warnings" if info["warnings"] else "warnings: none"]
    lines += [f"  - {w}" for w in info["warnings"]]
    return "\n".join(lines)
