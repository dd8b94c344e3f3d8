"""Callbacks: each one's effect on a run, asserted with numbers.

Where a callback reacts to a monitored value, the value is scripted (a
``Script`` callback writes it into the epoch logs), so the epoch at which it
must act is known exactly.  NaN/Inf are injected at a chosen step.
"""
import math
import os

import numpy as np
import pytest

import bpnet
from bpnet import (SGD, Adam, BatchNorm1d, ConfigError, Dense, Dropout, NonFiniteError, ReLU, Sequential,
                   Tanh)
from bpnet.callbacks import (Callback, EarlyStopping, GradientClipping, LearningRateScheduler, ModelCheckpoint,
                             NaNGuard, ReduceLROnPlateau, Reinitialize, TerminateOnNaN, TrainingState)
from bpnet.data import make_spirals


@pytest.fixture(scope="module")
def spirals():
    X, y = make_spirals(150, noise=0.1, seed=0)
    return X, y


def mlp(seed=0, optimizer=None, bn=False):
    layers = [Dense(16, init="he_normal")] + ([BatchNorm1d()] if bn else []) + [ReLU(), Dense(3)]
    model = Sequential(layers, seed=seed, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=optimizer or SGD(lr=0.1, momentum=0.9))
    return model


class Script(Callback):
    """Writes ``values[epoch]`` into the epoch logs as ``key`` (runs before the callbacks after it)."""

    def __init__(self, values, key="score"):
        self.values, self.key = list(values), key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


class Steps(Callback):
    """Counts global steps; runs ``fn(model, step, logs)`` at on_backward_end."""

    def __init__(self, fn):
        self.fn, self.step = fn, 0

    def on_backward_end(self, batch, logs=None):
        self.fn(self.model, self.step, logs)

    def on_batch_end(self, batch, logs=None):
        self.step += 1


# --------------------------------------------------------------------------- ReduceLROnPlateau
def test_reduce_lr_on_plateau_cuts_lr_at_the_right_epochs(spirals):
    X, y = spirals
    model = mlp()
    scores = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8]
    cb = ReduceLROnPlateau(monitor="score", factor=0.5, patience=2)
    h = model.fit(X, y, epochs=9, batch_size=50, callbacks=[Script(scores), cb], verbose=0)
    # best 0.9 at epoch 1; epochs 2,3 stall -> cut after 3; 4,5 stall -> cut after 5; 0.8 at 6; 7,8 -> cut after 8
    assert [e for e, _, _ in cb.reductions] == [3, 5, 8]
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025])
    assert model.optimizer.lr == pytest.approx(0.0125)


def test_reduce_lr_on_plateau_cooldown_min_lr_and_min_delta(spirals):
    X, y = spirals
    model = mlp(optimizer=SGD(lr=0.1))
    # improvements of 0.05 are below min_delta=0.1, so every epoch after the first stalls
    scores = [1.0 - 0.05 * i for i in range(8)]
    cb = ReduceLROnPlateau(monitor="score", factor=0.1, patience=1, cooldown=2, min_lr=0.002, min_delta=0.1)
    h = model.fit(X, y, epochs=8, batch_size=50, callbacks=[Script(scores), cb], verbose=0)
    # cut after epoch 1, cooldown epochs 2-3, cut after 4 (floored at min_lr), cooldown 5-6, at min_lr after 7
    assert [(e, round(old, 6), round(new, 6)) for e, old, new in cb.reductions] == [(1, 0.1, 0.01), (4, 0.01, 0.002)]
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.002, 0.002, 0.002])


# --------------------------------------------------------------------------- EarlyStopping
class Spy(Callback):
    """Copies the flat parameters at the end of every epoch."""

    def __init__(self):
        self.params = {}

    def on_epoch_end(self, epoch, logs=None):
        self.params[epoch] = self.model.flat_params.copy()


def test_early_stopping_stops_at_the_right_epoch_and_restores_best_weights(spirals):
    X, y = spirals
    model = mlp(bn=True)
    scores = [1.0, 0.7, 0.8, 0.75, 0.71, 0.5, 0.4]
    spy = Spy()
    es = EarlyStopping(monitor="score", patience=3, restore_best_weights=True)
    h = model.fit(X, y, epochs=7, batch_size=50, callbacks=[Script(scores), spy, es], verbose=0)
    assert (es.best_epoch, es.stopped_epoch, len(h)) == (1, 4, 5)
    assert not np.array_equal(spy.params[4], spy.params[1])
    np.testing.assert_array_equal(model.flat_params, spy.params[1])      # bit-exact best epoch


