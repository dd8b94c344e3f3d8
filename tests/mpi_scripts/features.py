"""Mixed precision, anomaly detection and the doctor under 2 ranks: every replica must stay identical.

    mpiexec -n 2 python tests/mpi_scripts/features.py OUTDIR

1. A float16 model with a LossScaler whose first scale overflows, trained with
   detect_anomaly and the doctor (which prints on rank 0 only).
2. A float16 regression whose targets overflow the scaled gradient on rank 1
   only, in one step: that step must be skipped, and the scale backed off, on
   every rank (rank 0 saw finite gradients of its own).
"""
import os
import sys

import numpy as np
from mpi4py import MPI
from mpi_common import PER_RANK_BATCH, make_data

from bpnet import Adam, Dense, Sequential, Tanh
from bpnet.doctor import Doctor
from bpnet.mixed_precision import LossScaler

out = sys.argv[1]
comm = MPI.COMM_WORLD
X, y = make_data()
model = Sequential([Dense(16), Tanh(), Dense(3)], seed=0, dtype="float16", backend="numpy")
model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-2),
              loss_scaler=LossScaler(init_scale=2.0 ** 20, growth_interval=4))
findings = []
history = model.fit(X, y, epochs=4, batch_size=PER_RANK_BATCH, verbose=0, distributed=True,
                    detect_anomaly=True, doctor=Doctor(print_fn=findings.append))
results = {"loss": np.asarray(history.history["loss"])}


def collect(name, model, printed=0):
    scaler = model.loss_scaler
    state = (scaler.master_params.copy(), scaler.scale, scaler.good_steps, scaler.overflows, printed)
    gathered = comm.gather(state, root=0)
    if comm.rank == 0:
        masters = [g[0] for g in gathered]
        results.update({f"{name}_master_spread": max(np.abs(m - masters[0]).max() for m in masters),
                        f"{name}_finite": np.isfinite(masters[0]).all(),
                        f"{name}_scales": [g[1] for g in gathered], f"{name}_overflows": [g[3] for g in gathered],
                        f"{name}_good_steps": [g[2] for g in gathered], f"{name}_printed": [g[4] for g in gathered]})


collect("natural", model, len(findings))

# 2: rows 48..63 are rank 1's half of global batch 1 (no shuffling): their targets overflow there only
Y = (X @ np.random.default_rng(2).normal(size=(X.shape[1], 3))).astype(np.float32)
Y[48:64] = 3.0e4
reg = Sequential([Dense(3)], seed=0, dtype="float16", backend="numpy")
reg.compile(loss="mse", optimizer=Adam(lr=1e-2), loss_scaler=LossScaler(init_scale=2.0 ** 8, growth_interval=1000))
reg.fit(X, Y, epochs=1, batch_size=PER_RANK_BATCH, shuffle=False, verbose=0, distributed=True)
collect("one_rank", reg)
if comm.rank == 0:
    np.savez(os.path.join(out, "features.npz"), **results)
