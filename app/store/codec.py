"""Tensors as raw little-endian bytes with their dtype and shape beside them.

Never JSON, never pickle: a float32 tensor of n elements takes 4n bytes in Redis. The
layout (dtype and shape of each field) is stored once per session as a short JSON string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

_DTYPES: dict[str, np.dtype[Any]] = {"f4": np.dtype("<f4"), "u1": np.dtype("u1"), "i8": np.dtype("<i8")}
_F4 = _DTYPES["f4"]


class CodecError(ValueError):
    """Stored bytes do not match their declared layout."""


def encode_array(a: np.ndarray) -> tuple[bytes, list[object]]:
    """Raw bytes of `a` and its layout entry [dtype code, shape]."""
    if a.dtype == _F4:  # nearly every array stored: tobytes() is C order whatever a's strides
        return a.tobytes(), ["f4", list(a.shape)]
    for code, dt in _DTYPES.items():
        if a.dtype == dt or (a.dtype.kind == dt.kind and a.dtype.itemsize == dt.itemsize):
            return np.ascontiguousarray(a, dtype=dt).tobytes(), [code, list(a.shape)]
    raise CodecError(f"unsupported dtype {a.dtype}")


def decode_array(raw: bytes, entry: list[Any]) -> np.ndarray:
    """The array stored as `raw` under layout entry [dtype code, shape]."""
    code, shape = entry
    dt = _DTYPES[str(code)]
    dims = tuple(int(s) for s in shape)
    expected = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if len(raw) != expected:
        raise CodecError(f"{len(raw)} bytes stored, {expected} expected for {code}{list(dims)}")
    return np.frombuffer(raw, dtype=dt).reshape(dims)


def _code_of(dtype: np.dtype[Any]) -> str:
    for code, dt in _DTYPES.items():
        if dtype.kind == dt.kind and dtype.itemsize == dt.itemsize:
            return code
    raise CodecError(f"unsupported dtype {dtype}")


def layout_field(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The `layout` field describing `arrays` (dtype and shape of each), without their bytes."""
    return _layout(tuple((name, a.dtype, a.shape) for name, a in arrays.items()))


@functools.lru_cache(maxsize=256)
def _layout(entries: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]) -> bytes:
    # Every commit of a session writes the same few layouts: each one is encoded once.
    layout = {name: [_code_of(dtype), list(shape)] for name, dtype, shape in entries}
    return orjson.dumps(layout)  # compact: the same bytes json.dumps(separators=(",", ":")) wrote


def encode_fields(arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Hash fields for `arrays`, plus a `layout` field describing them."""
    out = {name: encode_array(a)[0] for name, a in arrays.items()}
    out["layout"] = layout_field(arrays)
    return out


def decode_fields(fields: Mapping[bytes, bytes]) -> dict[str, np.ndarray]:
    """The arrays named in the `layout` field of a stored hash."""
    raw_layout = fields.get(b"layout")
    if raw_layout is None:
        return {}
    layout = orjson.loads(raw_layout)
    return {name: decode_array(fields[name.encode()], entry) for name, entry in layout.items()}
