"""Automatic repair: a broken run handed to bpnet.doctor.repair, which finds the cause and fixes it.

The breast-cancer features are fed raw (stds from 0.003 to 590) into an MLP
whose weights start at N(0, 1) and whose output ends in a Softmax in front of
CrossEntropy: three classic mistakes at once.  The repair trains the run as
given, reads the doctor's findings root cause first (data, then the output
layer and loss, then the gradients, then the learning rate), applies one
standard remedy at a time, keeps it when the validation metric improves, and
stops when the doctor is quiet.  The standardiser it adds travels with the
model, so the repaired model takes raw inputs.

    python examples/09_auto_repair.py
"""
import numpy as np

from bpnet import SGD, Dense, ReLU, Sequential, Softmax
from bpnet.data import load_breast_cancer, train_test_split
from bpnet.doctor import repair

X, y = load_breast_cancer()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=0, stratify=True)

model = Sequential([Dense(32, init="normal"), ReLU(), Dense(2, init="normal"), Softmax()], seed=0, backend="numpy")
model.compile(loss="cross_entropy", optimizer=SGD(lr=0.01))

with np.errstate(all="ignore"):
    report = repair(model, X_train, y_train, epochs=15, batch_size=32, validation_split=0.2, verbose=0)
print(report)

fixed = report.model                           # raw inputs: its preprocessor standardises them
print(f"\nrepaired: {report.fixed}; test accuracy {fixed.evaluate(X_test, y_test)['accuracy']:.3f} "
      f"after {len(report.attempts) - 1} attempts ({', '.join(report.remedies)})")
