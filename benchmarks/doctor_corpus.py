"""An evaluation corpus for the doctor: healthy runs and runs with one injected fault each.

Every case is a small deterministic ``fit(..., doctor=Doctor(print_fn=None))``
(seconds at most).  A broken case names the finding code(s) that are its root
cause: ``expected[0]`` is the cause, further codes are accepted names for the
same cause (e.g. a learning rate so high that the loss becomes NaN).

The cases are NOT the failure lab's scenarios: other data sets (iris, wine,
breast cancer, digits, diabetes, moons, spirals, circles, blobs, synthetic
regression), architectures and optimizers, and faults transcribed from
public bug collections (DeepFD's Stack Overflow cases, AUTOTRAINER's
Circle/Blob models).

Split rule (fixed before any tuning): within each of the healthy and the
broken lists, in definition order, every third case (index % 3 == 2) is
held out; the rest is the tuning part.  ``cases(part="tune"|"held_out"|"all")``.

Scoring (:func:`score`): a finding counts when its severity is warning or
error.  A healthy run with any such finding is a false alarm; a broken run is
detected when one of its expected codes is reported; its root cause is first
when the first counted finding in ``history.findings`` has an expected code.
Per-code precision is taken over findings reported as a root cause (those
with no ``caused_by``); recall over the broken runs whose cause is that code.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

import bpnet
from bpnet import (ELU, RNN, SGD, Adam, AdamW, BatchNorm1d, Callback, CosineAnnealing, CrossEntropy, Dense,
                   Dropout, EarlyStopping, ExponentialLR, FocalLoss, GradientClipping, LeakyReLU, LinearWarmup,
                   ReduceLROnPlateau, ReLU, Residual, RMSProp, Sequential, Sigmoid, Softmax, StepLR, Tanh)
from bpnet.data import Standardizer, one_hot, train_test_split
from bpnet.errors import BpnetError
from bpnet.layers.activations import Activation
from bpnet.layers.base import Layer

COUNTED = ("error", "warning")


@dataclass
class Case:
    name: str
    healthy: bool
    build: object = field(repr=False)        # () -> dict(model=..., X=..., y=..., fit=dict(...))
    expected: tuple = ()
    note: str = ""
    index: int = 0                            # position within its list (healthy or broken)

    @property
    def held_out(self) -> bool:
        return self.index % 3 == 2


HEALTHY: list[Case] = []
BROKEN: list[Case] = []


def healthy(name, note=""):
    def register(fn):
        HEALTHY.append(Case(name, True, fn, (), note, len(HEALTHY)))
        return fn
    return register


def broken(name, *expected, note=""):
    def register(fn):
        BROKEN.append(Case(name, False, fn, tuple(expected), note, len(BROKEN)))
        return fn
    return register


def cases(part: str = "all") -> list[Case]:
    every = HEALTHY + BROKEN
    if part == "all":
        return every
    if part == "tune":
        return [c for c in every if not c.held_out]
    if part == "held_out":
        return [c for c in every if c.held_out]
    raise ValueError(f"part={part!r}: use 'all', 'tune' or 'held_out'")


# -- data -------------------------------------------------------------------------------
def _split(X, y, seed=0, test_size=0.25, scale=True, stratify=True):
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=test_size, seed=seed,
                                              stratify=stratify and y.ndim == 1 and y.dtype.kind in "iu")
    if scale:
        sc = Standardizer().fit(X_tr)
        X_tr, X_va = sc.transform(X_tr), sc.transform(X_va)
    return (X_tr.astype(np.float32), y_tr), (X_va.astype(np.float32), y_va)


@lru_cache(maxsize=None)
def iris(seed=0, test_size=0.25):
    return _split(*bpnet.datasets.load_iris(), seed=seed, test_size=test_size)


@lru_cache(maxsize=None)
def wine(seed=0):
    return _split(*bpnet.datasets.load_wine(), seed=seed)


@lru_cache(maxsize=None)
def cancer(seed=0, scale=True):
    return _split(*bpnet.datasets.load_breast_cancer(), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def digits(n=600, seed=0):
    X, y = bpnet.datasets.load_digits()
    return _split(X[:n] / 16.0, y[:n], seed=seed, scale=False)


@lru_cache(maxsize=None)
def diabetes(seed=0):
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    y = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    return _split(X, y, seed=seed)


@lru_cache(maxsize=None)
def moons(n=300, noise=0.15, seed=0):
    return _split(*bpnet.datasets.make_moons(n, noise=noise, seed=seed), seed=seed)


@lru_cache(maxsize=None)
def spirals(n=300, seed=0):
    return _split(*bpnet.datasets.make_spirals(n, n_classes=3, noise=0.15, seed=seed), seed=seed)


@lru_cache(maxsize=None)
def circles(n=300, seed=0, scale=True):
    from sklearn.datasets import make_circles
    X, y = make_circles(n, noise=0.05, factor=0.5, random_state=seed)
    return _split(X, y.astype(np.int64), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def blobs(n=300, seed=0, scale=True, centers=3):
    from sklearn.datasets import make_blobs
    X, y = make_blobs(n, n_features=4, centers=centers, random_state=seed)
    return _split(X, y.astype(np.int64), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def regression(n=400, d=6, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = (np.tanh(X @ w / 2) + 0.3 * X[:, 0] * X[:, 1] + noise * rng.standard_normal(n)).reshape(-1, 1)
    return _split(X, y.astype(np.float32), seed=seed, scale=False)


@lru_cache(maxsize=None)
def sequences(n=256, T=8, seed=0):
    """Sign of the sum of a sequence of 8 steps of 2 features: a task an RNN learns quickly."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, 2)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    k = n * 3 // 4
    return (X[:k], y[:k]), (X[k:], y[k:])


