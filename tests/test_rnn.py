"""The RNN layer: gradient checks, an independent BPTT reference, PyTorch, and the signals through time.

Gradient checks run in float64 on every backend: the input gradient and dW,
dU, db must agree with central differences to a relative error below 1e-6,
for both output modes and sequence lengths from 1 to 33.
"""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import build_layer

from bpnet import (RNN, SGD, ConfigError, CrossEntropy, Dense, Flatten, GradientClipping, Sequential, ShapeError,
                   get_backend, gradcheck, init)
from bpnet.doctor import Monitor, diagnose
from bpnet.history import History

TOL = 1e-6
MAX_EL = 48
SHAPES = [(3, 1, 2, 4), (2, 5, 3, 3), (4, 12, 1, 5), (2, 30, 2, 4), (3, 33, 3, 2)]     # (N, T, F, H)


def _check(layer, x, backend):
    build_layer(layer, x.shape[1:], backend)
    report = gradcheck(layer, x, max_elements=MAX_EL, tol=TOL)
    assert [c.name for c in report.checks] == ["input", "W", "U", "b"]
    for c in report.checks:
        assert c.rel_error < TOL, str(report)
    return report


# --------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}_T{}_F{}_H{}".format(*s))
def test_gradcheck_input_and_every_parameter(backend, shape, return_sequences):
    n, steps, features, units = shape
    x = np.random.default_rng(list(shape)).standard_normal((n, steps, features))
    report = _check(RNN(units, return_sequences=return_sequences), x, backend)
    if steps == 1:                          # h_0 = 0: U never touches the loss
        assert report["U"].analytic == 0.0 and report["U"].numeric == 0.0


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_gradcheck_other_activations(backend, activation):
    x = np.random.default_rng(5).standard_normal((3, 9, 2))
    _check(RNN(4, activation=activation, return_sequences=True), x, backend)


