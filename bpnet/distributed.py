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

import numpy as np

from .callbacks import CallbackList, ProgressBar
from .errors import MissingDependencyError
from .errors import ConfigError, DataError
from .history import History
from .model import _split_validation

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
        on_host = isinstance(arr, np.ndarray)
        wire = np.float32 if arr.dtype == np.float16 else arr.dtype
        if on_host and wire == arr.dtype:
            call(arr)
            return
        if not on_host and self.cuda_aware and wire == arr.dtype:
            bk.synchronize()
            call(arr)
            return
        host = self._host_buffer(key, arr, wire)
        getter = getattr(arr, "get", None)
        if getter is not None and wire == arr.dtype:
            getter(out=host)                       # CuPy: device -> host into the staging buffer
        else:
            host[...] = bk.to_numpy(arr)
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
        """Make every replica identical to rank 0's: weights, buffers, optimizer, generators."""
        model = self.model
        model._require_built()
        if self.size == 1:
            return
        self._bcast_(model.flat_params, "params")
        for name, owner, key in model.named_buffers():
            self._bcast_(owner.buffers[key], f"buffer/{name}")
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None:
            scaler._ensure_master()
            if scaler.separate_master:             # rank 0's float32 master, not its float16 rounding
                self._bcast_(scaler.master_params, "master")
        opt = model.optimizer
        if opt is not None:
            opt._flat()                            # allocate state arrays on every rank alike
            for k in sorted(opt.state):
                self._bcast_(opt.state[k], f"opt/{k}")
        layers = [layer for layer in model.walk() if getattr(layer, "rng", None) is not None]
        small = self.comm.bcast({
            "scaler": (scaler.scale, scaler.good_steps, scaler.overflows) if scaler is not None else None,
            "t": opt.t if opt is not None else 0, "lr": opt.lr if opt is not None else 0.0,
            "init": model.init_rng.bit_generator.state, "data": model.data_rng.bit_generator.state,
            "layers": [layer.rng.bit_generator.state for layer in layers]}, root=0)
        if opt is not None:
            opt.t, opt.lr = small["t"], small["lr"]
        if scaler is not None:
            scaler.scale, scaler.good_steps, scaler.overflows = small["scaler"]
        model.init_rng.bit_generator.state = small["init"]
        model.data_rng.bit_generator.state = small["data"]
        for layer, state in zip(layers, small["layers"]):
            layer.rng.bit_generator.state = state

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
            initial_epoch: int = 0, doctor=False, detect_anomaly=False) -> History:
        """``Sequential.fit`` across ranks; ``batch_size`` is per rank (global batch N·batch_size).

        Every rank passes the same full data set.  Returns the same History on
        every rank, with the loss and accuracy of all ranks together.  ``doctor``
        and ``detect_anomaly`` work as in ``Sequential.fit``; the doctor prints
        on rank 0 only, and a NaN/Inf found on any rank ends every rank.
        """
        done = threading.Event()
        if self.step_timeout is not None and self.size > 1:
            threading.Thread(target=self._watchdog, args=(done,), daemon=True,
                             name="bpnet-watchdog").start()
        self._beat = time.monotonic()
        model = self.model
        patched_save = False
        try:
            if not self.is_root:
                verbose = 0
                model.save = lambda path: None      # only rank 0 writes checkpoints
                patched_save = True
            return self._fit(X, y, epochs, batch_size, validation_data, validation_split, shuffle,
                             callbacks, verbose, initial_epoch, doctor, detect_anomaly)
        except BaseException as exc:
            if self.size > 1:
                self._abort(exc)
            raise
        finally:
            done.set()
            if patched_save:
                del model.save

    def _fit(self, X, y, epochs, batch_size, validation_data, validation_split, shuffle, callbacks,
             verbose, initial_epoch, doctor=False, detect_anomaly=False):
        model = self.model
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer (per rank), got {batch_size!r}")
        self._where = "setup (data checks and the initial broadcast)"
        model._require_compiled()
        if doctor:
            from .doctor.callback import Doctor, attach_doctor
            callbacks = attach_doctor(model, doctor, X, y, callbacks)
            if not self.is_root:
                for cb in callbacks:
                    if isinstance(cb, Doctor):
                        cb.print_fn = None         # findings are kept in the history on every rank
        X, y = model._prepare(X, y)
        X, y, validation_data = _split_validation(X, y, validation_split, validation_data)
        if self.size > 1:
            self._check_same_data(X, y)
        self.broadcast_state()

        n, global_batch = len(X), batch_size * self.size
        steps = -(-n // global_batch)
        cbs = CallbackList(list(callbacks or []) + ([ProgressBar(epochs, steps)] if verbose else []))
        cbs.set_model(model)
        model.history = history = History()
        model.stop_training = False
        with model._training_session(detect_anomaly):
            cbs.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                self._where = f"epoch {epoch + 1}"
                cbs.on_epoch_begin(epoch)
                order = model.data_rng.permutation(n) if shuffle else np.arange(n)
                logs = self._train_epoch(X, y, order, batch_size, epoch, cbs)
                self.average_buffers()
                if validation_data is not None:
                    self._where = f"validation after epoch {epoch + 1}"
                    val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                    logs.update({f"val_{k}": v for k, v in val.items()})
                history.append(epoch, logs)
                cbs.on_epoch_end(epoch, logs)
                stop = self.allreduce_scalars([float(model.stop_training)], self.MPI.MAX)[0]
                model.stop_training = bool(stop)
                if model.stop_training:
                    break
            cbs.on_train_end()
        return history

    def _train_epoch(self, X, y, order, batch_size, epoch, cbs) -> dict:
        model, bk = self.model, self.model.backend
        n, size = len(X), self.size
        global_batch = batch_size * size
        want_acc = "accuracy" in model.metrics
        scaler = getattr(model, "loss_scaler", None)
        total_loss, total_weight, correct, seen = 0.0, 0.0, 0.0, 0.0
        stop_pending = 0.0
        start = time.perf_counter()
        for i, lo in enumerate(range(0, n, global_batch)):
            self._where = f"epoch {epoch + 1}, batch {i}"
            self._beat = time.monotonic()
            m = min(global_batch, n - lo)
            offset, count = (self.rank * batch_size, batch_size) if m == global_batch \
                else _shard(m, size, self.rank)
            idx = order[lo + offset: lo + offset + count]
            cbs.on_batch_begin(i)
            scaler_state = (scaler.scale, scaler.good_steps, scaler.overflows) if scaler else None
            loss_sum = n_correct = weight = 0.0
            if count:
                yb_dev = bk.asarray(np.take(y, idx, axis=0))
                loss, out = model.train_step(np.take(X, idx, axis=0), yb_dev)
                weight = model._batch_weight(count)   # what the loss divided by: count, or Σ class weights
                loss_sum = loss * weight
                if want_acc:
                    n_correct = float(model.loss.count_correct(out, yb_dev))
            else:                                  # a short last batch left this rank nothing
                self.model.step_grads[...] = 0
            overflow = float(getattr(model, "skip_step", False))
            # a stop asked for by any rank's callbacks in the previous step travels with the logs
            g_loss, g_correct, g_count, g_weight, g_stop, g_overflow = self.allreduce_scalars(
                [loss_sum, n_correct, count, weight, stop_pending, overflow])
            if g_stop:
                model.stop_training = True
                break
            if scaler is not None and size > 1:    # every rank backs off (or not) alike
                scaler.scale, scaler.good_steps, scaler.overflows = scaler_state
                scaler.update(found_inf=bool(g_overflow))
                model.skip_step = bool(g_overflow)
            # rank r's gradient is ∇(Σ_r ℓ_i)/w_r; the global mean gradient is Σ_r w_r ∇_r / Σ w_r
            equal = m == global_batch and model.loss.batch_weight is None
            self.allreduce_gradients(None if equal else size * weight / g_weight)
            batch_loss = g_loss / g_weight
            cbs.on_backward_end(i, {"loss": batch_loss})
            skipped = bool(getattr(model, "skip_step", False))
            model.skip_step = False
            if not skipped:
                model.optimizer.step()
                if getattr(model, "_anomaly", None) is not None:
                    model._anomaly.check_update(model)
            if not (skipped and not math.isfinite(batch_loss)):   # a rolled-back bad batch is not counted
                total_loss += g_loss
                total_weight += g_weight
                correct += g_correct
                seen += g_count
            cbs.on_batch_end(i, {"loss": batch_loss, "size": int(g_count), "skipped": skipped})
            stop_pending = float(model.stop_training)
            if stop_pending and size == 1:
                break
        logs = {"loss": total_loss / total_weight if total_weight else 0.0}
        if want_acc:
            logs["accuracy"] = correct / max(seen, 1)
        logs["lr"] = float(model.optimizer.lr)
        logs["time"] = time.perf_counter() - start
        return logs

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
