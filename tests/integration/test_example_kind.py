"""A third model kind, served end to end: tests/kinds/movavg, plugged in by one setting
(MEMSERVE_EXTRA_KINDS) in the API and in a real worker process, as docs/architecture.md shows."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import MOVAVG_KINDS, MOVAVG_WINDOW

WINDOW = MOVAVG_WINDOW


@pytest.fixture
def served(movavg_client: httpx.Client, movavg_dir: Path, start_worker) -> httpx.Client:
    """The real API (this process) and a real worker (its own), both told of the kind."""
    start_worker(checkpoint_dir=movavg_dir, **MOVAVG_KINDS)
    return movavg_client


def moving_average(series: list[float], window: int) -> list[float]:
    return [float(np.mean(series[max(0, i - window + 1) : i + 1])) for i in range(len(series))]


def test_a_kind_from_outside_the_service_is_served_end_to_end(served: httpx.Client) -> None:
    made = served.post("/v1/sessions", json={"kind": "movavg"})
    assert made.status_code == 201, made.text
    info = made.json()
    assert info["kind"] == "movavg" and info["model"] == "movavg-3" and info["capacity"] == WINDOW
    sid = info["id"]
    first, second = [1.0, 2.0, 4.0, 8.0], [16.0, -5.5]
    a = served.post(f"/v1/sessions/{sid}/average", json={"values": first})
    assert a.status_code == 200, a.text
    assert a.json()["step"] == 4
    assert a.json()["averages"] == pytest.approx(moving_average(first, WINDOW))
    # The worker kept the session's last values in Redis: the window spans the two requests.
    b = served.post(f"/v1/sessions/{sid}/average", json={"values": second}).json()
    assert b["averages"] == pytest.approx(moving_average(first + second, WINDOW)[len(first) :])
    assert served.get(f"/v1/sessions/{sid}").json()["step"] == 6
    listed = served.get("/v1/sessions").json()["sessions"]
    assert [(s["id"], s["step"], s["exemplars"]) for s in listed] == [(sid, 6, None)]


def test_the_kind_brings_its_capacity_rule_route_and_place_in_the_kind_enum(served: httpx.Client) -> None:
    bad = served.post("/v1/sessions", json={"kind": "movavg", "capacity": WINDOW + 1})
    assert bad.status_code == 422 and "window (3)" in bad.json()["detail"]
    unknown = served.post("/v1/sessions", json={"kind": "ewma"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["msg"] == "Input should be 'memnet', 'vma' or 'movavg'"
    doc = served.get("/openapi.json").json()
    assert doc["components"]["schemas"]["CreateSession"]["properties"]["kind"]["enum"] == [
        "memnet",
        "vma",
        "movavg",
    ]
    assert "/v1/sessions/{sid}/average" in doc["paths"]
    # No memnet model here: a memnet session is refused as before, with its problem type.
    missing = served.post("/v1/sessions", json={"kind": "memnet"})
    assert missing.status_code == 404 and missing.json()["type"].endswith("/model-not-found")
