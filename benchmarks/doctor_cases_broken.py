"""The corpus's broken runs, one injected fault each (see doctor_corpus.py): registered in this order,
which fixes the split."""
import numpy as np

from bpnet import RNN, SGD, Adam, CrossEntropy, Dense, FocalLoss, ReLU, Sequential, Sigmoid, Softmax, Tanh
from bpnet.data import one_hot
from doctor_corpus import (AscentSGD, KeepOldGradients, ScaleShiftWrong, SoftplusWrong, _split, blobs, broken,
                           cancer, circles, diabetes, digits, iris, mlp, moons, regression, scaled_init, sequences,
                           spec, spirals, wine)


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
