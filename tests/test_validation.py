"""Settings that would poison training are refused where they enter, with the fix in the message."""
import math

import numpy as np
import pytest

import bpnet
from bpnet import (SGD, Adam, BatchNorm1d, CosineAnnealing, Dense, EarlyStopping, LearningRateScheduler,
                   ModelCheckpoint, NaNGuard, ReduceLROnPlateau, ReLU, RMSProp, Sequential)
from bpnet.errors import ConfigError, DataError, LabelError, ShapeError
from bpnet.losses import BCEWithLogits, CrossEntropy, FocalLoss

rng = np.random.default_rng(0)
X = rng.normal(size=(64, 3))
Y = (X[:, 0] > 0).astype(np.int64)


def model(dtype="float32", optimizer=None, **compile_args):
    m = Sequential([Dense(8), ReLU(), Dense(2)], seed=0, dtype=dtype, backend="numpy")
    m.compile(optimizer=optimizer or SGD(lr=0.1), **compile_args)
    return m


NAN, INF = float("nan"), float("inf")
CONSTRUCTORS = [
    (lambda: Adam(lr=INF), r"Adam\(lr=...\) must be a finite number, got inf"),
    (lambda: Adam(lr=NAN), r"Adam\(lr=...\) must be a finite number, got nan"),
    (lambda: SGD(lr=-1), r"SGD\(lr=...\) must be positive, got -1.0"),
    (lambda: Adam(eps=NAN), r"Adam\(eps=...\) must be a finite number"),
    (lambda: Adam(weight_decay=NAN), r"Adam\(weight_decay=...\) must be a finite number"),
    (lambda: Adam(betas=0.9), r"betas=0.9\) must be a pair"),
    (lambda: RMSProp(alpha=NAN), r"RMSProp\(alpha=...\) must be a finite number"),
    (lambda: Dense(2.5), r"Dense\(units=...\) must be a whole number, got 2.5"),
    (lambda: Dense(0), r"Dense\(units=...\) must be >= 1, got 0"),
    (lambda: BatchNorm1d(eps=NAN), r"BatchNorm1d\(eps=...\) must be a finite number"),
    (lambda: FocalLoss(gamma=NAN), r"FocalLoss\(gamma=...\) must be a finite number"),
    (lambda: CrossEntropy(class_weights=[0, 0, 0]), "class_weights=...\\) are all zero"),
    (lambda: CrossEntropy(class_weights=[1, NAN]), r"holds NaN/Inf at classes \[1\]"),
    (lambda: CrossEntropy(class_weights=[1, -1]), "must be non-negative"),
    (lambda: BCEWithLogits(pos_weight=INF), r"pos_weight=...\) must be a finite number"),
    (lambda: EarlyStopping(patience=-1), r"EarlyStopping\(patience=...\) must be >= 0, got -1"),
    (lambda: EarlyStopping(patience=1.5), "must be a whole number"),
    (lambda: EarlyStopping(mode="minn"), "mode='minn' \\(did you mean 'min'\\?\\)"),
    (lambda: ReduceLROnPlateau(factor=2), r"ReduceLROnPlateau\(factor=2\) must be in \(0, 1\)"),
    (lambda: ReduceLROnPlateau(min_lr=NAN), "min_lr=...\\) must be a finite number"),
    (lambda: NaNGuard(max_restarts=-1), r"NaNGuard\(max_restarts=...\) must be >= 0, got -1"),
    (lambda: NaNGuard(factor=NAN), r"NaNGuard\(factor=...\) must be a finite number"),
    (lambda: CosineAnnealing(T_max=10, eta_min=-1), "eta_min=...\\) must be >= 0"),
    (lambda: ModelCheckpoint("ckpt-{}.npz"), r"has the field \{\}; name it"),
    (lambda: ModelCheckpoint("ckpt-{epoch:.3q}.npz"), "the format {epoch:.3q} is invalid"),
    (lambda: bpnet.optim.get_optimizer("adma"), "unknown optimizer 'adma' \\(did you mean 'adam'\\?\\)"),
]


