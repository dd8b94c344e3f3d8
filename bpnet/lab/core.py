"""Scenarios, their results, and the registry.

A :class:`Scenario` makes one classic backprop failure happen on purpose.  It
holds a *broken* and a *remedy* configuration (plain dicts) and one
``trainer(config, data, seed, steps) -> Run`` that runs either, so the two
runs differ only where the configurations differ.  :meth:`Scenario.run`
trains both and judges three things:

(a) reproduced -- the broken run's defining metric crosses its threshold
    (e.g. first non-finite step ≤ 100, first-layer gradient norm < 1e-6);
(b) diagnosed  -- the doctor's findings on the broken run include ``expected_code``;
(c) repaired   -- the remedy run has a finite loss and meets its bar
    (e.g. validation accuracy ≥ 0.9);

and, with ``auto_repair=True``, a third run: (d) auto-repaired -- the broken
model handed to :func:`bpnet.doctor.repair`, which chooses the remedy itself,
meets the same bars (or, for a bug in the user's code, names it).
"""
from __future__ import annotations

import math
import operator
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from .train import Run

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Bar:
    """A named number compared with a threshold: ``Bar("val_accuracy", ">=", 0.9)``."""
    key: str
    op: str
    threshold: float

    def __post_init__(self):
        if self.op not in _OPS:
            raise ConfigError(f"Bar op {self.op!r}: use one of {sorted(_OPS)}")

    def value(self, metrics: dict) -> float:
        v = metrics.get(self.key)
        return math.nan if v is None else float(v)

    def holds(self, metrics: dict) -> bool:
        v = self.value(metrics)
        return not math.isnan(v) and bool(_OPS[self.op](v, self.threshold))

    def __str__(self):
        return f"{self.key} {self.op} {self.threshold:g}"


@dataclass
class LabResult:
    """What :meth:`Scenario.run` found.

    ``metric`` / ``value`` / ``bar`` is the broken run's defining number and
    its threshold; ``remedy_values`` the remedy run's numbers behind its bars;
    ``variants`` further repairs (e.g. BatchNorm, residual) run for comparison.
    """
    scenario: str
    seed: int
    expected_code: str
    broken: Run
    repaired: Run
    metric: str
    value: float
    bar: str
    reproduced: bool
    diagnosed: bool
    repaired_ok: bool
    remedy_values: dict
    remedy_bars: list
    variants: dict = field(default_factory=dict)
    seconds: float = 0.0
    auto: object = None            # the auto-repaired run (bpnet.lab.auto_repair.AutoRepair), if run

    @property
    def auto_ok(self) -> bool | None:
        """(d): the auto-repaired run met the bars (or named the user-code bug); None if not run."""
        return None if self.auto is None else self.auto.ok

    @property
    def auto_remedies(self) -> list:
        """The remedies the repair chose and kept (empty if not run)."""
        return [] if self.auto is None else self.auto.remedies

    @property
    def findings(self):
        return self.broken.findings

    @property
    def ok(self) -> bool:
        return self.reproduced and self.diagnosed and self.repaired_ok

    def finding(self, code=None):
        """The broken run's finding with ``code`` (default: the expected one), or None."""
        code = code or self.expected_code
        return next((f for f in self.broken.findings if f.code == code), None)

    def summary(self) -> str:
        mark = lambda b: "yes" if b else "NO"  # noqa: E731
        lines = [f"{self.scenario} (seed {self.seed}, {self.seconds:.2f} s)",
                 f"  (a) failure reproduced: {mark(self.reproduced)} -- {self.metric} = {_fmt(self.value)} "
                 f"(needs {self.bar})",
                 f"  (b) diagnosed:          {mark(self.diagnosed)} -- expected {self.expected_code}; doctor "
                 f"said {', '.join(self.broken.codes) or 'nothing'}"]
        f = self.finding()
        if f is not None:
            lines.append(f"      {f.message}")
            if f.remedy:
                lines.append(f"      remedy: {f.remedy}")
        bars = ", ".join(f"{b} (got {_fmt(self.remedy_values.get(b.split()[0]))})" for b in self.remedy_bars)
        lines.append(f"  (c) remedy worked:      {mark(self.repaired_ok)} -- {bars}")
        if self.auto is not None:
            lines.append(f"  (d) auto-repaired:      {mark(self.auto.ok)} -- {self.auto.summary()}")
        for name, values in self.variants.items():
            lines.append(f"      variant {name}: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in values.items()))
        for note in self.broken.notes + self.repaired.notes:
            lines.extend("      " + line for line in str(note).splitlines())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "seed": self.seed, "expected_code": self.expected_code,
                "metric": self.metric, "value": self.value, "bar": self.bar,
                "reproduced": self.reproduced, "diagnosed": self.diagnosed, "repaired": self.repaired_ok,
                "codes": self.broken.codes, "remedy_values": self.remedy_values,
                "remedy_bars": list(self.remedy_bars), "variants": self.variants,
                "broken_metrics": self.broken.metrics, "repaired_metrics": self.repaired.metrics,
                "seconds": self.seconds, **self._auto_dict()}

    def _auto_dict(self) -> dict:
        if self.auto is None:
            return {}
        rep = self.auto.report
        return {"auto_repaired": self.auto.ok, "auto_remedies": self.auto.remedies,
                "auto_changes": rep.changes, "auto_attempts": len(rep.attempts) - 1,
                "auto_bug": None if rep.bug is None else rep.bug.code, "auto_values": self.auto.values,
                "auto_seconds": rep.training_seconds}


