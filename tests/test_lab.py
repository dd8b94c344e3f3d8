"""The failure lab: every scenario reproduces its failure, the doctor names it, the remedy works.

Each scenario runs once per test worker (cached); the generic test checks the
three verdicts against the numbers behind them, and ``SPECIFIC`` adds what
defines each failure (the step of the first NaN, the layer the anomaly check
names, the recall of the rare class, ...).  Seed 0 throughout.
"""
import json
import math
import re
from functools import lru_cache

import numpy as np
import pytest

import bpnet.lab as lab
from bpnet import gradcheck
from bpnet.errors import GradcheckError
from bpnet.lab.cli import main as lab_main
from bpnet.lab.layers import NaiveBCE, NaiveSoftmax, WrongSigmoid
from bpnet.losses import BCEWithLogits

NAMES = [s.name for s in lab.scenarios()]
REQUIRED = {"lr_too_high", "lr_too_low", "deep_sigmoid_vanishing", "exploding_init", "recurrent_explosion",
            "dying_relu", "zero_init_symmetry", "unnormalized_inputs", "train_val_scaling_mismatch",
            "nan_in_data", "outliers", "naive_softmax_overflow", "log_of_zero", "label_format_mismatch",
            "double_softmax", "class_imbalance", "fp16_overflow", "wrong_derivative", "gradient_ascent_sign",
            "forgot_zero_grad", "oversized_batch", "overfitting"}
SLOW = {"deep_sigmoid_vanishing", "overfitting", "lr_too_low"}      # the longest (~1-2 s each)


@lru_cache(maxsize=None)
def result(name, seed=0):
    return lab.run(name, seed=seed)


def _holds(value, op, threshold):
    return {"<": value < threshold, "<=": value <= threshold, ">": value > threshold,
            ">=": value >= threshold, "==": value == threshold}[op]


def test_the_catalogue_is_complete_and_well_formed():
    assert REQUIRED <= set(NAMES) and len(NAMES) == len(set(NAMES))
    for sc in lab.scenarios():
        assert sc.title and len(sc.explanation) > 200 and sc.data and sc.broken and sc.remedy
        assert sc.broken != sc.remedy and sc.steps > 0 and sc.remedy_bars
        assert sc.expected_code.isupper()
        assert sc.name in sc.describe() and sc.expected_code in sc.describe()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES])
def test_scenario_reproduces_is_diagnosed_and_is_repaired(name):
    sc = lab.get(name)
    r = result(name)
    # (a) the failure's defining number crosses its threshold
    assert r.metric == sc.metric.key and r.value == r.broken.metrics[sc.metric.key] or math.isinf(r.value)
    assert _holds(r.value, sc.metric.op, sc.metric.threshold), r.summary()
    assert r.reproduced
    # (b) the doctor names it, with evidence and a remedy
    finding = r.finding()
    assert finding is not None, r.summary()
    assert finding.code == sc.expected_code and finding.message and finding.remedy
    assert r.diagnosed
    # (c) the remedy has a finite loss and meets every bar
    assert math.isfinite(r.remedy_values["final_loss"]), r.summary()
    for bar in sc.remedy_bars:
        assert _holds(r.repaired.metrics[bar.key], bar.op, bar.threshold), (bar, r.summary())
    assert r.repaired_ok and r.ok            # (run times are reported by `bpnet lab run --all`, not asserted)
    SPECIFIC.get(name, lambda r: None)(r)


# -- what defines each failure, in numbers ----------------------------------------------------
def _lr_too_high(r):
    assert 5 <= r.value <= 60                               # geometric growth, then inf
    losses = np.asarray(r.broken.step_loss[:int(r.value)])
    assert losses[-1] > 1e6 * losses[0]
    assert "LR_TOO_HIGH" in r.broken.codes and "NONFINITE_LOSS" in r.broken.codes
    assert r.repaired.metrics["val_loss"] < 0.12


def _lr_too_low(r):
    f = r.finding()
    assert f.evidence["median_update_ratio"] < 1e-5 and f.evidence["improvement"] < 1e-3
    assert r.broken.metrics["val_accuracy"] < 0.3 and r.repaired.metrics["val_accuracy"] > 0.93


def _gradient_ascent(r):
    assert r.finding().evidence["median_cos"] == pytest.approx(1.0, abs=1e-4)
    assert r.broken.metrics["loss_ratio_10"] > 10
    assert "GRADIENT_ASCENT" not in r.repaired.codes


