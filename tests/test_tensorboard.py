"""The TensorBoard callback: event files written through tensorboardX, read back record by record."""
import glob
import math
import os
import struct
import sys

import numpy as np
import pytest

from bpnet import Adam, Dense, ReLU, Sequential, TensorBoard
from bpnet.errors import MissingDependencyError
from bpnet.data import make_spirals


def read_events(folder):
    """Every Event in a run folder's TFRecord files: uint64 length, 4-byte CRC, payload, 4-byte CRC."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    events = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            events.append(event)
            i += 12 + n + 4
    return events


def scalars(events):
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def histograms(events):
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("histo"):
                out.setdefault(v.tag, []).append((e.step, v.histo))
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    pytest.importorskip("tensorboardX")
    log_dir = tmp_path_factory.mktemp("tb")
    X, y = make_spirals(120, seed=0)
    model = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=Adam(lr=1e-2))
    history = model.fit(X, y, epochs=3, batch_size=30, validation_split=0.25, verbose=0,
                        callbacks=[TensorBoard(log_dir, histogram_freq=1, update_freq=2)])
    return model, history, read_events(log_dir / "train"), read_events(log_dir / "validation")


def test_epoch_scalars_match_the_history(logged):
    _, history, train, val = logged
    s, v = scalars(train), scalars(val)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose([x for _, x in s[f"epoch_{key}"]], history[key], rtol=1e-6)
        np.testing.assert_allclose([x for _, x in v[f"epoch_{key}"]], history[f"val_{key}"], rtol=1e-6)
        assert [step for step, _ in s[f"epoch_{key}"]] == [0, 1, 2]
    np.testing.assert_allclose([x for _, x in s["epoch_learning_rate"]], [1e-2] * 3, rtol=1e-6)


def test_gradient_norms_per_layer_add_up_to_the_total(logged):
    _, _, train, _ = logged
    s = scalars(train)
    assert {"epoch_gradient_norm/layer_0", "epoch_gradient_norm/layer_2", "epoch_gradient_norm/total"} <= set(s)
    # per batch: ‖g‖² of the whole model is the sum over its layers
    batch = {k: dict(s[f"batch_gradient_norm/{k}"]) for k in ("layer_0", "layer_2", "total")}
    assert sorted(batch["total"]) == [0, 2, 4, 6, 8]                     # update_freq=2 over 9 batches
    for step, total in batch["total"].items():
        assert total == pytest.approx(math.hypot(batch["layer_0"][step], batch["layer_2"][step]), rel=1e-5)
        assert total > 0
    assert [step for step, _ in s["batch_loss"]] == [0, 2, 4, 6, 8]


def test_weight_and_activation_histograms(logged):
    model, _, train, _ = logged
    h = histograms(train)
    assert {"weights/0.W", "weights/0.b", "weights/2.W", "weights/2.b", "activations/1_relu"} <= set(h)
    assert [step for step, _ in h["weights/0.W"]] == [0, 1, 2]
    last = h["weights/0.W"][-1][1]                            # the final epoch's weights are the model's
    W = model.parameters()["0.W"].astype(np.float64)
    assert last.num == W.size and last.min == pytest.approx(W.min()) and last.max == pytest.approx(W.max())
    assert last.sum == pytest.approx(W.sum(), rel=1e-5, abs=1e-5)
    relu = h["activations/1_relu"][0][1]
    assert relu.num == 30 * 16 and relu.min == 0.0               # one batch of 30 through 16 ReLU units


def test_missing_tensorboardx_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "bpnet-framework\[tensorboard\]"'):
        TensorBoard(tmp_path)


def test_bad_arguments_are_refused(tmp_path):
    pytest.importorskip("tensorboardX")
    from bpnet import ConfigError
    with pytest.raises(ConfigError, match="histogram_freq"):
        TensorBoard(tmp_path, histogram_freq=-1)
    with pytest.raises(ConfigError, match="update_freq"):
        TensorBoard(tmp_path, update_freq="sometimes")
