"""Sequential end to end: accuracy on digits, exactness of fit, determinism, backends, save/load, errors."""
import functools
import json

import numpy as np
import pytest

from bpnet import (SGD, Adam, BatchNorm1d, Callback, ConfigError, CrossEntropy, DataError, Dense, Dropout,
                   FocalLoss, LabelError, ReLU, Sequential, ShapeError, Tanh, available_backends, clip_grad_norm, data)


@functools.lru_cache(maxsize=None)
def digits():
    """Standardised digits with a stratified 75/25 split (scaler fit on the training part only)."""
    X, y = data.load_digits()
    Xtr, Xte, ytr, yte = data.train_test_split(X, y, test_size=0.25, seed=0, stratify=True)
    scaler = data.Standardizer().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


def digits_model(backend="numpy", seed=0, dropout=False, lr=1e-3):
    layers = [Dense(128, init="he_normal"), ReLU()] + ([Dropout(0.2)] if dropout else []) + [Dense(10)]
    model = Sequential(layers, seed=seed, backend=backend)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=lr))
    return model


def ref_cross_entropy(logits, y):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


# --------------------------------------------------------------------------- learning
def test_digits_reaches_95_percent(backend):
    Xtr, Xte, ytr, yte = digits()
    model = digits_model(backend)
    history = model.fit(Xtr, ytr, epochs=20, batch_size=64, verbose=0)
    logits = model.predict(Xte)
    accuracy = (logits.argmax(axis=1) == yte).mean()
    assert accuracy >= 0.95
    result = model.evaluate(Xte, yte)
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["loss"] == pytest.approx(ref_cross_entropy(logits, yte), rel=1e-5)
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert history["accuracy"][-1] > 0.97
    assert len(history) == 20 and history.epoch == list(range(20))