@pytest.mark.parametrize("make, words", CONSTRUCTORS, ids=[w[:30] for _, w in CONSTRUCTORS])
def test_constructors_refuse_poisonous_settings(make, words):
    with pytest.raises(ConfigError, match=words):
        make()


def test_the_lr_setter_refuses_nan_inf_and_negative():
    opt = Adam(lr=0.01)
    for bad in (NAN, INF, -1.0):
        with pytest.raises(ConfigError, match=r"Adam.lr must be"):
            opt.lr = bad
    opt.lr = 0.0                       # the end of a cosine schedule
    assert opt.lr == 0.0


def test_schedule_outputs_are_checked():
    m = model()
    with pytest.raises(ConfigError, match=r"schedule '<lambda>' returned the learning rate -0.1 at t=0"):
        m.fit(X, Y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda epoch: -0.1)])
    with pytest.raises(ConfigError, match="returned the learning rate nan"):
        m.fit(X, Y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda epoch, lr: NAN)])


def test_a_schedule_object_in_learning_rate_scheduler_does_not_compound():
    """LearningRateScheduler(CosineAnnealing(...)) used to call it as f(epoch, current lr): a cosine of a cosine."""
    lrs = []
    for callback in (CosineAnnealing(T_max=6), LearningRateScheduler(CosineAnnealing(T_max=6))):
        m = model(optimizer=SGD(lr=0.1))
        h = m.fit(X, Y, epochs=6, batch_size=32, verbose=0, callbacks=[callback])
        lrs.append(h["lr"])
    expected = [0.1 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)]
    np.testing.assert_allclose(lrs[0], expected, rtol=1e-12)
    np.testing.assert_allclose(lrs[1], expected, rtol=1e-12)


def test_fit_evaluate_predict_arguments():
    m = model()
    for kwargs, words in [(dict(epochs=-1), r"fit\(epochs=...\) must be >= 1, got -1"),
                          (dict(epochs=2.5), "must be a whole number"),
                          (dict(batch_size=0), r"fit\(batch_size=...\) must be >= 1, got 0"),
                          (dict(epochs=3, initial_epoch=3), "nothing would train"),
                          (dict(validation_split=NAN), "validation_split=...\\) must be a finite number"),
                          (dict(validation_split=0.999), "holds out 64 of the 64 samples and leaves none")]:
        with pytest.raises(ConfigError, match=words):
            m.fit(X, Y, verbose=0, **{"epochs": 1, **kwargs})
    with pytest.raises(ConfigError, match=r"evaluate\(batch_size=...\) must be >= 1, got -1"):
        m.evaluate(X, Y, batch_size=-1)
    with pytest.raises(ConfigError, match=r"predict\(batch_size=...\) must be >= 1, got 0"):
        m.predict(X, batch_size=0)


def test_metrics_as_a_string_means_one_metric():
    m = model(metrics="accuracy")
    assert m.metrics == ["accuracy"]
    with pytest.raises(ConfigError, match="unknown metric 'acuracy' \\(did you mean 'accuracy'\\?\\)"):
        model(metrics=["acuracy"])


def test_model_checkpoint_template_naming_a_missing_key(tmp_path):
    m = model()
    ckpt = ModelCheckpoint(tmp_path / "ckpt-{epoch}-{val_los:.3f}.npz")
    with pytest.raises(ConfigError, match=r"names \['val_los'\], which the epoch logs do not have; the available "
                                          r"fields are \['accuracy', 'epoch', 'loss', 'lr', 'time'\]"):
        m.fit(X, Y, epochs=1, verbose=0, callbacks=[ckpt])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- validation data
