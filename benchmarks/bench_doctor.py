"""How right the doctor is on runs it was not built around: precision, recall, headline, false alarms, cost.

Runs the corpus of ``benchmarks/doctor_corpus.py`` (healthy runs and runs with
one injected fault each) with ``fit(..., doctor=Doctor(print_fn=None))`` and
prints, for the whole corpus and for its held-out part (every third case,
fixed before tuning):

* false alarms -- healthy runs with any warning or error;
* detected -- broken runs where an expected code is reported;
* root cause first -- broken runs whose first warning/error is an expected code;
* per-code precision (over findings reported as a root cause) and recall.

Overhead: bench_monitor's MLP (784-512-256-10, Adam, batch 128, 4096 samples,
one epoch) plain, with a Monitor and with ``doctor=True``, round-robin, median
CPU time of the process per fit; and the corpus's own time with and without the doctor (tiny runs,
where the doctor's fixed cost -- data checks, gradient checks of user code --
weighs most).

``--seed N`` re-seeds every case's model (other initial weights and
shuffling): the same faults on runs the rules were not tuned on.

    python benchmarks/bench_doctor.py [--part all|tune|held_out] [--cases] [--seed N] [--repeats 5] [--no-overhead]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import doctor_corpus as corpus  # noqa: E402


def _pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def table(title, s) -> str:
    lines = [f"### {title}", "",
             "| runs | false alarms (healthy) | detected (broken) | root cause first |",
             "|---|---|---|---|",
             f"| {s['healthy']} healthy + {s['broken']} broken | {s['false_alarms']} / {s['healthy']} | "
             f"{s['detected']} / {s['broken']} | {s['root_first']} / {s['broken']} ({_pct(s['root_first_rate'])}) |",
             "", "| code | precision | reported as cause | recall | broken runs |", "|---|---|---|---|---|"]
    for code, v in s["per_code"].items():
        lines.append(f"| {code} | {_pct(v['precision'])} | {v['reported']} | {_pct(v['recall'])} | {v['cases']} |")
    return "\n".join(lines)


def case_line(o) -> str:
    mark = ("ALARM" if o.false_alarm else "ok") if o.case.healthy else \
        ("first" if o.root_first else "found" if o.detected else "MISSED")
    shown = ", ".join(f"{f.code}[{f.severity[0]}]" + ("<" if getattr(f, "caused_by", None) else "")
                      for f in o.findings) or "-"
    want = "" if o.case.healthy else f" want {'/'.join(o.case.expected)}"
    return f"  {mark:6s} {o.case.name:34s} {o.seconds:5.2f}s{want}: {shown}"


def overhead(repeats: int) -> dict:
    """CPU time of one epoch of bench_monitor's MLP (784-512-256-10, Adam, batch 128, 4096 random
    samples): plain, with a Monitor(every=10), and with doctor=True (monitor, data and model checks,
    a diagnosis per epoch); round-robin, median of ``repeats``."""
    import numpy as np

    from bpnet import Adam, Dense, Monitor, ReLU, Sequential
    from bpnet.doctor import Doctor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((4096, 784)).astype(np.float32)
    y = rng.integers(0, 10, 4096)

    def model():
        m = Sequential([Dense(512, init="he_normal"), ReLU(), Dense(256, init="he_normal"), ReLU(), Dense(10)],
                       seed=0, backend="numpy")
        m.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
        return m

    configs = {"plain": lambda: {}, "monitor": lambda: {"callbacks": [Monitor(every=10)]},
               "doctor": lambda: {"doctor": Doctor(print_fn=None)}}
    cpu = {k: [] for k in configs}
    for name, kw in configs.items():                      # warm-up
        model().fit(X[:512], y[:512], epochs=1, batch_size=128, verbose=0, **kw())
    for _ in range(repeats):
        for name, kw in configs.items():
            m = model()
            c0 = time.process_time()
            m.fit(X, y, epochs=1, batch_size=128, verbose=0, **kw())
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return {"plain_s": med["plain"], "monitor_s": med["monitor"], "doctor_s": med["doctor"],
            "monitor": med["monitor"] / med["plain"] - 1, "overhead": med["doctor"] / med["plain"] - 1}


def corpus_overhead(part) -> dict:
    with_doc = without = 0.0
    for c in corpus.cases(part):
        t0 = time.process_time()
        corpus.run_case(c, doctor=False)
        without += time.process_time() - t0
        t0 = time.process_time()
        corpus.run_case(c, doctor=True)
        with_doc += time.process_time() - t0
    return {"plain_s": without, "doctor_s": with_doc, "overhead": with_doc / without - 1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("all", "tune", "held_out"),
                    help="which part of the corpus to run (default all: reports all and held-out)")
    ap.add_argument("--cases", action="store_true", help="print one line per case with its findings")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the overhead measurement")
    ap.add_argument("--no-overhead", action="store_true", help="skip the overhead measurements")
    ap.add_argument("--seed", type=int, default=None,
                    help="re-seed every case's model (other initial weights and shuffling; default: as written)")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    t0 = time.perf_counter()
    outcomes = corpus.run_all(args.part, progress=(lambda o: print(case_line(o), flush=True))
                              if args.cases else None, seed=args.seed)
    seeded = "" if args.seed is None else f", models re-seeded with {args.seed}"
    print(f"corpus ({args.part}{seeded}): {len(outcomes)} runs in {time.perf_counter() - t0:.1f} s\n")
    print(table(f"Corpus, {args.part}", corpus.score(outcomes)))
    if args.part == "all":
        held = [o for o in outcomes if o.case.held_out]
        print()
        print(table("Held-out part (every third case)", corpus.score(held)))
    if not args.no_overhead:
        o = overhead(args.repeats)
        print(f"\noverhead, MLP 784-512-256-10, one epoch of 4096 samples (CPU): plain {o['plain_s']:.3f} s, "
              f"Monitor(every=10) {o['monitor_s']:.3f} s ({o['monitor']:+.1%}), doctor=True {o['doctor_s']:.3f} s "
              f"({o['overhead']:+.1%})")
        c = corpus_overhead(args.part)
        print(f"overhead, the corpus's tiny runs: plain {c['plain_s']:.1f} s, doctor {c['doctor_s']:.1f} s "
              f"CPU: {c['overhead']:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
