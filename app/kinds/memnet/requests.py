"""A chunk of points: the body of `POST /v1/sessions/{sid}/points` and its checks before queueing."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.api.schemas import Count
from app.errors import InvalidInput, PayloadTooLarge

# The pydantic body; the points themselves are checked with numpy below (one clear message,
# and fast on long chunks), the schema still documents their shape and range. How many points
# a request may hold is a setting: the served document adds it (app.api.openapi).
F32_MAX = 3.4028234663852886e38
_POINT_VALUE = {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}
_POINTS_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "array", "items": _POINT_VALUE, "minItems": 1}},
        {"type": "array", "items": _POINT_VALUE},
    ],
    "minItems": 1,
}
Points = Annotated[list[Any], Field(min_length=1), WithJsonSchema(_POINTS_SCHEMA)]


class PointsRequest(BaseModel):
    """`POST /v1/sessions/{sid}/points`: a chunk of T points of dimension D."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"values": [50.0, 51.25, 52.47]}, {"values": [44.28], "horizon": 10, "level": [95]}]
        },
    )

    values: Points = Field(description="T x D finite numbers; a flat list of T numbers when D = 1")
    seq: Count | None = Field(None, description="index of the chunk's first point; omitted: append")
    horizon: Count = Field(0, description="forecast this many steps after the last point")
    level: list[Annotated[float, Field(gt=0, lt=100)]] | None = Field(
        None, max_length=8,
        description="prediction interval levels in percent, e.g. [80, 95]: adds `intervals` for "
        "every prediction and `forecast_intervals` for every forecast step",
    )  # fmt: skip


_F32_MAX = float(np.finfo(np.float32).max)


def _has_bool(values: list[Any]) -> bool:
    # numpy would read true/false among numbers as 1/0; a point is numbers only. The set of the
    # items' types is built in C: a long flat chunk costs no Python loop.
    types = set(map(type, values))
    return bool in types or (list in types and any(type(v) is list and _has_bool(v) for v in values))


def _as_numbers(values: list[Any]) -> np.ndarray:
    if _has_bool(values):
        raise InvalidInput("values must be numbers; true/false are not points")
    try:
        arr = np.asarray(values)
    except ValueError:
        raise InvalidInput("values must be T x D: every point needs the same number of values") from None
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise InvalidInput("values must be numbers: T x D, or a flat list of T numbers when D = 1")
    return arr.astype(np.float64)


def chunk_array(values: list[Any], dim: int, max_points: int) -> np.ndarray:
    """The chunk as a (T, D) float32 array, or the 4xx error that says what is wrong with it."""
    length = len(values)
    if length > max_points:
        raise PayloadTooLarge(
            f"{length} points in one request; at most {max_points} (MEMSERVE_MAX_POINTS_PER_REQUEST)",
            max_points=max_points,
        )
    arr = _as_numbers(values)
    if arr.ndim == 1:
        if dim != 1:
            raise InvalidInput(f"values must be T x {dim} (the model's dimension), not a flat list")
        arr = arr.reshape(length, 1)  # (T, 1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidInput(
            f"each point must have {dim} value(s), the model's dimension; got shape {list(arr.shape)}"
        )
    bad = ~np.isfinite(arr) | (np.abs(arr) > _F32_MAX)
    if bad.any():
        t, d = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInput(
            f"values[{t}][{d}] is {arr[t, d]}: values must be finite float32 numbers",
            index=[t, d],
        )
    return arr.astype(np.float32)
