"""Tests for bpnet.data: validation messages, batching, scalers, splits, data sets."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from bpnet.data import (
    DataLoader, MinMaxScaler, RobustScaler, Standardizer, load_breast_cancer, load_digits,
    load_iris, load_wine, make_moons, make_spirals, one_hot, train_test_split, validate_xy, xor,
)
from bpnet.errors import BpnetError, ConfigError, DataError, LabelError, NotBuiltError, ShapeError

sk_pre = pytest.importorskip("sklearn.preprocessing")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 10.0, 0.1], size=(100, 3))
    return X, rng.integers(0, 3, size=100)


# --------------------------------------------------------------------------- validate_xy
def test_validate_empty():
    with pytest.raises(DataError, match=r"^X is empty \(0 samples\); pass at least one sample$"):
        validate_xy(np.zeros((0, 3)))
    with pytest.raises(DataError, match="X is empty"):
        validate_xy([])


def test_validate_zero_features():
    with pytest.raises(DataError, match="0 features"):
        validate_xy(np.zeros((5, 0)))


def test_validate_non_numeric():
    with pytest.raises(DataError, match=r"X has non-numeric dtype <U1.*astype\(float\)"):
        validate_xy(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"X has non-numeric dtype object.*astype\(float\)"):
        validate_xy(np.array([[1, None]], dtype=object))
    with pytest.raises(DataError, match=r"y has non-numeric dtype <U3.*return_inverse"):
        validate_xy(np.zeros((2, 2)), np.array(["cat", "dog"]))


def test_validate_length_mismatch():
    with pytest.raises(DataError, match=r"^X has 100 samples but y has 99; they must match$"):
        validate_xy(np.zeros((100, 2)), np.zeros(99))


def test_validate_nan_rows_named():
    X = np.ones((60, 2))
    X[4, 0] = np.nan
    X[17, 1] = np.inf
    X[52, :] = -np.inf
    msg = "X contains NaN/Inf in 3 rows: [4, 17, 52]; drop or impute them (see bpnet.doctor.check_data)"
    with pytest.raises(DataError) as exc:
        validate_xy(X)
    assert str(exc.value) == msg


def test_validate_nan_rows_truncated_to_ten():
    X = np.ones((40, 2))
    X[::2, 1] = np.nan                                   # 20 bad rows: 0, 2, ..., 38
    with pytest.raises(DataError) as exc:
        validate_xy(X, name="X_val")
    assert "X_val contains NaN/Inf in 20 rows: first 10: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" \
        in str(exc.value)


def test_validate_nan_in_y():
    y = np.array([0.0, 1.0, np.nan, 1.0, np.inf])
    with pytest.raises(DataError, match=r"y contains NaN/Inf in 2 rows: \[2, 4\]"):
        validate_xy(np.zeros((5, 1)), y)


def test_validate_1d_x_suggests_reshape():
    with pytest.raises(DataError, match=r"reshape\(-1, 1\)"):
        validate_xy(np.arange(5.0))


def test_validate_dtypes_kept_or_converted():
    X, y = validate_xy(np.array([[True, False], [False, True]]), np.array([1, 0], dtype=np.int32))
    assert X.dtype == np.float64 and np.array_equal(X, [[1, 0], [0, 1]])
    assert y.dtype == np.int32
    X, y = validate_xy(np.zeros((2, 2), np.float32), [True, False])
    assert X.dtype == np.float32 and y.dtype == np.int64
    X, y = validate_xy([[1, 2], [3, 4]])
    assert y is None and X.dtype.kind == "i" and X.shape == (2, 2)


def test_errors_are_bpnet_errors():
    assert issubclass(DataError, BpnetError) and issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- DataLoader
def test_loader_covers_every_sample_once():
    X = np.arange(103, dtype=np.float64).reshape(-1, 1)
    y = np.arange(103)
    loader = DataLoader(X, y, batch_size=10, seed=1)
    assert len(loader) == 11
    batches = list(loader)
    assert [len(xb) for xb, _ in batches] == [10] * 10 + [3]
    seen = np.concatenate([yb for _, yb in batches])
    assert np.array_equal(np.sort(seen), y)
    for xb, yb in batches:                               # rows stay paired
        assert np.array_equal(xb[:, 0], yb.astype(np.float64))
    assert not np.array_equal(seen, y)                   # actually shuffled


def test_loader_drop_last():
    X = np.arange(103.0).reshape(-1, 1)
    loader = DataLoader(X, batch_size=10, drop_last=True)
    assert len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10 and all(b.shape == (10, 1) for b in batches)
    assert len(np.unique(np.concatenate(batches))) == 100   # 3 samples skipped, none repeated


def test_loader_drop_last_with_too_few_samples():
    with pytest.raises(ConfigError, match="leaves no batch from 5 samples"):
        DataLoader(np.zeros((5, 1)), batch_size=8, drop_last=True)


@pytest.mark.parametrize("bs", [0, -3, 2.5])
def test_loader_bad_batch_size(bs):
    with pytest.raises(ConfigError, match="batch_size"):
        DataLoader(np.zeros((5, 1)), batch_size=bs)


def test_loader_determinism_and_epoch_reshuffle():
    X = np.arange(50.0).reshape(-1, 1)
    a, b = DataLoader(X, batch_size=7, seed=3), DataLoader(X, batch_size=7, seed=3)
    a1, a2 = np.concatenate(list(a)), np.concatenate(list(a))
    b1, b2 = np.concatenate(list(b)), np.concatenate(list(b))
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert not np.array_equal(a1, a2)                    # new order each epoch
    c1 = np.concatenate(list(DataLoader(X, batch_size=7, seed=4)))
    assert not np.array_equal(a1, c1)
    r1 = np.concatenate(list(DataLoader(X, batch_size=7, rng=np.random.default_rng(3))))
    assert np.array_equal(r1, a1)                        # rng= equals seed= with the same seed


def test_loader_no_shuffle_and_x_only():
    X = np.arange(10.0).reshape(5, 2)
    batches = list(DataLoader(X, batch_size=2, shuffle=False))
    assert len(batches) == 3
    assert np.array_equal(np.concatenate(batches), X)
    assert np.shares_memory(batches[0], X)               # zero-copy slices


def test_loader_reuse_buffers():
    X = np.random.default_rng(0).normal(size=(25, 3)).astype(np.float32)
    y = np.arange(25)
    fresh = [(xb.copy(), yb.copy()) for xb, yb in DataLoader(X, y, batch_size=8, seed=5)]
    reused, ids = [], set()
    for xb, yb in DataLoader(X, y, batch_size=8, seed=5, reuse_buffers=True):
        assert xb.dtype == np.float32 and yb.dtype == y.dtype
        ids.add(xb.__array_interface__["data"][0])
        reused.append((xb.copy(), yb.copy()))
    assert len(ids) == 1                                 # one buffer for every batch
    for (xf, yf), (xr, yr) in zip(fresh, reused):
        assert np.array_equal(xf, xr) and np.array_equal(yf, yr)
        assert np.array_equal(xr, X[yr])


def test_loader_validates_data():
    with pytest.raises(DataError, match="X has 4 samples but y has 3"):
        DataLoader(np.zeros((4, 2)), np.zeros(3))


# --------------------------------------------------------------------------- scalers
def test_standardizer_train_stats_and_test_reuse(data):
    X, _ = data
    train, test = X[:70], X[70:]
    s = Standardizer().fit(train)
    Z = s.transform(train)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1.0, rtol=1e-12)
    mu, sd = train.mean(0), train.std(0)
    np.testing.assert_allclose(s.transform(test), (test - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(s.transform(test),
                               sk_pre.StandardScaler().fit(train).transform(test), rtol=1e-10)
    np.testing.assert_allclose(s.inverse_transform(s.transform(test)), test, rtol=1e-12)


def test_standardizer_options(data):
    X, _ = data
    Z = Standardizer(with_mean=False).fit_transform(X)
    np.testing.assert_allclose(Z, X / X.std(0), rtol=1e-12)
    Z = Standardizer(with_std=False).fit_transform(X)
    np.testing.assert_allclose(Z, X - X.mean(0), atol=1e-12)
    np.testing.assert_allclose(Z, sk_pre.StandardScaler(with_std=False).fit_transform(X),
                               atol=1e-12)


def test_standardizer_zero_variance():
    X = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 3.0]])
    s = Standardizer().fit(X)
    assert s.scale_[0] == 1.0
    Z = s.transform(X)
    np.testing.assert_allclose(Z[:, 0], 0.0, atol=1e-15)
    np.testing.assert_allclose(Z[:, 1], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    np.testing.assert_allclose(s.transform([[5.1, 2.0]]), [[5.0, 0.0]], atol=1e-12)


def test_scaler_dtype_policy(data):
    X, _ = data
    s = Standardizer().fit(X)
    assert s.transform(X.astype(np.float32)).dtype == np.float32
    assert s.transform(X).dtype == np.float64
    assert s.transform(np.round(X).astype(np.int64)).dtype == np.float64
    assert s.inverse_transform(X.astype(np.float32)).dtype == np.float32


def test_scaler_errors(data):
    X, _ = data
    for cls in (Standardizer, MinMaxScaler, RobustScaler):
        with pytest.raises(NotBuiltError, match=f"{cls.__name__} is not fitted.*fit\\(X_train\\)"):
            cls().transform(X)
        with pytest.raises(ShapeError, match=f"{cls.__name__} was fit on 3 features but X has 2"):
            cls().fit(X).transform(X[:, :2])
    with pytest.raises(DataError, match=r"NaN/Inf in 1 row: \[0\]"):
        Standardizer().fit(X).transform([[np.nan, 0.0, 0.0]])


def test_minmax_against_formula_and_sklearn(data):
    X, _ = data
    train, test = X[:70], X[70:]
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0)]:
        m = MinMaxScaler(feature_range=(lo, hi)).fit(train)
        mn, mx = train.min(0), train.max(0)
        expect = lo + (test - mn) * (hi - lo) / (mx - mn)
        np.testing.assert_allclose(m.transform(test), expect, rtol=1e-12, atol=1e-12)
        ref = sk_pre.MinMaxScaler(feature_range=(lo, hi)).fit(train).transform(test)
        np.testing.assert_allclose(m.transform(test), ref, rtol=1e-10, atol=1e-12)
        Zt = m.transform(train)
        np.testing.assert_allclose([Zt.min(0), Zt.max(0)], [[lo] * 3, [hi] * 3], atol=1e-12)
        np.testing.assert_allclose(m.inverse_transform(m.transform(test)), test, rtol=1e-12)
    const = MinMaxScaler((2.0, 3.0)).fit_transform(np.array([[7.0, 0.0], [7.0, 1.0]]))
    np.testing.assert_allclose(const, [[2.0, 2.0], [2.0, 3.0]])
    with pytest.raises(ConfigError, match="low < high"):
        MinMaxScaler((1, 0))


def test_robust_against_formula_and_sklearn(data):
    X, _ = data
    X = X.copy()
    X[0] = [1e6, -1e6, 1e6]                              # outliers barely move median / IQR
    train, test = X[:70], X[70:]
    r = RobustScaler().fit(train)
    q1, q3 = np.percentile(train, [25, 75], axis=0)
    expect = (test - np.median(train, axis=0)) / (q3 - q1)
    np.testing.assert_allclose(r.transform(test), expect, rtol=1e-12)
    ref = sk_pre.RobustScaler().fit(train).transform(test)
    np.testing.assert_allclose(r.transform(test), ref, rtol=1e-10)
    np.testing.assert_allclose(r.inverse_transform(r.transform(test)), test, rtol=1e-12)
    r2 = RobustScaler(with_centering=False, quantile_range=(10.0, 90.0)).fit(train)
    ref2 = sk_pre.RobustScaler(with_centering=False, quantile_range=(10.0, 90.0)).fit(train)
    np.testing.assert_allclose(r2.transform(test), ref2.transform(test), rtol=1e-10)
    flat = RobustScaler().fit_transform(np.array([[1.0], [1.0], [1.0], [1.0], [9.0]]))
    np.testing.assert_allclose(flat[:, 0], [0, 0, 0, 0, 8])   # IQR 0 -> scale 1


@pytest.mark.parametrize("scaler", [Standardizer(with_mean=False), MinMaxScaler((-2.0, 2.0)),
                                    RobustScaler(quantile_range=(5.0, 95.0))])
def test_state_dict_round_trip(data, tmp_path, scaler):
    X, _ = data
    scaler.fit(X[:60])
    path = tmp_path / "scaler.npz"
    np.savez(path, **scaler.state_dict())
    config = json.loads(json.dumps(scaler.get_config()))
    with np.load(path, allow_pickle=False) as f:
        restored = type(scaler).from_state_dict(dict(f), config)
    assert restored.get_config() == scaler.get_config()
    assert restored.n_features_in_ == 3
    np.testing.assert_array_equal(restored.transform(X[60:]), scaler.transform(X[60:]))
    np.testing.assert_array_equal(restored.inverse_transform(X[60:]),
                                  scaler.inverse_transform(X[60:]))
    with pytest.raises(ConfigError, match="lacks"):
        type(scaler).from_state_dict({"center": np.zeros(3)})


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 20), st.integers(1, 5)),
              elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)))
def test_standardizer_round_trip_property(X):
    s = Standardizer().fit(X)
    Z = s.transform(X)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(s.inverse_transform(Z), X, rtol=1e-9, atol=1e-6)


# --------------------------------------------------------------------------- split, one_hot
def test_train_test_split_sizes_and_disjoint():
    X = np.arange(200.0).reshape(100, 2)
    y = np.arange(100)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, seed=1)
    assert (len(Xtr), len(Xte)) == (75, 25)
    assert set(ytr).isdisjoint(yte) and set(ytr) | set(yte) == set(range(100))
    assert np.array_equal(Xtr[:, 0], 2.0 * ytr) and np.array_equal(Xte[:, 0], 2.0 * yte)
    again = train_test_split(X, y, test_size=0.25, seed=1)
    assert np.array_equal(again[3], yte)
    assert len(train_test_split(X, y, test_size=0.33)[1]) == 33          # ceil(33.0)
    assert len(train_test_split(X, y, test_size=0.101)[1]) == 11         # ceil(10.1)
    assert len(train_test_split(X, y, test_size=10)[1]) == 10
    with pytest.raises(ConfigError, match="test_size"):
        train_test_split(X, y, test_size=1.0)


def test_train_test_split_stratified():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    X = np.arange(100.0).reshape(-1, 1)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, seed=0, stratify=True)
    assert np.bincount(yte).tolist() == [12, 6, 2]
    assert np.bincount(ytr).tolist() == [48, 24, 8]
    assert np.array_equal(y[Xte[:, 0].astype(int)], yte)
    _, _, _, yte_oh = train_test_split(X, one_hot(y), test_size=0.2, stratify=True)
    assert yte_oh.sum(0).tolist() == [12, 6, 2]
    # uneven case: exact shares 2.1, 1.5, 0.9 of ceil(0.3 * 15) = 5 -> largest remainders
    _, _, ytr, yte = train_test_split(np.zeros((15, 1)), np.repeat([0, 1, 2], [7, 5, 3]),
                                      test_size=0.3, stratify=True)
    assert np.bincount(yte).tolist() == [2, 2, 1] and np.bincount(ytr).tolist() == [5, 3, 2]
    with pytest.raises(DataError, match="class 3 has only 1 sample"):
        train_test_split(np.zeros((5, 1)), [0, 0, 1, 1, 3], stratify=True)


def test_one_hot():
    out = one_hot(np.array([2, 0, 1]))
    assert out.dtype == np.float32
    assert out.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert one_hot([1.0, 0.0], num_classes=4).shape == (2, 4)
    with pytest.raises(LabelError, match=r"label 3 is outside \[0, 3\)"):
        one_hot([0, 3], num_classes=3)
    with pytest.raises(LabelError, match="non-integer"):
        one_hot([0.5, 1.0])


# --------------------------------------------------------------------------- data sets
@pytest.mark.parametrize("loader, shape, n_classes", [
    (load_digits, (1797, 64), 10), (load_iris, (150, 4), 3),
    (load_wine, (178, 13), 3), (load_breast_cancer, (569, 30), 2)])
def test_real_data_sets(loader, shape, n_classes):
    X, y = loader()
    assert X.shape == shape and X.dtype == np.float32
    assert y.shape == (shape[0],) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(n_classes))
    assert np.all(np.isfinite(X))


def test_digits_pixels_raw():
    X, _ = load_digits()
    assert X.min() == 0.0 and X.max() == 16.0
    assert np.array_equal(X, np.round(X))


def test_make_spirals():
    X, y = make_spirals(300, 3, noise=0.2, seed=0)
    assert X.shape == (300, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100, 100, 100]
    r = np.hypot(X[:, 0], X[:, 1])
    assert r.max() <= 1.0 + 1e-6                         # noise moves the angle, not the radius
    X2, y2 = make_spirals(300, 3, noise=0.2, seed=0)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, make_spirals(300, 3, noise=0.2, seed=1)[0])
    assert np.bincount(make_spirals(10, 3)[1]).tolist() == [4, 3, 3]
    # noise-free arm 0 follows r = linspace(0,1), t = linspace(0, 4)
    X0, y0 = make_spirals(30, 3, noise=0.0)
    arm = X0[y0 == 0]
    arm = arm[np.argsort(np.hypot(arm[:, 0], arm[:, 1]))]
    r, t = np.linspace(0, 1, 10), np.linspace(0, 4, 10)
    np.testing.assert_allclose(arm, np.column_stack([r * np.sin(t), r * np.cos(t)]), atol=1e-6)


def test_make_moons():
    X, y = make_moons(200, noise=0.0, seed=0)
    assert X.shape == (200, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100, 100]
    np.testing.assert_allclose(np.hypot(X[y == 0, 0], X[y == 0, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(X[y == 1, 0] - 1.0, X[y == 1, 1] - 0.5), 1.0, atol=1e-6)
    assert np.bincount(make_moons(7)[1]).tolist() == [3, 4]
    Xn, yn = make_moons(200, noise=0.1, seed=3)
    Xn2, _ = make_moons(200, noise=0.1, seed=3)
    assert np.array_equal(Xn, Xn2)
    assert not np.array_equal(Xn, make_moons(200, noise=0.1, seed=4)[0])
    with pytest.raises(ConfigError, match="noise"):
        make_moons(noise=-1)


def test_xor():
    X, y = xor()
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and y.tolist() == [0, 1, 1, 0]
    Xn, yn = xor(n_samples=400, noise=0.1, seed=0)
    assert Xn.shape == (400, 2) and np.bincount(yn).tolist() == [200, 200]
    corners = np.round(Xn).astype(int)
    assert np.array_equal(corners[:, 0] ^ corners[:, 1], yn)   # noise 0.1 never crosses 0.5 here
    assert np.array_equal(Xn, xor(400, 0.1, seed=0)[0])
