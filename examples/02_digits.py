"""The main job: an MLP on scikit-learn's 8x8 digits (1797 real images).

Standardise on the training split only, train with Adam, report test
accuracy and the time taken.

    python examples/02_digits.py          # or: make demo
"""
import time

from bpnet import Adam, Dense, ReLU, Sequential
from bpnet.data import Standardizer, load_digits, train_test_split

X, y = load_digits()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, seed=0, stratify=True)
scaler = Standardizer().fit(X_train)          # statistics from the training split only
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

model = Sequential([Dense(128, init="he_normal"), ReLU(),
                    Dense(64, init="he_normal"), ReLU(),
                    Dense(10)], seed=0)
model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
model.preprocessor = scaler                   # saved with the model
model.build(X_train.shape[1:])
model.summary()

# the numba backend compiles its kernels on first use (cached on disk afterwards): do it up front
compile_s = model.backend.warmup(model.dtype) if hasattr(model.backend, "warmup") else 0.0

start = time.perf_counter()
history = model.fit(X_train, y_train, epochs=30, batch_size=64, validation_split=0.1)
elapsed = time.perf_counter() - start

result = model.evaluate(X_test, y_test)
print(f"\ntest accuracy {result['accuracy']:.2%}  (loss {result['loss']:.4f}) on {len(X_test)} held-out "
      f"images; training took {elapsed:.2f} s on the {model.backend.name} backend"
      + (f" (kernels compiled or loaded beforehand in {compile_s:.2f} s)" if compile_s else ""))
