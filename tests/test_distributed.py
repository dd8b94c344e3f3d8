"""Data-parallel training over MPI: 2 ranks must train exactly like 1 process with twice the batch.

The MPI runs are real: ``mpiexec -n 2 python tests/mpi_scripts/<script>.py TMPDIR``
in a subprocess (with a timeout), the script writing an ``.npz`` that is compared
here with an in-process single-process run of the same recipe
(``tests/mpi_scripts/mpi_common.py``).
"""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bpnet.distributed import _shard, find_mpiexec

SCRIPTS = Path(__file__).parent / "mpi_scripts"
sys.path.insert(0, str(SCRIPTS))
from mpi_common import CLASS_WEIGHTS, PER_RANK_BATCH, flat, make_data, make_model  # noqa: E402


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="needs mpi4py and an mpiexec launcher: pip install 'bpnet-framework[mpi]' (mpi4py + the mpich wheel)")


def run_mpi(script, n, *args, timeout=60):
    """Launch ``script`` on ``n`` ranks; return (returncode, combined output, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(SCRIPTS / script), *map(str, args)]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


# ----------------------------------------------------------------------------- equivalence
CONFIGS = [("float64", "adam", 1e-12, 1e-12), ("float32", "adam", 2e-5, 2e-6), ("float64", "sgd", 1e-12, 1e-12)]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_equivalence")
    rc, log, _ = run_mpi("equivalence.py", 2, out)
    assert rc == 0, log
    with np.load(out / "equivalence.npz") as npz:
        results = {k: npz[k] for k in npz.files}
    results["files"] = sorted(p.name for p in out.iterdir())
    return results


@needs_mpi
@pytest.mark.parametrize("dtype,opt,rtol,atol", CONFIGS)
def test_two_ranks_match_one_process_with_twice_the_batch(two_rank_run, dtype, opt, rtol, atol):
    X, y = make_data()
    Xv, yv = make_data(n=37, seed=1)
    model = make_model(dtype, opt)
    history = model.fit(X, y, epochs=3, batch_size=2 * PER_RANK_BATCH, validation_data=(Xv, yv), verbose=0)
    key = f"{dtype}_{opt}"
    assert int(two_rank_run["size"]) == 2
    np.testing.assert_allclose(two_rank_run[f"{key}_params"], flat(model), rtol=rtol, atol=atol)
    # the logged numbers are those of all ranks together, equal to the single-process ones
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(two_rank_run[f"{key}_{name}"], history.history[name],
                                   rtol=max(rtol, 1e-7), atol=atol, err_msg=name)


@needs_mpi
def test_class_weighted_loss_matches_one_process(two_rank_run):
    # each rank's loss divides by its own Σ w_{y_i}; the ranks combine by those sums, not by counts
    X, y = make_data()
    model = make_model("float64", "adam", class_weights=CLASS_WEIGHTS)
    history = model.fit(X, y, epochs=3, batch_size=2 * PER_RANK_BATCH, verbose=0)
    np.testing.assert_allclose(two_rank_run["weighted_params"], flat(model), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(two_rank_run["weighted_loss"], history.history["loss"], rtol=1e-12)


@needs_mpi
def test_replicas_stay_identical_after_a_different_start(two_rank_run):
    # rank 1 started from other weights; the initial broadcast made it rank 0's copy
    assert float(two_rank_run["replica_spread"]) == 0.0


@needs_mpi
def test_only_rank_0_writes_checkpoints_from_callbacks(two_rank_run):
    assert "callback-rank0.npz" in two_rank_run["files"]
    assert "callback-rank1.npz" not in two_rank_run["files"]


@needs_mpi
def test_float16_buffers_are_reduced_through_float32(two_rank_run):
    assert two_rank_run["allreduce_float16"].dtype == np.float16
    np.testing.assert_array_equal(two_rank_run["allreduce_float16"], np.full(5, 0.5 + 1.5, np.float16))


@needs_mpi
def test_mixed_precision_overflow_on_one_rank_is_skipped_on_every_rank(tmp_path):
    rc, log, _ = run_mpi("features.py", 2, tmp_path)
    assert rc == 0, log
    with np.load(tmp_path / "features.npz") as npz:
        r = {k: npz[k] for k in npz.files}
    for case in ("natural", "one_rank"):            # the float32 master copies are identical and finite
        assert float(r[f"{case}_master_spread"]) == 0.0 and bool(r[f"{case}_finite"]), case
        assert len(set(r[f"{case}_scales"])) == 1 and len(set(r[f"{case}_overflows"])) == 1, case
        assert len(set(r[f"{case}_good_steps"])) == 1, case
    assert r["natural_overflows"][0] >= 1 and r["loss"][-1] < r["loss"][0]
    # rank 1 alone overflowed once (its targets); rank 0 skipped that step too and backed off alike
    assert list(r["one_rank_overflows"]) == [1, 1] and list(r["one_rank_scales"]) == [128.0, 128.0]
    assert r["natural_printed"][1] == 0             # the doctor prints on rank 0 only


# ----------------------------------------------------------------------------- faults
@needs_mpi
def test_a_rank_that_raises_stops_every_rank_and_is_named(tmp_path):
    rc, log, seconds = run_mpi("fault.py", 2, tmp_path, "raise", timeout=60)
    assert rc != 0, f"exit code {rc}: {log}"
    assert seconds < 30, f"the failed run took {seconds:.1f} s to end"
    assert "rank 1 of 2 failed during epoch 1, batch 3" in log, log
    assert "RuntimeError: injected failure at step 3" in log, log
    assert not list(tmp_path.glob("finished-rank*")), "a rank went on training after its peer failed"


@needs_mpi
def test_a_stalled_rank_is_caught_by_the_step_timeout(tmp_path):
    rc, log, seconds = run_mpi("fault.py", 2, tmp_path, "hang", timeout=60)
    assert rc != 0, f"exit code {rc}: {log}"
    assert seconds < 30, f"the stalled run took {seconds:.1f} s to end (step_timeout is 2 s)"
    assert "made no progress for" in log and "step_timeout=2.0" in log, f"exit code {rc}: {log!r}"
    assert not list(tmp_path.glob("finished-rank*"))


@needs_mpi
def test_ranks_holding_different_data_are_refused(tmp_path):
    rc, log, seconds = run_mpi("fault.py", 2, tmp_path, "baddata", timeout=60)
    assert rc != 0 and seconds < 30, log
    assert "DataError: the ranks hold different data sets" in log, log
    assert not list(tmp_path.glob("finished-rank*"))


# ----------------------------------------------------------------------------- resume
@needs_mpi
def test_resume_on_one_rank_from_a_two_rank_checkpoint(tmp_path):
    rc, log, _ = run_mpi("resume.py", 2, tmp_path, "train")
    assert rc == 0, log
    assert (tmp_path / "ckpt.npz").exists()
    rc, log, _ = run_mpi("resume.py", 1, tmp_path, "resume")
    assert rc == 0, log
    with np.load(tmp_path / "resumed.npz") as npz:
        params, loss, size = npz["params"], npz["loss"], int(npz["size"])
    assert size == 1
    # 2 epochs on 2 ranks (batch 16 each) + 2 epochs on 1 rank (batch 32) == 4 epochs on 1 rank
    X, y = make_data()
    model = make_model()
    history = model.fit(X, y, epochs=4, batch_size=2 * PER_RANK_BATCH, verbose=0)
    np.testing.assert_allclose(params, flat(model), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss, history.history["loss"][2:], rtol=1e-12)


# ----------------------------------------------------------------------------- without MPI
@pytest.mark.parametrize("m,size", [(13, 2), (32, 2), (5, 3), (1, 4), (0, 2)])
def test_shards_cover_a_batch_once_and_differ_by_at_most_one(m, size):
    parts = [_shard(m, size, r) for r in range(size)]
    starts = [s for s, _ in parts]
    counts = [c for _, c in parts]
    assert sum(counts) == m and max(counts) - min(counts) <= 1
    assert starts == [sum(counts[:r]) for r in range(size)]


def test_missing_mpi4py_gives_an_install_hint(monkeypatch):
    from bpnet.errors import MissingDependencyError
    from bpnet.distributed import DistributedTrainer, mpi_available
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # makes `import mpi4py` raise ImportError
    assert not mpi_available()
    model = make_model()
    with pytest.raises(MissingDependencyError, match=r"pip install 'bpnet-framework\[mpi\]'"):
        DistributedTrainer(model)
    with pytest.raises(MissingDependencyError, match="mpi4py"):
        model.fit(*make_data(), epochs=1, verbose=0, distributed=True)


# ----------------------------------------------------------------------------- device buffers (no GPU needed)
class FakeDeviceArray:
    """Stands in for a CuPy array: not an np.ndarray; copied out with .get(out=...)."""

    def __init__(self, a):
        self.a = np.array(a)

    dtype = property(lambda self: self.a.dtype)
    shape = property(lambda self: self.a.shape)

    def get(self, out):
        out[...] = self.a

    def __setitem__(self, key, value):
        self.a[key] = value.a if isinstance(value, FakeDeviceArray) else value


class FakeComm:
    """Two ranks holding the same buffer: an in-place sum doubles it.  Records what MPI was handed."""

    def __init__(self):
        self.handed = []

    def Allreduce(self, sendbuf, buf, op=None):
        self.handed.append(type(buf))
        if isinstance(buf, FakeDeviceArray):
            buf.a *= 2
        else:
            buf *= 2


def fake_trainer(cuda_aware):
    from types import SimpleNamespace

    from bpnet.backends import NumpyBackend
    from bpnet.distributed import DistributedTrainer

    class DeviceBackend(NumpyBackend):
        syncs = 0

        def asarray(self, x, dtype=None):
            return FakeDeviceArray(np.asarray(x, dtype=dtype))

        def to_numpy(self, x):
            return x.a

        def synchronize(self):
            DeviceBackend.syncs += 1

    trainer = DistributedTrainer.__new__(DistributedTrainer)     # no MPI: a fake communicator
    trainer.MPI = SimpleNamespace(IN_PLACE=None, SUM="sum")
    trainer.comm, trainer.rank, trainer.size = FakeComm(), 0, 2
    trainer.model = SimpleNamespace(backend=DeviceBackend())
    trainer._cuda_aware, trainer._staging = cuda_aware, {}
    return trainer


@pytest.mark.parametrize("cuda_aware", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_buffers_go_to_mpi_directly_only_when_it_is_cuda_aware(cuda_aware, dtype):
    trainer = fake_trainer(cuda_aware)
    g = FakeDeviceArray(np.arange(4, dtype=dtype))
    trainer._allreduce_(g, "grads")
    np.testing.assert_array_equal(g.a, 2 * np.arange(4))
    assert g.dtype == dtype
    direct = cuda_aware and dtype == np.float32          # float16 always travels as float32 on the host
    assert trainer.comm.handed == [FakeDeviceArray if direct else np.ndarray]
    assert trainer.model.backend.syncs == (1 if direct else 0)   # MPI reads finished results only
    if not direct:
        assert trainer._staging["grads"].dtype == np.float32
