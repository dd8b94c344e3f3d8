"""Data, model and training recipe shared by the MPI scripts and the in-process reference runs.

The pytest side imports this module too, so both sides train exactly the same
model on exactly the same data.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from bpnet import SGD, Adam, CrossEntropy, Dense, Sequential, Tanh  # noqa: E402

N_SAMPLES = 205          # 205 = 6 global batches of 32 + a short batch of 13 (shards of 7 and 6)
PER_RANK_BATCH = 16


def make_data(n=N_SAMPLES, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    W = rng.normal(size=(features, classes))
    y = (X @ W + 0.5 * rng.normal(size=(n, classes))).argmax(axis=1)
    return X, y


CLASS_WEIGHTS = [1.0, 3.0, 0.5]


def make_model(dtype="float64", optimizer="adam", class_weights=None):
    model = Sequential([Dense(16, init="xavier_uniform"), Tanh(), Dense(3)],
                       seed=0, dtype=dtype, backend="numpy")
    opt = Adam(lr=1e-2) if optimizer == "adam" else SGD(lr=0.1, momentum=0.9)
    model.compile(loss=CrossEntropy(class_weights=class_weights), optimizer=opt)
    return model


def flat(model):
    return model.backend.to_numpy(model.flat_params).copy()
