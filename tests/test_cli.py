"""The command line, run in-process through ``bpnet.cli.main``."""
import functools
import inspect
import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from bpnet import History, Sequential
from bpnet.cli import main
from bpnet.data import make_spirals, train_test_split

FAST = ["--backend", "numpy", "--quiet"]


def accuracy(out: str) -> float:
    return float(re.search(r"test accuracy (\d\.\d+)", out).group(1))


def test_train_spirals_with_checkpoint_and_history(tmp_path, capsys):
    hist, ckpt = tmp_path / "run.json", tmp_path / "best.npz"
    rc = main(["train", "--dataset", "spirals", "--hidden", "32,32", "--lr", "0.01", "--epochs", "40",
               "--batch-size", "32", "--seed", "1", "--history-out", str(hist), "--checkpoint", str(ckpt)] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and "dataset spirals: 480 train / 120 test samples, 2 features, 3 classes" in out
    assert accuracy(out) > 0.9
    h = History.load_json(hist)
    assert len(h) == 40 and {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(h.keys())
    assert h["lr"] == [0.01] * 40
    model = Sequential.load(ckpt, backend="numpy")
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [32, 32, 3]
    assert model.preprocessor is not None                  # the standardiser fit on the training split
    # the checkpoint is the best epoch: its loss on the validation rows (the last 10% of the
    # standardised training split) is the lowest val_loss of the run
    X, y = make_spirals(600, n_classes=3, noise=0.2, seed=1)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, seed=1, stratify=True)
    X_val, y_val = model.preprocessor.transform(X_train)[-48:], y_train[-48:]
    assert model.evaluate(X_val, y_val)["loss"] == pytest.approx(min(h["val_loss"]), rel=1e-6)


def test_train_prints_a_line_per_epoch(capsys):
    rc = main(["train", "--dataset", "xor", "--hidden", "8", "--epochs", "3", "--backend", "numpy",
               "--optimizer", "sgd", "--activation", "tanh", "--init", "xavier_uniform"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3 and lines[2].startswith("epoch   3/3  loss ")


def test_config_file_json_and_toml_with_flags_overriding(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"dataset": "moons", "hidden": [16], "epochs": 50, "batch-size": 16, "lr": 0.02}))
    hist = tmp_path / "h.json"
    rc = main(["train", "--config", str(cfg), "--epochs", "4", "--history-out", str(hist)] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and "dataset moons" in out
    h = History.load_json(hist)
    assert len(h) == 4 and h["lr"] == [0.02] * 4          # epochs from the flag, lr from the file
    toml = tmp_path / "cfg.toml"
    toml.write_text('[train]\ndataset = "iris"\nhidden = "8"\nepochs = 60\nlr = 0.05\n')
    rc = main(["train", "--config", str(toml)] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and "dataset iris: 120 train / 30 test samples, 4 features, 3 classes" in out
    assert accuracy(out) >= 0.85
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    rc = main(["train", "--config", str(bad)] + FAST)
    assert rc == 1 and "unknown option(s) ['epochz']" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--hidden", "128x64"], "layer sizes must be positive integers"),
    (["--hidden", "1.5"], "layer sizes must be positive integers"),
    (["--hidden", "64,-1"], "layer sizes must be positive integers"),
    (["--hidden", ""], "it is empty"),
    (["--epochs", "0"], "--epochs: '0': must be at least 1"),
    (["--epochs", "-1"], "must be at least 1"),
    (["--batch-size", "0"], "--batch-size: '0': must be at least 1"),
    (["--lr", "-0.1"], "above 0"),
    (["--test-size", "1.5"], "fraction in (0, 1)"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--optimizer", "adm"], "did you mean 'adam'?"),
    (["--dataset", "irs"], "unknown data set 'irs'; did you mean 'iris'?"),
    (["--dataset", "mnist"], "choose from digits, iris"),
    (["--history-out", "/no/such/dir/run.json"], "the folder /no/such/dir does not exist"),
])
def test_train_rejects_bad_options_before_training(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"] + flags + FAST)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert err.startswith("usage: bpnet train")


def test_bad_config_files_give_a_clear_error(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")] + FAST) == 1
    err = capsys.readouterr().err
    assert "--config" in err and "nope.toml: cannot read it (No such file or directory)" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n")
    assert main(["train", "--config", str(broken)] + FAST) == 1
    assert "not valid TOML" in capsys.readouterr().err
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"epochs": 0}))             # checked like the flag
    with pytest.raises(SystemExit):
        main(["train", "--config", str(zero)] + FAST)
    assert "must be at least 1" in capsys.readouterr().err


def test_every_train_flag_has_help_and_shows_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--dataset", "digits"), ("--hidden", "64,64"), ("--activation", "relu"),
                          ("--optimizer", "adam"), ("--epochs", "20"), ("--batch-size", "32"),
                          ("--seed", "0"), ("--init", "he_normal"), ("--val-split", "0.1")]:
        assert re.search(re.escape(flag) + r" \S+ (?:(?! --).)*\(default: " + re.escape(default) + r"\)", out), flag
    from bpnet.cli import build_parser
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert all(a.help for a in train._actions), [a.dest for a in train._actions if not a.help]


