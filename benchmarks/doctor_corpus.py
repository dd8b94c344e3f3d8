"""An evaluation corpus for the doctor: healthy runs and runs with one injected fault each.

The cases live in ``doctor_cases_healthy.py`` and ``doctor_cases_broken.py``
(imported at the end of this module); this one holds the data sets, the
user-written layers and optimizers the cases use, and the scoring.

Every case is a small deterministic ``fit(..., doctor=Doctor(print_fn=None))``
(seconds at most).  A broken case names the finding code(s) that are its root
cause: ``expected[0]`` is the cause, further codes are accepted names for the
same cause (e.g. a learning rate so high that the loss becomes NaN).

The cases are NOT the failure lab's scenarios: other data sets (iris, wine,
breast cancer, digits, diabetes, moons, spirals, circles, blobs, synthetic
regression), architectures and optimizers, and faults transcribed from
public bug collections (DeepFD's Stack Overflow cases, AUTOTRAINER's
Circle/Blob models).

Split rule (fixed before any tuning): within each of the healthy and the
broken lists, in definition order, every third case (index % 3 == 2) is
held out; the rest is the tuning part.  ``cases(part="tune"|"held_out"|"all")``.

Scoring (:func:`score`): a finding counts when its severity is warning or
error.  A healthy run with any such finding is a false alarm; a broken run is
detected when one of its expected codes is reported; its root cause is first
when the first counted finding in ``history.findings`` has an expected code.
Per-code precision is taken over findings reported as a root cause (those
with no ``caused_by``); recall over the broken runs whose cause is that code.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

import bpnet
from bpnet import SGD, Adam, Callback, Dense, ReLU, Sequential
from bpnet.data import Standardizer, train_test_split
from bpnet.errors import BpnetError
from bpnet.layers.activations import Activation
from bpnet.layers.base import Layer

COUNTED = ("error", "warning")


@dataclass
class Case:
    name: str
    healthy: bool
    build: object = field(repr=False)        # () -> dict(model=..., X=..., y=..., fit=dict(...))
    expected: tuple = ()
    note: str = ""
    index: int = 0                            # position within its list (healthy or broken)

    @property
    def held_out(self) -> bool:
        return self.index % 3 == 2


HEALTHY: list[Case] = []
BROKEN: list[Case] = []


def healthy(name, note=""):
    def register(fn):
        HEALTHY.append(Case(name, True, fn, (), note, len(HEALTHY)))
        return fn
    return register


def broken(name, *expected, note=""):
    def register(fn):
        BROKEN.append(Case(name, False, fn, tuple(expected), note, len(BROKEN)))
        return fn
    return register


def cases(part: str = "all") -> list[Case]:
    every = HEALTHY + BROKEN
    if part == "all":
        return every
    if part == "tune":
        return [c for c in every if not c.held_out]
    if part == "held_out":
        return [c for c in every if c.held_out]
    raise ValueError(f"part={part!r}: use 'all', 'tune' or 'held_out'")


# -- data -------------------------------------------------------------------------------
def _split(X, y, seed=0, test_size=0.25, scale=True, stratify=True):
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=test_size, seed=seed,
                                              stratify=stratify and y.ndim == 1 and y.dtype.kind in "iu")
    if scale:
        sc = Standardizer().fit(X_tr)
        X_tr, X_va = sc.transform(X_tr), sc.transform(X_va)
    return (X_tr.astype(np.float32), y_tr), (X_va.astype(np.float32), y_va)


@lru_cache(maxsize=None)
def iris(seed=0, test_size=0.25):
    return _split(*bpnet.datasets.load_iris(), seed=seed, test_size=test_size)


@lru_cache(maxsize=None)
def wine(seed=0):
    return _split(*bpnet.datasets.load_wine(), seed=seed)


@lru_cache(maxsize=None)
def cancer(seed=0, scale=True):
    return _split(*bpnet.datasets.load_breast_cancer(), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def digits(n=600, seed=0):
    X, y = bpnet.datasets.load_digits()
    return _split(X[:n] / 16.0, y[:n], seed=seed, scale=False)


@lru_cache(maxsize=None)
def diabetes(seed=0):
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    y = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    return _split(X, y, seed=seed)


@lru_cache(maxsize=None)
def moons(n=300, noise=0.15, seed=0):
    return _split(*bpnet.datasets.make_moons(n, noise=noise, seed=seed), seed=seed)


@lru_cache(maxsize=None)
def spirals(n=300, seed=0):
    return _split(*bpnet.datasets.make_spirals(n, n_classes=3, noise=0.15, seed=seed), seed=seed)


@lru_cache(maxsize=None)
def circles(n=300, seed=0, scale=True):
    from sklearn.datasets import make_circles
    X, y = make_circles(n, noise=0.05, factor=0.5, random_state=seed)
    return _split(X, y.astype(np.int64), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def blobs(n=300, seed=0, scale=True, centers=3):
    from sklearn.datasets import make_blobs
    X, y = make_blobs(n, n_features=4, centers=centers, random_state=seed)
    return _split(X, y.astype(np.int64), seed=seed, scale=scale)


@lru_cache(maxsize=None)
def regression(n=400, d=6, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = (np.tanh(X @ w / 2) + 0.3 * X[:, 0] * X[:, 1] + noise * rng.standard_normal(n)).reshape(-1, 1)
    return _split(X, y.astype(np.float32), seed=seed, scale=False)


@lru_cache(maxsize=None)
def sequences(n=256, T=8, seed=0):
    """Sign of the sum of a sequence of 8 steps of 2 features: a task an RNN learns quickly."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, 2)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    k = n * 3 // 4
    return (X[:k], y[:k]), (X[k:], y[k:])


