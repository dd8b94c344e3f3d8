"""A rank fails mid-training; every rank must stop instead of waiting in a collective.

    mpiexec -n 2 python tests/mpi_scripts/fault.py OUTDIR raise   # rank 1 raises at step 3
    mpiexec -n 2 python tests/mpi_scripts/fault.py OUTDIR hang    # rank 1 stalls at step 3
    mpiexec -n 2 python tests/mpi_scripts/fault.py OUTDIR baddata # rank 1 holds other data
"""
import os
import sys
import time

from mpi4py import MPI
from mpi_common import PER_RANK_BATCH, make_data, make_model

from bpnet import Callback
from bpnet.distributed import DistributedTrainer

FAIL_RANK, FAIL_STEP = 1, 3
out, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD


class Fail(Callback):
    def on_batch_begin(self, batch, logs=None):
        if comm.rank == FAIL_RANK and batch == FAIL_STEP:
            if mode == "raise":
                raise RuntimeError(f"injected failure at step {FAIL_STEP}")
            time.sleep(120)                 # a stall with no error: only the watchdog can end it


X, y = make_data()
if mode == "baddata" and comm.rank == FAIL_RANK:
    X = X + 1.0                             # this rank loaded other data: sharding would mix data sets
model = make_model()
trainer = DistributedTrainer(model, step_timeout=2.0 if mode == "hang" else None)
trainer.fit(X, y, epochs=3, batch_size=PER_RANK_BATCH, callbacks=[Fail()], verbose=0)
with open(os.path.join(out, f"finished-rank{comm.rank}"), "w") as fh:   # must never be reached
    fh.write("finished\n")