def test_regression_converges_to_least_squares(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * rng.standard_normal(256)
    model = Sequential([Dense(1)], seed=0, dtype="float64", backend=backend)
    model.compile(loss="mse", optimizer=SGD(lr=0.1))
    model.fit(X, y, epochs=300, batch_size=256, verbose=0)          # full batch: plain gradient descent
    A = np.hstack([X, np.ones((256, 1))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    params = {k: model.backend.to_numpy(v) for k, v in model.parameters().items()}
    np.testing.assert_allclose(params["0.W"][:, 0], coef[:3], atol=1e-6)
    assert params["0.b"][0] == pytest.approx(coef[3], abs=1e-6)
    assert model.evaluate(X, y)["loss"] == pytest.approx(np.mean((A @ coef - y) ** 2), rel=1e-6)


# --------------------------------------------------------------------------- exactness and determinism
class ClipCallback(Callback):
    def __init__(self, max_norm):
        self.max_norm = max_norm
        self.norms = []

    def on_backward_end(self, batch, logs=None):
        self.norms.append(clip_grad_norm(self.model, self.max_norm))


def test_hand_written_loop_equals_fit():
    Xtr, _, ytr, _ = digits()
    X, y = Xtr[:500], ytr[:500]
    fitted = digits_model(dropout=True, lr=3e-3)
    clip = ClipCallback(max_norm=1.0)
    history = fitted.fit(X, y, epochs=2, batch_size=64, shuffle=False, callbacks=[clip], verbose=0)

    model = digits_model(dropout=True, lr=3e-3)
    loss_fn, opt = CrossEntropy(), model.optimizer
    model.build((64,))
    losses, norms = [], []
    for epoch in range(2):
        epoch_losses = []
        for i in range(0, len(X), 64):
            xb, yb = X[i:i + 64].astype(np.float32), y[i:i + 64]
            logits = model.forward(xb, training=True)
            loss = loss_fn.forward(logits, yb)
            model.backward(loss_fn.backward())
            norms.append(clip_grad_norm(model, max_norm=1.0))
            opt.step()
            epoch_losses.append((loss, len(xb)))
        losses.append(sum(l * n for l, n in epoch_losses) / len(X))

    np.testing.assert_array_equal(model.flat_params, fitted.flat_params)
    assert norms == clip.norms
    assert max(norms) > 1.0                 # the clip really acted on some steps
    assert history["loss"] == pytest.approx(losses, rel=1e-12)


def _train(seed, backend="numpy", epochs=3):
    Xtr, _, ytr, _ = digits()
    model = Sequential([Dense(32, init="he_normal"), BatchNorm1d(), ReLU(), Dropout(0.3), Dense(10)],
                       seed=seed, backend=backend)
    model.compile(loss=CrossEntropy(label_smoothing=0.05), optimizer=Adam(lr=2e-3))
    history = model.fit(Xtr[:600], ytr[:600], epochs=epochs, batch_size=50, verbose=0)
    return model, history


def test_same_seed_is_bit_identical_and_seeds_differ():
    a, ha = _train(seed=7)
    b, hb = _train(seed=7)
    c, hc = _train(seed=8)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert ha["loss"] == hb["loss"] and ha["accuracy"] == hb["accuracy"]
    for (name, buf), other in zip(((n, o.buffers[k]) for n, o, k in a.named_buffers()),
                                  (o.buffers[k] for _, o, k in b.named_buffers())):
        np.testing.assert_array_equal(buf, other, err_msg=name)
    assert not np.array_equal(a.flat_params, c.flat_params)
    assert ha["loss"] != hc["loss"]


@pytest.mark.skipif("numba" not in available_backends(), reason="Numba is not installed")
def test_numba_trajectory_matches_numpy():
    Xtr, _, ytr, _ = digits()
    runs = {}
    for backend in ("numpy", "numba"):
        model = Sequential([Dense(64, init="he_normal"), Tanh(), Dense(32), ReLU(), Dense(10)],
                           seed=3, backend=backend)
        model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
        model.build((64,))
        initial = model.flat_params.copy()
        losses = []
        for step in range(50):
            i = (step * 32) % (len(Xtr) - 32)
            loss, _ = model.train_step(Xtr[i:i + 32], ytr[i:i + 32])
            clip_grad_norm(model, 2.0)
            model.optimizer.step()
            losses.append(loss)
        runs[backend] = initial, np.array(losses), model.flat_params.copy()
    np.testing.assert_array_equal(runs["numpy"][0], runs["numba"][0])     # same initial weights
    np.testing.assert_allclose(runs["numba"][1], runs["numpy"][1], rtol=1e-4)
    np.testing.assert_allclose(runs["numba"][2], runs["numpy"][2], rtol=1e-3, atol=1e-4)
    assert runs["numpy"][1][-1] < 0.6 * runs["numpy"][1][0]


# --------------------------------------------------------------------------- save and load
def test_save_load_round_trip_and_resume(tmp_path):
    Xtr, Xte, ytr, _ = digits()
    uninterrupted, hu = _train(seed=11, epochs=5)

    model, _ = _train(seed=11, epochs=3)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = Sequential.load(path, backend="numpy")

    np.testing.assert_array_equal(loaded.predict(Xte), model.predict(Xte))
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    s1, s2 = model.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert set(s1) == set(s2) and int(s2["t"]) == 3 * 12
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k], err_msg=k)
    assert type(loaded.optimizer) is Adam and loaded.optimizer.lr == 2e-3
    assert isinstance(loaded.loss, CrossEntropy) and loaded.loss.label_smoothing == 0.05
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]

    # resuming: the loaded model and the original both continue exactly like one 5-epoch run
    h_loaded = loaded.fit(Xtr[:600], ytr[:600], epochs=2, batch_size=50, verbose=0)
    h_model = model.fit(Xtr[:600], ytr[:600], epochs=2, batch_size=50, verbose=0)
    np.testing.assert_array_equal(loaded.flat_params, uninterrupted.flat_params)
    np.testing.assert_array_equal(model.flat_params, uninterrupted.flat_params)
    assert h_loaded["loss"] == hu["loss"][3:] == h_model["loss"]


