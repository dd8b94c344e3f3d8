"""The failure lab's third run: the broken model handed to bpnet.doctor.repair, judged by the scenario's bars."""
import pytest

import bpnet.lab as lab
from bpnet.lab.cli import main

FAST = ["lr_too_high", "double_softmax", "nan_in_data", "unnormalized_inputs", "label_format_mismatch"]


@pytest.fixture(scope="module")
def results():
    return {name: lab.run(name, seed=0, variants=False, auto_repair=True) for name in FAST + ["wrong_derivative"]}


@pytest.mark.parametrize("name", FAST)
def test_auto_repaired_run_meets_the_scenarios_own_bars(results, name):
    r = results[name]
    assert r.auto_ok and r.auto.report.fixed and r.auto.report.bug is None
    for bar in r.auto.bars:                                # measured on the repaired model, not copied
        assert bar.holds(r.auto.values), (bar, r.auto.values)
    assert r.auto.report.attempts[0].verdict == "broken run"
    assert r.auto.report.attempts[0].score < r.auto.report.attempts[-1].score


def test_the_repair_chooses_the_scenarios_own_kind_of_remedy(results):
    chosen = {name: results[name].auto_remedies for name in FAST}
    assert chosen["lr_too_high"] == ["learning rate x0.1"]
    assert chosen["double_softmax"] == ["remove the double softmax"]
    assert chosen["nan_in_data"] == ["drop non-finite rows"]
    assert chosen["unnormalized_inputs"][0] == "standardise inputs (fit on the training split)"
    assert chosen["label_format_mismatch"] == ["labels in the loss's format"]


def test_a_user_code_bug_is_named_and_counts_as_the_right_answer(results):
    r = results["wrong_derivative"]
    rep = r.auto.report
    assert not rep.fixed and rep.bug.code == "WRONG_GRADIENT" and rep.bug.evidence["class"] == "WrongSigmoid"
    assert r.auto_ok and r.auto.bug_expected
    assert "named the bug instead of repairing: WrongSigmoid" in r.summary()


def test_existing_fields_stay_and_the_new_run_is_reported(results):
    r = results["lr_too_high"]
    assert r.ok and r.repaired_ok                          # (a), (b), (c) as before
    assert "(d) auto-repaired:      yes -- chose learning rate x0.1" in r.summary()
    d = r.to_dict()
    assert d["auto_repaired"] is True and d["auto_remedies"] == ["learning rate x0.1"] and d["auto_attempts"] >= 1
    table = lab.summary_table([results[n] for n in FAST])
    assert "auto-repaired (remedy chosen)" in table and "yes (learning rate x0.1)" in table
    plain = lab.run("lr_too_high", seed=0, variants=False)
    assert plain.auto is None and plain.auto_ok is None and "auto_repaired" not in plain.to_dict()


def test_cli_lab_run_shows_the_chosen_remedy(capsys):
    assert main(["run", "double_softmax"]) == 0
    out = capsys.readouterr().out
    assert "(d) auto-repaired:      yes -- chose remove the double softmax" in out
    assert main(["run", "double_softmax", "--no-auto-repair"]) == 0
    assert "(d)" not in capsys.readouterr().out