def mlp(hidden, out, act=ReLU, init="he_normal", seed=0, **kw):
    layers = []
    for h in hidden:
        layers += [Dense(h, init=init), act()]
    return Sequential(layers + [Dense(out, init=init if init != "he_normal" else "xavier_uniform")],
                      seed=seed, backend="numpy", **kw)


def spec(model, train, val=None, loss="cross_entropy", optimizer=None, epochs=20, batch_size=32, **fit):
    model.compile(loss=loss, optimizer=optimizer or Adam(lr=1e-2))
    X, y = train
    return {"model": model, "X": X, "y": y,
            "fit": {"epochs": epochs, "batch_size": batch_size, "validation_data": val, **fit}}


def scaled_init(scale):
    def init(shape, rng, dtype):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    return init


# -- user-written code (the kind the doctor must check itself) ---------------------------
class SwishByHand(Activation):
    """A user's activation with a correct derivative: y = z σ(z), f' = σ + y(1 - σ) (needs z: kept)."""
    kind = "swish_by_hand"

    def f(self, xp, z):
        self._z = z
        return z / (1.0 + xp.exp(-z))

    def dz(self, xp, y, dy):
        s = 1.0 / (1.0 + xp.exp(-self._z))
        return dy * (s + y * (1.0 - s))


class SoftplusWrong(Activation):
    """A user's softplus, y = log(1 + e^z), whose derivative is written as e^z (should be σ(z))."""
    kind = "softplus_wrong"

    def f(self, xp, z):
        self._z = z
        return xp.log1p(xp.exp(z))

    def dz(self, xp, y, dy):
        return dy * xp.exp(self._z)


class ScaleShiftWrong(Layer):
    """A user's layer y = x ⊙ a + c whose backward forgets to multiply dx by a."""

    def _create(self, input_shape, ctx):
        self._add_param("a", np.full(input_shape, 1.5))
        self._add_param("c", np.zeros(input_shape))

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.x = x
        return x * self.params["a"] + self.params["c"]

    def backward(self, dy):
        self.grads["a"][...] = (dy * self.x).sum(axis=0)
        self.grads["c"][...] = dy.sum(axis=0)
        return dy                       # the bug: dx = dy * a


class AscentSGD(SGD):
    """A user's optimizer that adds the gradient (w += lr g): gradient ascent."""

    def _update(self, p, g):
        p += self.lr * g


class KeepOldGradients(Callback):
    """Adds every earlier gradient to the current one: a hand-written loop that never zeroes the grads."""

    def __init__(self):
        self.total = None

    def on_backward_end(self, batch, logs=None):
        g = self.model.flat_grads
        if self.total is None:
            self.total = g.copy()
        else:
            self.total += g
            g[...] = self.total


# == healthy runs ========================================================================
@healthy("iris_adam_relu")
def _():
    return spec(mlp((16,), 3), *iris(), epochs=40, batch_size=16)


@healthy("iris_tiny_noisy_validation", "38 validation samples; the issue's OVERFITTING false alarm")
def _():
    return spec(mlp((32, 32), 3), *iris(test_size=0.25), epochs=80, batch_size=8)


@healthy("wine_sgd_momentum")
def _():
    return spec(mlp((16,), 3, act=Tanh, init="xavier_uniform"), *wine(),
                optimizer=SGD(lr=0.05, momentum=0.9), epochs=30, batch_size=16)


@healthy("breast_cancer_adam", "standardised heavy-tailed features (robust z up to ~36)")
def _():
    return spec(mlp((16,), 2), *cancer(), epochs=20)


@healthy("breast_cancer_bce")
def _():
    (X, y), (Xv, yv) = cancer()
    f = lambda a: a.astype(np.float32).reshape(-1, 1)  # noqa: E731
    return spec(mlp((8,), 1), (X, f(y)), (Xv, f(yv)), loss="bce_with_logits", epochs=20)


