"""The numba backend's kernels compiled ahead of time: a module that loads without Numba.

Numba's JIT keeps LLVM in every process that uses it, even when each kernel
comes from its on-disk cache: ``import numba`` and loading the cached kernels
made a training process about 190 MB larger and cost it 0.3-0.5 s.
``numba.pycc`` compiles the same kernel functions (``kernels/numba_kernels.py``),
with the same options and for this CPU's instruction set, into a plain
extension module, which needs neither Numba nor LLVM at run time::

    bpnet build-kernels          # once per machine and bpnet version

The numba backend then loads that module in place of the JIT kernels
(:func:`load`); ``BPNET_AOT=0`` keeps it on the JIT.  The module holds every
type signature the backend's ``warmup`` compiles (float32 and float64 arrays,
int32 and int64 labels).  Its functions do not check their arguments, so each
kernel is reached through a small dispatcher that picks the variant by the
array arguments' dtype, ndim and layout; any other call goes to the JIT
kernel, which imports Numba then.  One JIT kernel has no counterpart:
``adam_step_parallel`` (``prange``, on the OpenMP threads of MKL's products)
cannot be compiled ahead of time, so with the module Adam runs on one core,
which made the MLP's steps 0-17% longer where MKL multiplies (bench_train's
bpnet-jit worker against bpnet-numba) and changes nothing elsewhere.

The build runs in a child process and writes into a new folder, which is
renamed into place only when complete; the folder's name is a hash of what the
machine code depends on (kernel sources, Numba, NumPy, Python, the CPU).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from bpnet.errors import BackendError
from bpnet.kernels import activation_codes

MODULE_NAME = "bpnet_kernels_aot"
MANIFEST = "manifest.json"
KERNEL_SOURCES = ("numba_kernels.py", "activation_codes.py")
# The backend's warmup decides which signatures are built, so its source is part of the key.
BUILD_SOURCES = ("numba_aot.py", "numba_backend.py")
NOT_AHEAD_OF_TIME = ("adam_step_parallel",)     # prange: Numba's threading layer, JIT only
# Kernels that only read their arrays: these take read-only arrays too (a user's frozen data
# checked for NaN), where the others need writable ones, as the JIT's array types do.
READERS = ("sum_squares", "has_nonfinite")


def enabled() -> bool:
    """``BPNET_AOT=0`` keeps the numba backend on the JIT kernels even where the module is built."""
    return os.environ.get("BPNET_AOT", "").strip().lower() not in ("0", "off", "false", "no")


def cache_root() -> Path:
    """``$BPNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/bpnet``, else ``~/.cache/bpnet``."""
    explicit = os.environ.get("BPNET_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bpnet"


def _cpu_description() -> str:
    """The CPU's model and instruction-set flags (the machine code is built for exactly these)."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def build_key() -> str:
    """Hash of everything the compiled module depends on."""
    h = hashlib.sha256()
    kernels_dir = Path(activation_codes.__file__).parent
    for name in KERNEL_SOURCES:
        h.update((kernels_dir / name).read_bytes())
    for name in BUILD_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    for part in (_package_version("numba"), _package_version("llvmlite"), np.__version__,
                 sys.version, sysconfig.get_config_var("EXT_SUFFIX") or "", _cpu_description()):
        h.update(part.encode())
    return h.hexdigest()[:20]


def module_dir() -> Path:
    return cache_root() / "kernels" / build_key()


def is_built(folder: Path | None = None) -> bool:
    """Whether the module for this machine (or in ``folder``) is complete: its manifest is
    written last."""
    return ((module_dir() if folder is None else folder) / MANIFEST).is_file()


# -- loading ----------------------------------------------------------------------
class AheadOfTimeKernels:
    """The kernel module's functions under the JIT module's names, each behind a dispatcher."""

    ahead_of_time = True

    def __init__(self, module, manifest):
        for name in activation_codes.ACT_CODES:
            setattr(self, name.upper(), activation_codes.ACT_CODES[name])
        for name, entry in manifest["kernels"].items():
            setattr(self, name, _dispatcher(name, module, entry))

    def __getattr__(self, name):          # a kernel the module lacks: the JIT one
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_jit_kernels(), name)


def _jit_kernels():
    from bpnet.kernels import numba_kernels
    return numba_kernels


