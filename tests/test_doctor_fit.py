"""fit(doctor=True): healthy runs give no findings; broken ones are reported once, main problem first."""
import numpy as np
import pytest

from bpnet import Adam, DataError, Dense, LabelError, Monitor, ReLU, SGD, Sequential, Softmax
from bpnet.data import Standardizer, load_digits, make_spirals, train_test_split
from bpnet.doctor import Doctor
from doctor_helpers import blobs, mlp, one_blas_thread  # noqa: F401


def test_healthy_digits_run_has_no_findings(capsys):
    X, y = load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0, stratify=True)
    scaler = Standardizer().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    model = Sequential([Dense(128, init="he_normal"), ReLU(), Dense(64, init="he_normal"), ReLU(), Dense(10)],
                       seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    h = model.fit(Xtr, ytr, epochs=20, batch_size=64, validation_data=(Xte, yte), verbose=0, doctor=True)
    assert h.findings == []
    assert capsys.readouterr().out == "doctor: no problems found\n"      # said once, at the end
    assert len(h.steps) == 46 and "dead_frac/3" in h.steps[-1]          # the doctor attached a Monitor
    assert model.evaluate(Xte, yte)["accuracy"] > 0.95


def test_healthy_spirals_run_has_no_findings():
    X, y = make_spirals(300, seed=0)
    model = Sequential([Dense(64, init="he_normal"), ReLU(), Dense(64, init="he_normal"), ReLU(), Dense(3)],
                       seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=Adam(lr=3e-3))
    h = model.fit(X, y, epochs=60, batch_size=32, verbose=0, doctor=True)
    assert h.findings == []
    assert h["accuracy"][-1] > 0.95


def test_findings_are_printed_once_when_found_and_kept():
    X, y = blobs()
    X[:, 2] = X[:, 2] * 1e3 + 1e4
    model = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(3), Softmax()], seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    lines = []
    h = model.fit(X, y, epochs=3, batch_size=64, verbose=0, doctor=Doctor(print_fn=lines.append))
    codes = [f.code for f in h.findings]
    assert codes[:2] == ["UNNORMALIZED_INPUTS", "DOUBLE_SOFTMAX"]           # data first, then the model
    assert len(codes) == len(set((f.code, f.where) for f in h.findings))   # each once
    assert len(lines) == len(h.findings) + 1           # the headline, then each finding once
    assert lines[0].startswith("doctor: main problem: UNNORMALIZED_INPUTS at X (warning)") and "remedy:" in lines[0]
    assert lines[1].startswith("doctor: [warning] UNNORMALIZED_INPUTS:") and "remedy:" in lines[1]
    assert h.to_dict()["findings"][1]["code"] == "DOUBLE_SOFTMAX"


def test_doctor_reports_bad_data_before_the_data_error(capsys):
    X, y = blobs(n=40)
    X[7, 0] = np.nan
    model = mlp()
    model.compile(optimizer=Adam())
    with pytest.raises(DataError):
        model.fit(X, y, epochs=1, verbose=0, doctor=True)
    out = capsys.readouterr().out
    assert "NONFINITE_DATA" in out and "rows [7]" in out


def test_doctor_diagnoses_during_training_and_uses_an_existing_monitor():
    X, y = blobs()
    model = mlp(hidden=(32,))
    model.build((16,))
    model.layers[0].params["b"][...] = -1e3
    model.compile(optimizer=SGD(lr=0.1))
    mon = Monitor(every=2)
    h = model.fit(X, y, epochs=2, batch_size=32, verbose=0, callbacks=[mon],
                  doctor=Doctor(print_fn=None))
    assert [f.code for f in h.findings] == ["DYING_RELU"]
    assert h.steps == mon.records and [r["step"] for r in h.steps] == list(range(0, 16, 2))


def test_doctor_builds_the_model_first_so_labels_are_checked_against_its_outputs(capsys):
    X, y = blobs(n=60)
    model = mlp()                                          # 3 outputs, labels 1..3
    model.compile(optimizer=Adam())
    with pytest.raises(LabelError):
        model.fit(X, y + 1, epochs=1, verbose=0, doctor=True)
    out = capsys.readouterr().out
    assert "LABEL_FORMAT" in out and "0..2" in out
