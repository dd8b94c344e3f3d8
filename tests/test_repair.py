"""bpnet.doctor.repair: each remedy's change and effect, the report, user-code bugs, fit(doctor="repair")."""
import math
from functools import partial

import numpy as np
import pytest

import bpnet
from bpnet import (SGD, Adam, BatchNorm1d, CrossEntropy, Dense, Dropout, LeakyReLU, ReLU, Residual, Sequential,
                   Sigmoid, Softmax, Tanh)
from bpnet import init as initializers
from bpnet.doctor import RepairReport, repair
from bpnet.doctor import findings as F
from bpnet.doctor import remedies as R
from bpnet.doctor.attempt import Data
from bpnet.doctor.findings import Finding
from bpnet.doctor.recipe import Recipe, code_diff


def blobs(n=300, d=4, k=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    y = rng.integers(0, k, n)
    X = (centers[y] + rng.normal(size=(n, d))) * scale
    return X.astype(np.float32), y.astype(np.int64)


def model_of(layers, loss="cross_entropy", opt=None, seed=0):
    m = Sequential(layers, seed=seed, backend="numpy")
    m.compile(loss=loss, optimizer=opt or SGD(lr=0.1))
    return m


def recipe_of(layers, **kw):
    return Recipe.from_model(model_of(layers, **kw), epochs=3, batch_size=32)


def apply(name, recipe, finding=None, X=None, y=None):
    remedy = next(r for r in R.all_remedies() if r.name == name)
    Xd, yd = blobs() if X is None else (X, y)
    return remedy.apply(recipe, finding or Finding("X", "warning", ""), R.Context(Xd, yd))


# -- each remedy: the config change it makes ---------------------------------------------------
def test_learning_rate_remedies_scale_the_optimizer_lr():
    r = recipe_of([Dense(3)], opt=SGD(lr=0.5))
    assert apply("learning rate x0.1", r) == "learning rate 0.5 -> 0.05"
    assert r.optimizer_config["lr"] == pytest.approx(0.05)
    assert apply("learning rate x10", r) == "learning rate 0.05 -> 0.5"


def test_adam_replaces_sgd_once():
    r = recipe_of([Dense(3)])
    assert "Adam" in apply("Adam instead of SGD", r) and r.optimizer_class is Adam
    assert apply("Adam instead of SGD", r) is None               # already Adam: nothing to change


def test_clipping_early_stopping_and_reduce_lr_add_their_callback_once():
    r = recipe_of([Dense(3)])
    for name, cls in [("gradient clipping (max_norm 5)", bpnet.GradientClipping),
                      ("EarlyStopping with best-weight restore", bpnet.EarlyStopping),
                      ("ReduceLROnPlateau(factor 0.5, patience 3)", bpnet.ReduceLROnPlateau)]:
        assert apply(name, r).startswith("add ")
        assert apply(name, r) is None
    made = r.make_callbacks()
    assert [type(c) for c in made] == [bpnet.GradientClipping, bpnet.EarlyStopping, bpnet.ReduceLROnPlateau]
    assert made[0].max_norm == 5.0 and made[1].restore_best_weights and made[2].factor == 0.5


def test_reinit_chooses_he_for_relu_xavier_otherwise_and_orthogonal_for_rnn():
    r = recipe_of([Dense(8, init="normal"), ReLU(), Dense(8, init=partial(initializers.constant, value=0.1)), Tanh(),
                   Dense(3, init="normal")])
    change = apply("He/Xavier/orthogonal re-initialisation", r)
    assert [layer.init for layer in r.layers if isinstance(layer, Dense)] == ["he_normal", "xavier_uniform",
                                                                              "xavier_uniform"]
    assert "partial(constant, value=0.1)" in change                # a callable init is named, not forgotten
    rnn = recipe_of([bpnet.RNN(4, recurrent_init=partial(initializers.orthogonal, gain=1.5)), Dense(2)])
    assert "recurrent_init" in apply("orthogonal recurrent weights", rnn)
    assert rnn.layers[0].recurrent_init == "orthogonal"


def test_activation_swaps_batchnorm_residual_fewer_layers_and_dropout():
    deep = [Dense(8), Sigmoid(), Dense(8), Sigmoid(), Dense(8), Sigmoid(), Dense(8), Sigmoid(), Dense(3)]
    r = recipe_of(deep)
    apply("ReLU with He init instead of sigmoid/tanh", r)
    assert [type(x).__name__ for x in r.layers[1::2]] == ["ReLU"] * 4 and r.layers[0].init == "he_normal"
    apply("LeakyReLU instead of ReLU", r)
    assert isinstance(r.layers[1], LeakyReLU)
    bn = recipe_of(deep)
    apply("BatchNorm1d after dense layers", bn)
    assert [type(x).__name__ for x in bn.layers[:3]] == ["Dense", "BatchNorm1d", "Sigmoid"]
    res = recipe_of(deep)
    apply("residual connections", res)
    assert sum(isinstance(x, Residual) for x in res.layers) == 3 and len(res.layers) == 6
    fewer = recipe_of(deep)
    apply("fewer layers", fewer)
    assert sum(isinstance(x, Dense) for x in fewer.layers) == 3
    drop = recipe_of(deep)
    apply("Dropout(0.5)", drop)
    assert sum(isinstance(x, Dropout) for x in drop.layers) == 4
    for rec in (bn, res, fewer, drop):                              # each still builds and runs
        assert rec.build((4,)).predict(np.zeros((2, 4), np.float32)).shape == (2, 3)


def test_output_and_loss_remedies():
    r = recipe_of([Dense(8), ReLU(), Dense(3), Softmax()])
    assert "Softmax" in apply("remove the double softmax", r) and isinstance(r.layers[-1], Dense)
    reg = recipe_of([Dense(8), ReLU(), Dense(1), Sigmoid()], loss="mse")
    assert apply("linear output layer", reg) and isinstance(reg.layers[-1], Dense)
    X, y = blobs()
    lab = recipe_of([Dense(8), ReLU(), Dense(1)], loss="mse")
    change = apply("labels in the loss's format", lab, X=X, y=y)
    assert "CrossEntropy" in change and lab.layers[-1].units == 3 and type(lab.loss).__name__ == "CrossEntropy"
    fp = Recipe.from_model(Sequential([Dense(3)], dtype="float16", backend="numpy").compile(
        loss="mse", optimizer=SGD(lr=0.1)), 1, 8)
    assert "LossScaler" in apply("loss scaling / float32 for float16", fp) and fp.loss_scaler
    assert apply("loss scaling / float32 for float16", fp) == "dtype float16 -> float32"


def test_label_formats_one_based_ids_binary_targets_and_multi_hot_rows():
    X = np.zeros((6, 2), np.float32)
    r = recipe_of([Dense(8), ReLU(), Dense(4)])
    y = np.array([1, 2, 3, 1, 2, 3])
    assert "class indices 0..2" in apply("labels in the loss's format", r, X=X, y=y) and r.layers[-1].units == 3
    Xt, yt, *_ = Data(X, y, (X, y)).prepared(r)
    assert yt.tolist() == [0, 1, 2, 0, 1, 2]
    b = recipe_of([Dense(1)], loss="bce_with_logits")
    ypm = np.array([[-1.0], [1.0], [1.0], [-1.0], [1.0], [-1.0]], np.float32)
    assert "-1/1 -> 0/1" in apply("labels in the loss's format", b, X=X, y=ypm)
    assert Data(X, ypm, (X, ypm)).prepared(b)[1].ravel().tolist() == [0, 1, 1, 0, 1, 0]
    m = recipe_of([Dense(3)])
    multi = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]] * 2, np.float32)
    assert "BCEWithLogits" in apply("labels in the loss's format", m, X=X, y=multi)


