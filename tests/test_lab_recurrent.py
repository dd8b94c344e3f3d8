"""The lab's two failures of backpropagation through time, on the real RNN layer.

recurrent_explosion: a linear RNN whose U has spectral radius 1.5 (gradient ×1.5^19 through 20
steps, NaN within a few steps), repaired by GradientClipping(5) and by an orthogonal U.
recurrent_vanishing: a tanh RNN with small U forgets the first step of 30 (gradient ratio ~1e-21),
repaired by an orthogonal U.  Seed 0; each scenario trains once per test worker.
"""
import math
from functools import lru_cache

import numpy as np
import pytest

import bpnet.lab as lab
from bpnet.lab.catalogue.recurrent import _first_step_memory, _recurrent_init, _sum_sign
from bpnet.lab.cli import main as lab_main
from bpnet.layers import RNN, BuildContext
from bpnet.backends import get_backend

NAMES = ("recurrent_explosion", "recurrent_vanishing")


@lru_cache(maxsize=None)
def result(name):
    return lab.run(name, seed=0)


def test_both_are_registered_listed_and_described(capsys):
    assert set(NAMES) <= {s.name for s in lab.scenarios()}
    assert lab_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "recurrent_vanishing         VANISHING_THROUGH_TIME" in out
    text = lab.get("recurrent_vanishing").describe()
    assert "RNN(16, tanh)" in text and "VANISHING_THROUGH_TIME" in text


def test_the_sequence_data_sets():
    d = _sum_sign(0)
    assert d["X"].shape == (1024, 20, 4) and d["X_val"].shape == (256, 20, 4)
    np.testing.assert_array_equal(d["y"], d["X"][:, :, 0].sum(axis=1) > 0)
    m = _first_step_memory(0)
    assert m["X"].shape == (1024, 30, 4)
    np.testing.assert_array_equal(m["X"][:, 0, 0], np.where(m["y"] == 1, 1.0, -1.0))
    assert not m["X"][:, 1:, 0].any()                         # the label is visible at t = 1 only
    assert 0.45 < m["X"][:, :, 1:].std() < 0.55 and 0.4 < m["y"].mean() < 0.6


@pytest.mark.parametrize("name", NAMES)
def test_reproduced_diagnosed_repaired(name):
    r = result(name)
    assert r.reproduced and r.diagnosed and r.repaired_ok, r.summary()
    assert math.isfinite(r.repaired.metrics["final_loss"])


def test_explosion_is_rho_to_the_power_t_and_clipping_repairs_it():
    r = result("recurrent_explosion")
    b, rep = r.broken.metrics, r.repaired.metrics
    # linear recurrence, U = 1.5·Q: each step back multiplies ‖∂L/∂h‖ by exactly 1.5 (float32 rounding)
    assert b["spectral_radius_start"] == pytest.approx(1.5, rel=1e-6)
    assert b["dh_ratio_step0"] == pytest.approx(1.5 ** 19, rel=1e-4)
    assert b["grad_norm_first_layer"] >= 1e3 and b["first_nonfinite_step"] <= 5
    assert r.broken.anomaly is not None and r.broken.anomaly.layer_class == "RNN"
    f = r.finding("EXPLODING_THROUGH_TIME")
    assert f is not None and f.where == "layer 0" and "GradientClipping" in f.remedy
    assert f.evidence["spectral_radius_start"] == pytest.approx(1.5, rel=1e-6)
    assert f.evidence["ratio_at_start"] == pytest.approx(1.5 ** 19, rel=1e-4)
    # the clipped run starts from the same weights and pulls ρ(U) down to about 1
    assert rep["dh_ratio_step0"] == b["dh_ratio_step0"] and rep["first_nonfinite_step"] is None
    assert rep["spectral_radius"] < 1.3 and rep["dh_ratio_recent"] < 10
    assert rep["val_accuracy"] > b["val_accuracy"] + 0.3
    variant = r.variants["orthogonal init (ρ = 1), clip 5"]
    assert variant["dh_ratio_step0"] == pytest.approx(1.0, rel=1e-4)          # orthogonal: norm kept
    assert variant["grad_norm_first_layer"] < 100 and variant["val_accuracy"] > 0.9
    assert variant["spectral_radius"] < 1.3


def test_vanishing_forgets_the_first_step_and_orthogonal_init_repairs_it():
    r = result("recurrent_vanishing")
    b, rep = r.broken.metrics, r.repaired.metrics
    f = r.finding()
    assert f.where == "layer 0" and f.evidence["steps"] == 30 and "orthogonal" in f.remedy
    assert f.evidence["ratio_first_to_last"] < 1e-5 and f.evidence["spectral_radius"] < 0.6
    # tanh' <= 1, so one step back shrinks ‖∂L/∂h‖ by at most the largest singular value of U
    U0 = _initial_U(r.broken.config)
    assert b["dh_ratio_step0"] <= np.linalg.norm(U0, 2) ** 29 < 1e-6
    assert b["spectral_radius_start"] == pytest.approx(np.abs(np.linalg.eigvals(U0)).max(), rel=1e-6)
    assert b["val_accuracy"] < 0.6                              # chance: the label never reaches h_T
    assert rep["spectral_radius_start"] == pytest.approx(1.0, abs=1e-6)
    assert rep["dh_ratio_step0"] > 1e-4 and rep["val_accuracy"] >= 0.95
    assert "VANISHING_THROUGH_TIME" not in r.repaired.codes


def _initial_U(config):
    """U as the broken run drew it: same seed, same initialiser, same build order as the scenario."""
    from bpnet import Dense, Sequential
    model = Sequential([RNN(16, activation=config["activation"],
                            recurrent_init=_recurrent_init(config["recurrent_init"])), Dense(2)],
                       seed=0, backend="numpy")
    model.build((30, 4))
    return np.asarray(model.layers[0].params["U"], dtype=np.float64)


def test_recurrent_init_specs():
    rng = np.random.default_rng(0)
    ctx = BuildContext(get_backend("numpy"), np.dtype(np.float64), rng)
    layer = RNN(8, recurrent_init=_recurrent_init("orthogonal x 1.5"))
    layer.build((5, 2), ctx)
    assert layer.spectral_radius() == pytest.approx(1.5, rel=1e-9)
    U = _recurrent_init("normal(0.05)")((400, 400), np.random.default_rng(1), np.float64)
    assert U.std() == pytest.approx(0.05, rel=0.01)
