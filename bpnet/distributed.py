"""Data-parallel training over MPI (through mpi4py).

Launch the same script on N processes (``mpirun -n N python train.py``).  Every
rank holds a full replica of the model; per step each rank computes gradients on
its own shard of the global batch, and one all-reduce over the flat gradient
buffer averages them, so every replica applies the same update::

    model.fit(X, y, batch_size=B, distributed=True)      # or:
    DistributedTrainer(model).fit(X, y, batch_size=B)

``batch_size`` is per rank: N ranks with batch B take the same optimizer steps,
on the same samples, as one process with batch N·B.  Why the averaging is exact:
every bpnet loss is a mean over the batch, L = (1/G) Σ_i ℓ_i over the G = N·B
samples of a global batch, so

    ∇L = (1/G) Σ_i ∇ℓ_i = (1/N) Σ_r (1/B) Σ_{i ∈ shard r} ∇ℓ_i = (1/N) Σ_r ∇L_r,

the mean of the per-rank mean gradients.  A short last batch of m < G samples
is split into shards of size m_r (differing by at most one); rank r then scales
its gradient by N·m_r/m before the same all-reduce, which restores the global
mean (1/m) Σ_r m_r ∇L_r.  Losses with class weights divide by the sum of the
batch's weights w_r instead of its size, so their ranks are combined by
N·w_r/Σ w instead, which is exact too.  (BatchNorm normalises each rank's
shard by its own statistics and Dropout draws each rank's masks from its own
generator: such models train correctly but are not covered by the
bit-for-bit guarantee.)

The protocol, step by step:

1. start: rank 0's weights, BatchNorm buffers, optimizer state and random
   generator states are broadcast (``comm.Bcast`` on ``model.flat_params``), so
   every replica starts identical and shuffles with the same generator;
2. each epoch: every rank draws the same permutation and takes its slice of
   every global batch of N·B samples;
3. each step: forward/backward on the shard, a small all-reduce of (loss sum,
   correct, count, stop flag, loss-scaler overflow flag) for the logs, one
   ``comm.Allreduce(MPI.IN_PLACE, model.flat_grads, op=MPI.SUM)`` then a scale
   by 1/N, and the optimizer step, identical on every rank;
4. only rank 0 shows progress bars and writes checkpoints; a checkpoint holds
   the full replicated state, so a run can resume with another number of ranks;
5. a rank that raises prints its rank and the error and calls ``comm.Abort``,
   which ends every rank instead of leaving them waiting in a collective.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import threading
import time
import traceback
from contextlib import contextmanager

import numpy as np

from . import state, training
from .errors import ConfigError, DataError, MissingDependencyError
from .training import StepStats, Strategy

__all__ = ["DistributedTrainer", "load_model", "get_comm", "mpi_available"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingDependencyError(
            "distributed training needs mpi4py and an MPI library: pip install 'bpnet[mpi]' "
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


def _shard(m: int, size: int, rank: int) -> tuple[int, int]:
    """Start and length of rank's part of m items split into ``size`` near-equal pieces."""
    base, extra = divmod(m, size)
    return rank * base + min(rank, extra), base + (rank < extra)


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
            from .io import save_model
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