def test_early_stopping_without_restore_keeps_last_weights_and_honours_min_delta_and_mode(spirals):
    X, y = spirals
    model = mlp()
    spy = Spy()
    es = EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.05)      # mode auto -> max
    scores = [0.5, 0.54, 0.6, 0.62, 0.64, 0.9]
    h = model.fit(X, y, epochs=6, batch_size=50, callbacks=[Script(scores, "val_accuracy"), spy, es], verbose=0)
    # 0.54 is not > 0.5 + 0.05; 0.6 is (epoch 2); 0.62, 0.64 are not -> stop at epoch 4
    assert es.mode == "max" and (es.best_epoch, es.stopped_epoch, len(h)) == (2, 4, 5)
    np.testing.assert_array_equal(model.flat_params, spy.params[4])


def test_early_stopping_on_missing_metric_explains(spirals):
    X, y = spirals
    with pytest.raises(ConfigError, match="val_loss.*validation_data"):
        mlp().fit(X, y, epochs=2, callbacks=[EarlyStopping()], verbose=0)


def test_early_stopping_on_real_validation_loss(spirals):
    X, y = spirals
    model = mlp(optimizer=Adam(lr=0.05))
    es = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    h = model.fit(X[:100], y[:100], epochs=200, batch_size=20, validation_data=(X[100:], y[100:]),
                  callbacks=[es], verbose=0)
    assert len(h) < 200 and len(h) == es.stopped_epoch + 1 == es.best_epoch + 4
    assert model.evaluate(X[100:], y[100:])["loss"] == pytest.approx(min(h["val_loss"]), rel=1e-6)


# --------------------------------------------------------------------------- TerminateOnNaN
def test_terminate_on_nan_stops_at_first_nan_batch(spirals):
    X, y = spirals

    def poison(model, step, logs):
        if step == 7:                           # the update of step 7 turns every weight to NaN
            model.flat_grads[:] = np.nan
    cb = TerminateOnNaN()
    h = mlp().fit(X, y, epochs=5, batch_size=50, callbacks=[Steps(poison), cb], verbose=0)
    assert cb.stopped_at == (2, 2)             # 3 batches per epoch: step 8 is epoch 2, batch 2
    assert len(h) == 3 and math.isnan(h["loss"][2]) and math.isfinite(h["loss"][1])


# --------------------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_every_epoch_and_best_only(spirals, tmp_path):
    X, y = spirals
    model = mlp()
    every = ModelCheckpoint(tmp_path / "ep{epoch:02d}.npz")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    spy = Spy()
    model.fit(X, y, epochs=4, batch_size=50, callbacks=[Script([3.0, 1.0, 2.0, 1.5]), spy, every, best], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "ep01.npz", "ep02.npz", "ep03.npz", "ep04.npz"]
    assert [e for e, _ in best.saved] == [0, 1]
    np.testing.assert_array_equal(Sequential.load(tmp_path / "best.npz", backend="numpy").flat_params, spy.params[1])
    np.testing.assert_array_equal(Sequential.load(tmp_path / "ep03.npz", backend="numpy").flat_params, spy.params[2])


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_checkpoint_survives_a_crash_mid_write(spirals, tmp_path, monkeypatch, fail_at):
    X, y = spirals
    model = mlp()
    path = tmp_path / "model.npz"
    model.fit(X, y, epochs=1, batch_size=50, verbose=0)
    model.save(path)
    old = model.flat_params.copy()
    model.fit(X, y, epochs=2, batch_size=50, verbose=0)
    assert not np.array_equal(model.flat_params, old)

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash in os.{fail_at}")
    import bpnet.io
    monkeypatch.setattr(bpnet.io.os, fail_at, crash)
    with pytest.raises(OSError, match="simulated crash"):
        model.fit(X, y, epochs=1, batch_size=50, callbacks=[ModelCheckpoint(path)], verbose=0)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]            # no temporary file left behind
    np.testing.assert_array_equal(Sequential.load(path, backend="numpy").flat_params, old)