def _forgot_zero_grad(r):
    ev = [f for f in r.broken.findings if f.code == "STEP_SIZE" and f.where == "growing"][0].evidence
    assert ev["multiplier_first"] == pytest.approx(1.0, rel=1e-3) and ev["multiplier_recent"] > 3
    assert r.repaired.metrics["update_growth"] < 1.0        # plain SGD: the step shrinks as it converges


def _oversized_batch(r):
    m = r.broken.metrics
    assert m["refused"] is True and m["steps_run"] == 0 and m["memory_full_batch"] > 2 * 2 ** 20
    note = r.broken.notes[0]
    assert note.startswith("MemoryBudgetError: a batch of 1437 samples needs 6.7 MiB") and "2.0 MiB" in note
    assert r.finding().evidence["max_batch_size"] == r.repaired.metrics["micro_batch"] < 1437
    assert r.repaired.metrics["memory_per_step"] <= 2 * 2 ** 20
    assert r.repaired.metrics["grad_match"] < 1e-5         # streamed micro-batches = the full-batch gradient


def _overfitting(r):
    val = r.broken.history["val_loss"]
    assert int(np.argmin(val)) < len(val) // 4 and val[-1] > 1.15 * min(val)
    assert r.broken.history["loss"][-1] < 0.01              # the training loss kept falling
    assert r.repaired.metrics["epochs_run"] < r.broken.metrics["epochs_run"]


def _deep_sigmoid(r):
    ev = r.finding().evidence
    assert ev["first_norm"] < 1e-6 and ev["ratio"] < 1e-5
    assert r.broken.metrics["val_accuracy"] < 0.2
    for name in ("sigmoid+batchnorm", "sigmoid+residual"):
        assert r.variants[name]["grad_norm_first_layer"] > 0.1 and r.variants[name]["val_accuracy"] > 0.85


def _exploding(r):
    assert r.broken.metrics["first_nonfinite_step"] <= 3
    assert r.broken.anomaly is not None and r.broken.anomaly.phase == "forward"


def _dying_relu(r):
    assert r.finding().where == "layer 3" and r.finding().evidence["dead_frac"] >= 0.9
    assert r.broken.metrics["val_accuracy"] < 0.3
    assert r.repaired.metrics["dead_frac_max"] < 0.1
    assert r.variants["leaky_relu, lr 0.5"]["val_accuracy"] > 0.9


def _zero_init(r):
    assert r.broken.metrics["grad_norm_first_layer"] < 1e-6      # identical W2 columns: Σ_c (p_c - y_c) = 0
    assert r.finding().where == "layer 0"
    assert r.repaired.metrics["distinct_units"] == 64


def _wrong_derivative(r):
    f = r.finding()
    assert f.where == "layer 1" and f.evidence["class"] == "WrongSigmoid" and f.evidence["tensor"] == "input"
    assert len(f.evidence["worst_index"]) == 2 and "worst element" in f.message
    assert r.repaired.metrics["gradcheck_failed_layers"] == []


def _unnormalized(r):
    assert r.broken.metrics["val_accuracy"] == pytest.approx(r.broken.metrics["majority_rate"], abs=0.05)
    assert r.broken.metrics["feature_std_ratio"] > 1e4 and r.finding().evidence["max_std"] > 100


def _mismatch(r):
    assert r.broken.metrics["train_accuracy"] > 0.95 and r.broken.metrics["val_accuracy"] < 0.65
    assert r.repaired.metrics["accuracy_gap"] < 0.1


def _nan_in_data(r):
    f = r.finding()
    assert f.evidence["n_rows"] == 14 and f.evidence["n_nan"] == 14
    assert r.broken.anomaly.data_to_blame is True and r.broken.anomaly.layer_path == "0"
    assert r.repaired.metrics["rows_used"] == 1437 - 14


def _outliers(r):
    f = r.finding()
    assert f.evidence["n_rows"] == 10 and f.evidence["max_robust_z"] > 100
    assert r.repaired.metrics["rows_used"] == 1024 - 10 and r.repaired.metrics["val_loss"] < 0.1


def _label_format(r):
    assert "0..9" in r.finding().message and r.finding().severity == "warning"
    assert r.repaired.metrics["val_accuracy"] - r.broken.metrics["val_accuracy"] > 0.3


def _imbalance(r):
    assert r.finding().evidence["ratio"] > 15
    assert r.broken.metrics["val_accuracy"] > 0.93               # accuracy hides the failure
    assert r.repaired.metrics["minority_recall"] > 3 * r.broken.metrics["minority_recall"]
    assert r.variants["focal loss (γ = 2, α = class weights)"]["minority_recall"] > 0.7


