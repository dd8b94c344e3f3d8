"""The ahead-of-time kernel module: built from the JIT kernels, the same numbers, no Numba.

One module is built for the whole file (about 15-30 s) into a temporary cache folder.
Building it needs a C compiler, as any extension module does; without one the tests
that need the module are skipped and say so.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from bpnet.backends import numba_aot, numba_backend  # noqa: E402
from bpnet.cli import main as cli_main  # noqa: E402
from bpnet.errors import BackendError  # noqa: E402
from bpnet.kernels import numba_kernels as jit  # noqa: E402
from numba.core.errors import TypingError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _c_compiler():
    name = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(name) or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding the module built for this machine."""
    if _c_compiler() is None:
        pytest.skip("building the ahead-of-time kernels needs a C compiler (none on PATH)")
    folder = tmp_path_factory.mktemp("bpnet-cache")
    env = {**os.environ, "BPNET_CACHE_DIR": str(folder)}
    run = subprocess.run([sys.executable, "-m", "bpnet.cli", "build-kernels"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return folder


@pytest.fixture
def aot(cache, monkeypatch):
    """The module loaded into this process (which has Numba already) through the cache."""
    monkeypatch.setenv("BPNET_CACHE_DIR", str(cache))
    monkeypatch.delenv("BPNET_AOT", raising=False)
    kernels = numba_aot.load()
    assert kernels is not None
    return kernels


def _env(cache, **extra):
    env = {**os.environ, "BPNET_CACHE_DIR": str(cache), **extra}
    if "BPNET_AOT" not in extra:
        env.pop("BPNET_AOT", None)
    return env


def test_the_build_holds_every_kernel_the_backend_calls_for_both_float_widths(cache, aot):
    manifest = json.loads((numba_aot.module_dir() / numba_aot.MANIFEST).read_text())
    assert manifest["key"] == numba_aot.build_key()
    expected = set(jit.__all__) - {"IDENTITY", "RELU", "LEAKY_RELU", "ELU", "SIGMOID", "TANH",
                                   "adam_step_parallel"}
    assert set(manifest["kernels"]) == expected
    for name, entry in manifest["kernels"].items():
        widths = {spec[0][0] for _, spec in entry["variants"]}
        floats = {"uint32", "uint64"} if name == "has_nonfinite" else {"float32", "float64"}
        assert widths == floats, name          # has_nonfinite reads the floats' bits
    labels = {spec[2][0] for _, spec in manifest["kernels"]["xent_finish_labels"]["variants"]}
    assert labels == {"int32", "int64"}
    # nothing else is left in the cache: no half-built folder
    assert [p.name for p in (cache / "kernels").iterdir()] == [numba_aot.module_dir().name]


def test_the_backend_contract_holds_on_the_ahead_of_time_kernels(cache):
    """The numba backend's whole test file (every override against the NumPy reference,
    the bit-for-bit cases included), run on the module's kernels."""
    code = ("import sys, pytest\n"
            "import bpnet.backends.numba_backend as nb\n"
            "assert getattr(nb.K, 'ahead_of_time', False), 'the JIT kernels were loaded'\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', "
            "'tests/test_numba_backend.py']))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


TRAIN_SCRIPT = """
import sys, json
import numpy as np
from bpnet import Sequential, Dense, ReLU, Tanh, Sigmoid, ELU, LeakyReLU, Adam, RMSProp, SGD
from bpnet import GradientClipping
rng = np.random.default_rng(0)
out = {}
for dtype in ("float32", "float64"):
    X = rng.standard_normal((96, 12)).astype(dtype)
    y = rng.integers(0, 4, 96).astype(np.int32)
    for i, opt in enumerate((Adam(lr=1e-2), RMSProp(lr=1e-3, momentum=0.9), SGD(lr=0.05, momentum=0.9))):
        model = Sequential([Dense(16), ReLU(), Dense(16), Tanh(), Dense(16), Sigmoid(), Dense(16), ELU(),
                            Dense(16), LeakyReLU(0.1), Dense(4)], seed=i, backend="numba", dtype=dtype)
        model.compile(loss="cross_entropy", optimizer=opt)
        model.fit(X, y, epochs=3, batch_size=32, verbose=0, callbacks=[GradientClipping(1.0)])
        out[f"{dtype}-{i}"] = [p.tolist() for p in model.parameters().values()]
kernels = __import__("bpnet.backends.numba_backend", fromlist=["K"]).K
print(json.dumps({"aot": getattr(kernels, "ahead_of_time", False),
                  "numba_imported": "numba" in sys.modules, "llvmlite_imported": "llvmlite" in sys.modules,
                  "params": out}))
"""


def _train(env):
    run = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_training_on_the_module_never_loads_numba_and_matches_the_jit(cache):
    """Every activation kernel, three optimizers, the labels cross-entropy and clipping,
    both float widths: the parameters after training agree with the JIT kernels' run, and
    the process never imported Numba or llvmlite."""
    aot = _train(_env(cache))
    assert aot["aot"] and not aot["numba_imported"] and not aot["llvmlite_imported"]
    jit_run = _train(_env(cache, BPNET_AOT="0"))
    assert not jit_run["aot"] and jit_run["numba_imported"]
    assert aot["params"].keys() == jit_run["params"].keys()
    for key, params in aot["params"].items():
        rtol = 1e-5 if key.startswith("float32") else 1e-12     # products: the same BLAS,
        for got, want in zip(params, jit_run["params"][key]):    # which need not be bitwise
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_module_gives_the_jit_kernels_numbers_bit_for_bit(aot, dtype):
    rng = np.random.default_rng(3)
    y = rng.standard_normal((37, 19)).astype(dtype)
    dy = rng.standard_normal((37, 19)).astype(dtype)
    for code in (jit.RELU, jit.LEAKY_RELU, jit.ELU, jit.SIGMOID, jit.TANH):
        outs = []
        for kernels in (aot, jit):
            dz, db = np.empty_like(y), np.empty(19, dtype)
            kernels.act_backward_bias(y, dy, dz, db, code, 0.3)
            outs.append((dz, db))
        assert all(np.array_equal(a, b) for a, b in zip(*outs)), code
    n = 1001
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype)
    states = [[a.copy() for a in (p, g, m, v)] for _ in range(2)]
    for kernels, (pp, gg, mm, vv) in zip((aot, jit), states):
        kernels.adam_step(pp, gg, mm, vv, 0.9, 0.1, 0.999, 0.001, 1e-3, 1.7, 1e-8, 0.01, 1.0, False)
    assert all(np.array_equal(a, b) for a, b in zip(*states))
    assert aot.sum_squares(p) == jit.sum_squares(p)


def test_a_call_the_module_was_not_built_for_goes_to_the_jit_kernel(aot):
    """Strided or other-dtype arrays, or a read-only array a kernel would write, never reach
    the compiled code, which would use them blindly: the JIT kernel takes them (and gives
    its own answer or error)."""
    frozen = np.arange(-4.0, 4.0, dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(TypingError, match="readonly|read-only|immutable"):
        aot.act_forward_(frozen, jit.RELU, 0.0)                # the JIT refuses to write into it
    assert np.array_equal(frozen, np.arange(-4.0, 4.0, dtype=np.float32))
    strided = np.arange(-8.0, 8.0, dtype=np.float64)[::2]
    with pytest.raises(TypingError, match="contiguous"):
        aot.sum_squares(strided)
    ints = np.arange(6, dtype=np.int64)
    assert aot.sum_squares(ints) == jit.sum_squares(ints)
    with pytest.raises(Exception):                            # not an array at all: Numba's error
        aot.sum_squares([1.0, 2.0])


def test_kernels_that_only_read_take_read_only_arrays_on_the_module(aot, monkeypatch):
    def no_jit():
        raise AssertionError("went to the JIT")
    monkeypatch.setattr(numba_aot, "_jit_kernels", no_jit)
    x = np.linspace(-3, 3, 5000).astype(np.float32)
    x[1234] = np.nan
    x.flags.writeable = False
    bits = x.view(np.uint32)
    assert aot.has_nonfinite(bits, np.uint32(0x7F800000), 4096)
    assert np.isnan(aot.sum_squares(x))


def test_a_stale_broken_or_switched_off_module_is_not_loaded(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("BPNET_CACHE_DIR", str(cache))
    monkeypatch.setenv("BPNET_AOT", "0")
    assert numba_aot.load() is None
    monkeypatch.delenv("BPNET_AOT")
    monkeypatch.setattr(numba_aot, "build_key", lambda: "0" * 20)        # other sources / CPU
    assert numba_aot.load() is None
    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "kernels" / ("0" * 20)
    folder.mkdir(parents=True)
    (folder / numba_aot.MANIFEST).write_text("{not json")
    assert numba_aot.load() is None
    (folder / numba_aot.MANIFEST).write_text(json.dumps({"file": "missing.so", "kernels": {}}))
    assert numba_aot.load() is None


def test_the_backend_takes_the_module_where_it_is_built_unless_told_not_to(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("BPNET_CACHE_DIR", str(cache))
    monkeypatch.delenv("BPNET_AOT", raising=False)
    assert getattr(numba_backend._kernels(), "ahead_of_time", False)
    monkeypatch.setenv("BPNET_AOT", "0")
    assert numba_backend._kernels() is jit
    monkeypatch.delenv("BPNET_AOT")
    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path))          # nothing built there
    assert numba_backend._kernels() is jit


def test_a_failed_build_says_why_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path))

    def failing_run(cmd, **kwargs):
        Path(cmd[-1], "half-written.o").write_text("x")
        return subprocess.CompletedProcess(cmd, 1, "", "error: command 'cc' failed: No such file")
    monkeypatch.setattr(numba_aot.subprocess, "run", failing_run)
    with pytest.raises(BackendError, match="C compiler.*\n.*command 'cc' failed"):
        numba_aot.build()
    assert list((tmp_path / "kernels").iterdir()) == []


def test_a_cache_folder_that_cannot_be_written_is_named_with_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BPNET_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(BackendError, match="cannot write the kernel cache .*a-file.*BPNET_CACHE_DIR"):
        numba_aot.build()
    assert blocker.read_text() == "not a folder"


def test_build_kernels_command_reports_a_module_that_is_built_already(cache, monkeypatch, capsys):
    monkeypatch.setenv("BPNET_CACHE_DIR", str(cache))
    assert cli_main(["build-kernels"]) == 0
    out = capsys.readouterr().out
    assert "built already" in out and str(numba_aot.module_dir()) in out


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BPNET_CACHE_DIR", str(tmp_path / "c"))
    assert numba_aot.cache_root() == tmp_path / "c"
    monkeypatch.delenv("BPNET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert numba_aot.cache_root() == tmp_path / "x" / "bpnet"
    assert numba_aot.module_dir().parent == tmp_path / "x" / "bpnet" / "kernels"