def test_train_without_scikit_learn_on_the_bundled_iris(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)     # a plain install: no scikit-learn
    rc = main(["train", "--dataset", "iris", "--hidden", "16", "--epochs", "60", "--lr", "0.01"] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and "dataset iris: 120 train / 30 test samples, 4 features, 3 classes" in out
    assert accuracy(out) >= 0.85


def test_a_healthy_doctor_run_says_so(tmp_path, capsys):
    pytest.importorskip("bpnet.doctor")
    rc = main(["train", "--dataset", "moons", "--hidden", "16", "--epochs", "5", "--doctor"] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and "doctor: no problems found" in out


def test_a_diverging_run_leaks_no_numpy_warnings_and_says_what_happened(tmp_path, capsys):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["train", "--dataset", "moons", "--optimizer", "sgd", "--lr", "50", "--epochs", "3"] + FAST)
    out = capsys.readouterr().out
    assert rc == 0 and not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "the training loss became NaN/Inf in epoch 1" in out and "--doctor" in out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["train", "--dataset", "moons", "--optimizer", "sgd", "--lr", "50", "--epochs", "3", "--doctor"] + FAST)
    out = capsys.readouterr().out
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "NONFINITE_LOSS" in out and "see the doctor's NONFINITE_LOSS finding above" in out


def test_doctor_and_anomaly_flags_reach_fit(monkeypatch, capsys):
    original = Sequential.fit
    seen = {}

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        kwargs.pop("doctor", None), kwargs.pop("detect_anomaly", None)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Sequential, "fit", spy)
    rc = main(["train", "--dataset", "xor", "--epochs", "1", "--doctor", "--detect-anomaly"] + FAST)
    if "doctor" in inspect.signature(original).parameters:
        assert rc == 0 and seen["doctor"] is True and seen["detect_anomaly"] is True
    else:
        assert rc == 1 and "needs the bpnet doctor" in capsys.readouterr().err


def fake_doctor(findings):
    module = types.ModuleType("bpnet.doctor")
    module.diagnose = lambda history: findings
    return module