def test_softmax_with_mse_on_one_hot_targets_becomes_cross_entropy_on_logits():
    X, y = blobs(300)
    onehot = np.eye(3, dtype=np.float32)[y]
    r = recipe_of([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()], loss="mse")
    assert apply("classification loss on logits", r, X=X, y=onehot) == "Softmax + MSE on one-hot targets -> " \
        "logits + CrossEntropy"
    assert type(r.loss).__name__ == "CrossEntropy" and isinstance(r.layers[-1], Dense)


def test_nonfinite_validation_rows_are_left_out_of_the_score_and_reported():
    X, y = blobs(300)
    Xv, yv = blobs(60, seed=1)
    Xv = Xv.copy()
    Xv[:3, 0] = np.nan
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3)], opt=Adam(lr=1e-2))
    rep = repair(m, X, y, epochs=4, validation_data=(Xv, yv), verbose=0)
    att = rep.attempts[1]
    assert rep.attempts[0].error is not None                    # fit refuses NaN validation data up front
    assert att.remedy == "drop non-finite rows" and att.data_report["validation_rows_left_out"] == 3
    assert rep.fixed and "drop_nonfinite_rows(X_val, y_val)" in rep.diff()


def test_class_weights_and_focal_loss_weight_by_inverse_frequency():
    y = np.array([0] * 90 + [1] * 10)
    X = np.zeros((100, 2), np.float32)
    r = recipe_of([Dense(2)])
    apply("class weights", r, X=X, y=y)
    w = r.loss.class_weights if hasattr(r.loss, "class_weights") else None
    assert np.allclose(np.asarray(w, dtype=float), [100 / (2 * 90), 100 / (2 * 10)], rtol=1e-3)
    f = recipe_of([Dense(2)])
    apply("focal loss", f, X=X, y=y)
    assert type(f.loss).__name__ == "FocalLoss"


