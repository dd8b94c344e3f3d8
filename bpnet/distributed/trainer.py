"""``DistributedTrainer``: the MPI communicator side of data-parallel training (collectives, faults, loading)."""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import traceback

import numpy as np

from .. import state, training
from ..errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from .strategy import MPIStrategy, _shard

__all__ = ["DistributedTrainer", "load_model", "get_comm", "mpi_available"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingDependencyError(
            "distributed training needs mpi4py and an MPI library: pip install 'bpnet-framework[mpi]' "
            "(mpi4py plus the mpich wheel), then launch with `mpiexec -n 2 python script.py`") from exc
    return MPI


def mpi_available() -> bool:
    """True when mpi4py can be imported (an MPI library is present)."""
    try:
        _mpi()
    except MissingDependencyError:
        return False
    return True


def get_comm(comm=None):
    """``comm`` if given, else ``MPI.COMM_WORLD``."""
    return comm if comm is not None else _mpi().COMM_WORLD


def _query_cuda_support() -> bool:
    """Whether the MPI library accepts device pointers (CUDA-aware MPI).

    ``$BPNET_MPI_CUDA_AWARE`` (1/0) decides when set; otherwise ask the loaded
    MPI library through ``MPIX_Query_cuda_support`` (Open MPI and MPICH both
    provide it).  Anything unclear means no: staging through host memory is
    always correct, only slower.
    """
    env = os.environ.get("BPNET_MPI_CUDA_AWARE", "").strip().lower()
    if env:
        return env in ("1", "true", "yes", "on")
    try:
        import ctypes
        with open("/proc/self/maps") as fh:
            libs = sorted({line.split()[-1] for line in fh if "libmpi" in line and "/" in line})
        for path in libs:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "MPIX_Query_cuda_support"):
                lib.MPIX_Query_cuda_support.restype = ctypes.c_int
                return bool(lib.MPIX_Query_cuda_support())
    except Exception:   # no /proc, no symbol, no permission: assume not CUDA-aware
        pass
    return False


# Seconds to wait between printing why we abort and calling Abort: the launcher forwards each
# rank's output through a pipe, and Abort tears the job down, pipes included.
ABORT_GRACE_S = 1.0


def find_mpiexec() -> str | None:
    """The MPI launcher to use: the one the ``mpich`` wheel installs beside this Python, else the PATH's."""
    here = os.path.dirname(sys.executable)
    for name in ("mpiexec", "mpirun"):
        if os.path.exists(os.path.join(here, name)):
            return os.path.join(here, name)
    return shutil.which("mpiexec") or shutil.which("mpirun")


