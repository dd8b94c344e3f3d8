"""Automatic repair against chance: bpnet.doctor.repair vs a random-remedy baseline.

    python benchmarks/bench_repair.py [--attempts 4] [--seed 0] [--only lab|corpus] [--json out.json]

Two sets of broken runs:

* every failure-lab scenario (the broken configuration is trained by the lab,
  then handed to the repair; "repaired" = the repaired model meets the
  scenario's own remedy bars, or, for a bug in the user's code, the bug is named);
* every broken run of the doctor's evaluation corpus (``doctor_corpus.py``,
  tuning and held-out parts reported separately; "repaired" = the doctor is
  quiet afterwards and the validation metric beats the broken run's, or the
  user-code bug is named).

Each broken run is repaired twice with the same attempt budget: remedies
chosen from the diagnosis (root cause first, AUTOTRAINER's priority) and
remedies drawn at random from those that apply (fixed seed).  Time is the
repair's total training time divided by the time of one clean run, the
repaired configuration trained once (for the lab: the scenario's own remedy
run), so 1.0 would be a repair that costs nothing beyond the run it produces.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bpnet.doctor import repair  # noqa: E402
from bpnet.lab import scenarios  # noqa: E402
from bpnet.lab.auto_repair import auto_repair  # noqa: E402
from bpnet.lab.core import single_threaded_blas  # noqa: E402


def lab_cases():
    """(name, part, run(chooser) -> dict) for every lab scenario; the broken run is trained once."""
    for sc in scenarios():
        cache = {}

        def run(chooser, sc=sc, cache=cache, seed=0, attempts=4):
            with single_threaded_blas():
                if "broken" not in cache:
                    t = time.perf_counter()
                    cache["broken"] = sc.broken_run(seed)
                    cache["broken_s"] = time.perf_counter() - t
                    t = time.perf_counter()
                    sc.repaired_run(seed)
                    cache["clean_s"] = time.perf_counter() - t
                auto = auto_repair(sc, cache["broken"], seed, max_attempts=attempts, chooser=chooser)
            rep = auto.report
            broken_ok = all(b.holds(cache["broken"].metrics) for b in sc.remedy_bars)
            return {"repaired": auto.ok, "broken_ok": broken_ok, "bug": rep.bug is not None,
                    "attempts": len(rep.attempts) - 1, **_metrics(rep),
                    "train_s": rep.training_seconds + cache["broken_s"], "clean_s": cache["clean_s"],
                    "remedies": rep.remedies}
        yield sc.name, "lab", run


def corpus_cases():
    try:
        import doctor_corpus
    except ImportError:                       # the corpus is optional: the lab alone still runs
        return
    for case in doctor_corpus.cases("all"):
        if case.healthy:
            continue

        def run(chooser, case=case, seed=0, attempts=4):
            spec = case.build()
            fit = dict(spec["fit"])
            epochs, batch = fit.pop("epochs"), fit.pop("batch_size", 32)
            with single_threaded_blas(), np.errstate(all="ignore"):
                rep = repair(spec["model"], spec["X"], spec["y"], epochs, batch_size=batch,
                             validation_data=fit.get("validation_data"),
                             validation_split=fit.get("validation_split", 0.0), callbacks=fit.get("callbacks"),
                             max_attempts=attempts, seed=seed, verbose=0, chooser=chooser)
            named = rep.bug is not None and rep.bug.code in case.expected
            chosen = next((a for a in rep.attempts if a.chosen), rep.attempts[0])
            clean_s = chosen.seconds or rep.attempts[0].seconds      # one run of the repaired configuration
            # a broken run the doctor did not flag is left alone by the repair: it counts as not repaired
            fixed = rep.fixed and len(rep.attempts) > 1
            return {"repaired": bool(fixed or named), "broken_ok": False, "bug": rep.bug is not None, **_metrics(rep),
                    "attempts": len(rep.attempts) - 1, "train_s": rep.training_seconds,
                    "clean_s": max(clean_s, 1e-9), "remedies": rep.remedies}
        yield case.name, "held-out" if case.held_out else "tune", run


def _metrics(rep) -> dict:
    """The validation metric of the broken run and of the model the repair handed back."""
    chosen = next((a for a in rep.attempts if a.chosen), rep.attempts[0])
    return {"metric": chosen.metric_name, "broken_metric": rep.attempts[0].metric, "final_metric": chosen.metric}


def _median_gain(runs) -> str:
    """Median balanced accuracy, broken -> repaired, over the runs judged by it (unscorable broken runs as 0)."""
    pairs = [(x["broken_metric"], x["final_metric"]) for x in runs if x.get("metric") == "val_balanced_accuracy"]
    if not pairs:
        return "n/a"
    fin = lambda v: v if isinstance(v, float) and math.isfinite(v) else 0.0  # noqa: E731
    return f"{statistics.median(fin(b) for b, _ in pairs):.2f} -> {statistics.median(fin(f) for _, f in pairs):.2f}"


def summarise(rows, part, chooser):
    sel = [r for r in rows if r["part"] == part]
    if not sel:
        return None
    runs = [r[chooser] for r in sel]
    ratios = [x["train_s"] / x["clean_s"] for x in runs if x["clean_s"] > 0]
    return {"n": len(sel), "repaired": sum(x["repaired"] for x in runs) / len(sel), "gain": _median_gain(runs),
            "broken_ok": sum(x.get("broken_ok", False) for x in runs) / len(sel),
            "attempts": statistics.mean(x["attempts"] for x in runs),
            "time_ratio": statistics.mean(ratios) if ratios else math.nan}


def table(rows) -> str:
    lines = ["| broken runs | n | broken run already good | repaired (diagnosis) | repaired (random remedy) "
             "| mean attempts (diag / random) | training time vs one clean run (diag / random) "
             "| median balanced accuracy, broken -> repaired (diag / random) |", "|---|---|---|---|---|---|---|---|"]
    for part in ("lab", "tune", "held-out"):
        d, r = summarise(rows, part, "doctor"), summarise(rows, part, "random")
        if d is None:
            continue
        name = {"lab": "failure-lab scenarios", "tune": "doctor corpus, tuning part",
                "held-out": "doctor corpus, held-out part"}[part]
        lines.append(f"| {name} | {d['n']} | {d['broken_ok']:.0%} | {d['repaired']:.0%} | {r['repaired']:.0%} | "
                     f"{d['attempts']:.2f} / {r['attempts']:.2f} | {d['time_ratio']:.2f}x / {r['time_ratio']:.2f}x | "
                     f"{d['gain']} / {r['gain']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attempts", type=int, default=4, help="repairs after the broken run (both choosers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("lab", "corpus"))
    p.add_argument("--json", help="write every run's numbers here")
    p.add_argument("--table-from", metavar="JSON", help="print the table of an earlier --json run")
    args = p.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as fh:
            print(table(json.load(fh)))
        return
    sources = {"lab": lab_cases, "corpus": corpus_cases}
    rows = []
    for key, source in sources.items():
        if args.only and key != args.only:
            continue
        for name, part, run in source():
            row = {"case": name, "part": part}
            for chooser in ("doctor", "random"):
                row[chooser] = run(chooser, seed=args.seed, attempts=args.attempts)
            rows.append(row)
            d, r = row["doctor"], row["random"]
            print(f"{part:<9} {name:<34} diag {'ok ' if d['repaired'] else 'NO '} {d['attempts']} att "
                  f"{d['train_s'] / d['clean_s']:5.2f}x {','.join(d['remedies']) or ('bug named' if d['bug'] else '-')}"
                  f" | random {'ok ' if r['repaired'] else 'NO '} {r['attempts']} att", flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