def mlp(hidden, out, act=ReLU, init="he_normal", seed=0, **kw):
    layers = []
    for h in hidden:
        layers += [Dense(h, init=init), act()]
    return Sequential(layers + [Dense(out, init=init if init != "he_normal" else "xavier_uniform")],
                      seed=seed, backend="numpy", **kw)


def spec(model, train, val=None, loss="cross_entropy", optimizer=None, epochs=20, batch_size=32, **fit):
    model.compile(loss=loss, optimizer=optimizer or Adam(lr=1e-2))
    X, y = train
    return {"model": model, "X": X, "y": y,
            "fit": {"epochs": epochs, "batch_size": batch_size, "validation_data": val, **fit}}


def scaled_init(scale):
    def init(shape, rng, dtype):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    return init


# -- user-written code (the kind the doctor must check itself) ---------------------------
class SwishByHand(Activation):
    """A user's activation with a correct derivative: y = z σ(z), f' = σ + y(1 - σ) (needs z: kept)."""
    kind = "swish_by_hand"

    def f(self, xp, z):
        self._z = z
        return z / (1.0 + xp.exp(-z))

    def dz(self, xp, y, dy):
        s = 1.0 / (1.0 + xp.exp(-self._z))
        return dy * (s + y * (1.0 - s))


class SoftplusWrong(Activation):
    """A user's softplus, y = log(1 + e^z), whose derivative is written as e^z (should be σ(z))."""
    kind = "softplus_wrong"

    def f(self, xp, z):
        self._z = z
        return xp.log1p(xp.exp(z))

    def dz(self, xp, y, dy):
        return dy * xp.exp(self._z)


class ScaleShiftWrong(Layer):
    """A user's layer y = x ⊙ a + c whose backward forgets to multiply dx by a."""

    def _create(self, input_shape, ctx):
        self._add_param("a", np.full(input_shape, 1.5))
        self._add_param("c", np.zeros(input_shape))

    def forward(self, x, training=False):
        self._ensure_built(x)
        self.x = x
        return x * self.params["a"] + self.params["c"]

    def backward(self, dy):
        self.grads["a"][...] = (dy * self.x).sum(axis=0)
        self.grads["c"][...] = dy.sum(axis=0)
        return dy                       # the bug: dx = dy * a


class AscentSGD(SGD):
    """A user's optimizer that adds the gradient (w += lr g): gradient ascent."""

    def _update(self, p, g):
        p += self.lr * g


