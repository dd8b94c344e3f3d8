"""glibc's heap padding (bpnet/backends/heap.py): the numba backend keeps freed memory mapped
so that a step's temporaries do not fault their pages in again every step.

Page faults are counted with getrusage in fresh processes (the setting is process-wide):
four 8 MiB / 2 MiB / 256 KiB arrays allocated and freed in a loop must fault no page once
the numba backend is up, the largest first (glibc's mmap threshold, frozen by any mallopt
setting, must not map them afresh each time), and the switch and a user's own malloc
settings must leave glibc's default, which re-faults such arrays, alone."""
import os
import platform
import subprocess
import sys

import pytest

from bpnet.backends import heap

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="M_TOP_PAD is glibc's")

FAULTS_SCRIPT = """
import resource, sys
import numpy as np
if {numba!r}:
    from bpnet.backends.numba_backend import NumbaBackend
    NumbaBackend()
from bpnet.backends import heap
worst = 0.0
for size in (8 << 20, 2 << 20, 256 << 10):
    n = size // 4
    for _ in range(5):
        arrays = [np.ones(n, np.float32) for _ in range(4)]
        del arrays
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        arrays = [np.ones(n, np.float32) for _ in range(4)]
        del arrays
    worst = max(worst, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200)
print(heap.keep_heap_top.cache_info().currsize == 1 and heap.keep_heap_top(), worst)
"""


def faults_per_array(numba=True, **env):
    pytest.importorskip("numba")
    clean = {k: v for k, v in os.environ.items() if k not in heap._USER_SETTINGS + ("GLIBC_TUNABLES",
                                                                                    "BPNET_HEAP_PAD")}
    run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT.format(numba=numba)], capture_output=True,
                         text=True, env={**clean, **env}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    padded, faults = run.stdout.split()
    return padded == "True", float(faults)


@needs_glibc
def test_numba_backend_keeps_the_heap_top_and_temporaries_fault_no_pages():
    padded, faults = faults_per_array()
    assert padded and faults < 1.0


@needs_glibc
@pytest.mark.parametrize("env", [{"BPNET_HEAP_PAD": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1048576"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}])
def test_the_switch_and_the_users_own_malloc_settings_are_left_alone(env):
    padded, faults = faults_per_array(**env)
    assert not padded and faults > 10       # glibc's own behaviour: the pages come back


@needs_glibc
def test_without_the_numba_backend_malloc_is_untouched():
    padded, faults = faults_per_array(numba=False)
    assert not padded and faults > 10


@pytest.mark.parametrize("env,set_by_user", [({}, False), ({"MALLOC_TOP_PAD_": "0"}, True),
                                             ({"MALLOC_MMAP_THRESHOLD_": "131072"}, True),
                                             ({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}, True),
                                             ({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, False)])
def test_user_malloc_settings_are_recognised(monkeypatch, env, set_by_user):
    for key in heap._USER_SETTINGS + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert heap.user_set_malloc() is set_by_user
