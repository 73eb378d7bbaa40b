"""Validation of a chunk of points before it is queued (app.kinds.memnet.requests)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from app.errors import InvalidInput, PayloadTooLarge
from app.kinds.memnet.requests import chunk_array
from app.kinds.memnet.wire import points_job

F32_MAX = float(np.finfo(np.float32).max)


def test_rows_of_d_values_become_a_t_by_d_float32_array() -> None:
    arr = chunk_array([[1, 2.5], [3, -4]], dim=2, max_points=10)
    assert arr.dtype == np.float32 and arr.shape == (2, 2)
    np.testing.assert_array_equal(arr, [[1, 2.5], [3, -4]])


def test_a_flat_list_is_t_points_of_dimension_one() -> None:
    arr = chunk_array([0.5, 1, -2], dim=1, max_points=10)
    assert arr.shape == (3, 1) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[:, 0], [0.5, 1, -2])
    assert chunk_array([[0.5], [1.0]], dim=1, max_points=10).shape == (2, 1)


def test_the_largest_float32_values_are_accepted() -> None:
    arr = chunk_array([[F32_MAX, -F32_MAX]], dim=2, max_points=1)
    assert np.isfinite(arr).all()


@pytest.mark.parametrize(
    ("values", "index"),
    [
        ([[1.0, math.nan]], [0, 1]),
        ([[1.0, 2.0], [math.inf, 0.0]], [1, 0]),
        ([[1.0, 2.0], [3.0, 4.0], [5.0, -math.inf]], [2, 1]),
        ([[1.0, 2.0], [1e39, math.nan]], [1, 0]),  # the first bad value is named
        ([[1.0, -1e39]], [0, 1]),  # beyond float32: would become inf
    ],
)
def test_non_finite_or_float32_overflow_is_refused_with_the_index_of_the_first_bad_value(
    values: list[Any], index: list[int]
) -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array(values, dim=2, max_points=10)
    assert e.value.extra["index"] == index
    assert f"values[{index[0]}][{index[1]}]" in e.value.detail
    assert "finite" in e.value.detail


def test_a_non_finite_value_in_a_flat_list_is_located_too() -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array([0.0, 1.0, math.nan], dim=1, max_points=10)
    assert e.value.extra["index"] == [2, 0]


@pytest.mark.parametrize(
    "values",
    [
        [["a", "b"]],
        [[1.0, "2"]],
        [[None, None]],
        [[1.0, None]],
        [[True, False]],
        [[]],
        [{"x": 1}],
    ],
    ids=["strings", "number-and-string", "nulls", "number-and-null", "booleans", "empty-row", "object"],
)
def test_values_that_are_not_numbers_are_refused(values: list[Any]) -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array(values, dim=2, max_points=10)
    assert e.value.status == 422 and "numbers" in e.value.detail


def test_booleans_mixed_with_numbers_are_refused() -> None:
    with pytest.raises(InvalidInput):
        chunk_array([[1.5, True]], dim=2, max_points=10)


@pytest.mark.parametrize("values", [[[1.0, 2.0], [3.0]], [[1.0], [2.0, 3.0]], [[1.0, 2.0], 3.0]])
def test_ragged_rows_are_refused(values: list[Any]) -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array(values, dim=2, max_points=10)
    assert "same number of values" in e.value.detail


@pytest.mark.parametrize(
    ("values", "shape"),
    [([[1.0], [2.0]], [2, 1]), ([[1.0, 2.0, 3.0]], [1, 3]), ([[[1.0, 2.0]]], [1, 1, 2])],
)
def test_points_of_the_wrong_dimension_are_refused_with_the_shape(
    values: list[Any], shape: list[int]
) -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array(values, dim=2, max_points=10)
    assert "2 value(s)" in e.value.detail and str(shape) in e.value.detail


def test_a_flat_list_for_a_model_of_dimension_two_is_refused() -> None:
    with pytest.raises(InvalidInput) as e:
        chunk_array([1.0, 2.0], dim=2, max_points=10)
    assert "flat list" in e.value.detail


def test_more_points_than_allowed_is_payload_too_large() -> None:
    assert chunk_array([[0.0, 0.0]] * 5, dim=2, max_points=5).shape == (5, 2)
    with pytest.raises(PayloadTooLarge) as e:
        chunk_array([[0.0, 0.0]] * 6, dim=2, max_points=5)
    assert e.value.status == 413 and e.value.extra["max_points"] == 5
    assert "6 points" in e.value.detail and "MEMSERVE_MAX_POINTS_PER_REQUEST" in e.value.detail


def test_points_job_carries_the_chunk_as_little_endian_float32() -> None:
    chunk = chunk_array([[1.0, 2.0], [3.0, 4.5]], dim=2, max_points=10)
    job = points_job("s" * 32, "m", chunk, seq=0, horizon=3, reply_to="chan", request_id="r")
    assert (job.length, job.dim, job.seq, job.horizon) == (2, 2, 0, 3)
    np.testing.assert_array_equal(np.frombuffer(job.values, dtype="<f4").reshape(2, 2), chunk)
    other = points_job("s" * 32, "m", chunk, seq=0, horizon=3, reply_to="chan")
    assert other.job_id != job.job_id and len(job.job_id) == 32
    assert other.digest == job.digest
