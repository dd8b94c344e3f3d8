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


def test_train_rejects_bad_options(capsys):
    assert main(["train", "--hidden", "64,-1"] + FAST) == 1
    assert "positive integers" in capsys.readouterr().err
    assert main(["train", "--activation", "swish"] + FAST) == 1
    assert "choose one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "mnist"])


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


def test_no_command_prints_help_and_module_entry_point(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "bpnet", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--detect-anomaly" in proc.stdout
