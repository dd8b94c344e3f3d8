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
from .strategy import MPIStrategy
from .trainer import DistributedTrainer, find_mpiexec, get_comm, load_model, mpi_available
from .strategy import _shard  # noqa: F401  (the split rule, tested directly)

__all__ = ["DistributedTrainer", "MPIStrategy", "load_model", "get_comm", "mpi_available", "find_mpiexec"]