def test_data_steps_drop_rows_from_the_training_split_only_and_standardise_on_it():
    X, y = blobs(200, scale=1.0)
    X = X.copy()
    X[:5, 0] = np.nan
    X[10, 1] = 1e5                                         # one outlier row
    Xv, yv = blobs(50, seed=1)
    Xv = Xv * 100 + 7
    r = recipe_of([Dense(3)])
    for name in ("drop non-finite rows", "drop outlier rows",
                 "standardise inputs (fit on the training split)"):
        assert apply(name, r, X=X, y=y)
    Xt, yt, Xv2, yv2, scaler, report = Data(X, y, (Xv, yv)).prepared(r)
    assert report == {"rows_dropped_nonfinite": 5, "rows_dropped_outliers": 1}
    assert len(Xt) == 194 and len(Xv2) == 50                 # validation rows are never dropped
    assert np.allclose(Xt.mean(axis=0), 0, atol=1e-5) and np.allclose(Xt.std(axis=0), 1, atol=1e-4)
    assert np.allclose(scaler.transform(Xv), Xv2, atol=1e-4)   # the training statistics, applied to validation


def test_batch_that_fits_reads_the_memory_finding():
    r = recipe_of([Dense(3)])
    r.batch_size = 1000
    f = Finding(F.MEMORY_BUDGET, "error", "", evidence={"max_batch_size": 128})
    assert "1000 -> 128" in apply("largest batch that fits", r, f)


def test_priority_is_data_then_output_then_gradients_then_lr_and_nonfinite_loss_is_a_symptom():
    fs = [Finding(c, "error", "") for c in (F.LR_TOO_HIGH, F.NONFINITE_LOSS, F.EXPLODING_GRADIENTS,
                                             F.DOUBLE_SOFTMAX, F.UNNORMALIZED_INPUTS)]
    assert [f.code for f in R.root_causes_first(fs)] == [F.UNNORMALIZED_INPUTS, F.DOUBLE_SOFTMAX,
                                                         F.EXPLODING_GRADIENTS, F.LR_TOO_HIGH, F.NONFINITE_LOSS]
    assert [f.code for f in R.root_causes_first(fs[1:2])] == [F.NONFINITE_LOSS]


# -- the loop on tiny broken runs ----------------------------------------------------------------
def test_repair_standardises_unscaled_inputs_and_the_scaler_travels_with_the_model(tmp_path):
    X, y = blobs(400, scale=300.0)
    X[:, 0] += 5000
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3)], opt=SGD(lr=0.05))
    rep = repair(m, X, y, epochs=6, batch_size=32, verbose=0)
    assert isinstance(rep, RepairReport) and rep.fixed
    assert "standardise inputs (fit on the training split)" in rep.remedies
    assert rep.attempts[1].metric > rep.attempts[0].metric + 0.2
    model = rep.model
    assert model.apply_preprocessor and isinstance(model.preprocessor, bpnet.data.Standardizer)
    Xv, yv = X[-80:], y[-80:]                                # raw data in, the preprocessor inside
    assert model.evaluate(Xv, yv)["accuracy"] == pytest.approx(rep.attempts[-1].metric, abs=0.05)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = Sequential.load(path, backend="numpy")
    assert loaded.apply_preprocessor
    assert np.allclose(loaded.predict(Xv), model.predict(Xv), atol=1e-5)