def test_doctor_prints_the_diagnosis(tmp_path, monkeypatch, capsys):
    h = History()
    for e, loss in enumerate([1.0, 0.5, float("nan")]):
        h.append(e, {"loss": loss})
    h.to_json(tmp_path / "run.json")
    monkeypatch.setitem(sys.modules, "bpnet.doctor", fake_doctor(["NONFINITE_LOSS: the loss became NaN at epoch 2"]))
    rc = main(["doctor", str(tmp_path / "run.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "run.json: 3 epochs, 0 step records" in out and "NONFINITE_LOSS" in out
    monkeypatch.setitem(sys.modules, "bpnet.doctor", fake_doctor([]))
    assert main(["doctor", str(tmp_path / "run.json")]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_doctor_also_prints_what_was_reported_while_training(tmp_path, monkeypatch, capsys):
    from bpnet.doctor import Finding
    early = Finding("EXPLODING_GRADIENTS", "error", "gradient norm 5.24e+04 at epoch 1", where="layer 2")
    dead = Finding("DYING_RELU", "warning", "84% of the ReLU units are dead", where="layer 1")
    h = History()
    for e, loss in enumerate([9.0, 1.2, 1.1]):
        h.append(e, {"loss": loss})
    h.findings = [early, dead]                      # as fit(doctor=True) leaves them
    h.to_json(tmp_path / "run.json")

    # the final signals are clean: the saved findings are still shown, under their own heading
    monkeypatch.setitem(sys.modules, "bpnet.doctor", fake_doctor([]))
    assert main(["doctor", str(tmp_path / "run.json")]) == 0
    out = capsys.readouterr().out
    assert "no problems found" not in out
    assert "the final signals look healthy, but these were reported while training" in out
    assert "[error] EXPLODING_GRADIENTS: gradient norm 5.24e+04 at epoch 1" in out
    assert "[warning] DYING_RELU: 84% of the ReLU units are dead" in out

    # a problem the final signals still show is printed once, in its final form
    now = Finding("DYING_RELU", "error", "100% of the ReLU units are dead", where="layer 1")
    monkeypatch.setitem(sys.modules, "bpnet.doctor", fake_doctor([now]))
    assert main(["doctor", str(tmp_path / "run.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{tmp_path / 'run.json'}: 3 epochs, 0 step records",
                     "[error] DYING_RELU: 100% of the ReLU units are dead",
                     "reported while training (saved with the run):",
                     "[error] EXPLODING_GRADIENTS: gradient norm 5.24e+04 at epoch 1"]


def test_doctor_without_the_diagnosis_module_explains(tmp_path, monkeypatch, capsys):
    History().to_json(tmp_path / "run.json")
    monkeypatch.setitem(sys.modules, "bpnet.doctor", None)
    assert main(["doctor", str(tmp_path / "run.json")]) == 2
    assert "bpnet.doctor.diagnose) is not available" in capsys.readouterr().err
    assert main(["doctor", str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_doctor_on_a_real_diverging_run(tmp_path, capsys):
    doctor = pytest.importorskip("bpnet.doctor")
    if not hasattr(doctor, "diagnose"):
        pytest.skip("bpnet.doctor.diagnose is not available")
    hist = tmp_path / "run.json"
    with np.errstate(all="ignore"):
        assert main(["train", "--dataset", "moons", "--optimizer", "sgd", "--lr", "50", "--epochs", "4",
                     "--history-out", str(hist)] + FAST) == 0
    capsys.readouterr()
    assert main(["doctor", str(hist)]) == 0
    out = capsys.readouterr().out
    assert "run.json: 4 epochs" in out and len(out.splitlines()) >= 2


def test_lab_hook(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bpnet.lab.cli", None)         # not installed: a placeholder answers
    assert main(["lab", "anything"]) == 2
    assert "not available" in capsys.readouterr().err
    stub = types.ModuleType("bpnet.lab.cli")

    def register(sub):
        p = sub.add_parser("lab")
        p.add_argument("name")
        p.set_defaults(func=lambda args: print(f"lab {args.name}") or 0)
    stub.register = register
    monkeypatch.setitem(sys.modules, "bpnet.lab.cli", stub)
    assert main(["lab", "dead-relu"]) == 0
    assert capsys.readouterr().out == "lab dead-relu\n"


def test_lab_suggests_the_nearest_scenario_and_checks_outputs_first(tmp_path, capsys):
    pytest.importorskip("bpnet.lab")
    assert main(["lab", "show", "dying"]) == 1
    assert "no lab scenario called 'dying'; did you mean 'dying_relu'?" in capsys.readouterr().err
    assert main(["lab", "run", "exploding"]) == 1
    assert "did you mean 'exploding_init'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:                 # refused before the scenario runs
        main(["lab", "run", "lr_too_high", "--plot", str(tmp_path / "missing" / "x.png")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_lab_run_says_where_it_wrote(tmp_path, capsys):
    pytest.importorskip("bpnet.lab")
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["lab", "run", "lr_too_high", "--json", str(out_json), "--plot", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert f"results written to {out_json}" in out and f"plot written to {out_png}" in out
    assert json.loads(out_json.read_text())[0]["scenario"] == "lr_too_high" and out_png.stat().st_size > 5000


def test_no_command_prints_help_and_module_entry_point(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "bpnet", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--detect-anomaly" in proc.stdout
