"""The memory budget: fit/evaluate/predict refuse, before the first step, a batch that cannot fit.

Limits are faked (the functions that read them are monkeypatched); nothing large is allocated.
"""
import resource

import numpy as np
import pytest

import bpnet
import bpnet.memory as memory
from bpnet import Dense, ReLU, Sequential
from bpnet.errors import MemoryBudgetError
from bpnet.summary import memory_estimate

X = np.random.default_rng(0).normal(size=(512, 20))
Y = (X[:, 0] > 0).astype(np.int64)


def model():
    m = Sequential([Dense(256), ReLU(), Dense(256), ReLU(), Dense(2)], seed=0, backend="numpy")
    m.compile(optimizer=bpnet.Adam(lr=1e-3))
    m.build((20,))
    return m


def limit(monkeypatch, nbytes, source="the cgroup memory limit"):
    monkeypatch.setattr(memory, "available_memory", lambda: (nbytes, source))


def test_fit_refuses_a_batch_larger_than_the_memory_left(monkeypatch):
    m = model()
    est = memory_estimate(m, 512)
    allocated = est["parameters"] + est["gradients"]        # exist once built; Adam's moments do not yet
    budget = allocated + est["optimizer_state"] + est["activations"] // 4
    limit(monkeypatch, budget - allocated)

    class NoStep(bpnet.Callback):
        def on_batch_begin(self, batch, logs=None):
            raise AssertionError("a step ran")
    with pytest.raises(MemoryBudgetError) as info:
        m.fit(X, Y, epochs=1, batch_size=512, verbose=0, callbacks=[NoStep()])
    err = info.value
    assert err.needed == est["total"] - allocated and err.available == budget - allocated
    assert "but only" in str(err) and "(the cgroup memory limit)" in str(err)
    assert f"the largest batch that fits is {err.max_batch_size} samples" in str(err)
    # the largest batch is the largest: it passes the check, one more sample does not
    assert 512 // 4 - 2 <= err.max_batch_size < 512
    memory.require_memory(m, err.max_batch_size)
    with pytest.raises(MemoryBudgetError):
        memory.require_memory(m, err.max_batch_size + 1)
    h = m.fit(X, Y, epochs=1, batch_size=err.max_batch_size, verbose=0)
    assert np.isfinite(h["loss"][0])


def test_evaluate_and_predict_count_a_forward_pass_and_their_outputs(monkeypatch):
    m = model()
    act = memory_estimate(m, 256)["activations"] // 2
    limit(monkeypatch, act // 2, "free memory (MemAvailable)")
    with pytest.raises(MemoryBudgetError, match=r"evaluate with batches of 256 samples .*\(free memory"):
        m.evaluate(X, Y, batch_size=256)
    with pytest.raises(MemoryBudgetError, match=r"predict with batches of 256 samples") as info:
        m.predict(X, batch_size=256)
    assert info.value.max_batch_size < 128
    limit(monkeypatch, 10 ** 12)
    assert m.predict(X, batch_size=256).shape == (512, 2)


def test_available_memory_is_the_smallest_limit(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemAvailable:  8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("4294967296\n")              # a 4 GiB container
    (cgroup / "memory.current").write_text("1073741824\n")
    status = tmp_path / "status"
    status.write_text("VmSize:  1048576 kB\n")
    monkeypatch.setattr(memory, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(memory, "_CGROUP_V2", str(cgroup))
    monkeypatch.setattr(memory, "_SELF_STATUS", str(status))
    monkeypatch.setattr(memory.resource, "getrlimit", lambda which: (resource.RLIM_INFINITY,) * 2)
    assert memory.available_memory() == (3 << 30, "the cgroup memory limit")
    (cgroup / "memory.max").write_text("max\n")
    assert memory.available_memory() == (8000000 * 1024, "free memory (MemAvailable)")
    monkeypatch.setattr(memory.resource, "getrlimit", lambda which: (2 << 30, resource.RLIM_INFINITY))
    assert memory.available_memory() == (1 << 30, "the address-space limit (RLIMIT_AS)")   # 2 GiB - 1 GiB used
    monkeypatch.setattr(memory, "_MEMINFO", str(tmp_path / "none"))
    monkeypatch.setattr(memory, "_CGROUP_V2", str(tmp_path / "none"))
    monkeypatch.setattr(memory, "_CGROUP_V1", str(tmp_path / "none"))
    monkeypatch.setattr(memory.resource, "getrlimit", lambda which: (resource.RLIM_INFINITY,) * 2)
    assert memory.available_memory() == (None, "unknown")


def test_the_real_limits_let_ordinary_training_run():
    available, source = memory.available_memory()
    assert available is None or available > 0
    m = model()
    assert np.isfinite(m.fit(X, Y, epochs=1, verbose=0)["loss"][0])