def _fmt(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"


@dataclass
class Scenario:
    """One failure, made to happen, diagnosed and repaired.

    name, title : registry key and one-line title.
    explanation : the mechanism, with the maths, in one paragraph.
    data : what the scenario trains on.
    broken, remedy : the two configurations handed to ``trainer``.
    steps : the step budget of each run.
    expected_code : the doctor's code for this failure.
    metric : the broken run's defining number (a :class:`Bar` on ``Run.metrics``).
    remedy_bars : what the repaired run must reach (loss finiteness is always required).
    make_data : ``make_data(seed) -> dict``.
    trainer : ``trainer(config, data, seed, steps) -> Run`` (fills metrics and findings).
    variants : more repaired configurations to report, ``{name: config}``.
    report : metric keys shown for each variant.
    """
    name: str
    title: str
    explanation: str
    data: str
    broken: dict
    remedy: dict
    steps: int
    expected_code: str
    metric: Bar
    remedy_bars: tuple
    make_data: Callable = field(repr=False, default=None)
    trainer: Callable = field(repr=False, default=None)
    variants: dict = field(default_factory=dict)
    report: tuple = ()

    def _train(self, config: dict, seed: int, label: str) -> Run:
        with single_threaded_blas():
            return self.trainer(dict(config), self.make_data(seed), seed, self.steps, label)

    def broken_run(self, seed: int = 0) -> Run:
        """Train the broken configuration; its findings say what the doctor saw."""
        return self._train(self.broken, seed, "broken")

    def repaired_run(self, seed: int = 0) -> Run:
        """Train the remedy configuration."""
        return self._train(self.remedy, seed, "repaired")

    def variant_run(self, name: str, seed: int = 0) -> Run:
        """Train the remedy configuration updated with variant ``name``."""
        return self._train({**self.remedy, **self.variants[name]}, seed, name)

    def auto_repaired_run(self, broken: Run, seed: int = 0):
        """Hand the broken run's model to :func:`bpnet.doctor.repair` (check (d))."""
        from .auto_repair import auto_repair
        with single_threaded_blas():
            return auto_repair(self, broken, seed)

    def run(self, seed: int = 0, variants: bool = True, auto_repair: bool = False) -> LabResult:
        """Run broken and repaired configurations and judge checks (a), (b) and (c);
        ``auto_repair=True`` adds the auto-repaired run, check (d)."""
        start = time.perf_counter()
        broken = self.broken_run(seed)
        repaired = self.repaired_run(seed)
        auto = self.auto_repaired_run(broken, seed) if auto_repair else None
        extra = {}
        if variants:
            for name in self.variants:
                v = self.variant_run(name, seed)
                extra[name] = {k: v.metrics.get(k) for k in self.report}
        value = self.metric.value(broken.metrics)
        remedy_values = {b.key: b.value(repaired.metrics) for b in self.remedy_bars}
        final = repaired.metrics.get("final_loss", math.nan)
        finite = final is not None and math.isfinite(final)
        remedy_values["final_loss"] = final
        return LabResult(
            scenario=self.name, seed=seed, expected_code=self.expected_code, broken=broken, repaired=repaired,
            metric=self.metric.key, value=value, bar=f"{self.metric.op} {self.metric.threshold:g}",
            reproduced=self.metric.holds(broken.metrics),
            diagnosed=self.expected_code in broken.codes,
            repaired_ok=finite and all(b.holds(repaired.metrics) for b in self.remedy_bars),
            remedy_values=remedy_values, remedy_bars=[str(b) for b in self.remedy_bars],
            variants=extra, seconds=time.perf_counter() - start, auto=auto)

    def describe(self) -> str:
        """Title, mechanism, data, both configurations and the three checks, as text."""
        cfg = lambda c: ", ".join(f"{k}={v}" for k, v in c.items())  # noqa: E731
        return "\n".join([
            f"{self.name}: {self.title}", "", self.explanation, "",
            f"data:     {self.data}",
            f"broken:   {cfg(self.broken)}",
            f"remedy:   {cfg(self.remedy)}",
            *(f"variant:  {n}: {cfg(c)}" for n, c in self.variants.items()),
            f"budget:   {self.steps} steps",
            f"checks:   (a) {self.metric}   (b) doctor reports {self.expected_code}   "
            f"(c) {', '.join(map(str, self.remedy_bars))}"])


@contextmanager
def single_threaded_blas():
    """Run BLAS on one thread (via threadpoolctl when installed).

    The lab's matrices are small: threads buy nothing there, and on a busy
    machine they cost a lot.  One thread also fixes the order of every sum.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:          # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


_REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    if scenario.name in _REGISTRY:
        raise ConfigError(f"a lab scenario called {scenario.name!r} is already registered")
    _REGISTRY[scenario.name] = scenario
    return scenario


def _load():
    from . import catalogue  # noqa: F401  (registers the scenarios on import)


def scenarios() -> list[Scenario]:
    """Every registered scenario, in catalogue order."""
    _load()
    return list(_REGISTRY.values())


def get(name: str) -> Scenario:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"no lab scenario called {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def run(name: str, seed: int = 0, variants: bool = True, auto_repair: bool = False) -> LabResult:
    """Run one scenario by name: ``bpnet.lab.run("lr_too_high")``."""
    return get(name).run(seed, variants=variants, auto_repair=auto_repair)


def run_all(seed: int = 0, names=None, progress: Callable | None = None, auto_repair: bool = False) -> list[LabResult]:
    """Run every scenario (or those in ``names``); ``progress(result)`` is called after each."""
    results = []
    for sc in scenarios():
        if names is not None and sc.name not in names:
            continue
        res = sc.run(seed, auto_repair=auto_repair)
        results.append(res)
        if progress is not None:
            progress(res)
    return results


def summary_table(results) -> str:
    """The results as a Markdown table: scenario, reproduced, diagnosed, repaired, time."""
    mark = lambda b: "yes" if b else "**no**"  # noqa: E731
    auto = any(r.auto is not None for r in results)
    lines = ["| scenario | failure reproduced | diagnosis correct | remedy worked |"
             + (" auto-repaired (remedy chosen) |" if auto else "") + " time (s) |",
             "|---|---|---|---|" + ("---|" if auto else "") + "---|"]
    for r in results:
        cell = ""
        if auto:
            cell = " n/a |" if r.auto is None else f" {mark(r.auto.ok)} ({_chosen(r.auto)}) |"
        lines.append(f"| {r.scenario} | {mark(r.reproduced)} ({r.metric} = {_fmt(r.value)}) | "
                     f"{mark(r.diagnosed)} ({r.expected_code}) | {mark(r.repaired_ok)} |{cell} {r.seconds:.2f} |")
    return "\n".join(lines)


def _chosen(auto) -> str:
    rep = auto.report
    if rep.bug is not None:
        return f"bug named: {rep.bug.evidence.get('class') or rep.bug.code}"
    return ", ".join(auto.remedies) or "none"