def test_saved_file_is_plain_npz(tmp_path):
    model, _ = _train(seed=1, epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        assert "__config__" in files
        assert {"param/0.W", "param/0.b", "param/1.gamma", "param/1.beta", "param/4.W", "param/4.b",
                "buffer/1.running_mean", "buffer/1.running_var", "optimizer/m", "optimizer/v"} <= files
        np.testing.assert_array_equal(npz["param/0.W"], model.parameters()["0.W"])
        assert all(npz[f].dtype != object for f in files)
        config = json.loads(npz["__config__"].tobytes().decode())
    assert config["format"] == "bpnet"
    assert [spec["class"] for spec in config["model"]["layers"]] == \
        ["Dense", "BatchNorm1d", "ReLU", "Dropout", "Dense"]
    assert config["optimizer"]["class"] == "Adam"
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]       # no temporary file left behind


# --------------------------------------------------------------------------- inspection
def _fmt(n):
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def test_summary_counts_and_memory():
    model = digits_model()
    model.build((64,))
    text = model.summary(batch_size=32, print_fn=None)
    n1, n2 = 64 * 128 + 128, 128 * 10 + 10
    assert model.count_params() == n1 + n2 == 9610
    assert f"total parameters: {n1 + n2:,}" in text
    rows = text.splitlines()
    assert any("Dense" in r and r.rstrip().endswith(f"{n1:,}") for r in rows)
    assert any("Dense" in r and r.rstrip().endswith(f"{n2:,}") for r in rows)
    assert any("ReLU" in r and r.rstrip().endswith(" 0") for r in rows)
    params = 9610 * 4                                            # float32
    activations = 2 * 4 * 32 * (64 + 128 + 128 + 10)             # input and each layer's output, value + grad
    total = params + params + 2 * params + activations           # Adam keeps m and v
    for number in (params, activations, total):
        assert _fmt(number) in text
    assert f"optimizer state {_fmt(2 * params)}" in text
    assert model.memory_estimate(32) == {"parameters": params, "gradients": params,
                                         "optimizer_state": 2 * params, "activations": activations,
                                         "total": total}


def test_parameters_are_views_into_flat_buffer(backend):
    model = Sequential([Dense(5), Tanh(), Dense(3)], seed=0, backend=backend)
    model.build((4,))
    bk = model.backend
    params, grads = model.parameters(), model.gradients()
    assert list(params) == ["0.W", "0.b", "2.W", "2.b"]
    assert sum(p.size for p in params.values()) == 4 * 5 + 5 + 5 * 3 + 3
    for name, p in params.items():
        assert bk.xp.shares_memory(p, model.flat_params), name
        assert bk.xp.shares_memory(grads[name], model.flat_grads), name
    model.flat_params[...] = 0.5
    assert np.all(bk.to_numpy(model.layers[0].params["W"]) == 0.5)
    assert np.all(bk.to_numpy(model.layers[2].params["b"]) == 0.5)
    model.layers[2].params["W"][1, 2] = -7.0
    assert (bk.to_numpy(model.flat_params) == -7.0).sum() == 1
    x = np.ones((2, 4), np.float32)
    W2 = bk.to_numpy(model.layers[2].params["W"])
    np.testing.assert_allclose(bk.to_numpy(model.forward(x)), np.tanh(np.full((2, 5), 2.5)) @ W2 + 0.5, rtol=1e-6)
    model.backward(bk.asarray(np.ones((2, 3), np.float32)))
    np.testing.assert_array_equal(bk.to_numpy(model.flat_grads[:20]).reshape(4, 5),
                                  bk.to_numpy(model.layers[0].grads["W"]))