@healthy("digits_adam")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=Adam(lr=3e-3), epochs=20)


@healthy("digits_rmsprop")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=RMSProp(lr=1e-3), epochs=20)


@healthy("diabetes_mse")
def _():
    return spec(mlp((16,), 1), *diabetes(), loss="mse", optimizer=Adam(lr=3e-3), epochs=30)


@healthy("diabetes_mae_linear")
def _():
    return spec(Sequential([Dense(1)], seed=0), *diabetes(), loss="mae", optimizer=SGD(lr=0.05), epochs=30)


@healthy("moons_tanh_sgd")
def _():
    return spec(mlp((16, 16), 2, act=Tanh, init="xavier_uniform"), *moons(), optimizer=SGD(lr=0.1), epochs=40)


@healthy("moons_elu")
def _():
    return spec(mlp((16,), 2, act=ELU), *moons(), epochs=30)


@healthy("spirals_deep_relu")
def _():
    return spec(mlp((32, 32, 32), 3), *spirals(), optimizer=Adam(lr=5e-3), epochs=60)


@healthy("circles_leaky_relu")
def _():
    return spec(mlp((16, 16), 2, act=LeakyReLU), *circles(), epochs=40)


@healthy("blobs_sigmoid")
def _():
    return spec(mlp((8,), 3, act=Sigmoid, init="xavier_uniform"), *blobs(), epochs=30)


@healthy("synthetic_regression_linear")
def _():
    return spec(Sequential([Dense(1)], seed=0), *regression(), loss="mse", optimizer=SGD(lr=0.05), epochs=20)


@healthy("synthetic_regression_tanh")
def _():
    return spec(mlp((32,), 1, act=Tanh, init="xavier_uniform"), *regression(), loss="mse",
                optimizer=Adam(lr=3e-3), epochs=40)


@healthy("moons_batchnorm")
def _():
    m = Sequential([Dense(16, init="he_normal"), BatchNorm1d(), ReLU(), Dense(16, init="he_normal"),
                    BatchNorm1d(), ReLU(), Dense(2)], seed=0)
    return spec(m, *moons(), epochs=25)


@healthy("digits_dropout")
def _():
    m = Sequential([Dense(64, init="he_normal"), ReLU(), Dropout(0.3), Dense(10)], seed=0)
    return spec(m, *digits(), optimizer=Adam(lr=3e-3), epochs=20)


@healthy("spirals_residual")
def _():
    m = Sequential([Dense(32, init="he_normal"), ReLU(),
                    Residual([Dense(32, init="he_normal"), ReLU(), Dense(32, init="he_normal")]), ReLU(),
                    Residual([Dense(32, init="he_normal"), ReLU(), Dense(32, init="he_normal")]), ReLU(),
                    Dense(3)], seed=0)
    return spec(m, *spirals(), optimizer=Adam(lr=3e-3), epochs=50)


@healthy("sequence_rnn")
def _():
    return spec(Sequential([RNN(16), Dense(2)], seed=0), *sequences(), optimizer=Adam(lr=1e-2), epochs=15)


@healthy("wine_steplr")
def _():
    return spec(mlp((16,), 3), *wine(), optimizer=SGD(lr=0.1, momentum=0.9), epochs=30, batch_size=16,
                callbacks=[StepLR(10, gamma=0.3)])


@healthy("moons_cosine")
def _():
    return spec(mlp((16, 16), 2), *moons(), optimizer=SGD(lr=0.2, momentum=0.5), epochs=30,
                callbacks=[CosineAnnealing(T_max=30)])


@healthy("circles_exponential_lr")
def _():
    return spec(mlp((16,), 2, act=Tanh, init="xavier_uniform"), *circles(), optimizer=Adam(lr=2e-2), epochs=30,
                callbacks=[ExponentialLR(0.93)])


@healthy("digits_warmup")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=Adam(lr=5e-3), epochs=15,
                callbacks=[LinearWarmup(50, per_step=True)])


@healthy("cancer_early_stopping")
def _():
    return spec(mlp((32, 32), 2), *cancer(), epochs=60,
                callbacks=[EarlyStopping(patience=5, restore_best_weights=True)])


@healthy("regression_reduce_lr")
def _():
    return spec(mlp((32,), 1), *regression(), loss="mse", optimizer=Adam(lr=1e-2), epochs=40,
                callbacks=[ReduceLROnPlateau(patience=3)])


@healthy("tiny_net_blobs", "two hidden units")
def _():
    return spec(mlp((2,), 3, act=Tanh, init="xavier_uniform"), *blobs(), epochs=40)