def _dispatcher(name, module, entry):
    """f(*args): the compiled variant for the arguments' types, else the JIT kernel.

    The compiled code reads memory blindly, so a variant is only ever chosen for arrays of
    the dtype, ndim and layout (C-contiguous, aligned, writable unless the kernel only
    reads: ``READERS``) it was built for.  The first array argument, and any whose type
    differs between variants (the labels of the cross-entropy kernel), are checked on each
    call; the others are the first's siblings, which the backend checks before every call
    (same dtype and layout: ``_plain``)."""
    positions = entry["arrays"]
    specs = [spec for _, spec in entry["variants"]]
    checked = [0] + [k for k in range(1, len(positions))       # not implied by the first's type
                     if len({(tuple(spec[0]), tuple(spec[k])) for spec in specs})
                     > len({tuple(spec[0]) for spec in specs})]
    variants = {tuple((np.dtype(spec[k][0]), spec[k][1], True) for k in checked): getattr(module, export)
                for export, spec in entry["variants"]}
    where = [positions[k] for k in checked]
    writes = name not in READERS

    def jit_kernel():
        return getattr(_jit_kernels(), name)

    if len(where) == 1:
        first = where[0]

        def call(*args):
            a = args[first]
            try:
                flags = a.flags
                ok = flags.carray if writes else flags.c_contiguous and flags.aligned
                kernel = variants.get(((a.dtype, a.ndim, ok),))
            except AttributeError:
                kernel = None
            return (kernel or jit_kernel())(*args)
    else:
        def call(*args):
            try:
                key = tuple([(a.dtype, a.ndim, a.flags.carray) for a in map(args.__getitem__, where)])
                kernel = variants.get(key)
            except AttributeError:
                kernel = None
            return (kernel or jit_kernel())(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{name} from the ahead-of-time module (see bpnet.backends.numba_aot)."
    return call


def load():
    """The ahead-of-time kernels built for this machine, or None (not built, stale, or off)."""
    if not enabled():
        return None
    folder = module_dir()
    if not is_built(folder):
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        spec = importlib.util.spec_from_file_location(MODULE_NAME, folder / manifest["file"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (OSError, ValueError, KeyError, ImportError):
        return None
    return AheadOfTimeKernels(module, manifest)


# -- building -----------------------------------------------------------------------
def build(quiet: bool = False) -> Path:
    """Compile the kernels for this machine into the cache (in a child process, so that
    Numba and LLVM never load into the caller); returns the module's folder."""
    target = module_dir()
    if is_built(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    except OSError as exc:
        raise BackendError(f"cannot write the kernel cache {target.parent} ({exc.strerror}); set "
                           "BPNET_CACHE_DIR to a folder you can write") from exc
    try:
        proc = subprocess.run([sys.executable, "-m", "bpnet.backends.numba_aot", str(work)],
                              capture_output=True, text=True, env={**os.environ, "BPNET_AOT": "0"})
        if proc.returncode != 0:
            raise BackendError(
                "building the ahead-of-time kernels failed (a C compiler and setuptools are "
                "needed, as for any extension module); the JIT kernels still work.\n"
                + (proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        os.chmod(work, 0o755)                # mkdtemp's folder is private; a cache is not
        try:
            os.replace(work, target)
        except OSError:                      # another process built it at the same time
            if not is_built(target):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"bpnet: ahead-of-time kernels in {target}")
    return target


def _signatures():
    """Every (kernel name, numba signature) the backend's warmup compiles, for both float
    widths, plus the int32-label variant of the cross-entropy kernel."""
    from bpnet.kernels import numba_kernels as jit
    from .numba_backend import NumbaBackend
    backend = NumbaBackend()
    for dtype in (np.float32, np.float64):
        backend.warmup(dtype)
        z = np.zeros((2, 3), dtype)
        backend.softmax_cross_entropy_labels(z, np.array([0, 2], np.int32))
    for name in jit.__all__:
        disp = getattr(jit, name)
        if name in NOT_AHEAD_OF_TIME or not hasattr(disp, "overloads"):
            continue
        for cres in disp.overloads.values():
            yield name, disp.py_func, cres.signature


def _array_spec(sig):
    """Positions and (dtype, ndim) of the signature's array arguments; None if any is not a
    writable C-contiguous array (the dispatcher only routes those)."""
    from numba.core import types
    positions, spec = [], []
    for i, t in enumerate(sig.args):
        if isinstance(t, types.Array):
            if t.layout != "C" or not t.mutable:
                return None
            positions.append(i)
            spec.append((str(np.dtype(t.dtype.name)), t.ndim))
    return positions, spec


def _compile(out_dir: Path):
    """In the child process: export every signature through numba.pycc, for this CPU."""
    import warnings
    warnings.simplefilter("ignore")              # pycc's pending-deprecation notice
    import numba.pycc.compiler as pycc_compiler
    from numba.core import codegen
    from numba.pycc import CC

    base_flags = pycc_compiler.Flags

    class KernelFlags(base_flags):
        """The JIT kernels' options: pycc would compile with the "python" error model,
        which tests every divisor for zero and keeps loops from being vectorised."""
        def __init__(self, *args):
            super().__init__(*args)
            self.error_model = "numpy"
            self.fastmath = False

    pycc_compiler.Flags = KernelFlags
    # The host's own instruction-set features, as the JIT uses, not those implied by the
    # CPU's model name (which a virtual machine may report with features masked off).
    codegen.AOTCPUCodegen._customize_tm_features = lambda self: self._get_host_cpu_features()

    cc = CC(MODULE_NAME)
    cc.output_dir = str(out_dir)
    cc.target_cpu = "host"
    kernels: dict = {}
    for name, py_func, sig in _signatures():
        spec = _array_spec(sig)
        if spec is None:
            continue
        positions, arrays = spec
        entry = kernels.setdefault(name, {"arrays": positions, "variants": []})
        export = f"{name}__{len(entry['variants'])}"
        cc.export(export, sig)(py_func)
        entry["variants"].append([export, arrays])
    cc.compile()
    manifest = {"file": cc.output_file, "kernels": kernels, "key": build_key()}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    _compile(Path(sys.argv[1]))