# --------------------------------------------------------------------------- resume
def test_resume_is_bit_exact(spirals, tmp_path):
    """10 epochs in one go == 5 epochs, save, load in a fresh model, 5 more (Dropout, BatchNorm, Adam)."""
    X, y = spirals

    def make():
        m = Sequential([Dense(16, init="he_normal"), BatchNorm1d(), ReLU(), Dropout(0.2), Dense(3)],
                       seed=5, backend="numpy")
        m.compile(optimizer=Adam(lr=0.01))
        return m
    full = make()
    h_full = full.fit(X, y, epochs=10, batch_size=32, verbose=0)
    first = make()
    first.fit(X, y, epochs=5, batch_size=32, verbose=0)
    first.save(tmp_path / "half.npz")
    resumed = Sequential.load(tmp_path / "half.npz", backend="numpy")
    h_rest = resumed.fit(X, y, epochs=10, batch_size=32, verbose=0, initial_epoch=5)
    np.testing.assert_array_equal(resumed.flat_params, full.flat_params)
    for key in ("m", "v"):
        np.testing.assert_array_equal(resumed.optimizer.state[key], full.optimizer.state[key])
    assert resumed.optimizer.t == full.optimizer.t == 50
    assert h_rest.epoch == [5, 6, 7, 8, 9] and h_rest["loss"] == h_full["loss"][5:]


# --------------------------------------------------------------------------- NaNGuard
class Recorder(Callback):
    """At on_backward_end of every step: params, optimizer state and step count (before the update)."""

    def __init__(self):
        self.states, self.step = [], 0

    def on_backward_end(self, batch, logs=None):
        opt = self.model.optimizer
        self.states.append((self.model.flat_params.copy(), {k: v.copy() for k, v in opt.state.items()}, opt.t))

    def on_batch_end(self, batch, logs=None):
        self.step += 1


class After(Callback):
    """At on_batch_end of every step: params, optimizer state, step count and lr (after the update)."""

    def __init__(self):
        self.states = []

    def on_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        self.states.append((self.model.flat_params.copy(), {k: v.copy() for k, v in opt.state.items()},
                            opt.t, opt.lr))


def test_nan_guard_restores_last_good_state_bit_exactly_and_cuts_lr(spirals):
    X, y = spirals
    model = mlp(optimizer=Adam(lr=0.02), bn=True)

    def poison(model, step, logs):
        if step == 7:
            model.flat_grads[5] = np.inf
    rec, after = Recorder(), After()
    guard = NaNGuard(factor=0.5, max_restarts=3)
    h = model.fit(X, y, epochs=4, batch_size=50, callbacks=[rec, Steps(poison), guard, after], verbose=0)
    params6, state6, t6 = rec.states[6]            # the last step whose loss and gradients were finite
    params7, state7, t7, lr7 = after.states[7]
    np.testing.assert_array_equal(params7, params6)
    for k in ("m", "v"):
        np.testing.assert_array_equal(state7[k], state6[k])
    assert (t6, t7, lr7) == (6, 6, 0.01)
    assert guard.restarts == 1 and guard.events[0]["epoch"] == 2 and guard.events[0]["batch"] == 1
    assert h["lr"] == [0.02, 0.02, 0.01, 0.01]
    assert all(math.isfinite(v) for v in h["loss"]) and np.isfinite(model.flat_params).all()
    assert model.optimizer.t == 10                  # 12 batches: step 6 rolled back, step 7 skipped


def test_nan_guard_rollback_before_the_optimizer_state_exists(spirals):
    """A failure at step 1 rolls back to step 0, before Adam's moments were created: they return to zero."""
    X, y = spirals
    model = mlp(optimizer=Adam(lr=0.02))

    def poison(model, step, logs):
        if step == 1:
            model.flat_grads[0] = np.nan
    rec, after = Recorder(), After()
    model.fit(X, y, epochs=1, batch_size=50, callbacks=[rec, Steps(poison), NaNGuard(), after], verbose=0)
    params1, state1, t1, lr1 = after.states[1]
    np.testing.assert_array_equal(params1, rec.states[0][0])
    assert rec.states[0][1] == {} and (t1, lr1) == (0, 0.01)
    assert not state1["m"].any() and not state1["v"].any()


def test_nan_guard_gives_up_after_max_restarts(spirals):
    X, y = spirals

    def poison(model, step, logs):
        if step >= 4:
            model.flat_grads[0] = np.nan
    guard = NaNGuard(factor=0.5, max_restarts=3)
    model = mlp(optimizer=SGD(lr=0.1))
    with pytest.raises(NonFiniteError, match=r"after 3 rollbacks.*0\.0125.*detect_anomaly"):
        model.fit(X, y, epochs=5, batch_size=50, callbacks=[Steps(poison), guard], verbose=0)
    assert guard.restarts == 4 and [e["new_lr"] for e in guard.events] == [0.05, 0.025, 0.0125]