VALIDATION_CASES = [
    (lambda: (np.where(np.eye(8, 3) > 0, np.nan, 1.0), Y[:8]), DataError,
     r"validation data X_val contains NaN/Inf in 3 rows: \[0, 1, 2\]"),
    (lambda: (X[:8, :2], Y[:8]), ShapeError, "validation data: .*built for inputs of shape"),
    (lambda: (X[:8], np.full(8, 5)), LabelError, "validation data: "),
    (lambda: (X[:8], Y[:7]), DataError, "validation data X_val has 8 samples but validation data y_val has 7"),
    (lambda: (X[:8], Y[:8], np.ones(8)), DataError, "does not weight validation samples; pass \\(X_val, y_val\\)"),
    (lambda: X[:8], DataError, "must be a tuple \\(X_val, y_val\\)"),
]


@pytest.mark.parametrize("make, error, words", VALIDATION_CASES, ids=[w[:25] for _, _, w in VALIDATION_CASES])
def test_validation_data_is_checked_before_the_first_step(make, error, words):
    m = model()
    before = None

    class FirstStep(bpnet.Callback):
        def on_batch_begin(self, batch, logs=None):
            raise AssertionError("a step ran before validation_data was checked")
    with pytest.raises(error, match=words):
        m.fit(X, Y, epochs=1, verbose=0, validation_data=make(), callbacks=[FirstStep()])
    assert before is None


# --------------------------------------------------------------------------- dtype overflow
def test_float64_values_beyond_float32_are_named_not_called_nan():
    big = X.copy()
    big[5, 1] = 1e39
    big[9, 2] = -3e40
    m = model()
    for call in (lambda: m.predict(big), lambda: m.fit(big, Y, epochs=1, verbose=0)):
        with pytest.raises(DataError, match=r"X has finite values beyond float32's range \(±3.4e\+38\), largest "
                                            r"3e\+40, in 2 columns: \[1, 2\]") as info:
            call()
        assert "NaN" not in str(info.value)
    half = model(dtype="float16")
    with pytest.raises(DataError, match="beyond float16's range .* in 1 column: \\[0\\]"):
        half.predict(np.full((4, 3), [7e4, 1.0, 1.0]))
    np.testing.assert_array_equal(m.predict(X), m.predict(X.astype(np.float32)))   # in range: cast as before


def test_the_nan_check_walks_large_inputs_in_blocks(monkeypatch):
    import bpnet.casting
    monkeypatch.setattr(bpnet.casting, "CHUNK_ELEMENTS", 30)           # 10 rows of 3 per block
    bad = X.copy()
    bad[[3, 33, 63], 0] = np.nan
    with pytest.raises(DataError, match=r"X contains NaN/Inf in 3 rows: \[3, 33, 63\]"):
        model().predict(bad)
    assert [len(b) for _, b in bpnet.casting.row_chunks(X)] == [10] * 6 + [4]


# --------------------------------------------------------------------------- float16 + Adam
def test_float16_adam_without_a_loss_scaler_is_refused_before_the_first_step():
    m = model(dtype="float16", optimizer=Adam(lr=1e-3))

    class NoStep(bpnet.Callback):
        def on_batch_begin(self, batch, logs=None):
            raise AssertionError("a step ran")
    with pytest.raises(ConfigError, match=r"Adam\(eps=1e-08\) on a float16 model: eps rounds to 0 .* "
                                          r"loss_scaler=bpnet.LossScaler\(\)"):
        m.fit(X, Y, epochs=1, verbose=0, callbacks=[NoStep()])
    assert m.optimizer.t == 0 and np.isfinite(m.flat_params).all()
    sgd = model(dtype="float16", optimizer=SGD(lr=0.1))           # no eps: float16 SGD is fine
    assert np.isfinite(sgd.fit(X, Y, epochs=1, verbose=0)["loss"]).all()
    scaled = model(dtype="float16", optimizer=Adam(lr=1e-2), loss_scaler=bpnet.LossScaler())
    h = scaled.fit(X, Y, epochs=3, verbose=0)
    assert np.isfinite(h["loss"]).all() and h["loss"][-1] < h["loss"][0]
    assert scaled.optimizer.state["m"].dtype == np.float32
