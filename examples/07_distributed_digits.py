"""Data-parallel training over MPI: the digits MLP on several processes.

Every rank runs this same script on the same data; each step, rank r computes
the gradient on its own slice of the global batch, one all-reduce averages the
gradients, and every rank applies the same update.  With per-rank batch B on N
ranks the result is the one you get from a single process with batch N·B.

    pip install 'bpnet-framework[mpi]'                                   # mpi4py + the mpich wheel (mpiexec)
    mpiexec -n 2 python examples/07_distributed_digits.py
    mpiexec -n 1 python examples/07_distributed_digits.py --resume   # continue on another rank count

Only rank 0 prints and writes the checkpoint (distributed_digits.npz).
"""
import argparse
import os
import time

from mpi4py import MPI

from bpnet import Adam, Dense, ReLU, Sequential
from bpnet.data import Standardizer, load_digits, train_test_split
from bpnet.distributed import DistributedTrainer, load_model

GLOBAL_BATCH = 64
CHECKPOINT = "distributed_digits.npz"

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--resume", action="store_true", help=f"continue from {CHECKPOINT} for --epochs more")
args = parser.parse_args()

comm = MPI.COMM_WORLD

# every rank loads the full data set; the trainer shards it per step
X, y = load_digits()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, seed=0, stratify=True)
scaler = Standardizer().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

resume = args.resume and os.path.exists(CHECKPOINT)
if resume:
    model = load_model(CHECKPOINT)          # rank 0 reads the file, every rank gets the state
    start_epoch = model.optimizer.t // -(-len(X_train) // GLOBAL_BATCH)   # steps taken / steps per epoch
else:
    model = Sequential([Dense(128, init="he_normal"), ReLU(),
                        Dense(64, init="he_normal"), ReLU(),
                        Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    model.preprocessor = scaler
    start_epoch = 0

# the global batch stays 64 whatever the number of ranks, so the run is the same
per_rank = GLOBAL_BATCH // comm.size
trainer = DistributedTrainer(model)
say = print if trainer.is_root else (lambda *a, **k: None)      # rank 0 speaks for all
if resume:
    say(f"resuming from {CHECKPOINT} (optimizer step {model.optimizer.t}) on {comm.size} rank(s)")
elif args.resume:
    say(f"no {CHECKPOINT} to resume from: training from the start")
t0 = time.perf_counter()
history = trainer.fit(X_train, y_train, epochs=start_epoch + args.epochs, initial_epoch=start_epoch,
                      batch_size=per_rank, verbose=1)
elapsed = time.perf_counter() - t0
trainer.save(CHECKPOINT)                     # rank 0 writes, atomically; the others wait for it
test = trainer.evaluate(X_test, y_test)      # each rank scores its share of the test set

say(f"\n{comm.size} rank(s) x batch {per_rank} (global {per_rank * comm.size}): "
    f"loss {history.history['loss'][-1]:.4f}, test accuracy {test['accuracy']:.2%} after "
    f"{start_epoch + args.epochs} epochs; {elapsed:.2f} s, gradient all-reduce "
    f"{1e3 * trainer.stats['allreduce_s']:.0f} ms in all; checkpoint {CHECKPOINT}")
