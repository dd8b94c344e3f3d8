"""Optimizers and gradient clipping against independent reimplementations of PyTorch's documented rules.

The references below are scalar loops over a plain Python list, written from
the update rules in PyTorch's documentation (torch.optim.SGD, Adam, AdamW,
RMSprop; torch.nn.utils.clip_grad_norm_), not from bpnet's code.  Gradients are
a fixed non-linear function of the parameters, so any error in an update
compounds over the 20 steps.
"""
import math

import numpy as np
import pytest

from bpnet import (SGD, Adam, AdamW, ConfigError, Dense, NonFiniteError, NotBuiltError, RMSProp, Sequential,
                   Tanh, clip_grad_norm, clip_grad_value)
from bpnet.backends import get_backend
from bpnet.optim import get_optimizer

STEPS = 20


def grad_fn(p, step):
    """∂/∂p of a double-well potential plus a step-dependent tilt (bounded trajectories)."""
    return [x ** 3 - x + 0.3 * math.cos(step + 0.7 * i) for i, x in enumerate(p)]


def lr_schedule(lr, step):
    """The lr used at ``step``: reassigned (cut by 10) half way through."""
    return lr if step < STEPS // 2 else lr / 10


# --------------------------------------------------------------------------- references (PyTorch docs)
def ref_sgd(p, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p, b = list(p), [0.0] * len(p)
    out = []
    for t in range(STEPS):
        g, eta = grad_fn(p, t), lr_schedule(lr, t)
        for i in range(len(p)):
            gi = g[i] + weight_decay * p[i]
            if momentum:
                b[i] = gi if t == 0 else momentum * b[i] + gi      # dampening 0
                gi = gi + momentum * b[i] if nesterov else b[i]
            p[i] -= eta * gi
        out.append(list(p))
    return out


def ref_adam(p, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    p, m, v = list(p), [0.0] * len(p), [0.0] * len(p)
    out = []
    for t in range(1, STEPS + 1):
        g, eta = grad_fn(p, t - 1), lr_schedule(lr, t - 1)
        for i in range(len(p)):
            gi = g[i]
            if decoupled:
                p[i] = p[i] - eta * weight_decay * p[i]          # AdamW: θ ← θ - γλθ
            else:
                gi = gi + weight_decay * p[i]                     # Adam: g ← g + λθ
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            p[i] -= eta * m_hat / (math.sqrt(v_hat) + eps)
        out.append(list(p))
    return out


def ref_rmsprop(p, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    p, v, b = list(p), [0.0] * len(p), [0.0] * len(p)
    out = []
    for t in range(STEPS):
        g, eta = grad_fn(p, t), lr_schedule(lr, t)
        for i in range(len(p)):
            gi = g[i] + weight_decay * p[i]
            v[i] = alpha * v[i] + (1 - alpha) * gi * gi
            if momentum > 0:
                b[i] = momentum * b[i] + gi / (math.sqrt(v[i]) + eps)
                p[i] -= eta * b[i]
            else:
                p[i] -= eta * gi / (math.sqrt(v[i]) + eps)
        out.append(list(p))
    return out


# --------------------------------------------------------------------------- driving bpnet
def small_model(backend, dtype="float64", seed=0):
    model = Sequential([Dense(3, init="xavier_uniform"), Tanh(), Dense(2)], seed=seed, dtype=dtype,
                       backend=backend)
    model.build((2,))
    rng = np.random.default_rng(seed + 100)
    for arr in model.parameters().values():
        arr[...] = model.backend.asarray(rng.uniform(-1.0, 1.0, arr.shape), dtype=arr.dtype)
    return model


def host(model, a):
    return model.backend.to_numpy(a)


def get_vector(model):
    return np.concatenate([host(model, a).astype(np.float64).ravel() for a in model.parameters().values()])


def set_grads(model, values):
    values = np.asarray(values)
    start = 0
    for arr in model.gradients().values():
        arr[...] = model.backend.asarray(values[start:start + arr.size].reshape(arr.shape), dtype=arr.dtype)
        start += arr.size


def run_bpnet(model, opt, steps=STEPS, first=0):
    """Steps with synthetic gradients; lr reassigned on the optimizer half way through."""
    opt.bind(model)
    base_lr = opt.lr if first == 0 else opt.base_lr
    opt.base_lr = base_lr
    traj = []
    for t in range(first, first + steps):
        opt.lr = lr_schedule(base_lr, t)
        set_grads(model, grad_fn(get_vector(model).tolist(), t))
        opt.step()
        traj.append(get_vector(model))
    return np.array(traj)


CASES = [
    ("sgd", dict(lr=0.1), lambda p: ref_sgd(p, 0.1)),
    ("sgd_wd", dict(lr=0.1, weight_decay=0.1), lambda p: ref_sgd(p, 0.1, weight_decay=0.1)),
    ("momentum", dict(lr=0.05, momentum=0.9), lambda p: ref_sgd(p, 0.05, momentum=0.9)),
    ("nesterov_wd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     lambda p: ref_sgd(p, 0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.05), lambda p: ref_adam(p, 0.05)),
    ("adam_l2", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     lambda p: ref_adam(p, 0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adamw", dict(lr=0.05, weight_decay=0.1), lambda p: ref_adam(p, 0.05, weight_decay=0.1, decoupled=True)),
    ("rmsprop", dict(lr=0.01), lambda p: ref_rmsprop(p, 0.01)),
    ("rmsprop_mom_wd", dict(lr=0.01, alpha=0.9, momentum=0.9, weight_decay=0.05),
     lambda p: ref_rmsprop(p, 0.01, alpha=0.9, momentum=0.9, weight_decay=0.05)),
]
OPT_CLASSES = {"sgd": SGD, "sgd_wd": SGD, "momentum": SGD, "nesterov_wd": SGD, "adam": Adam, "adam_l2": Adam,
               "adamw": AdamW, "rmsprop": RMSProp, "rmsprop_mom_wd": RMSProp}


@pytest.mark.parametrize("name, kwargs, reference", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_pytorch_rule(backend, name, kwargs, reference):
    model = small_model(backend)
    p0 = get_vector(model)
    traj = run_bpnet(model, OPT_CLASSES[name](**kwargs))
    expected = np.array(reference(p0.tolist()))
    np.testing.assert_allclose(traj, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(traj[-1] - p0).max() > 0.05              # the parameters really moved
    if name in ("adam", "adamw", "rmsprop"):
        # the lr cut at step 10 must take effect: a run that keeps the first lr ends elsewhere
        unscheduled = OPT_CLASSES[name](**kwargs)
        m2 = small_model(backend)
        unscheduled.bind(m2)
        for t in range(STEPS):
            set_grads(m2, grad_fn(get_vector(m2).tolist(), t))
            unscheduled.step()
        assert np.abs(get_vector(m2) - traj[-1]).max() > 1e-3


@pytest.mark.parametrize("name, kwargs, reference", CASES[2:8:2], ids=[c[0] for c in CASES[2:8:2]])
def test_trajectory_float32(backend, name, kwargs, reference):
    model = small_model(backend, dtype="float32")
    p0 = get_vector(model)
    traj = run_bpnet(model, OPT_CLASSES[name](**kwargs))
    assert model.flat_params.dtype == np.float32
    np.testing.assert_allclose(traj, np.array(reference(p0.tolist())), rtol=2e-4, atol=2e-5)


def test_padding_of_flat_buffer_stays_zero(backend):
    model = small_model(backend)
    run_bpnet(model, AdamW(lr=0.05, weight_decay=0.1))
    params = get_vector(model)
    flat = host(model, model.flat_params)
    assert flat.size > params.size                # there is alignment padding ...
    # ... and the update leaves it at zero: the buffer holds no non-zero beyond the parameters
    assert np.count_nonzero(flat) == np.count_nonzero(params) == params.size


@pytest.mark.parametrize("name, kwargs", [(c[0], c[1]) for c in CASES if c[0] in
                                          ("nesterov_wd", "adam_l2", "adamw", "rmsprop_mom_wd")])
def test_state_dict_round_trip_continues_identically(backend, name, kwargs):
    model = small_model(backend)
    opt = OPT_CLASSES[name](**kwargs)
    run_bpnet(model, opt, steps=7)
    state = opt.state_dict()
    assert int(state["t"]) == 7
    assert set(state) == {"t", "lr"} | set(opt.state_names)
    saved_params = model.flat_params.copy()      # on the model's device

    # a fresh model and optimizer restored from the snapshot ...
    clone = small_model(backend, seed=5)
    clone.flat_params[...] = saved_params
    opt2 = OPT_CLASSES[name](**kwargs)
    opt2.bind(clone)
    opt2.load_state_dict(state)
    opt2.base_lr = opt.base_lr
    assert opt2.t == 7 and opt2.lr == opt.lr
    # ... continues exactly like the original (both keep training side by side)
    a = run_bpnet(model, opt, steps=13, first=7)
    b = run_bpnet(clone, opt2, steps=13, first=7)
    np.testing.assert_array_equal(a, b)
    reference = {c[0]: c[2] for c in CASES}[name]
    expected = np.array(reference(get_vector(small_model(backend)).tolist()))    # uninterrupted run
    np.testing.assert_allclose(b[-1], expected[-1], rtol=1e-10, atol=1e-12)


def test_state_dict_loaded_before_the_model_is_built(backend):
    """Binding to an unbuilt model and loading a state dict used to fail with a bare
    AttributeError (no flat_params yet); the state now waits and the first step picks it up."""
    model = small_model(backend)
    opt = Adam(lr=0.05)
    run_bpnet(model, opt, steps=3)
    state = opt.state_dict()
    clone = Sequential([Dense(3), Tanh(), Dense(2)], seed=9, dtype="float64", backend=backend)
    opt2 = Adam(lr=0.05).bind(clone)
    opt2.load_state_dict(state)
    opt2.base_lr = opt.base_lr
    clone.build((2,))
    clone.flat_params[...] = model.flat_params
    np.testing.assert_array_equal(run_bpnet(clone, opt2, steps=4, first=3),
                                  run_bpnet(model, opt, steps=4, first=3))
    assert opt2.t == 7 and type(opt2.state["m"]) is type(model.flat_params)


def test_state_dict_is_a_snapshot(backend):
    """Training after state_dict() must not change the snapshot."""
    model = small_model(backend)
    opt = Adam(lr=0.05)
    run_bpnet(model, opt, steps=3)
    state = opt.state_dict()
    m_before = state["m"].copy()
    run_bpnet(model, opt, steps=3, first=3)
    np.testing.assert_array_equal(state["m"], m_before)
    assert isinstance(state["m"], np.ndarray)     # host NumPy, ready for np.savez


def test_optimizer_errors():
    with pytest.raises(ConfigError, match=r"SGD\(lr=...\) must be positive, got 0.0"):
        SGD(lr=0)
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ConfigError):
        SGD(lr=0.1, momentum=1.0)
    with pytest.raises(ConfigError):
        Adam(betas=(1.0, 0.9))
    with pytest.raises(ConfigError):
        Adam(weight_decay=-1)
    for bad in (dict(alpha=1.5), dict(alpha=-0.1), dict(eps=0.0), dict(momentum=1.0)):
        with pytest.raises(ConfigError, match="RMSProp"):      # alpha=1.5 made square_avg negative (NaN steps)
            RMSProp(**bad)
    with pytest.raises(NotBuiltError, match="not attached"):
        Adam().step()
    with pytest.raises(ConfigError, match="unknown optimizer 'adamax'"):
        get_optimizer("adamax")
    assert isinstance(get_optimizer("rmsprop"), RMSProp)
    assert get_optimizer("AdamW").weight_decay == 0.01          # PyTorch's AdamW default


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_numpy_scalar_lr_updates_like_a_python_float(backend, name):
    """``opt.lr = np.float64(...)`` (e.g. ``lr * np.exp(-0.1)``) is stored as a Python float,
    so a float32 model is updated in float32 by every backend; a NumPy float64 scalar used
    to promote the NumPy reference's whole update to float64 and round it differently."""
    params = []
    for lr in (0.05, np.float64(0.05)):
        model = small_model(backend, dtype="float32")
        opt = get_optimizer(name).bind(model)
        opt.lr = lr
        assert type(opt.lr) is float
        set_grads(model, np.linspace(-1.0, 1.0, model.flat_grads.size))
        opt.step()
        params.append(host(model, model.flat_params).copy())
    np.testing.assert_array_equal(params[0], params[1])


# --------------------------------------------------------------------------- clipping
def grads_of(model):
    return np.concatenate([host(model, g).astype(np.float64).ravel() for g in model.gradients().values()])


@pytest.mark.parametrize("max_norm", [0.5, 3.0])
def test_clip_grad_norm_on_model(backend, max_norm):
    model = small_model(backend)
    g = np.random.default_rng(1).normal(0, 2.0, grads_of(model).size)
    set_grads(model, g)
    norm = clip_grad_norm(model, max_norm)
    assert norm == pytest.approx(np.sqrt((g ** 2).sum()), rel=1e-12)          # the pre-clip norm
    after = grads_of(model)
    assert np.linalg.norm(after) == pytest.approx(max_norm, rel=1e-6)
    np.testing.assert_allclose(after, g * max_norm / (norm + 1e-6), rtol=1e-12)   # direction kept


def test_clip_grad_norm_leaves_small_gradients_alone(backend):
    model = small_model(backend)
    g = np.random.default_rng(2).normal(0, 0.1, grads_of(model).size)
    set_grads(model, g)
    norm = clip_grad_norm(model, max_norm=10.0)
    assert norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    np.testing.assert_array_equal(grads_of(model), g)


def test_clip_grad_norm_on_layer_and_arrays():
    layer = Dense(4)
    layer.forward(np.ones((2, 3)))
    layer.grads["W"][...] = 3.0                # 12 elements of 3 and 4 of 4: norm √(108 + 64)
    layer.grads["b"][...] = 4.0
    norm = clip_grad_norm(layer, 1.0)
    assert norm == pytest.approx(math.sqrt(172.0), rel=1e-12)
    total = math.sqrt((layer.grads["W"] ** 2).sum() + (layer.grads["b"] ** 2).sum())
    assert total == pytest.approx(1.0, rel=1e-6)
    assert layer.grads["W"][0, 0] == pytest.approx(3.0 / (math.sqrt(172.0) + 1e-6), rel=1e-12)

    arrays = [np.array([3.0, 0.0]), np.array([[0.0, 4.0]])]
    assert clip_grad_norm(arrays, 2.5) == pytest.approx(5.0)
    np.testing.assert_allclose(arrays[0], [1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(arrays[1], [[0.0, 2.0]], rtol=1e-6)
    d = {"a": np.array([6.0, 8.0])}
    assert clip_grad_norm(d, 5.0) == pytest.approx(10.0)
    np.testing.assert_allclose(d["a"], [3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_nonfinite(backend, bad):
    model = small_model(backend)
    g = np.ones(grads_of(model).size)
    g[3] = bad
    set_grads(model, g)
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        clip_grad_norm(model, 1.0, error_if_nonfinite=True)
    norm = clip_grad_norm(model, 1.0)
    assert math.isnan(norm) if np.isnan(bad) else norm == math.inf
    for target in ([np.array([1.0, bad])], [np.array([1.0]), np.array([bad])]):
        assert not math.isfinite(clip_grad_norm(target, 1.0))
        with pytest.raises(NonFiniteError):
            clip_grad_norm(target, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_at_the_limit_follows_pytorchs_rule_on_every_backend(backend, dtype):
    """‖g‖ = 5 = max_norm: PyTorch still multiplies by 5 / (5 + 1e-6) < 1, and so
    does every backend (the numba kernel used to test ‖g‖ > max_norm instead)."""
    bk = get_backend(backend)
    g = bk.asarray(np.array([3.0, 4.0], dtype))
    assert bk.clip_norm_(g, 5.0) == pytest.approx(5.0, rel=1e-12)
    want = (np.array([3.0, 4.0], dtype) * dtype(5.0 / (5.0 + 1e-6))).astype(dtype)
    np.testing.assert_array_equal(bk.to_numpy(g), want)
    assert bk.to_numpy(g)[1] < 4.0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_with_a_nonfinite_norm_leaves_the_gradients_alone(backend, bad):
    """A factor max_norm / (inf + 1e-6) = 0 would zero every finite gradient and make
    the Inf a NaN; the flat-buffer clip leaves them as they are, like the list path."""
    bk = get_backend(backend)
    g = bk.asarray(np.array([3.0, bad, -4.0], np.float32))
    norm = bk.clip_norm_(g, 1.0)
    assert not math.isfinite(norm)
    np.testing.assert_array_equal(bk.to_numpy(g), np.array([3.0, bad, -4.0], np.float32))


def test_clip_refuses_negative_limits():
    """A negative max_norm used to scale the gradients by a negative factor (an ascent step), and a
    negative clip_value clamped every gradient to -|clip_value|."""
    model = small_model("numpy")
    set_grads(model, np.ones(grads_of(model).size))
    with pytest.raises(ConfigError, match="max_norm must be >= 0"):
        clip_grad_norm(model, -1.0)
    with pytest.raises(ConfigError, match="clip_value must be >= 0"):
        clip_grad_value(model, -0.5)
    np.testing.assert_array_equal(grads_of(model), 1.0)


def test_clip_grad_value(backend):
    model = small_model(backend)
    g = np.random.default_rng(3).normal(0, 1.0, grads_of(model).size)
    set_grads(model, g)
    clip_grad_value(model, 0.5)
    np.testing.assert_array_equal(grads_of(model), np.clip(g, -0.5, 0.5))
    arrays = [np.array([-3.0, 0.2, 7.0])]
    clip_grad_value(arrays, 1.0)
    np.testing.assert_array_equal(arrays[0], [-1.0, 0.2, 1.0])


def test_clip_then_step_in_a_training_loop(backend):
    """The hand-written loop of the docs: forward, loss, backward, clip, step, with real gradients."""
    from bpnet import CrossEntropy
    model = small_model(backend)
    opt = SGD(lr=0.5).bind(model)
    loss_fn = CrossEntropy()
    loss_fn.backend = model.backend
    x = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
    y = np.array([0, 1, 1])
    before = model.flat_params.copy()
    out = model.forward(x, training=True)
    loss_fn.forward(out, model.backend.asarray(y))
    model.backward(loss_fn.backward())
    raw = host(model, model.flat_grads).copy()
    norm = clip_grad_norm(model, 0.1)
    assert norm == pytest.approx(np.linalg.norm(raw), rel=1e-12) and norm > 0.1
    opt.step()
    np.testing.assert_allclose(host(model, model.flat_params), host(model, before) - 0.5 * raw * 0.1 / (norm + 1e-6),
                               rtol=1e-12)