class MPIStrategy(Strategy):
    """The training loop's MPI side: shards of every global batch, and sums over the ranks.

    Every rank draws the same permutation and takes its slice of each global
    batch of N·B samples; after backward the per-step numbers (loss sum,
    weight, correct, count, a pending stop, a loss-scaler overflow) and the
    gradients are all-reduced, so every replica applies the same update.
    """

    def __init__(self, trainer: DistributedTrainer):
        self.trainer = trainer
        self.is_root = trainer.is_root
        self.stops_at_once = trainer.size == 1
        self._scaler_state = None
        self._full = True

    # -- around the whole of fit: watchdog, rank-0 checkpoints, abort on error ---------------
    @contextmanager
    def guard(self, loop):
        t, model = self.trainer, loop.model
        done = threading.Event()
        if t.step_timeout is not None and t.size > 1:
            threading.Thread(target=t._watchdog, args=(done,), daemon=True, name="bpnet-watchdog").start()
        t._beat = time.monotonic()
        t._where = "setup (data checks and the initial broadcast)"
        patched_save = not t.is_root
        if patched_save:
            model.save = lambda path: None         # only rank 0 writes checkpoints
        try:
            yield
        except BaseException as exc:
            if t.size > 1:
                t._abort(exc)
            raise
        finally:
            done.set()
            if patched_save:
                del model.save

    def prepare(self, loop, X, y):
        t = self.trainer
        if t.size > 1:
            t._check_same_data(X, y)
        t.broadcast_state()
        self.X, self.y = X, y
        self.global_batch = loop.batch_size * t.size

    def steps_per_epoch(self, loop) -> int:
        return -(-len(self.X) // self.global_batch)

    def batches(self, loop, epoch):
        t, n, gb, b = self.trainer, len(self.X), self.global_batch, loop.batch_size
        order = loop.model.data_rng.permutation(n) if loop.shuffle else np.arange(n)
        for i, lo in enumerate(range(0, n, gb)):
            t._where = f"epoch {epoch + 1}, batch {i}"
            t._beat = time.monotonic()
            m = min(gb, n - lo)
            self._full = m == gb
            offset, count = (t.rank * b, b) if self._full else _shard(m, t.size, t.rank)
            idx = order[lo + offset: lo + offset + count]
            yield np.take(self.X, idx, axis=0), np.take(self.y, idx, axis=0)

    def begin_step(self, loop):
        scaler = loop.model.loss_scaler
        self._scaler_state = (scaler.scale, scaler.good_steps, scaler.overflows) if scaler else None

    def combine(self, loop, stats: StepStats) -> StepStats:
        t, model = self.trainer, loop.model
        # a stop asked for by any rank's callbacks in the previous step travels with the numbers
        g_loss, g_correct, g_count, g_weight, g_stop, g_overflow = t.allreduce_scalars(
            [stats.loss_sum, stats.correct, stats.count, stats.weight, float(model.stop_training),
             float(model.skip_step)])
        if g_stop:
            return StepStats(loss=math.nan, stop=True)
        scaler = model.loss_scaler
        if scaler is not None and t.size > 1:      # every rank backs off (or not) alike
            scaler.scale, scaler.good_steps, scaler.overflows = self._scaler_state
            scaler.update(found_inf=bool(g_overflow))
            model.skip_step = bool(g_overflow)
        # rank r's gradient is ∇(Σ_r ℓ_i)/w_r; the global mean gradient is Σ_r w_r ∇_r / Σ w_r
        equal = self._full and model.loss.batch_weight is None
        t.allreduce_gradients(None if equal else t.size * stats.weight / g_weight)
        return StepStats(loss=g_loss / g_weight, loss_sum=g_loss, weight=g_weight, correct=g_correct,
                         count=int(g_count))

    def end_epoch(self, loop):
        self.trainer.average_buffers()
        self.trainer._where = f"validation after epoch {loop.epoch + 1}"

    def evaluate(self, loop, X, y) -> dict:
        return self.trainer.evaluate(X, y, batch_size=max(loop.batch_size, 256))

    def agree_to_stop(self, stop: bool) -> bool:
        return bool(self.trainer.allreduce_scalars([float(stop)], self.trainer.MPI.MAX)[0])


def _fit_plugin(loop, distributed, X, y):
    """``fit(distributed=True)`` (or an mpi4py communicator): train through :class:`MPIStrategy`."""
    if isinstance(loop.batch_size, bool) or not isinstance(loop.batch_size, (int, np.integer)) \
            or loop.batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer (per rank), got {loop.batch_size!r}")
    trainer = DistributedTrainer(loop.model, comm=None if distributed is True else distributed)
    loop.strategy = MPIStrategy(trainer)
    if not trainer.is_root:
        loop.verbose = 0


training.register_fit_option("distributed", _fit_plugin)


def load_model(path, comm=None, backend=None):
    """Load a checkpoint on every rank: rank 0 reads the file and broadcasts its bytes.

    Only rank 0 needs to see the file (no shared file system required).  The
    checkpoint holds the full replicated state, so it may come from a run with
    any number of ranks.
    """
    from .errors import CheckpointError
    from .io import model_from_checkpoint, parse_checkpoint
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
    return model_from_checkpoint(*parse_checkpoint(data, path), backend=backend)
