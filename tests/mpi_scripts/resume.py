"""Train on N ranks and checkpoint, or resume from that checkpoint on any number of ranks.

    mpiexec -n 2 python tests/mpi_scripts/resume.py OUTDIR train    # epochs 1-2, writes ckpt.npz
    mpiexec -n 1 python tests/mpi_scripts/resume.py OUTDIR resume   # epochs 3-4 from ckpt.npz

The global batch stays 2 * PER_RANK_BATCH whatever the number of ranks.
"""
import os
import sys

import numpy as np
from mpi4py import MPI
from mpi_common import PER_RANK_BATCH, flat, make_data, make_model

from bpnet.distributed import DistributedTrainer, load_model

out, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
GLOBAL_BATCH = 2 * PER_RANK_BATCH
ckpt = os.path.join(out, "ckpt.npz")
X, y = make_data()
if mode == "train":
    model = make_model()
    trainer = DistributedTrainer(model)
    trainer.fit(X, y, epochs=2, batch_size=GLOBAL_BATCH // comm.size, verbose=0)
    trainer.save(ckpt)
else:
    model = load_model(ckpt)
    trainer = DistributedTrainer(model)
    history = trainer.fit(X, y, epochs=4, initial_epoch=2, batch_size=GLOBAL_BATCH // comm.size, verbose=0)
    if trainer.is_root:
        np.savez(os.path.join(out, "resumed.npz"), params=flat(model), size=comm.size,
                 loss=np.asarray(history.history["loss"]))
