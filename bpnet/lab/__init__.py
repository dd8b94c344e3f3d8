"""The failure lab: classic backprop failures made to happen, diagnosed and repaired.

    import bpnet.lab
    for sc in bpnet.lab.scenarios():
        print(sc.name, "-", sc.title)
    result = bpnet.lab.run("lr_too_high", seed=0)
    print(result.summary())

Each :class:`Scenario` trains a broken configuration and its repair with the
same code, seed and budget; :class:`LabResult` says whether (a) the failure
happened (its defining number crossed its threshold), (b) the doctor named
it, and (c) the remedy met its bar.  ``bpnet lab list`` / ``bpnet lab run
NAME`` / ``bpnet lab run --all`` do the same from the shell.
"""
from .core import Bar, LabResult, Scenario, get, register, run, run_all, scenarios, summary_table
from .train import Run, train

__all__ = ["Scenario", "LabResult", "Bar", "Run", "scenarios", "get", "run", "run_all", "register",
           "summary_table", "train"]
