"""Each activation layer owns its maths: f and dz are code in the class.

* every activation's dz (dy ⊙ f', f' read from y) matches central differences
  of its own f, in float64;
* the fused Numba (and, with a GPU, CUDA) kernels selected by a layer's code
  agree with the layer's own f and dz, for every code in the table;
* an activation a user writes (f and dz only, no kernel code) gradchecks and
  trains on numpy and numba, and gives the same numbers on both.
"""
import numpy as np
import pytest
from conftest import BACKENDS, build_layer

from bpnet import CrossEntropy, Dense, SGD, Sequential, gradcheck, get_backend
from bpnet.kernels.activation_codes import ACT_CODES
from bpnet.layers import ACTIVATION_LAYERS, Activation, ReLU
from bpnet.layers.fused import DenseActivation, fuse_dense_activation

LAYERS = sorted(set(ACTIVATION_LAYERS.values()), key=lambda cls: cls.__name__)
ALPHA = {"leaky_relu": 0.1, "elu": 0.7}


def make(cls):
    layer = cls(ALPHA[cls.kind]) if cls.kind in ALPHA else cls()
    layer.alpha = ALPHA.get(cls.kind, layer.alpha)
    return layer


class Softsign(Activation):
    """A user's activation: y = z / (1 + |z|); f'(z) = 1/(1 + |z|)² = (1 - |y|)²."""

    def f(self, xp, z):
        return z / (1 + xp.abs(z))

    def dz(self, xp, y, dy):
        return dy * (1 - xp.abs(y)) ** 2


