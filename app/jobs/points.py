"""Turning a client's chunk of points into a job (validation happens here, before queueing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import InvalidInput, PayloadTooLarge
from app.jobs.messages import PointsJob
from app.store.keys import new_job_id

_F32_MAX = float(np.finfo(np.float32).max)


def _has_bool(values: list[Any]) -> bool:
    # numpy would read true/false among numbers as 1/0; a point is numbers only.
    return any(v is True or v is False or (type(v) is list and _has_bool(v)) for v in values)


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


def points_job(
    sid: str,
    model: str,
    chunk: np.ndarray,
    seq: int | None,
    horizon: int,
    reply_to: str,
    request_id: str = "",
    model_version: str | None = None,
    levels: tuple[float, ...] = (),
) -> PointsJob:
    """A job that carries its points, so it can be re-run by any worker."""
    return PointsJob(
        job_id=new_job_id(), sid=sid, model=model, seq=seq,
        values=np.ascontiguousarray(chunk, dtype="<f4").tobytes(),
        length=int(chunk.shape[0]), dim=int(chunk.shape[1]), horizon=horizon,
        reply_to=reply_to, request_id=request_id, model_version=model_version, levels=levels,
    )  # fmt: skip
