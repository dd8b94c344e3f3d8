"""``repair``: train, diagnose, fix the root cause, restart -- until the doctor is quiet.

The procedure an engineer follows with a broken run (and AUTOTRAINER, ICSE'21,
automates): train and record the signals; take the findings in priority order
(data, then output/loss, then gradients, then learning rate/convergence, see
:mod:`~bpnet.doctor.remedies`); apply the next untried fix for the first of
them; restart, from the last good checkpoint when the problem appeared
mid-run and the fix leaves the weights meaningful, from a fresh
initialisation otherwise; keep the fix if the validation metric improved and
undo it if not; stop when the doctor finds nothing and the metric beats the
broken run's, or when the attempts or the time run out.  A bug in the user's
own code (a backward that fails the gradient check, an update that climbs the
loss) is not papered over: the repair names it and reports ``fixed=False``.

Everything trains through ``model.fit`` (bpnet's one training loop).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..history import History
from . import remedies as R
from .attempt import Attempt, Data, compose, train_attempt, transform, user_layer_bugs
from .recipe import Recipe, code_diff

DEFAULT_ATTEMPTS = 5


@dataclass
class Baseline:
    """A broken run that already happened (the failure lab's): its findings and history.

    The model handed to :func:`repair` is that run's trained model; it is scored on the
    validation data like every attempt."""
    findings: list
    history: History
    seconds: float = 0.0


@dataclass
class RepairReport:
    """What :func:`repair` did.

    model : the repaired, trained model (its ``preprocessor`` applies any input scaling the
        repair added, inside ``fit``/``evaluate``/``predict``, and is saved with it).
    fixed : the doctor is quiet and the validation metric beats the broken run's by more than
        noise (or matches a broken run that already scored perfectly); True with no attempts
        when the doctor found nothing to repair.
    attempts : attempt 0 is the broken run; each later one applied one remedy.
    history : the History of the attempt behind ``model``.
    bug : the user-code bug that stopped the repair (a finding), or None.
    """
    model: object
    fixed: bool
    attempts: list
    history: History
    original: Recipe = field(repr=False, default=None)
    final: Recipe = field(repr=False, default=None)
    bug: object = None
    seconds: float = 0.0
    chooser: str = "doctor"

    @property
    def changes(self) -> list[str]:
        """The changes behind the returned model, in order."""
        return [a.change for a in self.chain]

    @property
    def remedies(self) -> list[str]:
        """The names of the remedies behind the returned model, in order."""
        return [a.remedy for a in self.chain]

    @property
    def chain(self) -> list:
        """The attempts from the broken run to the returned one (each changed its parent's recipe)."""
        a = next((a for a in self.attempts if a.chosen), None)
        chain = []
        while a is not None and a.number > 0:
            chain.append(a)
            a = a.parent
        return chain[::-1]

    @property
    def training_seconds(self) -> float:
        return sum(a.seconds for a in self.attempts)

    def diff(self) -> str:
        return code_diff(self.original, self.final) if self.original is not None else ""

    def __str__(self):
        if self.bug is not None:
            head = f"repair: NOT repaired -- a bug in your code: {_bug_name(self.bug)}"
        elif len(self.attempts) == 1 and self.fixed:
            head = "repair: the doctor found nothing to repair"
        else:
            n = len(self.attempts) - 1
            head = (f"repair: {'fixed' if self.fixed else 'NOT fixed'} after {n} attempt{'s' * (n != 1)} "
                    f"({self.training_seconds:.1f} s of training)")
        lines = [head]
        lines += [a.story() for a in self.attempts]
        if self.bug is not None:
            lines.append(f"what is wrong: {self.bug.message}")
            if self.bug.remedy:
                lines.append(f"fix it yourself: {self.bug.remedy}")
        diff = self.diff()
        if diff:
            lines += ["final change set (apply to your script):", diff]
        elif self.bug is None:
            lines.append("final change set: none")
        return "\n".join(lines)


def _bug_name(finding) -> str:
    ev = finding.evidence or {}
    if ev.get("class"):
        return f"{ev['class']}.backward in {finding.where} fails the gradient check"
    if finding.code == "GRADIENT_ASCENT":
        return "the update step climbs the loss (w += lr*g): check your optimizer's step or update rule"
    return f"{finding.code} ({finding.where}): gradients are summed across steps and never reset"


def repair(model, X, y, epochs, batch_size=32, validation_data=None, validation_split=0.0, callbacks=None,
           max_attempts=None, time_budget=None, seed=0, verbose=1, *, chooser="doctor",
           baseline: Baseline | None = None) -> RepairReport:
    """Train ``model`` on (X, y) and repair what the doctor finds; returns a :class:`RepairReport`.

    ``model`` is a compiled :class:`~bpnet.Sequential`, broken in any way the doctor names;
    ``X, y`` the raw data (non-finite rows, outliers and unscaled features included).
    Validation data come from ``validation_data``, else ``validation_split``, else the last
    20% of (X, y).  ``max_attempts`` bounds the repairs after the broken run (default 5),
    ``time_budget`` the seconds spent.  ``chooser="random"`` draws each remedy at random
    from those that apply (seeded by ``seed``): the baseline a diagnosis must beat.
    ``baseline`` skips training the broken run when it has already been trained.
    """
    if chooser not in ("doctor", "random"):
        raise ConfigError(f"repair(chooser={chooser!r}): use 'doctor' or 'random'")
    model._require_compiled()
    say = print if verbose else (lambda *a, **k: None)
    start = time.perf_counter()
    user_pre = model.preprocessor if model.apply_preprocessor else None    # a model repaired before
    if user_pre is not None:
        with np.errstate(all="ignore"):
            X = transform(user_pre, np.asarray(X))
            if validation_data is not None:
                validation_data = (transform(user_pre, np.asarray(validation_data[0])), validation_data[1])
    data = Data(X, y, validation_data, validation_split)
    if data.note:
        say(f"repair: {data.note}")
    recipe = Recipe.from_model(model, epochs, batch_size)
    user_cbs = list(callbacks or [])
    broken = _broken_attempt(model, recipe, data, user_cbs, baseline)
    say(broken.story())
    attempts = [broken]
    bug = next((f for f in broken.findings if R.is_user_code_bug(f)), None) or user_layer_bugs(model, data)
    if bug is not None:
        broken.verdict = "user-code bug"
        return _report(model, attempts, broken, recipe, recipe, bug, start, chooser, user_pre)
    current, current_recipe = broken, recipe
    undone: set = set()
    applied: dict = {}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 12]))
    limit = DEFAULT_ATTEMPTS if max_attempts is None else int(max_attempts)
    while len(attempts) - 1 < limit:
        if current is not broken and _fixed(current, attempts):
            break
        if time_budget is not None and time.perf_counter() - start > time_budget:
            say("repair: time budget spent")
            break
        pick = (_pick_doctor if chooser == "doctor" else _pick_random)(current, current_recipe, data, undone,
                                                                         applied, rng)
        if pick is None and current is not broken and current.quiet:
            # quiet, no better, and re-tuning did not help either: undo it, go on from its parent
            _undo(current, undone, "the doctor is quiet but the run is no better than the best so far")
            current = current.parent
            current_recipe = current.recipe or recipe
            continue
        if pick is None:
            say("repair: no remedy left to try")
            break
        remedy, finding, candidate, change = pick
        applied[remedy.name] = applied.get(remedy.name, 0) + 1
        restart = current.checkpoint if remedy.keeps_weights and current.mid_run else None
        att = train_attempt(candidate, data, user_cbs, number=len(attempts), restart=restart)
        att.target, att.remedy, att.change, att.recipe, att.parent = finding, remedy.name, change, candidate, current
        att.settled = current.settled | frozenset(remedy.settles)
        if _better(att, current):
            att.kept = True
            att.verdict = "fixed" if _fixed(att, attempts + [att]) else "better, kept"
        elif finding.code != R.NO_GAIN and not att.has(finding) and \
                (R.stage(finding) < 1 or att.score >= current.score - _tolerance(current)):
            att.kept = True       # it removed its problem (a data fault always stays fixed) and uncovered the next
            att.verdict = "fixed" if _fixed(att, attempts + [att]) else "problem gone, kept to fix what it uncovered"
        else:
            _undo(att, undone, "no better")
        if att.kept:
            current, current_recipe = att, candidate
        attempts.append(att)
        say(att.story())
        bug = next((f for f in att.findings if R.is_user_code_bug(f)), None)
        if bug is not None:
            att.verdict = "user-code bug"
            return _report(model, attempts, current, recipe, current_recipe, bug, start, chooser, user_pre)
    best = _best(attempts)
    return _report(model, attempts, best, recipe, best.recipe or recipe, None, start, chooser, user_pre)