class KeepOldGradients(Callback):
    """Adds every earlier gradient to the current one: a hand-written loop that never zeroes the grads."""

    def __init__(self):
        self.total = None

    def on_backward_end(self, batch, logs=None):
        g = self.model.flat_grads
        if self.total is None:
            self.total = g.copy()
        else:
            self.total += g
            g[...] = self.total


# == running and scoring =================================================================
def reseed(model, seed: int):
    """Give ``model`` the random streams of ``Sequential(..., seed=seed)`` (before it is built): the
    same case with other initial weights, shuffling and dropout masks."""
    model.seed = int(seed)
    init_seq, data_seq = np.random.SeedSequence(model.seed).spawn(2)
    model.init_rng, model.data_rng = np.random.default_rng(init_seq), np.random.default_rng(data_seq)


def run_case(case: Case, doctor: bool = True, seed: int | None = None):
    """Train ``case`` (with the doctor unless ``doctor=False``; with the model's seed replaced by
    ``seed`` if given); returns (findings, seconds, error)."""
    from bpnet.doctor import Doctor
    s = case.build()
    if seed is not None:
        reseed(s["model"], seed)
    doc = Doctor(print_fn=None) if doctor else False
    err = None
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        try:
            s["model"].fit(s["X"], s["y"], verbose=0, doctor=doc, **s["fit"])
        except BpnetError as e:                 # e.g. a refused float16 optimizer: the doctor spoke first
            err = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    return (list(doc.findings) if doctor else []), seconds, err


def counted(findings) -> list:
    return [f for f in findings if f.severity in COUNTED]


@dataclass
class Outcome:
    case: Case
    findings: list
    seconds: float
    error: str | None = None

    @property
    def codes(self) -> list:
        return [f.code for f in counted(self.findings)]

    @property
    def root_codes(self) -> list:
        return [f.code for f in counted(self.findings) if not getattr(f, "caused_by", None)]

    @property
    def false_alarm(self) -> bool:
        return self.case.healthy and bool(self.codes)

    @property
    def detected(self) -> bool:
        return not self.case.healthy and any(c in self.case.expected for c in self.codes)

    @property
    def root_first(self) -> bool:
        return not self.case.healthy and bool(self.codes) and self.codes[0] in self.case.expected


def run_all(part: str = "all", progress=None, seed: int | None = None) -> list[Outcome]:
    out = []
    for c in cases(part):
        findings, seconds, err = run_case(c, seed=seed)
        out.append(Outcome(c, findings, seconds, err))
        if progress:
            progress(out[-1])
    return out


def score(outcomes) -> dict:
    """The numbers the issue's bar names, and per-code precision and recall."""
    healthy_runs = [o for o in outcomes if o.case.healthy]
    broken_runs = [o for o in outcomes if not o.case.healthy]
    codes = sorted({c for o in broken_runs for c in o.case.expected[:1]} |
                   {c for o in outcomes for c in o.root_codes})
    per_code = {}
    for code in codes:
        reported = [o for o in outcomes if code in o.root_codes]
        tp = sum(code in o.case.expected for o in reported)
        relevant = [o for o in broken_runs if o.case.expected[0] == code]
        found = sum(any(c in o.case.expected for c in o.codes) for o in relevant)
        per_code[code] = {"precision": tp / len(reported) if reported else math.nan, "reported": len(reported),
                          "recall": found / len(relevant) if relevant else math.nan, "cases": len(relevant)}
    n_b = max(len(broken_runs), 1)
    return {"healthy": len(healthy_runs), "broken": len(broken_runs),
            "false_alarms": sum(o.false_alarm for o in healthy_runs),
            "detected": sum(o.detected for o in broken_runs),
            "root_first": sum(o.root_first for o in broken_runs),
            "root_first_rate": sum(o.root_first for o in broken_runs) / n_b,
            "detection_rate": sum(o.detected for o in broken_runs) / n_b,
            "per_code": per_code}


# the cases register themselves on import, healthy first (their order fixes the split)
import doctor_cases_healthy  # noqa: E402,F401
import doctor_cases_broken  # noqa: E402,F401
