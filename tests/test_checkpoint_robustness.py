"""Damaged, crafted and unwritable checkpoints: every failure is a CheckpointError naming the file.

The fuzz test cuts and flips bytes of a real checkpoint and requires either a
CheckpointError or a model whose predictions are identical to the original's.
"""
import errno
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpnet
from bpnet.checkpoint import MAX_JSON_DEPTH, json_depth
from bpnet.data import Standardizer
from bpnet.errors import CheckpointError
from bpnet.io import atomic_write_bytes, model_from_bytes

X = np.random.default_rng(0).normal(size=(40, 4))
Y = (X[:, 0] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(bytes of a trained model's checkpoint, its predictions on X)."""
    model = bpnet.Sequential([bpnet.Dense(5), bpnet.BatchNorm1d(), bpnet.ReLU(), bpnet.Dense(2)],
                             seed=1, backend="numpy")
    model.compile(optimizer=bpnet.Adam(lr=0.01))
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    model.preprocessor = Standardizer().fit(X)
    path = tmp_path_factory.mktemp("saved") / "model.npz"
    model.save(path)
    return path.read_bytes(), model.predict(X)


def entries(data: bytes) -> tuple[dict, dict]:
    """(config, arrays) of a checkpoint, read with NumPy (the test's independent reader)."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__config__").tobytes().decode()), arrays


def rewrite(data: bytes, change_config=None, **array_changes) -> bytes:
    """The checkpoint with its config edited by ``change_config`` and arrays replaced (None drops one)."""
    config, arrays = entries(data)
    if change_config is not None:
        change_config(config)
    arrays = {"__config__": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8), **arrays, **array_changes}
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def load_error(data: bytes) -> str:
    with pytest.raises(CheckpointError) as info:
        model_from_bytes(data, "ckpt.npz", backend="numpy")
    assert "ckpt.npz" in str(info.value)
    return str(info.value)


def test_the_fixture_round_trips(saved):
    data, pred = saved
    np.testing.assert_array_equal(model_from_bytes(data, backend="numpy").predict(X), pred)


# --------------------------------------------------------------------------- damaged files
def test_empty_truncated_and_foreign_files(saved):
    data, _ = saved
    assert "is empty (0 bytes)" in load_error(b"")
    for cut in range(1, len(data), 13):          # every 13th length; the fuzz test covers the rest
        message = load_error(data[:cut])
        assert "truncated" in message or "damaged" in message, (cut, message)
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    assert "a single .npy array, not a bpnet checkpoint" in load_error(buf.getvalue())
    assert "not a bpnet checkpoint" in load_error(b"#!/bin/sh\necho hello\n")
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3))
    assert "not a bpnet checkpoint (no __config__ entry)" in load_error(buf.getvalue())


def zip_with(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return buf.getvalue()


def npy_header(descr: str, shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_members_that_are_not_plain_arrays(saved):
    data, _ = saved
    assert "entry 'notes' is not an npy array" in load_error(zip_with({"notes.npy": b"hello, world"}))
    object_array = npy_header("|O", (2,)) + b"\x80\x04N."
    assert "dtype object, not a plain numeric array" in load_error(zip_with({"x.npy": object_array}))
    # a header claiming 40 GB in a tiny file fails before anything is allocated
    huge = npy_header("<f4", (10_000_000_000,)) + b"\0" * 16
    assert "declares 40000000000 bytes of data but the entry holds 16" in load_error(zip_with({"x.npy": huge}))


def test_nested_json_and_bad_config_text(saved):
    data, _ = saved
    deep = "[" * 100_000 + "]" * 100_000
    assert json_depth(deep) == 100_000 and json_depth('{"a": "[[[[", "b": [1, {"c": []}]}') == 4
    message = load_error(rewrite(data, __config__=np.frombuffer(deep.encode(), dtype=np.uint8)))
    assert f"nests 100000 levels deep, more than a model description does ({MAX_JSON_DEPTH})" in message
    assert "(__config__) is damaged" in load_error(rewrite(data, __config__=np.frombuffer(b"{not json", np.uint8)))
    assert "(__config__) is damaged" in load_error(rewrite(data, __config__=np.arange(3.0)))


def edit(path: str, value):
    """A config change that sets the dotted ``path`` to ``value`` (``DELETE`` removes the key)."""
    def change(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


class _Delete:
    def __repr__(self):                 # a stable test id (xdist workers must collect the same names)
        return "DELETE"


DELETE = _Delete()
CRAFTED = [
    ("optimizer.class", "Adamax", "unknown optimizer class 'Adamax' (did you mean 'Adam'?)"),
    ("loss.class", "CrossEntropi", "unknown loss class 'CrossEntropi' (did you mean 'CrossEntropy'?)"),
    ("model.layers.0.class", "Dense2", "unknown layer class 'Dense2' (did you mean 'Dense'?)"),
    ("model.layers.0.class", "__import__", "unknown layer class '__import__'"),
    ("preprocessor.class", "load_digits", "unknown preprocessor class 'load_digits'"),
    ("preprocessor.class", "os", "unknown preprocessor class 'os'"),
    ("optimizer.config.lr_decay", 0.1, "gives Adam the setting 'lr_decay', which it does not take"),
    ("model.layers.0.config.unitz", 3, "gives Dense the setting 'unitz', which it does not take "
                                       "(did you mean 'units'?)"),
    ("optimizer.config", "fast", "'optimizer'.config is str, not an object"),
    ("model.layers", "Dense", "'model.layers' is not a non-empty list of layers"),
    ("optimizer", DELETE, "must both be present or both absent (missing key)"),
    ("model.layers.0.config", DELETE, "lacks ['config'] (missing key)"),
    ("metrics", "accuracy", "'metrics' is 'accuracy', not a list of metric names"),
    ("version", "1", "is '1', not a checkpoint format number (unsupported version)"),
    ("version", 0, "unsupported version"),
    ("version", 99, "format 99, newer than this bpnet reads"),
    ("input_shape", [4.5], "not a list of positive integers"),
    ("input_shape", [10 ** 9], "more inputs than the file's"),
    ("model.layers.0.config.units", "five", "describes a model bpnet cannot rebuild"),
    ("optimizer.config.betas", "0.9", "describes a model bpnet cannot rebuild"),
    ("format", "keras", "its __config__ is not a bpnet model description"),
    ("payload", 1, "the key 'payload' is not part of a bpnet checkpoint"),
]


@pytest.mark.parametrize("path, value, words", CRAFTED, ids=[f"{p}={v!r}"[:40] for p, v, _ in CRAFTED])
def test_crafted_configs(saved, path, value, words):
    data, _ = saved
    assert words in load_error(rewrite(data, edit(path, value)))


def test_missing_and_misshaped_arrays(saved):
    data, _ = saved
    config, arrays = entries(data)
    name = next(k for k in arrays if k.startswith("param/"))
    assert f"no entry {name!r}" in load_error(rewrite(data, **{name: None}))
    assert "has shape (1,) but the model's is" in load_error(rewrite(data, **{name: np.zeros(1)}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10 ** 6)),
       flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10 ** 6), st.integers(0, 7)), max_size=4))
def test_fuzz_cut_and_flipped_checkpoints_fail_cleanly_or_predict_the_same(saved, cut, flips):
    data, pred = saved
    damaged = bytearray(data if cut is None else data[:cut % (len(data) + 1)])
    for pos, bit in flips:
        if damaged:
            damaged[pos % len(damaged)] ^= 1 << bit
    try:
        model = model_from_bytes(bytes(damaged), "fuzz.npz", backend="numpy")
    except CheckpointError as exc:
        assert "fuzz.npz" in str(exc)
        return
    np.testing.assert_array_equal(model.predict(X), pred)


# --------------------------------------------------------------------------- unwritable targets
def test_saving_to_what_is_not_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="empty path"):
        atomic_write_bytes("", b"x")
    with pytest.raises(CheckpointError, match="it is a directory"):
        atomic_write_bytes(tmp_path, b"x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="it is a FIFO"):
        atomic_write_bytes(fifo, b"x")
    with pytest.raises(CheckpointError, match="it is a device"):
        atomic_write_bytes("/dev/null", b"x")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"I am a file")
    with pytest.raises(CheckpointError, match="is part of the path a regular file"):
        atomic_write_bytes(blocker / "sub" / "model.npz", b"x")
    with pytest.raises(CheckpointError, match="empty path"):
        bpnet.Sequential.load("")
    assert sorted(os.listdir(tmp_path)) == ["file", "pipe"] and blocker.read_bytes() == b"I am a file"


def test_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    import bpnet.io

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(bpnet.io.os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="model.npz: the disk is full; the previous file .* is intact"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"] and path.read_bytes() == b"old"


def test_symlinks_are_written_through(tmp_path):
    target = tmp_path / "real" / "model.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_bytes() == b"new"
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(tmp_path / "real" / "future.npz")
    atomic_write_bytes(dangling, b"first")
    assert dangling.is_symlink() and (tmp_path / "real" / "future.npz").read_bytes() == b"first"


def test_the_next_save_removes_what_crashed_saves_left(tmp_path):
    dead = tmp_path / ".tmp-model.npz.999999999.abc123.part"       # pid 999999999 does not run
    alive = tmp_path / f".tmp-model.npz.{os.getppid()}.def456.part"  # a save in progress elsewhere
    other = tmp_path / ".tmp-other.npz.999999999.ghi789.part"      # a crashed save of another path
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "model.npz", b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(["model.npz", alive.name, other.name])


def test_the_directory_is_flushed_after_the_rename(tmp_path, monkeypatch):
    import stat

    import bpnet.io
    flushed, real_fsync = [], os.fsync

    def spy(fd):
        flushed.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)
    monkeypatch.setattr(bpnet.io.os, "fsync", spy)
    atomic_write_bytes(tmp_path / "model.npz", b"new")
    assert flushed == [False, True]          # the file's data, then the directory entry