def _undo(att, undone, why):
    undone.add(att.remedy)
    att.kept = False
    att.verdict = f"{why}, undone" if not att.verdict else f"{att.verdict}; then undone ({why})"


def _fixed(a, attempts) -> bool:
    """The doctor is quiet, the run beats the broken one (or matches a broken run that already
    scored perfectly: a fault that did not hurt on this data), and it is not worse than the best
    run kept so far (a quiet doctor is no excuse for a lost point of accuracy)."""
    broken = attempts[0]
    if a is broken or not a.quiet:
        return False
    at_ceiling = a.metric_name != "val_loss" and math.isfinite(broken.metric) and broken.metric >= 0.999
    if not (_better(a, broken) or (at_ceiling and a.metric >= broken.metric - 0.005)):
        return False
    peak = max((x for x in attempts if x is broken or x.kept), key=lambda x: x.score)
    return a.score >= peak.score - _tolerance(peak)


def _better(a, b) -> bool:
    """``a`` beats ``b`` by more than noise: half a point of accuracy (or the same accuracy and a
    2% lower loss), or a 2% lower validation loss; any score beats a run that could not be scored."""
    if not math.isfinite(b.score):
        return math.isfinite(a.score)
    if not math.isfinite(a.score):
        return False
    if a.metric_name == "val_loss":
        return a.score > b.score + 0.02 * abs(b.score)
    if a.metric > b.metric + 0.005:
        return True
    losses = math.isfinite(a.val_loss) and math.isfinite(b.val_loss)
    return abs(a.metric - b.metric) <= 0.005 and losses and a.val_loss < 0.98 * b.val_loss


