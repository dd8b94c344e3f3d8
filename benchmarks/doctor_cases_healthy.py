"""The corpus's healthy runs (see doctor_corpus.py): registered in this order, which fixes the split."""
import numpy as np

import bpnet
from bpnet import (ELU, RNN, SGD, Adam, AdamW, BatchNorm1d, CosineAnnealing, Dense, Dropout, EarlyStopping,
                   ExponentialLR, FocalLoss, GradientClipping, LeakyReLU, LinearWarmup, ReduceLROnPlateau, ReLU,
                   Residual, RMSProp, Sequential, Sigmoid, StepLR, Tanh)
from bpnet.data import one_hot
from doctor_corpus import (SwishByHand, blobs, cancer, circles, diabetes, digits, healthy, iris, mlp, moons,
                           regression, sequences, spec, spirals, wine)


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