# --------------------------------------------------------------------------- an independent reference
def reference_bptt(x, W, U, b, R, return_sequences):
    """Plain NumPy BPTT, one sample at a time with column vectors and explicit Jacobians.

    h_t = tanh(Wᵀx_t + Uᵀh_{t-1} + b); L = Σ R ⊙ output.  ∂h_t/∂h_{t-1} = diag(1 - h_t²) Uᵀ, so
    ∂L/∂h_{t-1} = r_{t-1} + (diag(1 - h_t²) Uᵀ)ᵀ ∂L/∂h_t, with r_t the direct part of R.
    """
    n, steps, _ = x.shape
    units = U.shape[0]
    out, dx = [], np.zeros_like(x)
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    for i in range(n):
        h = [np.zeros(units)]
        for t in range(steps):
            h.append(np.tanh(W.T @ x[i, t] + U.T @ h[-1] + b))
        direct = [R[i, t] if return_sequences else (R[i] if t == steps - 1 else np.zeros(units))
                  for t in range(steps)]
        out.append(np.stack(h[1:]) if return_sequences else h[-1])
        dh = np.zeros(units)
        for t in range(steps, 0, -1):
            dh = dh + direct[t - 1]
            jac_a = np.diag(1 - h[t] ** 2)                  # ∂h_t/∂a_t
            da = jac_a.T @ dh
            dW += np.outer(x[i, t - 1], da)
            dU += np.outer(h[t - 1], da)
            db += da
            dx[i, t - 1] = W @ da
            dh = (jac_a @ U.T).T @ dh                      # ∂L/∂h_{t-1} through the recurrence
    return np.stack(out), dx, dW, dU, db


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("steps", [1, 7, 31])
def test_forward_and_gradients_match_the_reference(return_sequences, steps):
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((3, steps, 4))
    layer = build_layer(RNN(5, return_sequences=return_sequences, bias_init="normal"), (steps, 4))
    y = layer.forward(x, training=True)
    R = rng.standard_normal(y.shape)
    dx = layer.backward(R)
    p = {k: np.array(v) for k, v in layer.params.items()}
    ref_y, ref_dx, dW, dU, db = reference_bptt(x, p["W"], p["U"], p["b"], R, return_sequences)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-14)
    for got, want in ((dx, ref_dx), (layer.grads["W"], dW), (layer.grads["U"], dU), (layer.grads["b"], db)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_matches_torch_rnn():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 3))
    layer = build_layer(RNN(5, return_sequences=True, bias_init="normal"), (6, 3))
    y = layer.forward(x, training=True)
    R = rng.standard_normal(y.shape)
    dx = layer.backward(R)
    ref = torch.nn.RNN(3, 5, nonlinearity="tanh", batch_first=True).double()
    with torch.no_grad():                       # torch: h_t = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)
        ref.weight_ih_l0.copy_(torch.from_numpy(layer.params["W"].T.copy()))
        ref.weight_hh_l0.copy_(torch.from_numpy(layer.params["U"].T.copy()))
        ref.bias_ih_l0.copy_(torch.from_numpy(layer.params["b"]))
        ref.bias_hh_l0.zero_()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt, _ = ref(xt)
    (yt * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], ref.weight_ih_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["U"], ref.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], ref.bias_ih_l0.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_backends_agree_in_float32(backend):
    x = np.random.default_rng(1).standard_normal((8, 20, 3)).astype(np.float32)
    outs = {}
    for name in ("numpy", backend):
        layer = build_layer(RNN(6, return_sequences=True), (20, 3), name, dtype=np.float32)
        bk = get_backend(name)
        y = layer.forward(bk.asarray(x), training=True)
        dx = layer.backward(bk.asarray(np.ones(y.shape, dtype=np.float32)))
        outs[name] = [bk.to_numpy(a) for a in (y, dx, layer.grads["W"], layer.grads["U"], layer.grads["b"])]
    for a, b in zip(outs["numpy"], outs[backend]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the law behind the failures
@pytest.mark.parametrize("gain", [0.8, 1.5])
def test_gradient_through_time_scales_like_the_spectral_radius_to_the_power_k(gain):
    """Linear recurrence, U = g·Q (Q orthogonal), W orthogonal: each step back multiplies ‖∂L/∂h‖ by g."""
    rng = np.random.default_rng(1)
    steps = 11
    x = rng.standard_normal((1, steps, 6))
    U = gain * init.orthogonal((6, 6), rng, np.float64)
    layer = build_layer(RNN(6, activation="linear", init="orthogonal",
                            recurrent_init=lambda shape, r, dtype: U.astype(dtype)), (steps, 6))
    layer.forward(x, training=True)
    dx = layer.backward(rng.standard_normal((1, 6)))
    assert layer.spectral_radius() == pytest.approx(gain, rel=1e-9)
    norms = {t: np.linalg.norm(g) for t, g in layer.state_grads.items()}
    assert set(norms) == {1, 6, 11}
    assert norms[1] / norms[11] == pytest.approx(gain ** 10, rel=1e-9)
    assert norms[6] / norms[11] == pytest.approx(gain ** 5, rel=1e-9)
    # dx_t = δ_t Wᵀ with W orthogonal keeps the norm, so the input gradient shows the same law
    assert np.linalg.norm(dx[0, 0]) / np.linalg.norm(dx[0, -1]) == pytest.approx(gain ** 10, rel=1e-9)


def test_tanh_state_gradients_are_the_product_of_the_step_jacobians():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 3))
    layer = build_layer(RNN(4), (8, 3))
    layer.forward(x, training=True)
    dy = rng.standard_normal((2, 4))
    layer.backward(dy)
    _, hs = layer.cache
    g = dy
    for t in range(8, 1, -1):
        g = (g * (1 - hs[t] ** 2)) @ layer.params["U"].T
    np.testing.assert_allclose(layer.state_grads[1], g, rtol=1e-12)
    assert layer.state_grads[8] is dy


# --------------------------------------------------------------------------- in a model
def _model(**kw):
    return Sequential([RNN(5, **kw), Dense(3)], seed=0, dtype="float64", backend="numpy")


@pytest.mark.parametrize("return_sequences", [False, True])
def test_sequential_gradcheck_through_cross_entropy(return_sequences):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 2))
    layers = [RNN(5, return_sequences=return_sequences)] + ([Flatten()] if return_sequences else []) + [Dense(3)]
    model = Sequential(layers, seed=0, dtype="float64", backend="numpy")
    report = gradcheck(model, x, rng.integers(0, 3, 4), loss=CrossEntropy(), max_elements=MAX_EL, tol=TOL)
    assert [c.name for c in report.checks] == ["input", "0.W", "0.U", "0.b"] + \
        [f"{len(layers) - 1}.W", f"{len(layers) - 1}.b"]
    assert report.max_rel_error < TOL, str(report)


def test_first_layer_skips_dx_and_keeps_the_same_parameter_gradients():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2))
    layer = build_layer(RNN(4), (5, 2))
    dy = rng.standard_normal((3, 4))
    layer.forward(x, training=True)
    dx = layer.backward(dy)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.needs_input_grad = False
    layer.forward(x, training=True)
    assert layer.backward(dy) is None and dx.shape == x.shape
    for k in grads:
        np.testing.assert_array_equal(layer.grads[k], grads[k])