def _naive_softmax(r):
    a = r.broken.anomaly
    assert a.phase == "forward" and a.layer_class == "NaiveSoftmax" and a.data_to_blame is False


def _log_of_zero(r):
    assert 1 <= r.value <= 100 and r.broken.anomaly.phase == "loss"
    assert "NaiveBCE" in str(r.broken.anomaly)


def _double_softmax(r):
    assert r.broken.metrics["train_loss"] >= r.broken.metrics["loss_floor"] == pytest.approx(1.46115, abs=1e-4)
    assert r.finding().where == "layer 3"


def _fp16(r):
    assert r.broken.metrics["grad_norm_last_layer"] == math.inf
    m = r.repaired.metrics
    assert m["skipped_steps"] >= 10 and m["final_scale"] < 1.0
    ref = r.variants["float32 reference"]["val_loss_rel"]
    assert m["val_loss_rel"] == pytest.approx(ref, rel=0.3)


SPECIFIC = {"lr_too_high": _lr_too_high, "lr_too_low": _lr_too_low, "gradient_ascent_sign": _gradient_ascent,
            "forgot_zero_grad": _forgot_zero_grad, "oversized_batch": _oversized_batch,
            "overfitting": _overfitting, "deep_sigmoid_vanishing": _deep_sigmoid, "exploding_init": _exploding,
            "dying_relu": _dying_relu, "zero_init_symmetry": _zero_init,
            "wrong_derivative": _wrong_derivative, "unnormalized_inputs": _unnormalized,
            "train_val_scaling_mismatch": _mismatch, "nan_in_data": _nan_in_data, "outliers": _outliers,
            "label_format_mismatch": _label_format, "class_imbalance": _imbalance,
            "naive_softmax_overflow": _naive_softmax, "log_of_zero": _log_of_zero,
            "double_softmax": _double_softmax, "fp16_overflow": _fp16}


RECURRENT = {"recurrent_explosion", "recurrent_vanishing"}      # their specific checks: test_lab_recurrent.py


def test_every_scenario_has_specific_checks():
    assert set(SPECIFIC) | RECURRENT == set(NAMES)


# -- determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dying_relu", "recurrent_explosion"])
def test_same_seed_gives_the_same_numbers(name):
    a, b = lab.run(name, seed=0), lab.run(name, seed=0)
    assert a.value == b.value
    assert a.broken.step_loss == b.broken.step_loss or \
        np.array_equal(np.asarray(a.broken.step_loss), np.asarray(b.broken.step_loss), equal_nan=True)
    assert a.repaired.step_loss == b.repaired.step_loss
    assert a.remedy_values == b.remedy_values and a.broken.codes == b.broken.codes
    c = lab.run(name, seed=1)
    assert c.repaired.step_loss != a.repaired.step_loss           # the seed does reach the run


# -- the lab's own layers ------------------------------------------------------------------------
def test_wrong_sigmoid_fails_gradcheck_and_names_the_input():
    x = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(GradcheckError, match="d/dinput"):
        gradcheck(WrongSigmoid(), x)
    report = gradcheck(WrongSigmoid(), x, raise_on_fail=False)
    c = report["input"]                        # along a random direction R: numeric R·σ(1-σ), analytic R·σ
    s = 1 / (1 + np.exp(-x[c.worst_index]))
    assert c.analytic * (1 - s) == pytest.approx(c.numeric, rel=1e-5)
    assert 0.2 < c.rel_error < 1.0


def test_naive_softmax_is_right_in_maths_and_wrong_in_float32():
    x = np.random.default_rng(0).standard_normal((4, 5))
    assert gradcheck(NaiveSoftmax(), x).passed                      # the derivative is right
    with np.errstate(over="ignore", invalid="ignore"):
        p = NaiveSoftmax().forward(np.array([[90.0, 0.0, -1.0]], dtype=np.float32))
        assert np.isnan(p[0, 0]) and np.isinf(np.exp(np.float32(90)))


