"""The numba backend returns the NumPy reference's numbers, effects and errors.

Every method NumbaBackend overrides is compared with NumpyBackend on several
shapes and on float32 and float64: float64 to 1e-12 relative, float32 to 1e-5
relative, with the absolute tolerance scaled by the size of the reference
values (a difference of nearly equal numbers has no relative accuracy).
"""
import math

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings, strategies as st  # noqa: E402

from bpnet.backends import get_backend  # noqa: E402
from bpnet.backends.numba_backend import NumbaBackend  # noqa: E402
from bpnet.backends.numpy_backend import NumpyBackend  # noqa: E402
from bpnet.errors import LabelError  # noqa: E402
from bpnet.kernels.activation_codes import ACT_CODES  # noqa: E402
from bpnet.layers import ACTIVATION_LAYERS, Activation, BuildContext, Dense  # noqa: E402

REF = NumpyBackend()
NB = NumbaBackend()
DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
SHAPES = [(1, 1), (3, 7), (16, 33), (64, 130)]
ALPHA = {"leaky_relu": 0.01, "elu": 1.3}
ACTIVATIONS = tuple(ACT_CODES)          # every activation with a kernel code


def act(kind, alpha=0.0):
    """The activation layer called ``kind`` (with slope ``alpha`` where it takes one)."""
    layer = ACTIVATION_LAYERS[kind](alpha) if kind in ALPHA else ACTIVATION_LAYERS[kind]()
    assert layer.code == ACT_CODES[kind]
    return layer


def close(got, want, scale=None):
    """assert_allclose at the dtype's tolerance; atol = rtol · max|want|."""
    want = np.asarray(want)
    rtol = RTOL[want.dtype] if want.dtype in RTOL else 1e-12
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def rand(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_registry_creates_numba_backend():
    be = get_backend("numba")
    assert isinstance(be, NumbaBackend) and be.name == "numba"


def test_warmup_compiles_every_kernel_and_reports_seconds():
    for dt in DTYPES:
        seconds = NB.warmup(dt)
        assert isinstance(seconds, float) and seconds >= 0.0


# -- activations --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(4, 5, 6)])
def test_bias_act_forward_in_place(kind, dtype, shape, rng):
    z = rand(rng, shape, dtype)
    b = rand(rng, shape[-1], dtype)
    a = act(kind, ALPHA.get(kind, 0.0))
    want = REF.activation_forward(a, z + b)
    zz = z.copy()
    got = NB.bias_activation_forward(a, zz, b)
    assert got is zz and got.dtype == dtype
    close(got, want)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 7), (64, 130), (2, 3, 5)])
def test_act_forward_out_semantics(kind, dtype, shape, rng):
    alpha = ALPHA.get(kind, 0.0)
    a = act(kind, alpha)
    z = rand(rng, shape, dtype)
    z0 = z.copy()
    want = REF.activation_forward(a, z)

    got = NB.activation_forward(a, z)                 # new array (z itself for identity)
    assert (got is z) == (REF.activation_forward(a, z) is z)
    assert got.dtype == want.dtype and got.shape == shape
    close(got, want)
    np.testing.assert_array_equal(z, z0)

    out = np.full(shape, np.nan, dtype)                  # separate out
    assert NB.activation_forward(a, z, out=out) is out
    close(out, want)
    np.testing.assert_array_equal(z, z0)

    assert NB.activation_forward(a, z, out=z) is z    # in place
    close(z, want)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 7), (64, 130), (2, 3, 5)])
def test_act_backward_out_semantics(kind, dtype, shape, rng):
    alpha = ALPHA.get(kind, 0.0)
    a = act(kind, alpha)
    y = REF.activation_forward(a, rand(rng, shape, dtype)).copy()
    dy = rand(rng, shape, dtype, 1.0)
    want = REF.activation_backward(a, y, dy)

    got = NB.activation_backward(a, y, dy)
    assert (got is dy) == (REF.activation_backward(a, y, dy) is dy)
    close(got, want)

    out = np.full(shape, np.nan, dtype)
    assert NB.activation_backward(a, y, dy, out=out) is out
    close(out, want)

    d2 = dy.copy()                                       # overwrite the gradient
    assert NB.activation_backward(a, y, d2, out=d2) is d2
    close(d2, want)

    y2 = y.copy()                                        # overwrite the output
    assert NB.activation_backward(a, y2, dy, out=y2) is y2
    close(y2, want)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (300, 1), (2, 2), (33, 17), (129, 64), (5, 8200), (1000, 130)])