class DistributedTrainer:
    """Train a compiled :class:`~bpnet.Sequential` data-parallel over an MPI communicator.

    Parameters
    ----------
    model : a compiled model; every rank builds it the same way (same seed).
    comm : an mpi4py communicator (default ``MPI.COMM_WORLD``).
    cuda_aware : on the cupy backend, hand device buffers straight to MPI
        (True) or stage them through host memory (False); None asks the MPI
        library (see ``BPNET_MPI_CUDA_AWARE``).
    step_timeout : seconds; when set, a watchdog aborts every rank if this rank
        makes no progress for that long (a peer stuck in a loop or lost without
        an error would otherwise leave the rest waiting forever).

    ``stats`` accumulates the time spent in the gradient all-reduce.
    """

    def __init__(self, model, comm=None, cuda_aware=None, step_timeout: float | None = None):
        self.MPI = _mpi()
        self.comm = get_comm(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.model = model
        self._cuda_aware = None if cuda_aware is None else bool(cuda_aware)
        if step_timeout is not None and not step_timeout > 0:
            raise ConfigError(f"step_timeout={step_timeout!r} must be a positive number of seconds or None")
        self.step_timeout = step_timeout
        self.stats = {"allreduce_s": 0.0, "steps": 0}
        self._staging: dict = {}
        self._where = "setup"
        self._beat = time.monotonic()

    @property
    def cuda_aware(self) -> bool:
        """Whether device buffers go to MPI directly (asked once, on first use)."""
        if self._cuda_aware is None:
            self._cuda_aware = _query_cuda_support()
        return self._cuda_aware

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    # -- communication on backend arrays ------------------------------------------------
    def _host_buffer(self, key, arr, dtype):
        buf = self._staging.get(key)
        if buf is None or buf.shape != arr.shape or buf.dtype != dtype:
            buf = self._staging[key] = np.empty(arr.shape, dtype)
        return buf

    def _collective(self, arr, key, call):
        """Run ``call(buffer)`` (an in-place collective) on ``arr``, wherever it lives.

        Host NumPy arrays go to MPI as they are.  Device arrays go as they are on
        CUDA-aware MPI (after the stream is synchronised, so MPI reads finished
        results); otherwise they are copied to a host buffer, reduced there and
        copied back.  float16 (no standard MPI type) travels as float32.
        """
        bk = self.model.backend
        on_host = bk.is_host(arr)
        wire = np.float32 if arr.dtype == np.float16 else arr.dtype
        if on_host and wire == arr.dtype:
            call(arr)
            return
        if not on_host and self.cuda_aware and wire == arr.dtype:
            bk.synchronize()
            call(arr)
            return
        host = bk.to_host(arr, out=self._host_buffer(key, arr, wire))
        call(host)
        arr[...] = host if on_host else bk.asarray(host, dtype=arr.dtype)

    def _allreduce_(self, arr, key, op=None):
        MPI = self.MPI
        self._collective(arr, key, lambda buf: self.comm.Allreduce(MPI.IN_PLACE, buf, op=op or MPI.SUM))

    def _bcast_(self, arr, key):
        self._collective(arr, key, lambda buf: self.comm.Bcast(buf, root=0))

    def allreduce_scalars(self, values, op=None) -> np.ndarray:
        """Element-wise reduction (default sum) of a few float64 numbers over all ranks."""
        buf = np.asarray(values, dtype=np.float64).copy()
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=op or self.MPI.SUM)
        return buf

    # -- the two synchronisation points ----------------------------------------------------
    def broadcast_state(self):
        """Make every replica identical to rank 0's: every array and value of :mod:`bpnet.state`."""
        model = self.model
        model._require_built()
        if self.size == 1:
            return
        if model.loss_scaler is not None:
            model.loss_scaler._ensure_master()
        if model.optimizer is not None:
            model.optimizer._flat()                # allocate state arrays on every rank alike
        for name, holder, key in state.array_slots(model, flat=True):
            self._bcast_(holder[key], name)
        state.load_values(model, self.comm.bcast(state.values(model), root=0))

    def allreduce_gradients(self, weight: float | None = None):
        """Average ``model.flat_grads`` over the ranks with one in-place all-reduce.

        (Under a loss scaler the float32 master gradients, which the optimizer reads.)

        ``weight`` (N·w_r/Σw, with w_r the sample count or, for class-weighted
        losses, the sum of weights the rank's loss divided by) pre-scales this
        rank's gradient; None means every shard weighed the same.
        """
        g, bk = self.model.step_grads, self.model.backend
        if self.size == 1:
            return
        if weight is not None and weight != 1.0:
            bk.scale_(g, weight)
        start = time.perf_counter()
        self._allreduce_(g, "grads")
        self.stats["allreduce_s"] += time.perf_counter() - start
        self.stats["steps"] += 1
        bk.scale_(g, 1.0 / self.size)

    def average_buffers(self):
        """Average non-trainable buffers (BatchNorm running statistics) over the ranks."""
        if self.size == 1:
            return
        for name, owner, key in self.model.named_buffers():
            buf = owner.buffers[key]
            self._allreduce_(buf, f"buffer/{name}")
            self.model.backend.scale_(buf, 1.0 / self.size)

    # -- saving -------------------------------------------------------------------------------
    def save(self, path):
        """Rank 0 writes the (replicated) model atomically; every rank waits until it is written."""
        if self.is_root:
            from ..io import save_model
            save_model(self.model, path)
        if self.size > 1:
            self.comm.Barrier()

    # -- faults -------------------------------------------------------------------------------
    def _abort(self, exc: BaseException):
        msg = (f"bpnet.distributed: rank {self.rank} of {self.size} failed during {self._where}: "
               f"{type(exc).__name__}: {exc}\n")
        try:
            sys.stdout.flush()
            sys.stderr.write(msg + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            sys.stderr.write(f"bpnet.distributed: rank {self.rank} is aborting all {self.size} ranks\n")
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
        finally:
            self.comm.Abort(1)

    def _watchdog(self, done: threading.Event):
        limit = self.step_timeout
        while not done.wait(min(limit / 4, 1.0)):
            idle = time.monotonic() - self._beat
            if idle > limit:
                sys.stderr.write(
                    f"bpnet.distributed: rank {self.rank} of {self.size} made no progress for "
                    f"{idle:.1f} s (step_timeout={limit}) during {self._where}; a rank is stuck or "
                    f"lost: aborting all ranks\n")
                sys.stderr.flush()
                time.sleep(ABORT_GRACE_S)
                self.comm.Abort(2)

    # -- training -------------------------------------------------------------------------------
    def _check_same_data(self, X, y):
        """Every rank must hold the same data set: compare its size and a cheap fingerprint."""
        step = max(1, len(X) // 64)
        fp = [float(len(X)), float(np.sum(X[::step], dtype=np.float64)),
              float(np.sum(y[::step], dtype=np.float64)) if y is not None else 0.0]
        lo = self.allreduce_scalars(fp, self.MPI.MIN)
        hi = self.allreduce_scalars(fp, self.MPI.MAX)
        if not np.allclose(lo, hi, rtol=1e-9, atol=0.0):
            what = (f"from {int(lo[0])} to {int(hi[0])} samples" if lo[0] != hi[0]
                    else f"{int(lo[0])} samples each, but different values")
            raise DataError(f"the ranks hold different data sets ({what}); every rank must load the "
                            "same full (X, y), which bpnet shards per step")

    def fit(self, X, y, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, doctor=False, detect_anomaly=False):
        """``Sequential.fit`` across ranks; ``batch_size`` is per rank (global batch N·batch_size).

        Every rank passes the same full data set.  Returns the same History on
        every rank, with the loss and accuracy of all ranks together.  ``doctor``
        and ``detect_anomaly`` work as in ``Sequential.fit``; the doctor prints
        on rank 0 only, and a NaN/Inf found on any rank ends every rank.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer (per rank), got {batch_size!r}")
        return training.fit(self.model, X, y, epochs=epochs, batch_size=batch_size,
                            validation_data=validation_data, validation_split=validation_split,
                            shuffle=shuffle, callbacks=callbacks, verbose=verbose if self.is_root else 0,
                            initial_epoch=initial_epoch, strategy=MPIStrategy(self), doctor=doctor,
                            detect_anomaly=detect_anomaly)

    def evaluate(self, X, y, batch_size: int = 256) -> dict:
        """``Sequential.evaluate`` with the samples split over the ranks; same dict on every rank."""
        model = self.model
        self._beat = time.monotonic()
        start, count = _shard(len(X), self.size, self.rank)
        loss_sum = n_correct = 0.0
        if count:
            res = model.evaluate(X[start:start + count], y[start:start + count], batch_size=batch_size)
            loss_sum = res["loss"] * count
            n_correct = round(res.get("accuracy", 0.0) * count)
        g_loss, g_correct, g_count = self.allreduce_scalars([loss_sum, n_correct, count])
        result = {"loss": g_loss / g_count}
        if "accuracy" in model.metrics:
            result["accuracy"] = g_correct / g_count
        return result


def load_model(path, comm=None, backend=None):
    """Load a checkpoint on every rank: rank 0 reads the file and broadcasts its bytes.

    Only rank 0 needs to see the file (no shared file system required).  The
    checkpoint holds the full replicated state, so it may come from a run with
    any number of ranks.
    """
    from ..io import model_from_bytes
    comm = get_comm(comm)
    payload = None
    if comm.Get_rank() == 0:
        try:
            with open(os.fspath(path), "rb") as fh:
                payload = ("ok", fh.read())
        except OSError as exc:
            payload = ("error", f"cannot read bpnet checkpoint {path!s}: {exc}")
    status, data = comm.bcast(payload, root=0)     # every rank learns the outcome: no rank waits alone
    if status != "ok":
        raise CheckpointError(data)
    return model_from_bytes(data, path, backend=backend)     # a damaged file: CheckpointError on every rank
