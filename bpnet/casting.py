"""Scanning large arrays in chunks: non-finite rows, and casting to the model's dtype without overflow.

A full-size ``np.isfinite(X)`` mask of 2M rows costs as much memory as a
float16 copy of X, and a float64 X with values above float32's largest
(3.4e38) silently becomes ±inf when a float32 model casts it, so every
later step reports "NaN/Inf in X" for data that was finite.  Both checks
here walk X in row blocks of about :data:`CHUNK_ELEMENTS` elements, so their
extra memory is a few MiB whatever the size of X.
"""
from __future__ import annotations

import numpy as np

from .errors import DataError

CHUNK_ELEMENTS = 1 << 20
_MAX_SHOWN = 10


def row_chunks(a: np.ndarray):
    """Yield ``(start, block)``: consecutive row blocks of ``a`` with about CHUNK_ELEMENTS elements each."""
    per_row = max(1, int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_ELEMENTS // per_row)
    for start in range(0, len(a), step):
        yield start, a[start:start + step]


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``a`` holding a NaN or ±inf (float arrays; others have none)."""
    if a.dtype.kind != "f":
        return np.empty(0, dtype=np.int64)
    bad = [start + np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
           for start, block in row_chunks(a)]
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def shown(indices, what: str) -> str:
    """'3 rows: [1, 5, 9]' (or '20 rows: first 10: [...]' for many)."""
    listed = list(map(int, indices[:_MAX_SHOWN]))
    label = f"{len(indices)} {what}" + ("s" if len(indices) != 1 else "")
    return f"{label}: {listed}" if len(indices) <= _MAX_SHOWN else f"{label}: first {_MAX_SHOWN}: {listed}"


def as_dtype(X: np.ndarray, dtype, name: str = "X") -> np.ndarray:
    """``X`` cast to ``dtype`` (no copy when it already is), or a DataError naming the columns that overflow.

    Only a narrowing cast can overflow (float64 → float32/float16, large
    integers → float16); it is checked block by block before the copy is made.
    """
    dtype = np.dtype(dtype)
    if X.dtype == dtype:
        return X
    if dtype.kind == "f" and X.dtype.kind in "fiu" and _may_overflow(X.dtype, dtype):
        limit = float(np.finfo(dtype).max)
        over = np.zeros(int(np.prod(X.shape[1:], dtype=np.int64)), dtype=bool)
        largest = 0.0
        for _, block in row_chunks(X):
            flat = np.abs(block.reshape(len(block), -1))
            big = (flat > limit) & np.isfinite(flat)
            if big.any():
                over |= big.any(axis=0)
                largest = max(largest, float(flat[big].max()))
        if over.any():
            columns = np.flatnonzero(over)
            raise DataError(
                f"{name} has finite values beyond {dtype.name}'s range (±{limit:.3g}), largest {largest:.3g}, "
                f"in {shown(columns, 'column')}; casting to the model's {dtype.name} would make them ±inf. "
                "Scale the features first (bpnet.data.Standardizer or RobustScaler), or build the model "
                "with dtype='float64'")
    return X.astype(dtype)


def _may_overflow(source: np.dtype, target: np.dtype) -> bool:
    if source.kind == "f":
        return np.finfo(source).max > np.finfo(target).max
    return np.iinfo(source).max > np.finfo(target).max