@healthy("deep_relu_he", "six hidden layers")
def _():
    return spec(mlp((24,) * 6, 2), *moons(), optimizer=Adam(lr=3e-3), epochs=30)


@healthy("full_batch_sgd")
def _():
    (X, y), val = iris()
    return spec(mlp((16,), 3), (X, y), val, optimizer=SGD(lr=0.5), epochs=150, batch_size=len(X))


@healthy("batch_one_sgd")
def _():
    (X, y), (Xv, yv) = moons(n=80)
    return spec(mlp((8,), 2), (X, y), (Xv, yv), optimizer=SGD(lr=0.02), epochs=15, batch_size=1)


@healthy("wine_adamw")
def _():
    return spec(mlp((32,), 3), *wine(), optimizer=AdamW(lr=1e-2, weight_decay=1e-2), epochs=30, batch_size=16)


@healthy("cancer_focal")
def _():
    return spec(mlp((16,), 2), *cancer(), loss=FocalLoss(), epochs=20)


@healthy("iris_one_hot_targets")
def _():
    (X, y), (Xv, yv) = iris()
    return spec(mlp((16,), 3), (X, one_hot(y, 3)), (Xv, one_hot(yv, 3)), epochs=40, batch_size=16)


@healthy("digits_long_adam", "the issue's late Adam spike after convergence")
def _():
    return spec(mlp((64,), 10), *digits(n=800), optimizer=Adam(lr=1e-2), epochs=40)


@healthy("iris_converged", "an easy task trained long past convergence")
def _():
    (X, y), (Xv, yv) = iris()
    keep, keepv = y != 2, yv != 2          # setosa vs versicolor: linearly separable
    return spec(mlp((8,), 2), (X[keep], y[keep]), (Xv[keepv], yv[keepv]), optimizer=Adam(lr=1e-2),
                epochs=60, batch_size=16)


@healthy("xor_tanh")
def _():
    X, y = bpnet.datasets.xor(200, noise=0.1, seed=0)
    X = X.astype(np.float32)
    return spec(mlp((8,), 2, act=Tanh, init="xavier_uniform"), (X[:150], y[:150]), (X[150:], y[150:]),
                optimizer=Adam(lr=2e-2), epochs=40, batch_size=16)


@healthy("float64_model")
def _():
    return spec(mlp((16,), 3, dtype="float64"), *wine(), epochs=20, batch_size=16)


@healthy("mild_imbalance", "3 to 1, not worth a warning")
def _():
    (X, y), (Xv, yv) = moons(n=400)
    keep = (y == 0) | (np.arange(len(y)) % 3 == 0)
    return spec(mlp((16,), 2), (X[keep], y[keep]), (Xv, yv), epochs=30)


@healthy("gradient_clipping")
def _():
    return spec(mlp((32, 32), 3), *spirals(), optimizer=Adam(lr=1e-2), epochs=40,
                callbacks=[GradientClipping(1.0)])


@healthy("sgd_nesterov")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=SGD(lr=0.05, momentum=0.9, nesterov=True), epochs=15)


@healthy("wine_validation_split")
def _():
    (X, y), _ = wine()
    return spec(mlp((16,), 3), (X, y), None, epochs=30, batch_size=16, validation_split=0.2)


@healthy("user_activation_correct", "a user-written activation whose derivative is right")
def _():
    m = Sequential([Dense(16), SwishByHand(), Dense(2)], seed=0)
    return spec(m, *moons(), epochs=25)


@healthy("stacked_rnn_tanh")
def _():
    return spec(Sequential([RNN(8, return_sequences=True), RNN(8), Dense(2)], seed=0), *sequences(),
                optimizer=Adam(lr=1e-2), epochs=12)


@healthy("regression_deep_elu")
def _():
    return spec(mlp((32, 32, 32), 1, act=ELU), *regression(), loss="mse", optimizer=Adam(lr=2e-3), epochs=30)


@healthy("cancer_sgd_plain")
def _():
    return spec(mlp((16,), 2), *cancer(), optimizer=SGD(lr=0.05), epochs=25)


# == broken runs =========================================================================
@broken("lr_too_high_sgd_moons", "LR_TOO_HIGH", "NONFINITE_LOSS")
def _():
    return spec(mlp((16,), 2), *moons(), optimizer=SGD(lr=8.0), epochs=20)


@broken("lr_too_high_adam_digits", "LR_TOO_HIGH")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=Adam(lr=0.5), epochs=15)


@broken("sgd_lr_one_relu", "LR_TOO_HIGH", "DYING_RELU",
        note="the issue's LR_TOO_LOW beside DYING_RELU contradiction")
def _():
    return spec(mlp((32, 32), 3), *spirals(), optimizer=SGD(lr=3.0), epochs=20, batch_size=16)


