"""kill -9 during saves: the checkpoint is always one whole version, and the next save cleans up.

A child process saves a model over and over (its disk made slow by a 20 ms
sleep before each fsync, so kills land mid-write); the test kills it at random
moments, a few times, within a few seconds.
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bpnet

CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import bpnet
    real_fsync = os.fsync
    def slow_fsync(fd):                 # a slow disk: the temporary file lives for a while
        time.sleep(0.05)
        real_fsync(fd)
    os.fsync = slow_fsync
    model = bpnet.Sequential([bpnet.Dense(256), bpnet.ReLU(), bpnet.Dense(4)], seed=0, backend="numpy")
    model.compile(optimizer=bpnet.Adam())
    model.build((128,))
    version = int(sys.argv[2])
    while True:
        model.flat_params[...] = version          # every weight of version k equals k
        model.save(sys.argv[1])
        if version == int(sys.argv[2]):
            print("saved", flush=True)
        version += 1
""")


def temporaries(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".tmp-"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killing_saves_never_leaves_a_broken_checkpoint_or_litter(tmp_path):
    path = tmp_path / "model.npz"
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    rnd = random.Random(0)
    mid_write, start = 0, time.monotonic()
    for kill in range(6):
        child = subprocess.Popen([sys.executable, str(script), str(path), str(1000 * (kill + 1))],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "saved"
        time.sleep(rnd.uniform(0.0, 0.08))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        left = temporaries(tmp_path)
        assert len(left) <= 1 and all(f".tmp-model.npz.{child.pid}." in n for n in left), left
        mid_write += len(left)
        weights = bpnet.Sequential.load(path, backend="numpy").flat_params
        version = weights[0]
        assert version >= 1000 * (kill + 1) and np.all(weights[:256 * 128] == version)   # one whole version
    assert mid_write >= 1                            # some kills did land in the middle of a write
    assert time.monotonic() - start < 30
    model = bpnet.Sequential.load(path, backend="numpy")
    model.save(path)                                 # the next save of the path removes what crashes left
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "saver.py"]
