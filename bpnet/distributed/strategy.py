"""``MPIStrategy``: how bpnet's one training loop runs over MPI ranks, and ``fit(distributed=True)``."""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager

import numpy as np

from ..training import StepStats, Strategy, register_fit_option


def _shard(m: int, size: int, rank: int) -> tuple[int, int]:
    """Start and length of rank's part of m items split into ``size`` near-equal pieces."""
    base, extra = divmod(m, size)
    return rank * base + min(rank, extra), base + (rank < extra)


class MPIStrategy(Strategy):
    """The training loop's MPI side: shards of every global batch, and sums over the ranks.

    Every rank draws the same permutation and takes its slice of each global
    batch of N·B samples; after backward the per-step numbers (loss sum,
    weight, correct, count, a pending stop, a loss-scaler overflow) and the
    gradients are all-reduced, so every replica applies the same update.
    """

    def __init__(self, trainer):
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
    """``fit(distributed=True)`` (or an mpi4py communicator): train through :class:`MPIStrategy`.

    (``fit`` has checked ``batch_size``, the per-rank batch, with its other arguments.)"""
    from .trainer import DistributedTrainer
    trainer = DistributedTrainer(loop.model, comm=None if distributed is True else distributed)
    loop.strategy = MPIStrategy(trainer)
    if not trainer.is_root:
        loop.verbose = 0


register_fit_option("distributed", _fit_plugin)