@broken("lr_too_low_sgd", "LR_TOO_LOW")
def _():
    return spec(mlp((16,), 3), *iris(), optimizer=SGD(lr=1e-6), epochs=20, batch_size=16)


@broken("lr_too_low_adam", "LR_TOO_LOW")
def _():
    return spec(mlp((32,), 10), *digits(), optimizer=Adam(lr=1e-7), epochs=15)


@broken("deep_sigmoid_vanishing", "VANISHING_GRADIENTS", "SATURATED_ACTIVATIONS")
def _():
    return spec(mlp((16,) * 8, 2, act=Sigmoid, init=scaled_init(1.0)), *moons(), optimizer=SGD(lr=0.05),
                epochs=20)


@broken("exploding_init_deep_relu", "EXPLODING_GRADIENTS", "NONFINITE_LOSS")
def _():
    return spec(mlp((32,) * 6, 3, init=scaled_init(1.5)), *spirals(), optimizer=SGD(lr=0.01), epochs=10)


@broken("dying_relu_negative_bias", "DYING_RELU")
def _():
    m = Sequential([Dense(32, init="he_normal", bias_init=lambda s, r, d: np.full(s, -8.0, d)), ReLU(),
                    Dense(3)], seed=0)
    return spec(m, *spirals(), epochs=15)


@broken("zero_init_symmetry", "SYMMETRIC_WEIGHTS")
def _():
    return spec(mlp((16, 16), 3, init="zeros"), *wine(), optimizer=SGD(lr=0.1), epochs=15, batch_size=16)


@broken("constant_init_symmetry", "SYMMETRIC_WEIGHTS")
def _():
    return spec(mlp((16,), 2, act=Tanh, init=lambda s, r, d: np.full(s, 0.1, d)), *moons(), epochs=15)


@broken("unnormalized_inputs_x1000", "UNNORMALIZED_INPUTS")
def _():
    (X, y), (Xv, yv) = wine()
    return spec(mlp((16,), 3), (X * 1000, y), (Xv * 1000, yv), optimizer=SGD(lr=0.01), epochs=15)


@broken("validation_unscaled", "UNNORMALIZED_INPUTS", note="training standardised, validation raw")
def _():
    (X, y), _ = cancer()
    (_, _), (Xv_raw, yv) = cancer(scale=False)
    return spec(mlp((16,), 2), (X, y), (Xv_raw, yv), epochs=15)


@broken("nan_in_inputs", "NONFINITE_DATA")
def _():
    (X, y), val = wine()
    X = X.copy()
    X[[3, 17], 2] = np.nan
    return spec(mlp((16,), 3), (X, y), val, epochs=10)


@broken("nan_in_validation", "NONFINITE_DATA")
def _():
    train, (Xv, yv) = iris()
    Xv = Xv.copy()
    Xv[5, 1] = np.nan
    return spec(mlp((16,), 3), train, (Xv, yv), epochs=10)


@broken("outliers_unit_error", "OUTLIERS", note="a few rows recorded in the wrong unit (x1000)")
def _():
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True, scaled=False)     # raw: age in years, bmi, blood pressure ...
    X = X.copy()
    X[[4, 40, 90], 2] *= 1000                               # bmi recorded in the wrong unit in three rows
    y = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    (X, y), val = _split(X, y)                              # standardised with the bad rows in
    return spec(mlp((16,), 1), (X, y), val, loss="mse", optimizer=SGD(lr=0.01), epochs=20)


@broken("one_based_labels", "LABEL_FORMAT")
def _():
    (X, y), (Xv, yv) = iris()
    return spec(Sequential([Dense(16), ReLU(), Dense(4)], seed=0), (X, y + 1), (Xv, yv + 1), epochs=15)


@broken("float_class_ids_mse", "LABEL_FORMAT", "OUTPUT_LOSS_MISMATCH",
        note="class ids 0.0, 1.0, 2.0 fed to a one-output MSE model")
def _():
    (X, y), (Xv, yv) = iris()
    f = lambda a: a.astype(np.float32).reshape(-1, 1)  # noqa: E731
    return spec(mlp((16,), 1), (X, f(y)), (Xv, f(yv)), loss="mse", epochs=20)


@broken("double_softmax", "DOUBLE_SOFTMAX")
def _():
    m = Sequential([Dense(32), ReLU(), Dense(10), Softmax()], seed=0)
    return spec(m, *digits(), epochs=10)


@broken("softmax_single_unit_bce", "OUTPUT_LOSS_MISMATCH", note="Dense(1) + softmax: the output is always 1")
def _():
    (X, y), (Xv, yv) = cancer()
    f = lambda a: a.astype(np.float32).reshape(-1, 1)  # noqa: E731
    m = Sequential([Dense(16), ReLU(), Dense(1), Softmax()], seed=0)
    return spec(m, (X, f(y)), (Xv, f(yv)), loss="mse", epochs=10)