def test_save_load_summary_and_trace(tmp_path):
    x = np.random.default_rng(5).standard_normal((6, 7, 2))
    model = _model(return_sequences=False)
    model.compile(loss="cross_entropy", optimizer=SGD(lr=0.1))
    model.build((7, 2))
    path = tmp_path / "rnn.npz"
    model.save(path)
    loaded = Sequential.load(path, backend="numpy")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    text = model.summary(print_fn=None)
    assert "RNN" in text and f"{2 * 5 + 5 * 5 + 5:>10,}" in text           # W, U, b
    seq = Sequential([RNN(5, return_sequences=True), Flatten(), Dense(3)], seed=0, backend="numpy")
    seq.build((7, 2))
    assert seq.layers[0].output_shape == (7, 5)
    assert "('batch', 7, 5)" in seq.summary(print_fn=None)
    act = model.memory_estimate(32)["activations"]         # 2 x (input 7·2, states 8·5, logits 3) x 8 bytes
    assert act == 2 * 32 * (7 * 2 + 8 * 5 + 3) * 8
    rows = model.trace(x, print_fn=None)
    assert [r["shape"] for r in rows] == [(6, 7, 2), (6, 5), (6, 3)]
    assert rows[1]["max"] <= 1.0 and rows[1]["min"] >= -1.0                 # tanh states


def test_bad_input_gets_a_clear_error():
    layer = build_layer(RNN(4), (5, 3))
    with pytest.raises(ShapeError, match=r"expected input of shape \(batch, steps, 3\).*\(2, 5, 2\)"):
        layer.forward(np.zeros((2, 5, 2)))
    with pytest.raises(ShapeError, match="(N, T, F)"):
        layer.forward(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"\(batch, steps, features\).*x\[\.\.\., None\]"):
        Sequential([RNN(4), Dense(2)]).build((5,))
    with pytest.raises(ConfigError, match="activation"):
        RNN(4, activation="sigmoid")
    with pytest.raises(ConfigError, match="units"):
        RNN(0)
    with pytest.raises(ConfigError, match=r"RNN\(units=\.\.\.\) must be a whole number, got 2\.5"):
        RNN(2.5)                                       # not silently 2 units, as Dense refuses it too
    with pytest.raises(ConfigError, match="unknown initializer"):
        RNN(3, recurrent_init="orthogonl")


# --------------------------------------------------------------------------- the doctor's signals
def _sequences(n=256, steps=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, steps, 3)).astype(np.float32)
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)


def _fit(recurrent_init, activation="tanh", epochs=2, callbacks=()):
    X, y = _sequences()
    model = Sequential([RNN(8, activation=activation, recurrent_init=recurrent_init), Dense(2)], seed=0,
                       backend="numpy")
    model.compile(loss="cross_entropy", optimizer=SGD(lr=0.01))
    history = model.fit(X, y, epochs=epochs, batch_size=32, verbose=0,
                        callbacks=[Monitor(every=1), *callbacks])
    return model, history


def test_monitor_records_state_gradients_and_spectral_radius():
    model, history = _fit("orthogonal")
    rec = history.steps[0]
    assert rec["seq_len/0"] == 20
    assert rec["spectral_radius/0"] == pytest.approx(1.0, abs=1e-6)          # orthogonal U at step 0
    layer = model.layers[0]
    last = history.steps[-1]
    for probe, t in (("first", 1), ("middle", 10), ("last", 20)):
        assert last[f"dh_norm/0/{probe}"] == pytest.approx(float(np.linalg.norm(layer.state_grads[t])), rel=1e-6)
    assert {"dh_norm/0/first", "dh_norm/0/middle", "dh_norm/0/last"} <= set(rec)
    assert not {f.code for f in diagnose(history, model=model)} & {"VANISHING_THROUGH_TIME",
                                                                     "EXPLODING_THROUGH_TIME"}


def test_doctor_names_vanishing_through_time_with_the_spectral_radius():
    model, history = _fit(lambda shape, rng, dtype: init.normal(shape, rng, dtype, std=0.02))
    f = next(f for f in diagnose(history, model=model) if f.code == "VANISHING_THROUGH_TIME")
    ev = f.evidence
    rho = ev["spectral_radius_start"]
    assert rho < 0.1 and ev["steps"] == 20 and f.where == "layer 0"
    assert ev["ratio_first_to_last"] < 1e-5 and ev["dh_norm"]["first"] < 1e-5 * ev["dh_norm"]["last"]
    # tanh' <= 1: each step back shrinks by at most ‖U‖₂ (here the ratio is far below even ρ^19)
    assert ev["ratio_first_to_last"] < rho ** 10
    assert "vanishing through time" in f.message and "orthogonal" in f.remedy