def _tolerance(attempt) -> float:
    """How much worse a fix may score and still be kept when it removed its problem."""
    if attempt.metric_name == "val_loss":
        return 0.1 * abs(attempt.score) if math.isfinite(attempt.score) else 0.0
    return 0.02


def _best(attempts):
    """The attempt to hand back: a fixed one (quiet, better than the broken run) if any, the best score."""
    broken = attempts[0]
    kept = [a for a in attempts[1:] if a.kept]
    return max([broken] + kept, key=lambda a: (_fixed(a, attempts), a.score))


def _broken_attempt(model, recipe, data, user_cbs, baseline):
    if baseline is None:
        att = train_attempt(recipe, data, user_cbs, number=0)
    else:
        att = Attempt.from_baseline(baseline, model, data)
    att.verdict = "broken run"
    return att


def _problems(attempt) -> list:
    """The actionable findings, root causes first: by stage, then in the doctor's order."""
    found = [f for f in attempt.problems if not getattr(f, "caused_by", None)]
    if not found and attempt.number == 0:          # the doctor is quiet, but noted something to improve
        found = [f for f in attempt.findings if f.code in R.IMPROVABLE_INFO]
    elif not found:                                # a fix silenced its problem but gained nothing: re-tune
        found = [R.NO_GAIN_FINDING]
    return R.root_causes_first(found)


def _pick_doctor(current, recipe, data, undone, applied, rng):
    ctx = R.Context(*data.train_view(recipe), model=current.model)
    for finding in _problems(current):
        for remedy in R.remedies_for(finding):
            if remedy.name in undone or applied.get(remedy.name, 0) >= 3:
                continue
            candidate = recipe.clone()
            change = remedy.apply(candidate, finding, ctx)
            if change:
                return remedy, finding, candidate, change
    return None


def _pick_random(current, recipe, data, undone, applied, rng):
    from .findings import Finding
    ctx = R.Context(*data.train_view(recipe), model=current.model)
    problems = _problems(current)
    finding = problems[0] if problems else Finding("PLATEAU", "warning", "")
    options = []
    for remedy in R.all_remedies():
        if remedy.name in undone or applied.get(remedy.name, 0) >= 3:
            continue
        candidate = recipe.clone()
        change = remedy.apply(candidate, finding, ctx)
        if change:
            options.append((remedy, finding, candidate, change))
    return options[int(rng.integers(len(options)))] if options else None


def _report(model, attempts, best, original, final, bug, start, chooser, user_pre=None):
    out_model = best.model if best.model is not None else model     # a baseline's model is the user's
    for a in attempts:
        a.chosen = a is best
    if out_model is not model:
        scaler = best.scaler if user_pre is None else (user_pre if best.scaler is None else
                                                       compose(user_pre, best.scaler))
        if scaler is not None:
            out_model.preprocessor, out_model.apply_preprocessor = scaler, True
    healthy = len(attempts) == 1 and attempts[0].quiet          # nothing to repair
    fixed = bug is None and (healthy or _fixed(best, attempts))
    return RepairReport(model=out_model, fixed=bool(fixed), attempts=attempts, history=best.history,
                        original=original, final=final, bug=bug, seconds=time.perf_counter() - start,
                        chooser=chooser)


def fit_repair(model, X, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, callbacks=None,
               verbose=1):
    """``model.fit(..., doctor="repair")``: repair, then make ``model`` the repaired model.

    The repaired model's layers, weights, loss, optimizer and preprocessor move into
    ``model`` (the user's variable keeps working); the returned History carries the
    report as ``history.repair``.
    """
    report = repair(model, X, y, epochs, batch_size=batch_size, validation_data=validation_data,
                    validation_split=validation_split, callbacks=callbacks, verbose=0)
    if report.model is not model:
        vars(model).update(vars(report.model))
        for owner in (model.optimizer, model.loss_scaler):
            if owner is not None:
                owner.model = model
        report.model = model
    history = model.history = report.history
    history.repair = report
    if verbose:
        print(report)
    return history