def test_act_backward_bias_is_the_reference_bit_for_bit(kind, dtype, shape, rng):
    """dz and db = Σ_n dz from the fused kernel equal activation_backward and NumPy's own batch sum exactly
    (the kernel adds rows in NumPy's order, a block of rows at a time: (129, 64) and (5, 8200) end on
    a one-row block; one column, summed pairwise by NumPy, uses the reference)."""
    a = act(kind, ALPHA.get(kind, 0.0))
    y = REF.activation_forward(a, rand(rng, shape, dtype)).copy()
    dy = rand(rng, shape, dtype, 1.0)
    y0, dy0 = y.copy(), dy.copy()
    db_want = np.full(shape[1], np.nan, dtype)
    want = REF.activation_bias_backward(a, y, dy, db_want)
    np.testing.assert_array_equal(want.sum(axis=0), db_want)
    db = np.full(shape[1], np.nan, dtype)
    got = NB.activation_bias_backward(a, y, dy, db)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(db, db_want)
    np.testing.assert_array_equal(y, y0)     # inputs untouched
    np.testing.assert_array_equal(dy, dy0)


def test_act_backward_bias_falls_back_for_unusual_arrays(rng):
    relu, softsign = act("relu"), Softsign()
    y = REF.activation_forward(relu, rand(rng, (8, 12), np.float64))[:, ::2]    # not contiguous
    dy = rand(rng, (8, 6), np.float64)
    db = np.zeros(6)
    close(NB.activation_bias_backward(relu, y, dy, db), dy * (y > 0))
    close(db, (dy * (y > 0)).sum(axis=0))
    z = rand(rng, (5, 4), np.float32)
    y = softsign.f(np, z)
    db = np.zeros(4, np.float32)
    close(NB.activation_bias_backward(softsign, y, z, db), z * (1 - np.abs(y)) ** 2)
    close(db, (z * (1 - np.abs(y)) ** 2).sum(axis=0))


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(ACTIVATIONS), f64=st.booleans(),
       rows=st.integers(1, 40), cols=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_activations_random_shapes(kind, f64, rows, cols, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if f64 else np.float32
    alpha = ALPHA.get(kind, 0.0)
    a = act(kind, alpha)
    z, b = rand(rng, (rows, cols), dtype), rand(rng, cols, dtype)
    close(NB.bias_activation_forward(a, z.copy(), b), REF.activation_forward(a, z + b))
    y = REF.activation_forward(a, z)
    close(NB.activation_backward(a, y, z), REF.activation_backward(a, y, z))


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_at_extreme_inputs(dtype):
    z = np.array([[-1e4, -100.0, -1.0, -0.0, 0.0, 1.0, 100.0, 1e4]], dtype)
    b = np.zeros(z.shape[1], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow is fine
        for kind in ACTIVATIONS:
            alpha = ALPHA.get(kind, 0.0)
            a = act(kind, alpha)
            want = REF.activation_forward(a, z)
            got = NB.bias_activation_forward(a, z.copy(), b)
            assert np.all(np.isfinite(got)), kind
            close(got, want)
    s = NB.activation_forward(act("sigmoid"), z)
    assert s[0, 0] == 0.0 and s[0, -1] == 1.0 and np.all((s >= 0) & (s <= 1))
    assert NB.activation_forward(act("elu", 1.3), z)[0, 0] == pytest.approx(-1.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_like_numpy(dtype):
    z = np.array([[np.nan, 1.0, -1.0, np.inf, -np.inf]], dtype)
    b = np.zeros(5, dtype)
    for kind in ACTIVATIONS:
        alpha = ALPHA.get(kind, 0.0)
        a = act(kind, alpha)
        want = REF.activation_forward(a, z)
        np.testing.assert_array_equal(NB.bias_activation_forward(a, z.copy(), b), want)
        np.testing.assert_array_equal(NB.activation_forward(a, z), want)


def test_unusual_arrays_fall_back_to_reference(rng):
    z = rand(rng, (8, 12), np.float64)[:, ::2]           # not contiguous
    b = rand(rng, 6, np.float64)
    for kind in ACTIVATIONS:
        alpha = ALPHA.get(kind, 0.0)
        a = act(kind, alpha)
        close(NB.activation_forward(a, z), REF.activation_forward(a, z))
        y = REF.activation_forward(a, z)
        close(NB.activation_backward(a, y, z), REF.activation_backward(a, y, z))
        zz = z.copy(order="F")
        assert NB.bias_activation_forward(a, zz, b) is zz
        close(zz, REF.activation_forward(a, z + b))
    h = rand(rng, (4, 5), np.float16)
    relu = act("relu")
    np.testing.assert_array_equal(NB.activation_forward(relu, h), REF.activation_forward(relu, h))
    # An activation without a kernel code (a user's own) runs its own f and dz.
    softsign = Softsign()
    assert softsign.code is None
    z = rand(rng, (5, 4), np.float32)
    z0 = z.copy()
    close(NB.activation_forward(softsign, z), z0 / (1 + np.abs(z0)))
    np.testing.assert_array_equal(z, z0)                 # z untouched
    b = np.ones(4, np.float32)
    close(NB.bias_activation_forward(softsign, z, b), softsign.f(np, z0 + b))
    y = softsign.f(np, z0)
    close(NB.activation_backward(softsign, y, z0), z0 * (1 - np.abs(y)) ** 2)


class Softsign(Activation):
    """y = z / (1 + |z|); f'(z) = 1/(1 + |z|)² = (1 - |y|)²  (|y| = |z|/(1+|z|))."""

    def f(self, xp, z):
        return z / (1 + xp.abs(z))

    def dz(self, xp, y, dy):
        return dy * (1 - xp.abs(y)) ** 2


# -- dense layer ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (5, 3, 7), (32, 64, 48)])
def test_dense_forward_and_backward(dtype, n, k, m, rng):
    """Dense writes its own xp maths; on the numba backend it gives the reference's numbers."""
    x, W, b = rand(rng, (n, k), dtype, 1), rand(rng, (k, m), dtype, 1), rand(rng, m, dtype, 1)
    layers = {}
    for name, backend in (("ref", REF), ("nb", NB)):
        layer = Dense(m)
        layer.build((k,), BuildContext(backend, np.dtype(dtype), np.random.default_rng(0)))
        layer.params["W"][...] = W
        layer.params["b"][...] = b
        layers[name] = layer
    want = layers["ref"].forward(x)
    close(want, x @ W + b)
    close(layers["nb"].forward(x), want)

    dy = rand(rng, (n, m), dtype, 1)
    dx1 = layers["ref"].backward(dy)
    dx2 = layers["nb"].backward(dy)
    close(dx2, dx1)
    close(layers["nb"].grads["W"], layers["ref"].grads["W"])
    close(layers["nb"].grads["b"], layers["ref"].grads["b"], scale=float(np.abs(dy).sum(0).max()))
    close(layers["ref"].grads["b"], dy.sum(0), scale=float(np.abs(dy).sum(0).max()))
    layers["nb"].needs_input_grad = False
    assert layers["nb"].backward(dy) is None


# -- softmax cross-entropy ----------------------------------------------------------------
CE_SHAPES = [(1, 1), (1, 4), (5, 3), (32, 10), (100, 37)]


def check_ce(got, want):
    (lg, dg), (lw, dw) = got, want
    assert isinstance(lg, float)
    assert dg.dtype == dw.dtype and dg.shape == dw.shape
    close(lg, np.asarray(lw, dtype=dw.dtype))
    close(dg, dw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_soft_targets(dtype, shape, weighted, rng):
    z = rand(rng, shape, dtype)
    q = rng.dirichlet(np.ones(shape[1]), shape[0]).astype(dtype)
    w = rng.uniform(0.2, 3.0, shape[1]).astype(dtype) if weighted else None
    check_ce(NB.softmax_cross_entropy(z, q, w), REF.softmax_cross_entropy(z, q, w))


def onehot_smoothed(y, c, eps, dtype):
    q = np.full((len(y), c), eps / c)
    q[np.arange(len(y)), y] += 1.0 - eps
    return q.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy_integer_labels(dtype, shape, weighted, eps, rng):
    n, c = shape
    z = rand(rng, shape, dtype)
    y = rng.integers(0, c, n)
    w = rng.uniform(0.2, 3.0, c) if weighted else None    # float64 weights, cast inside
    want = REF.softmax_cross_entropy(z, onehot_smoothed(y, c, eps, dtype), w)
    for labels in (y, y.astype(np.int32), y.astype(np.uint8)):
        check_ce(NB.softmax_cross_entropy_labels(z, labels, w, smoothing=eps), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype, rng):
    z = np.where(rng.random((64, 10)) < 0.5, -1e4, 1e4).astype(dtype)
    z[:, 3] = 1e4                                        # every row has a top logit
    y = rng.integers(0, 10, 64)
    q = onehot_smoothed(y, 10, 0.0, dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = NB.softmax_cross_entropy(z, q)
        glab = NB.softmax_cross_entropy_labels(z, y)
    for loss, dz in (got, glab):
        assert math.isfinite(loss) and np.all(np.isfinite(dz))
        check_ce((loss, dz), REF.softmax_cross_entropy(z, q))


def test_softmax_cross_entropy_bad_labels(rng):
    z = rand(rng, (4, 3), np.float32)
    for bad in ([0, 1, 3, 2], [0, -1, 1, 2]):
        with pytest.raises(LabelError, match="row 2|row 1"):
            NB.softmax_cross_entropy_labels(z, np.array(bad))
    with pytest.raises(LabelError):
        NB.softmax_cross_entropy_labels(z, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(LabelError):
        NB.softmax_cross_entropy_labels(z, np.array([0, 1]))


def test_softmax_cross_entropy_falls_back(rng):
    z = rand(rng, (6, 8), np.float64)[:, ::2]
    q = rng.dirichlet(np.ones(4), 6)
    check_ce(NB.softmax_cross_entropy(z, q), REF.softmax_cross_entropy(z, q))
    y = rng.integers(0, 4, 6)
    check_ce(NB.softmax_cross_entropy_labels(z, y, smoothing=0.2),
             REF.softmax_cross_entropy(z, onehot_smoothed(y, 4, 0.2, np.float64)))


# -- reductions, clipping, finiteness ------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (63,), (64,), (65,), (1000,), (17, 129)])
def test_sum_squares(dtype, shape, rng):
    x = rand(rng, shape, dtype)
    got = NB.sum_squares(x)
    assert isinstance(got, float)
    close(got, np.float64(REF.sum_squares(x)))


def test_sum_squares_strided_falls_back(rng):
    x = rand(rng, (40, 30), np.float32)[::3, 1::2]
    close(NB.sum_squares(x), np.float64(REF.sum_squares(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 100, 4096, 4097, 20000])
def test_all_finite_finds_any_bad_value(dtype, n, rng):
    x = rand(rng, n, dtype)
    assert NB.all_finite(x) is True
    for pos in {0, n // 2, n - 1}:
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            assert NB.all_finite(y) is False
            assert NB.all_finite(y.reshape(1, -1)) is False
    big = np.full(n, np.finfo(dtype).max, dtype)          # largest finite is finite
    assert NB.all_finite(big) is True
    assert NB.all_finite(np.arange(5)) is True             # integers: reference path
    assert NB.all_finite(rand(rng, (9, 9), dtype)[::2]) is True


def clip_reference(x, max_norm):
    return REF.clip_norm_(x, max_norm)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e6])
def test_clip_grad_norm(dtype, max_norm, rng):
    x = rand(rng, 3000, dtype, 0.1)
    want = x.copy()
    norm_want = clip_reference(want, max_norm)
    got = x.copy()
    norm_got = NB.clip_norm_(got, max_norm)
    assert isinstance(norm_got, float)
    close(norm_got, np.float64(norm_want))
    close(got, want)
    if max_norm > norm_want:
        np.testing.assert_array_equal(got, x)            # untouched below the limit
    else:
        assert math.sqrt(NB.sum_squares(got)) == pytest.approx(max_norm, rel=1e-5)
    strided = x.copy().reshape(30, 100)[:, ::2]           # reference path
    s_want = strided.copy()
    close(NB.clip_norm_(strided, max_norm), np.float64(clip_reference(s_want, max_norm)))
    close(strided, s_want)


# -- optimizers: 20-step trajectories -----------------------------------------------------
def trajectory(backend, kind, dtype, steps=20, n=1037, **hp):
    rng = np.random.default_rng(7)
    p = rand(rng, n, dtype, 1.0)
    s1, s2 = np.zeros_like(p), np.zeros_like(p)
    path = []
    for t in range(1, steps + 1):
        g = rand(rng, n, dtype, 0.1) + 0.05 * p          # depends on where p is
        if kind == "sgd":
            backend.sgd_step(p, g, s1 if hp["momentum"] else None, **hp)
        elif kind == "adam":
            backend.adam_step(p, g, s1, s2, t=t, **hp)
        else:
            backend.rmsprop_step(p, g, s1, s2 if hp["momentum"] else None, **hp)
        path.append(p.copy())
    return np.array(path), s1, s2


OPTIMIZERS = [
    ("sgd", dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-2, decoupled=False)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-1, decoupled=True)),
    ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0)),
    ("rmsprop", dict(lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=1e-2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,hp", OPTIMIZERS)
def test_optimizer_trajectories_agree(kind, hp, dtype):
    want = trajectory(REF, kind, dtype, **hp)
    got = trajectory(NB, kind, dtype, **hp)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        close(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,hp", OPTIMIZERS)
def test_optimizer_trajectories_are_bit_identical(kind, hp, dtype):
    """The optimizer kernels do the reference's arithmetic in the reference's order
    (Adam included: √v̂ = √v · (1/√(1-β2ᵗ)), then m / (√v̂ + ε), then · lr/(1-β1ᵗ)),
    so every element of every step is the same float."""
    for got, want in zip(trajectory(NB, kind, dtype, **hp), trajectory(REF, kind, dtype, **hp)):
        np.testing.assert_array_equal(got, want)


def test_optimizer_on_strided_buffers_falls_back():
    rng = np.random.default_rng(3)
    p = rand(rng, (10, 8), np.float64)[:, ::2]
    g = rand(rng, (10, 4), np.float64)
    m, v = np.zeros_like(g), np.zeros_like(g)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    REF.adam_step(p2, g, m2, v2, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, False)
    NB.adam_step(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, False)
    close(p, p2)
    close(m, m2)
