"""The scripts in examples/ run as the README says and print what it promises.

Each example runs in a subprocess, in a temporary working directory (some
write files there), and the test reads the numbers it prints.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bpnet import Sequential
from bpnet.distributed import find_mpiexec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONUNBUFFERED="1")


def run_example(name, cwd, *args, launcher=(), timeout=300):
    cmd = [*launcher, sys.executable, str(EXAMPLES / name), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_01_xor_by_hand_learns_xor(tmp_path):
    out = run_example("01_xor_by_hand.py", tmp_path)
    assert "targets  [0, 1, 1, 0]" in out
    probs = [float(p) for p in re.search(r"P\(y=1\)\s+\[(.*)\]", out).group(1).split(",")]
    assert probs[0] < 0.01 and probs[1] > 0.99 and probs[2] > 0.99 and probs[3] < 0.01
    losses = [float(v) for v in re.findall(r"step +\d+ +loss (\S+)", out)]
    assert len(losses) == 4 and losses[-1] < 0.01 < losses[0]


def test_02_digits_reaches_the_readme_accuracy(tmp_path):
    out = run_example("02_digits.py", tmp_path)
    assert "total parameters: 17,226" in out                  # 64-128-64-10
    acc = float(re.search(r"test accuracy ([\d.]+)% .* on 360 held-out images", out).group(1))
    assert acc >= 95.0


def test_03_gradcheck_passes_the_layer_and_catches_the_bug(tmp_path):
    out = run_example("03_gradcheck_your_own_layer.py", tmp_path)
    correct, buggy = out.split("buggy layer is caught:")
    errors = [float(e) for e in re.findall(r"^(?:input|a)\s+(\S+)", correct, re.M)]
    assert len(errors) == 2 and max(errors) < 1e-6
    assert "gradient check failed for buggysoftplus: d/da" in buggy


def test_04_failure_lab_walkthrough_passes_its_three_scenarios(tmp_path):
    out = run_example("04_failure_lab_walkthrough.py", tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "| yes" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["deep_sigmoid_vanishing", "nan_in_data",
                                                        "wrong_derivative"]
    assert all(r.count("yes") == 3 for r in rows)
    assert "check_data lists the rows: [59, 79, 203" in out


def test_05_grid_search_scores_eight_settings(tmp_path):
    out = run_example("05_sklearn_grid_search.py", tmp_path)
    settings = re.findall(r"^\s+0\.00[13]\s+\(\d+,\)\s+\S+\s+([\d.]+) ±", out, re.M)
    assert len(settings) == 8
    assert float(re.search(r"test accuracy of the refitted best model: ([\d.]+)", out).group(1)) >= 0.95


def test_06_bayesian_search_runs_or_says_what_to_install(tmp_path):
    out = run_example("06_bayesian_search.py", tmp_path)
    if importlib.util.find_spec("optuna") is None and importlib.util.find_spec("skopt") is None:
        assert "pip install 'bpnet-framework[optuna]'" in out
    else:
        assert float(re.search(r"test accuracy with the best parameters: ([\d.]+)", out).group(1)) >= 0.9


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or find_mpiexec() is None,
                    reason="needs mpi4py and an mpiexec launcher: pip install 'bpnet-framework[mpi]'")
def test_07_distributed_run_resumes_on_one_rank_like_a_single_process(tmp_path):
    two, one = tmp_path / "two_then_one", tmp_path / "one"
    two.mkdir(), one.mkdir()
    out = run_example("07_distributed_digits.py", two, "--epochs", "2", launcher=(find_mpiexec(), "-n", "2"))
    assert re.search(r"2 rank\(s\) x batch 32 \(global 64\): .* after 2 epochs", out)
    out = run_example("07_distributed_digits.py", two, "--resume", "--epochs", "2",
                      launcher=(find_mpiexec(), "-n", "1"))
    assert "resuming from distributed_digits.npz (optimizer step 46) on 1 rank(s)" in out
    resumed_acc = float(re.search(r"test accuracy ([\d.]+)% after 4 epochs", out).group(1))
    out = run_example("07_distributed_digits.py", one, "--epochs", "4", launcher=(find_mpiexec(), "-n", "1"))
    single_acc = float(re.search(r"test accuracy ([\d.]+)% after 4 epochs", out).group(1))
    assert resumed_acc >= 90.0 and abs(resumed_acc - single_acc) <= 0.3    # at most one of 360 images

    a = Sequential.load(two / "distributed_digits.npz", backend="numpy")
    b = Sequential.load(one / "distributed_digits.npz", backend="numpy")
    assert a.optimizer.t == b.optimizer.t == 92                           # 4 epochs of 23 steps
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-5, atol=1e-6)   # float32 rounding