@broken("softmax_mse_one_hot", "OUTPUT_LOSS_MISMATCH", note="a classifier trained on a regression loss")
def _():
    (X, y), (Xv, yv) = wine()
    m = Sequential([Dense(16), ReLU(), Dense(3), Softmax()], seed=0)
    return spec(m, (X, one_hot(y, 3)), (Xv, one_hot(yv, 3)), loss="mse", optimizer=SGD(lr=0.1), epochs=20)


@broken("deepfd_softmax_mse_lr3", "OUTPUT_LOSS_MISMATCH", "LR_TOO_HIGH", note="DeepFD: MSE after softmax, lr 3")
def _():
    (X, y), (Xv, yv) = digits()
    m = Sequential([Dense(32), Sigmoid(), Dense(10), Softmax()], seed=0)
    return spec(m, (X, one_hot(y, 10)), (Xv, one_hot(yv, 10)), loss="mse", optimizer=SGD(lr=3.0), epochs=15)


@broken("deepfd_dense1_softmax_ce", "OUTPUT_LOSS_MISMATCH", "LABEL_FORMAT", note="DeepFD: Dense(1) + softmax")
def _():
    (X, y), (Xv, yv) = moons()
    m = Sequential([Dense(16), ReLU(), Dense(1), Softmax()], seed=0)
    f = lambda a: a.astype(np.float32).reshape(-1, 1)  # noqa: E731
    return spec(m, (X, f(y)), (Xv, f(yv)), loss="bce_with_logits", epochs=10)


@broken("deepfd_multilabel_softmax_ce", "LABEL_FORMAT", note="multi-hot targets with softmax cross-entropy")
def _():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Y = (X[:, :4] > 0).astype(np.float32)           # several labels on at once
    return spec(mlp((16,), 4), (X[:240], Y[:240]), (X[240:], Y[240:]), loss=CrossEntropy(), epochs=15)


@broken("deepfd_raw_pixels", "UNNORMALIZED_INPUTS", note="8x8 digits as 0..255 intensities, sigmoid net")
def _():
    (X, y), (Xv, yv) = digits()
    return spec(mlp((32,), 10, act=Sigmoid, init="xavier_uniform"), (X * 255, y), (Xv * 255, yv),
                optimizer=SGD(lr=0.1), epochs=10)


@broken("deepfd_unscaled_x_and_y", "UNNORMALIZED_INPUTS", "UNNORMALIZED_TARGETS",
        note="house-price style: features in the thousands, target in the hundreds of thousands")
def _():
    rng = np.random.default_rng(0)
    X = rng.uniform([500, 1, 1900], [4000, 6, 2020], size=(400, 3))
    y = (100 * X[:, 0] + 2e4 * X[:, 1] + 50 * (X[:, 2] - 1900) + rng.normal(0, 1e4, 400)).reshape(-1, 1)
    X, y = X.astype(np.float32), y.astype(np.float32)
    return spec(mlp((16,), 1), (X[:320], y[:320]), (X[320:], y[320:]), loss="mse",
                optimizer=SGD(lr=1e-3), epochs=10)


@broken("deepfd_sigmoid_stack", "VANISHING_GRADIENTS", "SATURATED_ACTIVATIONS",
        note="five sigmoid hidden layers, plain SGD")
def _():
    return spec(mlp((20,) * 5, 10, act=Sigmoid, init="xavier_uniform"), *digits(), optimizer=SGD(lr=0.01),
                epochs=15)


@broken("autotrainer_circle_x100", "UNNORMALIZED_INPUTS", note="make_circles with X x100, deep 5-unit stack")
def _():
    (X, y), (Xv, yv) = circles(scale=False)
    return spec(mlp((5,) * 6, 2), (X * 100, y), (Xv * 100, yv), optimizer=SGD(lr=0.01), epochs=15)


@broken("autotrainer_blob_x100", "UNNORMALIZED_INPUTS", note="make_blobs with X x100, deep 5-unit stack")
def _():
    (X, y), (Xv, yv) = blobs(scale=False)
    return spec(mlp((5,) * 6, 3, act=Tanh, init="xavier_uniform"), (X * 100, y), (Xv * 100, yv),
                optimizer=SGD(lr=0.01), epochs=15)


@broken("user_layer_wrong_backward", "WRONG_GRADIENT")
def _():
    m = Sequential([Dense(16), ReLU(), ScaleShiftWrong(), Dense(2)], seed=0)
    return spec(m, *moons(), epochs=15)


@broken("user_activation_wrong_derivative", "WRONG_GRADIENT")
def _():
    m = Sequential([Dense(16), SoftplusWrong(), Dense(3)], seed=0)
    return spec(m, *wine(), epochs=15, batch_size=16)


