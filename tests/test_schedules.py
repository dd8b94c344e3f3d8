"""Learning-rate schedules against PyTorch's formulas, written out independently here.

The references below follow torch.optim.lr_scheduler's documentation: closed
forms for StepLR, ExponentialLR, CosineAnnealingLR and LinearLR, and, for
CosineAnnealingWarmRestarts, the stateful counter update its ``step()`` does
(T_cur += 1; at T_cur >= T_i: T_cur -= T_i, T_i *= T_mult), not a formula.
"""
import math

import numpy as np
import pytest

from bpnet import SGD, Adam, ConfigError, Dense, ReLU, Sequential
from bpnet.callbacks import Callback
from bpnet.data import make_spirals
from bpnet.schedules import CosineAnnealing, ExponentialLR, LinearWarmup, StepLR

BASE = 0.1


def ref_step(t, step_size, gamma):
    return BASE * gamma ** (t // step_size)


def ref_exp(t, gamma):
    return BASE * gamma ** t


def ref_cosine(t, T_max, eta_min):
    return eta_min + (BASE - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


def ref_sgdr(n, T_0, T_mult, eta_min):
    """lr for t = 0..n-1 by running CosineAnnealingWarmRestarts' counters."""
    out, T_cur, T_i = [], 0, T_0
    for _ in range(n):
        out.append(eta_min + (BASE - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2)
        T_cur += 1
        if T_cur >= T_i:
            T_cur -= T_i
            T_i *= T_mult
    return out


def ref_linear(t, start, total):
    return BASE * (start + (1.0 - start) * min(t, total) / total)


T = range(40)


def test_step_and_exponential():
    s = StepLR(step_size=3, gamma=0.5, base_lr=BASE)
    assert [s(t) for t in T] == pytest.approx([ref_step(t, 3, 0.5) for t in T], rel=1e-12)
    e = ExponentialLR(gamma=0.9, base_lr=BASE)
    assert [e(t) for t in T] == pytest.approx([ref_exp(t, 0.9) for t in T], rel=1e-12)
    assert s(3) == pytest.approx(0.05) and e(2) == pytest.approx(0.081)


def test_cosine_annealing():
    c = CosineAnnealing(T_max=10, eta_min=0.001, base_lr=BASE)
    assert [c(t) for t in range(11)] == pytest.approx([ref_cosine(t, 10, 0.001) for t in range(11)], rel=1e-12)
    assert (c(0), c(5), c(10)) == pytest.approx((0.1, 0.0505, 0.001))


@pytest.mark.parametrize("T_0, T_mult", [(5, 1), (3, 2), (2, 3)])
def test_sgdr_warm_restarts(T_0, T_mult):
    c = CosineAnnealing(T_max=T_0, eta_min=0.002, warm_restarts=True, T_mult=T_mult, base_lr=BASE)
    got = [c(t) for t in T]
    assert got == pytest.approx(ref_sgdr(len(T), T_0, T_mult, 0.002), rel=1e-12)
    restarts = [t for t in T if got[t] == pytest.approx(BASE)]
    expect, start, length = [], 0, T_0
    while start < len(T):
        expect.append(start)
        start, length = start + length, length * T_mult
    assert restarts == expect


def test_linear_warmup_then_cosine():
    w = LinearWarmup(4, start_factor=0.25, base_lr=BASE)
    assert [w(t) for t in range(8)] == pytest.approx([ref_linear(t, 0.25, 4) for t in range(8)], rel=1e-12)
    assert [w(t) for t in range(5)] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1])
    both = LinearWarmup(5, after=CosineAnnealing(T_max=20), start_factor=0.1, base_lr=BASE)
    expect = [ref_linear(t, 0.1, 5) for t in range(5)] + [ref_cosine(t, 20, 0.0) for t in range(21)]
    assert [both(t) for t in range(26)] == pytest.approx(expect, rel=1e-12)


def test_bad_arguments():
    with pytest.raises(ConfigError):
        StepLR(step_size=0)
    with pytest.raises(ConfigError):
        CosineAnnealing(T_max=0)
    with pytest.raises(ConfigError):
        LinearWarmup(3, after=lambda t: 0.1)
    with pytest.raises(ConfigError, match="no base lr"):
        StepLR(2)(3)


# --------------------------------------------------------------------------- as callbacks
@pytest.fixture(scope="module")
def data():
    return make_spirals(120, noise=0.1, seed=1)


def model(lr=BASE, opt=SGD):
    m = Sequential([Dense(8, init="he_normal"), ReLU(), Dense(3)], seed=0, backend="numpy")
    m.compile(optimizer=opt(lr=lr))
    return m


def test_per_epoch_schedule_sets_lr_each_epoch(data):
    X, y = data
    h = model().fit(X, y, epochs=6, batch_size=40, verbose=0, callbacks=[StepLR(2, gamma=0.1)])
    assert h["lr"] == pytest.approx([ref_step(t, 2, 0.1) for t in range(6)])


class LrLog(Callback):
    """The lr each step trained with (read after the schedule set it)."""

    def __init__(self):
        self.lrs = []

    def on_batch_end(self, batch, logs=None):
        self.lrs.append(self.model.optimizer.lr)


def test_per_step_schedule_uses_the_optimizer_step_count(data):
    X, y = data
    cos, log = CosineAnnealing(T_max=7, eta_min=0.01, warm_restarts=True, per_step=True), LrLog()
    m = model()
    h = m.fit(X, y, epochs=4, batch_size=40, verbose=0, callbacks=[cos, log])
    assert log.lrs == pytest.approx(ref_sgdr(12, 7, 1, 0.01), rel=1e-12)
    assert h["lr"] == pytest.approx(log.lrs[2::3])
    assert m.optimizer.initial_lr == BASE


def test_schedule_resumes_exactly_from_a_checkpoint(data, tmp_path):
    """A per-step warm-up + cosine continues after save/load from the saved step count and base lr."""
    X, y = data

    def sched():
        return LinearWarmup(4, after=CosineAnnealing(T_max=12), per_step=True)
    full = model(0.05, Adam)
    full.fit(X, y, epochs=6, batch_size=40, verbose=0, callbacks=[sched()])
    half = model(0.05, Adam)
    half.fit(X, y, epochs=3, batch_size=40, verbose=0, callbacks=[sched()])
    half.save(tmp_path / "half.npz")
    resumed = Sequential.load(tmp_path / "half.npz", backend="numpy")
    assert resumed.optimizer.initial_lr == 0.05 and resumed.optimizer.lr != 0.05
    log = LrLog()
    resumed.fit(X, y, epochs=6, initial_epoch=3, batch_size=40, verbose=0, callbacks=[sched(), log])
    expected = [0.05 * ref_cosine(t - 4, 12, 0.0) / BASE for t in range(9, 18)]
    assert log.lrs == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(resumed.flat_params, full.flat_params)