def test_nan_guard_rescues_a_diverging_run():
    """Plain SGD with a step too large for the curvature blows up to Inf over ~30 steps.

    Rolling back to the last *finite* state cannot save it (that state has a loss of ~1e36); the
    guard keeps only healthy snapshots (no loss or gradient-norm spike), so its rollback goes to the
    state before the blow-up and the run converges.  With ``loss_spike`` it rolls back at the first
    step of the blow-up instead of waiting for the Inf.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype(np.float32)
    y = (X @ rng.normal(size=8) + 0.1 * rng.normal(size=256)).astype(np.float32)

    def run(callbacks):
        m = Sequential([Dense(32, init="he_normal"), Tanh(), Dense(1)], seed=0, backend="numpy")
        m.compile(loss="mse", optimizer=SGD(lr=0.5))
        with np.errstate(all="ignore"):
            return m, m.fit(X, y, epochs=15, batch_size=32, callbacks=callbacks, verbose=0)
    _, h_plain = run([])
    assert not math.isfinite(h_plain["loss"][-1])
    finite_only = NaNGuard(factor=0.25, max_restarts=5, healthy_factor=None)    # remember every finite step
    _, h = run([finite_only])
    assert finite_only.restarts >= 1 and h["loss"][-1] > 1e20
    healthy = NaNGuard(factor=0.25, max_restarts=5)
    m, h = run([healthy])
    assert 1 <= healthy.restarts <= 5 and healthy.events[0]["reason"] == "non-finite"
    assert math.isfinite(h["loss"][-1]) and h["loss"][-1] < 0.1 * np.var(y)
    guard = NaNGuard(factor=0.25, max_restarts=5, loss_spike=10)
    m, h = run([guard])
    assert 1 <= guard.restarts <= 5 and m.optimizer.lr == pytest.approx(0.5 * 0.25 ** guard.restarts)
    assert guard.events[0]["reason"] == "spike" and guard.events[0]["epoch"] == 0
    assert math.isfinite(h["loss"][-1]) and h["loss"][-1] < 0.1 * np.var(y)


def test_nan_guard_rolls_back_to_weights_from_before_the_blow_up():
    """SGD at lr 100: the weights reach ~1e11 while the loss is still finite, so the last finite state
    is ruined; the guard's snapshot must come from before (weights of the initial scale)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(256, 8)).astype(np.float32)
    y = (X @ rng.normal(size=8)).astype(np.float32)
    restored = []

    class AfterRollback(Callback):
        def on_backward_end(self, batch, logs=None):
            if self.model.skip_step:
                restored.append(float(np.abs(self.model.flat_params).max()))
    largest = []

    class Largest(Callback):
        def on_batch_end(self, batch, logs=None):
            largest.append(float(np.abs(self.model.flat_params).max()))
    m = Sequential([Dense(16, init="he_normal"), Tanh(), Dense(1)], seed=0, backend="numpy")
    m.compile(loss="mse", optimizer=SGD(lr=100.0))
    m.build((8,))
    initial = float(np.abs(m.flat_params).max())
    guard = NaNGuard(factor=0.001, max_restarts=3)
    with np.errstate(all="ignore"):
        h = m.fit(X, y, epochs=3, batch_size=32, callbacks=[guard, AfterRollback(), Largest()], verbose=0)
    assert guard.restarts >= 1 and max(largest[:guard.events[0]["batch"] + 1]) > 1e6     # it did blow up
    assert restored and max(restored) < 10 * initial                 # and came back to sane weights
    assert math.isfinite(h["loss"][-1])


def test_training_state_capture_reuses_arrays(spirals):
    X, y = spirals
    model = mlp(optimizer=Adam(lr=0.01), bn=True)
    model.fit(X, y, epochs=1, batch_size=50, verbose=0)
    state = TrainingState(model)
    ids = {name: id(a) for name, a in state.arrays.items()}
    assert {"params", "optimizer/m", "optimizer/v"} <= set(ids) and any(n.startswith("buffer/") for n in ids)
    before = model.flat_params.copy()
    model.fit(X, y, epochs=1, batch_size=50, verbose=0)
    state.capture(model)
    assert ids == {name: id(a) for name, a in state.arrays.items()}
    np.testing.assert_array_equal(state.arrays["params"], model.flat_params)
    assert not np.array_equal(before, model.flat_params)