def test_repair_restarts_from_a_good_checkpoint_when_the_run_went_wrong_mid_way():
    X, y = blobs(400)
    m = model_of([Dense(32, init="he_normal"), ReLU(), Dense(3)], opt=SGD(lr=0.1))
    jump = bpnet.LearningRateScheduler(lambda epoch, lr: lr * 100 if epoch == 3 else lr)   # diverges at epoch 3
    rep = repair(m, X, y, epochs=6, batch_size=32, callbacks=[jump], verbose=0)
    broken, fix = rep.attempts[0], rep.attempts[1]
    assert not math.isfinite(broken.history["loss"][-1]) and math.isfinite(broken.history["loss"][2])
    assert broken.mid_run and broken.checkpoint[0] == 2              # the last epoch with a finite, best val loss
    assert fix.remedy == "learning rate x0.1" and fix.restart == "the last good checkpoint (epoch 2)"
    assert rep.fixed and fix.metric >= 0.9
    assert "restart from the last good checkpoint (epoch 2)" in str(rep)


def test_a_fix_that_changes_the_architecture_restarts_from_a_fresh_initialisation():
    X, y = blobs(300)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()])
    rep = repair(m, X, y, epochs=4, verbose=0)
    assert rep.attempts[1].restart == "fresh initialisation"


def test_report_tells_the_story_and_the_diff_is_code():
    X, y = blobs(300)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()])
    rep = repair(m, X, y, epochs=5, batch_size=32, verbose=0)
    text = str(rep)
    assert rep.fixed and "DOUBLE_SOFTMAX" in text and "attempt 0 (broken run)" in text
    assert "-    Softmax()," in text and "+++ repaired run" in text
    a = rep.attempts[1]
    assert a.remedy == "remove the double softmax" and a.verdict == "fixed" and a.seconds > 0
    assert a.change.startswith("final Softmax layer removed")
    assert rep.history is a.history and len(rep.history) == 5


def test_a_healthy_run_is_left_alone():
    X, y = blobs(300)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3)], opt=Adam(lr=1e-2))
    rep = repair(m, X, y, epochs=4, batch_size=32, verbose=0)
    if len(rep.attempts) == 1:
        assert rep.fixed and "nothing to repair" in str(rep) and rep.diff() == ""


# -- user-code bugs are named, not papered over ----------------------------------------------------
class WrongTanh(Tanh):
    """tanh with the slip tanh' = 1 (the backward passes dy through unchanged)."""

    def backward(self, dy):
        return dy


class ClimbingSGD(SGD):
    """An optimizer whose step has the wrong sign: w += lr·g."""

    def step(self):
        self.model.flat_params += self.lr * self.model.flat_grads
        self.t += 1


def test_a_layer_whose_backward_fails_the_gradient_check_is_named():
    X, y = blobs(200)
    m = model_of([Dense(8), WrongTanh(), Dense(3)])
    rep = repair(m, X, y, epochs=2, verbose=0)
    assert not rep.fixed and rep.bug.code == F.WRONG_GRADIENT and "WrongTanh.backward" in str(rep)
    assert len(rep.attempts) == 1 and rep.diff() == ""


def test_an_optimizer_that_climbs_the_loss_is_named():
    X, y = blobs(300)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3)], opt=ClimbingSGD(lr=0.05))
    rep = repair(m, X, y, epochs=4, verbose=0)
    assert not rep.fixed and rep.bug.code == F.GRADIENT_ASCENT and "climbs the loss" in str(rep)


# -- the random baseline and the one-line form ---------------------------------------------------
def test_random_chooser_is_seeded():
    X, y = blobs(200, scale=300.0)
    runs = [repair(model_of([Dense(8), ReLU(), Dense(3)]), X, y, epochs=2, max_attempts=2, chooser="random",
                   seed=3, verbose=0) for _ in range(2)]
    assert [a.remedy for a in runs[0].attempts] == [a.remedy for a in runs[1].attempts]
    with pytest.raises(bpnet.ConfigError):
        repair(model_of([Dense(3)]), X, y, epochs=1, chooser="guess", verbose=0)