def test_doctor_names_exploding_through_time_and_clipping_is_the_remedy():
    grow = lambda shape, rng, dtype: init.orthogonal(shape, rng, dtype, gain=1.5)  # noqa: E731
    model, history = _fit(grow, activation="linear", epochs=1, callbacks=[GradientClipping(5.0)])
    f = next(f for f in diagnose(history, model=model) if f.code == "EXPLODING_THROUGH_TIME")
    ev = f.evidence
    assert ev["spectral_radius_start"] == pytest.approx(1.5, rel=1e-6)
    assert ev["ratio_at_start"] == pytest.approx(1.5 ** 19, rel=1e-4)       # linear: exactly ρ^(T-1)
    assert ev["per_step_factor"] == pytest.approx(1.5, rel=1e-4) or ev["ratio_recent"] > ev["ratio_at_start"]
    assert "GradientClipping" in f.remedy and "exploding through time" in f.message


def test_through_time_rule_on_a_handmade_history():
    h = History()
    h.steps = [{"step": i, "loss": 1.0, "seq_len/0": 40, "spectral_radius/0": 0.3, "dh_norm/0/first": 1e-12,
                "dh_norm/0/middle": 1e-6, "dh_norm/0/last": 1.0} for i in range(6)]
    (f,) = [f for f in diagnose(h) if f.code.endswith("THROUGH_TIME")]
    assert f.code == "VANISHING_THROUGH_TIME" and f.evidence["per_step_factor"] == pytest.approx(
        1e-12 ** (1 / 39), rel=1e-9)
    for r in h.steps[:3]:                    # vanished only once learnt (states that latch): not reported
        r["dh_norm/0/first"] = 0.1
    assert not [f for f in diagnose(h) if f.code.endswith("THROUGH_TIME")]
    h.steps[0]["dh_norm/0/first"] = math.inf          # one exploded record at the start is enough
    assert [f.code for f in diagnose(h) if f.code.endswith("THROUGH_TIME")] == ["EXPLODING_THROUGH_TIME"]


def test_example_08_rnn_by_hand(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "08_rnn_by_hand.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    norms = [float(v) for v in re.findall(r"^ +\d+ +(\S+e[+-]\d+)", out, re.M)]
    assert len(norms) == 8 and norms[-1] < norms[0]              # ∂L/∂h_t for t = 8..1, shrinking
    assert float(re.search(r"max \|difference\| = (\S+)", out).group(1)) < 1e-12
    errors = [float(e) for e in re.findall(r"^(?:input|W|U|b) +(\S+)", out, re.M)]
    assert len(errors) == 4 and max(errors) < 1e-6
    verdicts = re.findall(r"gain (\S+) +ρ\(U\) = (\S+) +ratio (\S+) +(\w+)", out)
    assert [(g, v) for g, _, _, v in verdicts] == [("0.5", "vanishing"), ("1.0", "kept"), ("3.0", "exploding")]
    assert all(float(rho) == pytest.approx(float(g), abs=0.01) for g, rho, _, _ in verdicts)


class _ForgotTanhPrime(RNN):
    """A BPTT slip: δ_t = g_t, as if tanh' were 1."""

    def _phi_grad(self, h):
        return 1


def test_a_bptt_bug_fails_the_gradient_check_and_check_gradients_names_the_layer():
    from bpnet import GradcheckError
    from bpnet.doctor.gradients import check_gradients
    x = np.random.default_rng(6).standard_normal((3, 6, 2))
    with pytest.raises(GradcheckError, match="gradient check failed"):
        gradcheck(build_layer(_ForgotTanhPrime(4), (6, 2)), x)
    y = np.array([0, 1, 2])
    good = Sequential([RNN(4), Dense(3)], seed=0, backend="numpy")
    good.compile(loss="cross_entropy", optimizer=SGD(lr=0.1))
    good.build((6, 2))
    assert check_gradients(good, x, y) == []
    bad = Sequential([_ForgotTanhPrime(4), Dense(3)], seed=0, backend="numpy")
    bad.compile(loss="cross_entropy", optimizer=SGD(lr=0.1))
    bad.build((6, 2))
    (f,) = check_gradients(bad, x, y)
    assert f.code == "WRONG_GRADIENT" and f.where == "layer 0" and f.evidence["rel_error"] > 1e-2


@pytest.mark.parametrize("make", ["orthogonal x 1.5", "gaussian", "small"])
def test_monitor_estimates_the_spectral_radius_of_a_large_U(make):
    from bpnet.doctor.through_time import spectral_radius
    rng = np.random.default_rng(7)
    U = {"orthogonal x 1.5": 1.5 * init.orthogonal((160, 160), rng, np.float64),
         "gaussian": rng.standard_normal((160, 160)) / np.sqrt(160),
         "small": 0.02 * rng.standard_normal((160, 160))}[make]
    layer = build_layer(RNN(160, recurrent_init=lambda shape, r, dtype: U.astype(dtype)), (3, 2))
    exact = layer.spectral_radius()
    assert spectral_radius(layer) == pytest.approx(exact, rel=0.05)