# --------------------------------------------------------------------------- Reinitialize
def test_reinitialize_named_layer_draws_fresh_weights_and_zeroes_its_optimizer_state(spirals):
    X, y = spirals
    model = mlp(optimizer=Adam(lr=0.01))
    model.fit(X, y, epochs=2, batch_size=50, verbose=0)
    old = {k: v.copy() for k, v in model.parameters().items()}
    m_old = model.optimizer.state["m"].copy()
    expected_rng = np.random.default_rng()
    expected_rng.bit_generator.state = model.init_rng.bit_generator.state
    expected_W = bpnet.init.he_normal((2, 16), expected_rng, np.float32)
    cb = Reinitialize(layers=[0], when=None)
    cb.set_model(model)
    assert cb.reinitialize() == ["0.W", "0.b"]
    p = model.parameters()
    np.testing.assert_array_equal(p["0.W"], expected_W)
    assert not p["0.b"].any()
    np.testing.assert_array_equal(p["2.W"], old["2.W"])
    np.testing.assert_array_equal(p["2.b"], old["2.b"])
    m = model.optimizer.state["m"]
    from bpnet.callbacks import flat_slice
    s0W, s2W = flat_slice(model, p["0.W"]), flat_slice(model, p["2.W"])
    assert not m[s0W].any() and np.array_equal(m[s2W], m_old[s2W]) and m_old[s0W].any()


def test_reinitialize_on_plateau_revives_dead_relus(spirals):
    """Every ReLU of the hidden layer is dead (bias -50): the loss stalls until the layer is re-drawn."""
    X, y = spirals

    def run(callbacks):
        model = mlp(optimizer=Adam(lr=0.02))
        model.build((2,))
        model.layers[0].params["b"][:] = -50.0
        h = model.fit(X, y, epochs=30, batch_size=50, callbacks=callbacks, verbose=0)
        return h
    h_dead = run([])
    cb = Reinitialize(when="plateau", monitor="loss", patience=3, min_delta=1e-3)
    h = run([cb])
    assert h_dead["accuracy"][-1] < 0.45
    assert len(cb.events) == 1 and cb.events[0]["params"] == ["0.W", "0.b", "2.W", "2.b"]
    assert 3 <= cb.events[0]["epoch"] <= 15
    assert h["accuracy"][-1] > 0.8


def test_reinitialize_at_epoch_and_bad_layer_names(spirals):
    X, y = spirals
    model = mlp()
    spy = Spy()
    cb = Reinitialize(scheme="xavier_normal", layers="dense", when=2, max_times=1)
    model.fit(X, y, epochs=3, batch_size=50, callbacks=[cb, spy], verbose=0)
    assert [e["epoch"] for e in cb.events] == [2]
    with pytest.raises(ConfigError, match="index 7 is out of range"):
        Reinitialize(layers=[7], when=None).reinitialize(model)
    with pytest.raises(ConfigError, match="names no Dense layer"):
        Reinitialize(layers=[1], when=None).reinitialize(model)


# --------------------------------------------------------------------------- GradientClipping
def test_gradient_clipping_records_pre_clip_norm_and_clips(spirals):
    X, y = spirals
    raw, clipped = [], []

    def before(model, step, logs):
        raw.append(math.sqrt(float(np.sum(model.flat_grads.astype(np.float64) ** 2))))

    def after(model, step, logs):
        clipped.append(math.sqrt(float(np.sum(model.flat_grads.astype(np.float64) ** 2))))
        assert logs["grad_norm"] == pytest.approx(raw[-1], rel=1e-6)
    clip = GradientClipping(max_norm=0.3)
    mlp(optimizer=SGD(lr=0.5)).fit(X, y, epochs=3, batch_size=50, verbose=0,
                                   callbacks=[Steps(before), clip, Steps(after)])
    assert clip.norms == pytest.approx(raw, rel=1e-6)
    assert 0 < clip.clipped == sum(n > 0.3 for n in raw) < len(raw)
    for r, c in zip(raw, clipped):
        assert c == pytest.approx(min(r, 0.3), rel=1e-4)


# --------------------------------------------------------------------------- LearningRateScheduler
def test_learning_rate_scheduler_per_epoch_and_per_step(spirals):
    X, y = spirals
    model = mlp(optimizer=SGD(lr=1.0))
    h = model.fit(X, y, epochs=4, batch_size=50, verbose=0,
                  callbacks=[LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)])
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    sched = LearningRateScheduler(lambda step: 0.01 * (step + 1), per_step=True)
    h = mlp(optimizer=SGD(lr=1.0)).fit(X, y, epochs=2, batch_size=50, verbose=0, callbacks=[sched])
    assert sched.lrs == pytest.approx([0.01 * (s + 1) for s in range(6)])
    assert h["lr"] == pytest.approx([0.03, 0.06])
    with pytest.raises(ConfigError):
        LearningRateScheduler(0.1)