def test_fit_doctor_repair_makes_the_model_the_repaired_one():
    X, y = blobs(300)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()])
    history = m.fit(X, y, epochs=5, batch_size=32, doctor="repair", verbose=0)
    assert history.repair.fixed and history.repair.model is m
    assert not isinstance(m.layers[-1], Softmax) and m.optimizer.model is m
    assert m.evaluate(X[-60:], y[-60:])["accuracy"] > 0.9
    assert math.isfinite(history["loss"][-1])


def test_code_diff_of_identical_recipes_is_empty():
    r = recipe_of([Dense(3)])
    assert code_diff(r, r.clone()) == ""
    assert r.code()[-1] == "model.fit(X_train, y_train, epochs=3, batch_size=32)"
    assert CrossEntropy  # imported for the remedies' classes
    assert BatchNorm1d


def test_repairing_a_repaired_model_keeps_its_preprocessor_in_front():
    X, y = blobs(400, scale=300.0)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()], opt=SGD(lr=0.05))
    first = repair(m, X, y, epochs=6, verbose=0).model
    assert first.apply_preprocessor
    again = repair(first, X, y, epochs=6, verbose=0)
    scaler = again.model.preprocessor
    assert again.model.apply_preprocessor
    Xt = scaler.transform(X[:-80])
    assert np.allclose(Xt.mean(axis=0), 0, atol=0.05) and np.allclose(Xt.std(axis=0), 1, atol=0.05)
    assert again.model.evaluate(X[-80:], y[-80:])["accuracy"] > 0.9


def test_standardised_targets_are_folded_back_into_the_output_layer_exactly():
    from bpnet.doctor.attempt import fold_target_scale
    rng = np.random.default_rng(0)
    m = model_of([Dense(4, init="he_normal"), ReLU(), Dense(2)], loss="mse")
    m.build((3,))
    X = rng.normal(size=(5, 3)).astype(np.float32)
    before = m.predict(X)
    mu, sd = np.array([3e5, -2.0], np.float32), np.array([1e5, 0.5], np.float32)
    fold_target_scale(m, mu, sd)
    assert np.allclose(m.predict(X), before * sd + mu, rtol=1e-5)
    r = recipe_of([Dense(4), ReLU(), Dense(1)], loss="mse")
    assert "folds them back" in apply("standardise regression targets", r) and r.target_scale


def test_repair_standardises_regression_targets_in_the_hundreds_of_thousands():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (3e5 + 1e5 * (X @ np.array([1.0, -0.5, 0.2]))).astype(np.float32).reshape(-1, 1)
    m = model_of([Dense(16, init="he_normal"), ReLU(), Dense(1)], loss="mse", opt=SGD(lr=0.05))
    rep = repair(m, X, y, epochs=10, verbose=0)
    assert not math.isfinite(rep.attempts[0].metric)               # raw targets: the loss overflows
    assert "standardise regression targets" in rep.remedies and rep.fixed
    pred = rep.model.predict(X[-80:])
    assert np.sqrt(np.mean((pred - y[-80:]) ** 2)) < 0.2 * y.std()    # raw targets out, within 20% of their spread


def test_example_09_repairs_three_mistakes_at_once(tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "examples" / "09_auto_repair.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert "repaired: True" in out and "-    Softmax()," in out and "+scaler = Standardizer()" in out
    assert float(re.search(r"test accuracy ([\d.]+)", out).group(1)) >= 0.9


def test_the_time_budget_stops_the_repair_after_the_broken_run():
    X, y = blobs(300, scale=300.0)
    rep = repair(model_of([Dense(16, init="he_normal"), ReLU(), Dense(3)]), X, y, epochs=2, time_budget=0.0,
                 verbose=0)
    assert len(rep.attempts) == 1 and not rep.fixed


def test_cli_train_repair_prints_the_report(capsys):
    from bpnet.cli import main
    rc = main(["train", "--dataset", "xor", "--hidden", "8", "--epochs", "4", "--optimizer", "sgd", "--lr", "30",
               "--backend", "numpy", "--quiet", "--repair"])
    out = capsys.readouterr().out
    assert rc == 0 and "attempt 0 (broken run)" in out and "test accuracy" in out