@broken("user_optimizer_ascent", "GRADIENT_ASCENT")
def _():
    return spec(mlp((16,), 3), *iris(), optimizer=AscentSGD(lr=0.05), epochs=10, batch_size=16)


@broken("fp16_adam_eps", "EPS_UNDERFLOW", note="float16 model, Adam's eps 1e-8 rounds to 0")
def _():
    return spec(mlp((16,), 3, dtype="float16"), *iris(), optimizer=Adam(lr=1e-3), epochs=5)


@broken("class_imbalance_20_to_1", "CLASS_IMBALANCE")
def _():
    (X, y), (Xv, yv) = cancer()
    rng = np.random.default_rng(0)
    minority = np.flatnonzero(y == 0)
    keep = np.concatenate([np.flatnonzero(y == 1), rng.choice(minority, 12, replace=False)])
    keep.sort()
    return spec(mlp((16,), 2), (X[keep], y[keep]), (Xv, yv), epochs=15)


@broken("overfitting_small_train", "OVERFITTING", note="60 noisy-label samples memorised by a wide net")
def _():
    (X, y), (Xv, yv) = moons(n=400, noise=0.3)
    y = y.copy()
    y[:60:5] = 1 - y[:60:5]                      # 20% of the training labels flipped
    return spec(mlp((128, 128), 2), (X[:60], y[:60]), (Xv, yv), optimizer=Adam(lr=1e-2), epochs=150,
                batch_size=16)


@broken("forgot_zero_grad", "STEP_SIZE")
def _():
    return spec(mlp((16,), 3), *iris(), optimizer=SGD(lr=0.01), epochs=15, batch_size=16,
                callbacks=[KeepOldGradients()])


@broken("rnn_exploding", "EXPLODING_THROUGH_TIME", "EXPLODING_GRADIENTS", "NONFINITE_LOSS")
def _():
    (X, y), (Xv, yv) = sequences(T=20)
    rnn = RNN(16, recurrent_init=lambda s, r, d: (np.linalg.qr(r.standard_normal(s))[0] * 1.8).astype(d))
    return spec(Sequential([rnn, Dense(2)], seed=0), (X * 0.05, y), (Xv * 0.05, yv), optimizer=SGD(lr=0.1),
                epochs=8)


@broken("rnn_vanishing", "VANISHING_THROUGH_TIME")
def _():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((256, 30, 2)).astype(np.float32)
    y = (X[:, 0, 0] > 0).astype(np.int64)          # the label is at the first of 30 steps
    rnn = RNN(16, recurrent_init=lambda s, r, d: (r.standard_normal(s) * 0.05).astype(d))
    return spec(Sequential([rnn, Dense(2)], seed=0), (X[:192], y[:192]), (X[192:], y[192:]),
                optimizer=Adam(lr=1e-3), epochs=8)


@broken("sigmoid_output_regression", "OUTPUT_LOSS_MISMATCH")
def _():
    (X, y), val = regression()
    m = Sequential([Dense(16), Tanh(), Dense(1), Sigmoid()], seed=0)
    return spec(m, (X, y * 3), (val[0], val[1] * 3), loss="mse", epochs=15)


@broken("relu_output_cross_entropy", "OUTPUT_LOSS_MISMATCH")
def _():
    m = Sequential([Dense(16), Tanh(), Dense(3), ReLU()], seed=0)
    return spec(m, *blobs(), epochs=15)


@broken("int_labels_multi_output_mse", "LABEL_FORMAT")
def _():
    return spec(mlp((16,), 3), *wine(), loss="mse", epochs=15, batch_size=16)


@broken("bce_targets_minus_one", "LABEL_FORMAT")
def _():
    (X, y), (Xv, yv) = moons()
    f = lambda a: (2 * a - 1).astype(np.float32).reshape(-1, 1)  # noqa: E731
    return spec(mlp((16,), 1), (X, f(y)), (Xv, f(yv)), loss="bce_with_logits", epochs=10)


@broken("nan_in_targets", "NONFINITE_DATA")
def _():
    (X, y), val = diabetes()
    y = y.copy()
    y[[7, 70]] = np.nan
    return spec(mlp((16,), 1), (X, y), val, loss="mse", epochs=10)


@broken("validation_one_based_labels", "LABEL_FORMAT", note="training labels 0..2, validation labels 1..3")
def _():
    train, (Xv, yv) = wine()
    return spec(Sequential([Dense(16), ReLU(), Dense(4)], seed=0), train, (Xv, yv + 1), epochs=15, batch_size=16)


@broken("adam_lr_one_regression", "LR_TOO_HIGH", "NONFINITE_LOSS")
def _():
    return spec(mlp((32,), 1), *regression(), loss="mse", optimizer=Adam(lr=1.0), epochs=15)


