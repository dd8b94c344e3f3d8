"""N ranks x per-rank batch B; writes the weights and logs for comparison with 1 process x batch N*B.

    mpiexec -n 2 python tests/mpi_scripts/equivalence.py OUTDIR
"""
import os
import sys

import numpy as np
from mpi4py import MPI
from mpi_common import CLASS_WEIGHTS, PER_RANK_BATCH, flat, make_data, make_model

from bpnet import Callback
from bpnet.distributed import DistributedTrainer

out = sys.argv[1]
comm = MPI.COMM_WORLD
X, y = make_data()
Xv, yv = make_data(n=37, seed=1)
results = {}


class SavePerRank(Callback):
    """A checkpoint callback as users write it; only rank 0's model.save may touch the disk."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.save(os.path.join(out, f"callback-rank{comm.rank}.npz"))


for dtype, opt in (("float64", "adam"), ("float32", "adam"), ("float64", "sgd")):
    model = make_model(dtype, opt)
    if comm.rank == 1:                      # a different start on rank 1: the broadcast must fix it
        model.build(X.shape[1:])
        model.flat_params[...] += 1.0
    if dtype == "float64" and opt == "adam":    # the model.fit(..., distributed=True) entry point
        history = model.fit(X, y, epochs=3, batch_size=PER_RANK_BATCH, validation_data=(Xv, yv),
                            verbose=0, distributed=True)
    else:
        history = DistributedTrainer(model).fit(X, y, epochs=3, batch_size=PER_RANK_BATCH,
                                                validation_data=(Xv, yv), verbose=0,
                                                callbacks=[SavePerRank()] if opt == "sgd" else None)
    key = f"{dtype}_{opt}"
    results[f"{key}_params"] = flat(model)
    for name, values in history.history.items():
        results[f"{key}_{name}"] = np.asarray(values, dtype=np.float64)
# a class-weighted loss divides by Σ w over the batch: ranks must combine by those sums
model = make_model("float64", "adam", class_weights=CLASS_WEIGHTS)
history = DistributedTrainer(model).fit(X, y, epochs=3, batch_size=PER_RANK_BATCH, verbose=0)
results["weighted_params"] = flat(model)
results["weighted_loss"] = np.asarray(history.history["loss"], dtype=np.float64)
# float16 has no standard MPI type: it is reduced as float32 through a host buffer
half = np.full(5, comm.rank + 0.5, dtype=np.float16)
DistributedTrainer(model)._allreduce_(half, "half")
results["allreduce_float16"] = half
# every replica must hold the same weights: gather them on rank 0
gathered = comm.gather(results["float64_adam_params"], root=0)
if comm.rank == 0:
    results["replica_spread"] = np.asarray(max(np.abs(g - gathered[0]).max() for g in gathered))
    results["size"] = np.asarray(comm.size)
    np.savez(os.path.join(out, "equivalence.npz"), **results)