def away_from_kink(rng, shape):
    return rng.uniform(0.05, 3.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


@pytest.mark.parametrize("cls", LAYERS + [Softsign], ids=lambda c: c.__name__)
def test_dz_is_the_derivative_of_f(cls):
    """dz(y, 1) = f'(z) against (f(z+h) - f(z-h)) / 2h; relative error < 1e-7 in float64."""
    act = make(cls)
    z = away_from_kink(np.random.default_rng(0), (7, 9))
    h = 1e-6
    numeric = (act.f(np, z + h) - act.f(np, z - h)) / (2 * h)
    analytic = act.dz(np, act.f(np, z), np.ones_like(z))
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-7, (cls.__name__, rel)
    dy = np.random.default_rng(1).standard_normal(z.shape)   # and dz is dy ⊙ f'
    np.testing.assert_allclose(act.dz(np, act.f(np, z), dy), dy * analytic, rtol=1e-14, atol=0)


def test_every_kernel_code_has_a_layer_and_back():
    assert sorted(cls.code for cls in LAYERS) == sorted(ACT_CODES.values())
    for cls in LAYERS:
        assert ACT_CODES[cls.kind] == cls.code
    assert Softsign.code is None and Softsign.kind == "softsign"

    class MyReLU(ReLU):                 # overrides the maths: no kernel may stand in for it
        def f(self, xp, z):
            return xp.maximum(z, 0) * 2
    assert MyReLU.code is None and MyReLU.kind == "myrelu"

    class NamedReLU(ReLU):              # the same maths: still ReLU's kernel and kind
        pass
    assert NamedReLU.code == ACT_CODES["relu"] and NamedReLU.kind == "relu"


KERNEL_BACKENDS = [b for b in ("numba", "cupy") if b in BACKENDS]


@pytest.mark.skipif(not KERNEL_BACKENDS, reason="neither Numba nor CuPy is available")
@pytest.mark.parametrize("kind", sorted(ACT_CODES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernels_agree_with_the_layers_own_code(kind, dtype):
    act = make(ACTIVATION_LAYERS[kind])
    rng = np.random.default_rng(2)
    z = (3 * rng.standard_normal((19, 23))).astype(dtype)
    b = rng.standard_normal(23).astype(dtype)
    dy = rng.standard_normal(z.shape).astype(dtype)
    y_ref = act.f(np, z + b)
    dz_ref = act.dz(np, y_ref, dy)
    rtol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    for name in KERNEL_BACKENDS:
        bk = get_backend(name)
        y = bk.to_host(bk.bias_activation_forward(act, bk.asarray(z.copy()), bk.asarray(b)))
        assert y.dtype == dtype
        np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol * np.abs(y_ref).max())
        y2 = bk.to_host(bk.activation_forward(act, bk.asarray(z + b)))
        np.testing.assert_allclose(y2, y_ref, rtol=rtol, atol=rtol * np.abs(y_ref).max())
        d = bk.to_host(bk.activation_backward(act, bk.asarray(y_ref), bk.asarray(dy)))
        np.testing.assert_allclose(d, dz_ref, rtol=rtol, atol=rtol * np.abs(dz_ref).max())


@pytest.mark.parametrize("name", [b for b in ("numpy", "numba") if b in BACKENDS] + ["cupy"])
def test_user_activation_gradchecks_on_every_backend(name):
    if name not in BACKENDS:
        pytest.skip(f"backend {name!r} is not available here")
    x = np.random.default_rng(3).standard_normal((5, 4))
    layer = build_layer(Softsign(), (4,), name)
    report = gradcheck(layer, x, tol=1e-6)
    assert report.passed and report["input"].rel_error < 1e-6
    # the fused Dense + Softsign step of a model, input and parameters
    model = Sequential([Dense(6), Softsign(), Dense(3)], seed=0, backend=name, dtype="float64")
    model.build((4,))
    assert [type(s) for s in fuse_dense_activation(model.layers)] == [DenseActivation, Dense]
    report = gradcheck(model, x, tol=1e-6)
    assert report.passed, str(report)


def _train_softsign(backend):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)              # XOR of the signs
    model = Sequential([Dense(16, init="he_normal"), Softsign(), Dense(2)], seed=0, backend=backend)
    model.compile(loss=CrossEntropy(), optimizer=SGD(lr=0.5, momentum=0.9))
    loss_fn = model.loss
    first = loss_fn.forward(model.forward(model.backend.asarray(X)), y)
    model.fit(X, y, epochs=30, batch_size=30, verbose=0)
    last = loss_fn.forward(model.forward(model.backend.asarray(X)), y)
    return first, last


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_user_activation_trains(name):
    if name not in BACKENDS:
        pytest.skip(f"backend {name!r} is not available here")
    first, last = _train_softsign(name)
    assert first > 0.6 and last < 0.5 * first, (first, last)     # ln 2 ≈ 0.69 at the start


@pytest.mark.skipif("numba" not in BACKENDS, reason="Numba is not installed")
def test_user_activation_same_numbers_on_numpy_and_numba():
    np.testing.assert_allclose(_train_softsign("numba"), _train_softsign("numpy"), rtol=1e-4)


def test_fused_step_is_named_after_its_layers():
    model = Sequential([Dense(3), ReLU(), Dense(2)], seed=0, backend="numpy")
    model.build((4,))
    step = fuse_dense_activation(model.layers)[0]
    assert step.name == f"{model.layers[0].name}+{model.layers[1].name}"
    assert step.dense is model.layers[0] and step.activation is model.layers[1]


@pytest.mark.parametrize("name", [b for b in ("numpy", "numba") if b in BACKENDS])
@pytest.mark.parametrize("kind", sorted(ACT_CODES) + ["softsign"])
def test_fused_step_backward_is_the_two_layers_backward(name, kind):
    """The fused step takes db in the pass that makes dz; dW, db and dx equal running the
    activation's backward and then the Dense layer's, bit for bit (float32 and float64)."""
    for dtype in ("float32", "float64"):
        act = Softsign() if kind == "softsign" else make(ACTIVATION_LAYERS[kind])
        model = Sequential([Dense(13), act, Dense(2)], seed=5, backend=name, dtype=dtype)
        model.build((6,))
        step, dense = model.steps[0], model.layers[0]
        assert isinstance(step, DenseActivation)
        rng = np.random.default_rng(6)
        x = model.backend.asarray(rng.standard_normal((11, 6)), dtype=dtype)
        dy = model.backend.asarray(rng.standard_normal((11, 13)), dtype=dtype)
        step.forward(x, training=True)
        dx_fused = step.backward(dy.copy())
        fused = {k: g.copy() for k, g in dense.grads.items()}
        dense.grads["W"][...] = dense.grads["b"][...] = np.nan
        dx_plain = dense.backward(act.backward(dy.copy()))
        for k in ("W", "b"):
            np.testing.assert_array_equal(fused[k], dense.grads[k])
        np.testing.assert_array_equal(dx_fused, dx_plain)