def test_naive_bce_matches_bce_with_logits_until_sigmoid_rounds_to_one():
    z = np.array([[-3.0], [0.5], [4.0]], dtype=np.float32)
    t = np.array([[0.0], [1.0], [1.0]], dtype=np.float32)
    naive, stable = NaiveBCE(), BCEWithLogits()
    assert naive.forward(z, t) == pytest.approx(stable.forward(z, t), rel=1e-5)
    np.testing.assert_allclose(naive.backward(), stable.backward(), rtol=1e-4)
    z = np.array([[20.0], [20.0]], dtype=np.float32)
    t = np.array([[0.0], [1.0]], dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = naive.forward(z, t)
    assert math.isnan(value) and np.isnan(naive.backward()).all()     # log(0), 0·inf, 0/0
    assert stable.forward(z, t) == pytest.approx(10.0, rel=1e-6) and np.isfinite(stable.backward()).all()


# -- results, table, plot, CLI -----------------------------------------------------------------
def test_summary_table_and_result_dict():
    r = result("dying_relu")
    table = lab.summary_table([r])
    assert table.splitlines()[0] == "| scenario | failure reproduced | diagnosis correct | remedy worked | time (s) |"
    # the dead fraction comes from training, so it differs between CPUs (0.969 on AVX-512, 1 on AVX2):
    # check the row's shape and that the number shown is the result's value and clears the bar
    row = re.search(r"\| dying_relu \| yes \(dead_frac_max = ([0-9.]+)\) \| yes \(DYING_RELU\) \| yes \|", table)
    assert row is not None, table
    assert float(row.group(1)) == pytest.approx(r.value, abs=5e-4) and r.value >= 0.9
    d = r.to_dict()
    assert d["reproduced"] and d["diagnosed"] and d["repaired"] and "DYING_RELU" in d["codes"]
    text = r.summary()
    assert "(a) failure reproduced: yes" in text and "(c) remedy worked:      yes" in text


def test_plot_result_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bpnet.lab.plot import plot_result
    path = tmp_path / "lab.png"
    fig = plot_result(result("exploding_init"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]   # and one colour bar per gradient panel
    assert len(panels) == 6 and len(fig.axes) == 8
    assert "log10" in panels[4].get_xlabel()                   # exploding activations: orders of magnitude


def test_cli_list(capsys):
    assert lab_main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["scenario", "doctor", "code", "title"]
    assert all(name in out for name in NAMES) and f"{len(NAMES)} scenarios" in out
    assert "recurrent_explosion         EXPLODING_GRADIENTS" in out


def test_cli_run_one_with_plot_and_json(tmp_path, capsys):
    png, js = tmp_path / "z.png", tmp_path / "z.json"
    assert lab_main(["run", "zero_init_symmetry", "--seed", "0", "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("zero_init_symmetry (seed 0,")
    assert "(a) failure reproduced: yes -- distinct_units = 1 (needs <= 1)" in out
    assert "(b) diagnosed:          yes -- expected SYMMETRIC_WEIGHTS" in out
    assert png.stat().st_size > 0
    (d,) = json.loads(js.read_text())
    assert d["scenario"] == "zero_init_symmetry" and d["value"] == 1 and d["repaired"] is True


def test_cli_show_and_errors(capsys):
    assert lab_main(["show", "log_of_zero"]) == 0
    out = capsys.readouterr().out
    assert "broken:   loss=-log(sigmoid(z)), lr=1.0" in out and "remedy:   loss=BCEWithLogits" in out
    assert lab_main(["run", "no_such_thing"]) == 1
    assert "no lab scenario called 'no_such_thing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lab_main(["run"])


def test_bpnet_cli_hooks_the_lab(capsys):
    from bpnet.cli import main
    assert main(["lab", "list"]) == 0
    assert "fp16_overflow" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_run_all_prints_the_summary_table(capsys, monkeypatch):
    monkeypatch.setattr(lab.core, "scenarios", lambda: [lab.get(n) for n in ("nan_in_data", "double_softmax")])
    assert lab_main(["run", "--all"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| scenario | failure reproduced")
    assert lines[2].startswith("| nan_in_data | yes (first_nonfinite_step = 2) | yes (NONFINITE_DATA) | yes |")
    # a trained loss is not the same number on every CPU: read it back and check it is the stalled
    # loss of a doubled softmax: at or above its floor log(9 + e) - 1 = 1.46, at most log(10) = 2.30
    row = re.match(r"\| double_softmax \| yes \(train_loss = ([0-9.]+)\) \| yes \(DOUBLE_SOFTMAX\) \| yes \|", lines[3])
    assert row is not None, lines[3]
    assert math.log(9 + math.e) - 1.0 - 0.005 <= float(row.group(1)) <= math.log(10) + 0.005
    assert "2/2 scenarios passed all three checks (seed 0" in out