@broken("sgd_lr_high_diabetes", "LR_TOO_HIGH", "NONFINITE_LOSS")
def _():
    return spec(mlp((32, 32), 1), *diabetes(), loss="mse", optimizer=SGD(lr=0.5), epochs=15)


@broken("saturated_tanh_big_init", "SATURATED_ACTIVATIONS", "EXPLODING_GRADIENTS", "VANISHING_GRADIENTS",
        note="tanh stack initialised with N(0, 3^2): every unit pinned at +-1")
def _():
    return spec(mlp((64,) * 4, 3, act=Tanh, init=scaled_init(3.0)), *spirals(), optimizer=SGD(lr=0.01), epochs=15)


@broken("softmax_before_focal", "DOUBLE_SOFTMAX")
def _():
    m = Sequential([Dense(16), ReLU(), Dense(3), Softmax()], seed=0)
    return spec(m, *wine(), loss=FocalLoss(), epochs=10, batch_size=16)


@broken("int_class_ids_mse_one_output", "LABEL_FORMAT", note="integer class ids 0..9 into one MSE output")
def _():
    (X, y), (Xv, yv) = digits()
    return spec(mlp((32,), 1), (X, y), (Xv, yv), loss="mse", epochs=15)


@broken("autotrainer_circle_sigmoid_deep", "VANISHING_GRADIENTS", "SATURATED_ACTIVATIONS",
        note="AUTOTRAINER Circle: make_circles into a deep 5-unit sigmoid stack")
def _():
    return spec(mlp((5,) * 7, 2, act=Sigmoid, init="xavier_uniform"), *circles(), optimizer=SGD(lr=0.01),
                epochs=15)


# == running and scoring =================================================================
def run_case(case: Case, doctor: bool = True):
    """Train ``case`` (with the doctor unless ``doctor=False``); returns (findings, seconds, error)."""
    from bpnet.doctor import Doctor
    s = case.build()
    doc = Doctor(print_fn=None) if doctor else False
    err = None
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        try:
            s["model"].fit(s["X"], s["y"], verbose=0, doctor=doc, **s["fit"])
        except BpnetError as e:                 # e.g. a refused float16 optimizer: the doctor spoke first
            err = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    return (list(doc.findings) if doctor else []), seconds, err


def counted(findings) -> list:
    return [f for f in findings if f.severity in COUNTED]


@dataclass
class Outcome:
    case: Case
    findings: list
    seconds: float
    error: str | None = None

    @property
    def codes(self) -> list:
        return [f.code for f in counted(self.findings)]

    @property
    def root_codes(self) -> list:
        return [f.code for f in counted(self.findings) if not getattr(f, "caused_by", None)]

    @property
    def false_alarm(self) -> bool:
        return self.case.healthy and bool(self.codes)

    @property
    def detected(self) -> bool:
        return not self.case.healthy and any(c in self.case.expected for c in self.codes)

    @property
    def root_first(self) -> bool:
        return not self.case.healthy and bool(self.codes) and self.codes[0] in self.case.expected


def run_all(part: str = "all", progress=None) -> list[Outcome]:
    out = []
    for c in cases(part):
        findings, seconds, err = run_case(c)
        out.append(Outcome(c, findings, seconds, err))
        if progress:
            progress(out[-1])
    return out


def score(outcomes) -> dict:
    """The numbers the issue's bar names, and per-code precision and recall."""
    healthy_runs = [o for o in outcomes if o.case.healthy]
    broken_runs = [o for o in outcomes if not o.case.healthy]
    codes = sorted({c for o in broken_runs for c in o.case.expected[:1]} |
                   {c for o in outcomes for c in o.root_codes})
    per_code = {}
    for code in codes:
        reported = [o for o in outcomes if code in o.root_codes]
        tp = sum(code in o.case.expected for o in reported)
        relevant = [o for o in broken_runs if o.case.expected[0] == code]
        found = sum(any(c in o.case.expected for c in o.codes) for o in relevant)
        per_code[code] = {"precision": tp / len(reported) if reported else math.nan, "reported": len(reported),
                          "recall": found / len(relevant) if relevant else math.nan, "cases": len(relevant)}
    n_b = max(len(broken_runs), 1)
    return {"healthy": len(healthy_runs), "broken": len(broken_runs),
            "false_alarms": sum(o.false_alarm for o in healthy_runs),
            "detected": sum(o.detected for o in broken_runs),
            "root_first": sum(o.root_first for o in broken_runs),
            "root_first_rate": sum(o.root_first for o in broken_runs) / n_b,
            "detection_rate": sum(o.detected for o in broken_runs) / n_b,
            "per_code": per_code}
