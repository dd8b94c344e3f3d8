"""Reading a checkpoint file without trusting it: zip, npy headers and JSON checked before use.

A bpnet checkpoint is an ``.npz`` (a zip of ``.npy`` arrays) whose entry
``__config__`` holds the architecture as JSON.  The file may be cut off by a
crash, damaged on disk, or crafted, so every layer of it is checked before
anything is allocated or built:

* the zip directory must be present (a cut-off file has none), entries must be
  stored or deflated, unique, and pass their CRC-32 (which catches flipped bits);
* an array's npy header must declare a plain numeric dtype (no objects, so no
  pickle) and exactly as many data bytes as its entry holds, and all arrays
  together at most :data:`MAX_ARRAY_BYTES`, so a header claiming 40 GB fails
  before a byte is allocated;
* the JSON must nest at most :data:`MAX_JSON_DEPTH` deep and name only
  classes from bpnet's registries (layers, losses, optimizers, preprocessors),
  with settings their constructors accept (see :mod:`bpnet.checkpoint_schema`).

Every failure is a :class:`~bpnet.errors.CheckpointError` that names the file
and what is wrong with it.
"""
from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from .errors import CheckpointError

MAX_ARRAY_BYTES = 1 << 36           # 64 GiB of declared array data in one checkpoint
MAX_CONFIG_BYTES = 64 << 20         # the JSON architecture entry
MAX_JSON_DEPTH = 64                 # a bpnet config nests a handful of levels
MAX_ENTRIES = 1 << 16
_DEFLATE_MAX_RATIO = 1100           # deflate cannot compress better than ~1032:1
_ZIP_MAGIC, _NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"


def parse_checkpoint(data: bytes, name="checkpoint") -> tuple[dict, dict]:
    """(config, arrays) from the bytes of a checkpoint file, or a CheckpointError."""
    from .checkpoint_schema import check_config
    arrays = read_npz(data, name)
    if "__config__" not in arrays:
        raise CheckpointError(f"{name!s} is an .npz file but not a bpnet checkpoint (no __config__ entry)")
    config = _decode_config(arrays.pop("__config__"), name)
    check_config(config, arrays, name)
    return config, arrays


def read_npz(data: bytes, name="checkpoint") -> dict:
    """Every array of an ``.npz`` archive, each checked (see the module docstring)."""
    _check_container(data, name)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:        # BadZipFile, and struct/unicode errors on a damaged directory
        raise CheckpointError(f"{name!s} is truncated or damaged: its zip directory cannot be read "
                              f"({exc}); the file was probably cut off by a crash or a full disk") from exc
    with archive:
        infos = _checked_entries(archive, len(data), name)
        return {key: _read_array(archive, info, key, name) for key, info in infos.items()}


def _check_container(data: bytes, name):
    if len(data) == 0:
        raise CheckpointError(f"{name!s} is empty (0 bytes): the save that wrote it did not finish")
    if data.startswith(_NPY_MAGIC):
        raise CheckpointError(f"{name!s} is a single .npy array, not a bpnet checkpoint (an .npz archive "
                              "written by model.save)")
    if _ZIP_MAGIC.startswith(data):
        raise CheckpointError(f"{name!s} is truncated: it holds only the first {len(data)} bytes of a zip header")
    if not data.startswith(_ZIP_MAGIC):
        raise CheckpointError(f"{name!s} is not a bpnet checkpoint: it does not start like an .npz (zip) "
                              f"archive (first bytes {data[:8]!r})")


def _checked_entries(archive, file_size: int, name) -> dict:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise CheckpointError(f"{name!s} has {len(infos)} entries, more than a checkpoint has ({MAX_ENTRIES})")
    out, declared = {}, 0
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key in out:
            raise CheckpointError(f"{name!s} is damaged: the entry {key!r} appears twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{name!s}: entry {key!r} is damaged (compression method "
                                  f"{info.compress_type}, which .npz files do not use)")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{name!s}: entry {key!r} is damaged (marked as encrypted)")
        limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED \
            else _DEFLATE_MAX_RATIO * info.compress_size + 64
        if info.compress_size > file_size or info.file_size > limit:
            raise CheckpointError(f"{name!s}: entry {key!r} is damaged: it claims {info.file_size} bytes, "
                                  f"more than the {file_size}-byte file can hold")
        declared += info.file_size
        if declared > MAX_ARRAY_BYTES:
            raise CheckpointError(f"{name!s} declares more than {MAX_ARRAY_BYTES} bytes of arrays "
                                  "(bpnet.checkpoint.MAX_ARRAY_BYTES); refusing to allocate them")
        out[key] = info
    return out


def _read_array(archive, info, key: str, name) -> np.ndarray:
    """One entry as an array: npy header checked against the entry's size, then the data (CRC-checked)."""
    try:
        with archive.open(info) as fh:
            shape, fortran, dtype, header_end = _read_npy_header(fh, key, name)
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if header_end + nbytes != info.file_size:
                raise CheckpointError(f"{name!s}: entry {key!r} is damaged: its header declares {nbytes} "
                                      f"bytes of data but the entry holds {info.file_size - header_end}")
            out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
            view = memoryview(out.reshape(-1, order="A")).cast("B") if nbytes else memoryview(b"")
            if fh.readinto(view) != nbytes or fh.read(1):
                raise CheckpointError(f"{name!s}: entry {key!r} is damaged (its data is cut short)")
    except CheckpointError:
        raise
    except Exception as exc:        # CRC mismatch (BadZipFile), zlib errors, EOF in a cut entry
        raise CheckpointError(f"{name!s}: entry {key!r} is damaged ({type(exc).__name__}: {exc})") from exc
    return out


def _read_npy_header(fh, key: str, name):
    try:
        major, minor = np.lib.format.read_magic(fh)
        if (major, minor) == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif (major, minor) == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy format version {major}.{minor}, which bpnet does not write")
    except Exception as exc:        # ValueError from a damaged header, SyntaxError from its literal
        raise CheckpointError(f"{name!s}: entry {key!r} is not an npy array or its header is damaged "
                              f"({exc})") from exc
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise CheckpointError(f"{name!s}: entry {key!r} has dtype {dtype}, not a plain numeric array; "
                              "bpnet checkpoints hold numbers only (no pickled objects)")
    return shape, fortran, dtype, fh.tell()


def _decode_config(raw: np.ndarray, name) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{name!s}: the architecture entry (__config__) is damaged "
                              f"(dtype {raw.dtype}, shape {raw.shape}; bpnet writes 1-D uint8 JSON text)")
    if raw.size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{name!s}: the architecture entry (__config__) is {raw.size} bytes, more "
                              f"than a model description needs ({MAX_CONFIG_BYTES})")
    try:
        text = raw.tobytes().decode()
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise CheckpointError(f"{name!s}: the architecture entry (__config__) nests {depth} levels "
                                  f"deep, more than a model description does ({MAX_JSON_DEPTH})")
        config = json.loads(text)
    except ValueError as exc:           # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{name!s}: the architecture entry (__config__) is damaged: {exc}") from exc
    return config


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """How deep ``[``/``{`` nest in JSON text (brackets inside strings do not count), without parsing it."""
    skeleton = np.frombuffer(_JSON_STRING.sub('""', text).encode(), dtype=np.uint8)
    step = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))