# --------------------------------------------------------------------------- history and validation
def test_validation_data_and_history():
    Xtr, Xte, ytr, yte = digits()
    model = digits_model()
    history = model.fit(Xtr[:400], ytr[:400], epochs=3, batch_size=64, validation_data=(Xte, yte), verbose=0)
    assert len(history) == 3 and history.epoch == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(history[key]) == 3, key
    final = model.evaluate(Xte, yte)
    assert history["val_loss"][-1] == final["loss"]
    assert history["val_accuracy"][-1] == final["accuracy"]
    assert history["val_loss"][-1] == pytest.approx(ref_cross_entropy(model.predict(Xte), yte), rel=1e-5)


@pytest.mark.parametrize("loss", [CrossEntropy(class_weights=[1.0, 10.0], label_smoothing=0.1),
                                  CrossEntropy(class_weights=[1.0, 10.0]), FocalLoss(alpha=[1.0, 10.0])],
                         ids=["ce_weighted_smoothed", "ce_weighted", "focal_alpha"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_weighted_loss_is_the_same_for_any_batch_size(loss, one_hot):
    """A class-weighted loss divides by Σ_i a_i, not by N, so evaluate must average its
    batches with those weights; averaging them by batch size gave 0.663 at batch_size=256
    and 0.656 at 50 for a loss of 0.703 over the whole set."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = (rng.random(600) < 0.2).astype(np.int64)
    y[:300] = 0                                       # the batches differ in their class mix
    t = np.eye(2)[y] if one_hot else y
    model = Sequential([Dense(8), ReLU(), Dense(2)], seed=0, backend="numpy")
    model.compile(loss=loss, optimizer=SGD(lr=1e-12))          # fit below leaves the weights as they are
    whole = model.evaluate(X, t, batch_size=600)["loss"]
    logits = model.predict(X).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.array([1.0, 10.0])[y]
    if isinstance(loss, FocalLoss):
        pt = np.exp(logp[np.arange(600), y])
        want = -(w * (1 - pt) ** 2 * np.log(pt)).sum() / w.sum()
    else:
        eps = loss.label_smoothing
        q = (1 - eps) * np.eye(2)[y] + eps / 2
        wq = q * np.array([1.0, 10.0])
        want = -(wq * logp).sum() / wq.sum()
    assert whole == pytest.approx(want, rel=1e-5)
    for bs in (256, 50, 7):
        assert model.evaluate(X, t, batch_size=bs)["loss"] == pytest.approx(whole, rel=1e-6), bs
    history = model.fit(X, t, epochs=1, batch_size=50, shuffle=False, verbose=0)
    assert history["loss"][0] == pytest.approx(whole, rel=1e-5)              # the training log too


def test_validation_split_holds_out_the_tail():
    Xtr, _, ytr, _ = digits()
    X, y = Xtr[:500], ytr[:500]
    model = digits_model()
    history = model.fit(X, y, epochs=2, batch_size=64, validation_split=0.2, verbose=0)
    assert len(history["val_loss"]) == 2 and len(history["val_accuracy"]) == 2
    tail = model.evaluate(X[400:], y[400:])
    assert history["val_loss"][-1] == tail["loss"]
    assert history["val_accuracy"][-1] == tail["accuracy"]
    # the held-out rows were not trained on: the same model trained on X[:400] only is identical
    twin = digits_model()
    twin.fit(X[:400], y[:400], epochs=2, batch_size=64, verbose=0)
    np.testing.assert_array_equal(twin.flat_params, model.flat_params)
    with pytest.raises(ConfigError, match="validation_split"):
        model.fit(X, y, epochs=1, validation_split=1.5, verbose=0)


# --------------------------------------------------------------------------- errors
@pytest.fixture
def compiled():
    model = digits_model()
    model.build((64,))
    return model


def test_wrong_input_width_names_layer_and_shapes(compiled):
    X = np.zeros((5, 63), np.float32)
    for call in (lambda: compiled.forward(X), lambda: compiled.predict(X),
                 lambda: compiled.fit(X, np.zeros(5, int), verbose=0)):
        with pytest.raises(ShapeError) as info:
            call()
        msg = str(info.value)
        assert "dense" in msg and "64" in msg and "63" in msg, msg
    dense = Dense(4)
    dense.forward(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"dense: expected input of shape \(batch, 3\) but got \(2, 5\)"):
        dense.forward(np.zeros((2, 5)))


def test_data_errors(compiled):
    y = np.zeros(10, int)
    with pytest.raises(DataError, match="empty"):
        compiled.fit(np.zeros((0, 64)), np.zeros(0, int), verbose=0)
    with pytest.raises(DataError, match="non-numeric"):
        compiled.fit(np.full((10, 64), "a"), y, verbose=0)
    with pytest.raises(DataError, match="10 samples but y has 9"):
        compiled.fit(np.zeros((10, 64)), np.zeros(9, int), verbose=0)
    X = np.zeros((10, 64))
    X[3, 5] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DataError, match=r"2 rows: \[3, 7\]"):
        compiled.fit(X, y, verbose=0)
    with pytest.raises(DataError, match=r"\[3, 7\]"):
        compiled.predict(X)
    for call in (compiled.fit, compiled.evaluate):          # were a bare ValueError / TypeError
        with pytest.raises(DataError, match="need targets: pass y"):
            call(np.zeros((10, 64)), None)


def test_label_errors(compiled):
    X = np.zeros((4, 64))
    with pytest.raises(LabelError, match=r"labels range over 0\.\.10 .* 10 outputs.* 0\.\.9"):
        compiled.fit(X, np.array([0, 3, 10, 2]), verbose=0)
    with pytest.raises(LabelError, match="ravel"):
        compiled.fit(X, np.array([[0], [3], [1], [2]]), verbose=0)
    with pytest.raises(LabelError, match="0..9"):
        compiled.evaluate(X, np.array([0, -1, 1, 2]))


def test_config_errors():
    model = Sequential([Dense(3)], backend="numpy")
    with pytest.raises(ConfigError, match="compile"):
        model.fit(np.zeros((4, 2)), np.zeros(4, int), verbose=0)
    with pytest.raises(ConfigError, match="compile"):
        model.evaluate(np.zeros((4, 2)), np.zeros(4, int))
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        model.compile(loss="hinge")
    with pytest.raises(ConfigError, match="unknown optimizer 'adamax'"):
        model.compile(loss="mse", optimizer="adamax")
    with pytest.raises(ConfigError, match="accuracy"):
        model.compile(loss="mse", metrics=["accuracy"])
    with pytest.raises(ConfigError, match="bpnet layers"):
        Sequential([Dense(3), "relu"])
    with pytest.raises(ConfigError, match="no layers"):
        Sequential([]).build((3,))
    with pytest.raises(ConfigError, match="dtype"):
        Sequential([Dense(3)], dtype="int32")
    m = Sequential([Dense(3)])
    m.build((2,))
    with pytest.raises(ConfigError, match="already built"):
        m.add(Dense(2))


def test_to_moves_a_trained_model_between_backends_without_changing_it(backend):
    from bpnet import Adam, Dense, ReLU, Sequential
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64)
    model = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile("cross_entropy", Adam(lr=1e-2))
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    before = model.predict(X)
    m_before = model.optimizer.state["m"].copy()
    assert model.to(backend) is model and model.backend.name == backend
    assert model.layers[0].params["W"].base is not None            # still a view into the flat buffer
    np.testing.assert_array_equal(model.backend.to_numpy(model.optimizer.state["m"]), m_before)
    np.testing.assert_allclose(model.predict(X), before, rtol=1e-5, atol=1e-6)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)             # and it keeps training there
    assert np.isfinite(model.evaluate(X, y)["loss"])
    assert model.to("numpy").backend.name == "numpy"
