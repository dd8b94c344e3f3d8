"""BackupAndRestore and callback state: an interrupted run, restarted, equals the uninterrupted one bit for bit."""
import json
import os

import numpy as np
import pytest

from bpnet import (Adam, BackupAndRestore, BatchNorm1d, Dense, Dropout, EarlyStopping, GradientClipping,
                   LearningRateScheduler, ModelCheckpoint, NaNGuard, ReduceLROnPlateau, ReLU, Sequential)
from bpnet.callbacks import Callback, Reinitialize, TerminateOnNaN
from bpnet.errors import CheckpointError, ConfigError

rng = np.random.default_rng(7)
X = rng.normal(size=(120, 5))
Y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.4).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
XV, YV = X[:30] + 0.1, Y[:30]
EPOCHS = 12


class Interrupted(Exception):
    pass


class Interrupt(Callback):
    """Raise at ``(epoch, batch)`` (batch None: at the end of the epoch), like a crash or Ctrl-C."""

    def __init__(self, epoch, batch=None):
        self.at = (epoch, batch)

    def on_batch_end(self, batch, logs=None):
        if self.at == (self.loop.epoch, batch):
            raise Interrupted

    def on_epoch_end(self, epoch, logs=None):
        if self.at == (epoch, None):
            raise Interrupted


def script(backup_dir, *extra):
    """What the user's training script builds every time it runs: model, callbacks, fit."""
    model = Sequential([Dense(16, init="he_normal"), BatchNorm1d(), ReLU(), Dropout(0.2), Dense(3)],
                       seed=3, backend="numpy")
    model.compile(optimizer=Adam(lr=0.03))
    callbacks = [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1e-3),
                 EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
                 LearningRateScheduler(lambda epoch, lr: lr * 0.93),        # compounds: needs the saved lr
                 GradientClipping(1.0), NaNGuard(),
                 BackupAndRestore(backup_dir), *extra]
    history = model.fit(X, Y, epochs=EPOCHS, batch_size=16, validation_data=(XV, YV), callbacks=callbacks,
                        verbose=0)
    return model, history, callbacks


def numbers(history):
    """The history without wall-clock times."""
    return {k: v for k, v in history.history.items() if k != "time"}, history.epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return script(tmp_path_factory.mktemp("plain"))


# interrupting at epochs 4-7 gives a different run if the callbacks' state is not restored (ReduceLROnPlateau
# cuts the lr at epochs 4-7, EarlyStopping stops at 7); every interruption point 1..10 was checked to resume exactly
@pytest.mark.parametrize("epoch, batch", [(6, 2), (5, None), (0, 0)])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, uninterrupted, epoch, batch):
    full_model, full_history, full_cbs = uninterrupted
    with pytest.raises(Interrupted):
        script(tmp_path, Interrupt(epoch, batch))
    assert os.path.exists(tmp_path / "backup.npz") == (epoch > 0 or batch is None)
    model, history, cbs = script(tmp_path)                     # the same script, run again
    np.testing.assert_array_equal(model.flat_params, full_model.flat_params)
    for key, state in full_model.optimizer.state.items():
        np.testing.assert_array_equal(model.optimizer.state[key], state)
    assert model.optimizer.t == full_model.optimizer.t and model.optimizer.lr == full_model.optimizer.lr
    assert numbers(history) == numbers(full_history)
    assert cbs[0].reductions == full_cbs[0].reductions and cbs[0].reductions          # the lr was cut
    assert (cbs[1].best_epoch, cbs[1].stopped_epoch) == (full_cbs[1].best_epoch, full_cbs[1].stopped_epoch)
    assert cbs[2].lrs[-3:] == full_cbs[2].lrs[-3:] and cbs[3].clipped == full_cbs[3].clipped
    assert not os.path.exists(tmp_path / "backup.npz")        # a finished run deletes its backup
    np.testing.assert_array_equal(model.predict(XV), full_model.predict(XV))


def test_the_uninterrupted_run_exercises_what_it_should(uninterrupted):
    model, history, cbs = uninterrupted
    assert len(cbs[0].reductions) >= 1 and cbs[3].clipped >= 1
    assert len(history.epoch) >= 6 and np.isfinite(history["loss"]).all()


def test_every_stateful_callback_round_trips_its_state(tmp_path, uninterrupted):
    _, _, cbs = uninterrupted
    extra = [Reinitialize(when="plateau", monitor="loss", patience=2), TerminateOnNaN(),
             ModelCheckpoint(tmp_path / "m.npz")]
    for cb in cbs + extra:
        state = cb.state_dict()
        plain = {k: v for k, v in state.items() if not isinstance(v, dict) or "opt_t" not in v}
        json.dumps(plain)                                    # JSON-able, apart from snapshot arrays
        fresh = type(cb).__new__(type(cb))
        fresh.__dict__.update({k: v for k, v in vars(cb).items() if k not in state})
        fresh.load_state_dict(state)
        assert all(_same(getattr(fresh, k), getattr(cb, k)) for k in cb.state_keys), type(cb).__name__


def _same(a, b):
    return type(a) is type(b) and (a == b if not hasattr(a, "ema") else vars(a) == vars(b))


def test_model_checkpoint_files_carry_the_run_state(tmp_path):
    model = Sequential([Dense(8), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=Adam(lr=0.01))
    plateau = ReduceLROnPlateau(monitor="loss", patience=1)
    model.fit(X, Y, epochs=3, batch_size=32, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz"), plateau],
              verbose=0)
    from bpnet.io import read_checkpoint
    config, _ = read_checkpoint(tmp_path / "e3.npz")
    assert config["training"]["epoch"] == 2 and config["training"]["step"] == 12
    assert config["callbacks"]["1:ReduceLROnPlateau"]["best"] == plateau.best      # saved after it reacted
    assert config["training"]["history"]["history"]["loss"] == model.history["loss"]
    model.save(tmp_path / "after.npz")                       # after fit there is no run to describe
    assert "training" not in read_checkpoint(tmp_path / "after.npz")[0]


def test_backup_refuses_another_runs_callbacks_and_foreign_files(tmp_path):
    with pytest.raises(Interrupted):
        script(tmp_path, Interrupt(2, 1))
    model = Sequential([Dense(4), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile()
    with pytest.raises(ConfigError, match="resume with the callbacks the interrupted run had"):
        model.fit(X, Y, epochs=3, verbose=0, callbacks=[EarlyStopping(monitor="loss"), BackupAndRestore(tmp_path)])
    model.save(tmp_path / "backup.npz")
    with pytest.raises(CheckpointError, match="not a BackupAndRestore backup"):
        model.fit(X, Y, epochs=3, verbose=0, callbacks=[BackupAndRestore(tmp_path)])
    with pytest.raises(ConfigError, match="save_freq"):
        BackupAndRestore(tmp_path, save_freq=100)
    with pytest.raises(ConfigError, match="needs a directory"):
        BackupAndRestore("")
