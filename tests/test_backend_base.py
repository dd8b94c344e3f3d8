"""The device questions and shared pieces of bpnet.backends.base.Backend, on every CPU backend."""
import numpy as np
import pytest

from bpnet.backends import Backend, available_backends, get_backend
from bpnet.errors import LabelError, ShapeError

CPU_BACKENDS = [name for name in available_backends() if name in ("numpy", "numba")]


@pytest.fixture(params=CPU_BACKENDS)
def bk(request):
    return get_backend(request.param)


def test_every_backend_derives_from_the_base(bk):
    assert isinstance(bk, Backend)


def test_is_host(bk):
    a = bk.asarray(np.arange(6.0))
    assert bk.is_host(a) is True            # numpy and numba keep arrays on the host
    assert bk.is_host([1.0, 2.0]) is False
    assert bk.is_host(np.float64(1.0)) is False


def test_to_host_copies_into_out_and_reuses_it(bk):
    a = bk.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    out = np.full((3, 4), -1.0, np.float32)
    got = bk.to_host(a, out=out)
    assert got is out
    np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))
    a[0, 0] = 99                             # a copy, not a view of a
    assert out[0, 0] == 0
    np.testing.assert_array_equal(bk.to_host([1, 2, 3]), [1, 2, 3])
    assert type(bk.to_host(a)) is np.ndarray


def test_address_tells_buffer_identity(bk):
    flat = bk.zeros((10,), np.float64)
    view = flat[:4].reshape(2, 2)
    assert bk.address(view) == bk.address(flat)
    assert bk.address(flat[2:]) == bk.address(flat) + 2 * 8
    assert bk.address(flat.copy()) != bk.address(flat)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sum_squares_accumulates_in_float64(bk, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 11)).astype(dtype)
    want = float(np.sum(x.astype(np.float64) ** 2))
    got = bk.sum_squares(x)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-12)
    big = np.full(1000, 300.0, np.float16)   # 300² overflows float16
    assert bk.sum_squares(big) == pytest.approx(1000 * 300.0 ** 2, rel=1e-12)


def test_all_finite(bk):
    x = np.ones((5, 5), np.float32)
    assert bk.all_finite(x) is True
    x[3, 1] = np.nan
    assert bk.all_finite(x) is False


def test_dropout_mask_values_and_rate(bk):
    keep = 0.7
    m = bk.dropout_mask(np.random.default_rng(3), (200, 300), keep, np.float32)
    assert m.dtype == np.float32 and m.shape == (200, 300)
    assert set(np.unique(m)) <= {np.float32(0), np.float32(1 / keep)}
    assert abs((m > 0).mean() - keep) < 0.01           # 60,000 draws: sd 0.0019
    again = bk.dropout_mask(np.random.default_rng(3), (200, 300), keep, np.float32)
    np.testing.assert_array_equal(again, m)


def test_adam_coefficients():
    c = Backend.adam_coefficients(1e-3, 0.9, 0.999, 0.01, 3)
    assert c.step == pytest.approx(1e-3 / (1 - 0.9 ** 3), rel=1e-15)
    assert c.inv_sqrt_bias2 == pytest.approx((1 - 0.999 ** 3) ** -0.5, rel=1e-15)
    assert c.decay_factor == pytest.approx(1 - 1e-5, rel=1e-15)


def test_check_labels_names_the_bad_row(bk):
    z = np.zeros((4, 3))
    bk.check_labels(z, np.array([0, 1, 2, 0]))
    with pytest.raises(LabelError, match="label 3 at row 2 is outside 0..2"):
        bk.check_labels(z, np.array([0, 1, 3, 0]))
    with pytest.raises(LabelError, match="label -1 at row 0"):
        bk.check_labels(z, np.array([-1, 1, 2, 0]))
    with pytest.raises(LabelError, match="must be integers"):
        bk.check_labels(z, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ShapeError, match="must be \\(N, C\\)"):
        bk.check_labels(np.zeros(3), np.array([0, 1, 2]))
