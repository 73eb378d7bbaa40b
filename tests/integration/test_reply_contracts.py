"""Each reply a worker builds, through the real service, is exactly the model its route documents.

Workers build the success bodies themselves and the API passes them on byte for byte (it never
re-encodes predictions), so nothing at run time checks them against the routes' response_model:
this test does, for every shape a reply can take (intervals, forecasts, anomalies, repeats,
formats, methods)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

from app.kinds.memnet.replies import PointsResponse
from app.kinds.vma.replies import AddedExemplars, ClassifyResponse, SampleResponse
from tests.conftest import SCALED_TEST_MODEL, TEST_MODEL, drawings


def conforms(model: type[BaseModel], body: dict[str, Any], optional: set[str] = frozenset()) -> None:
    """``body`` validates, and has every member of ``model`` (but the optional ones) and no other."""
    model.model_validate(body)
    fields = set(model.model_fields)
    assert set(body) <= fields, f"members {set(body) - fields} are not in {model.__name__}"
    assert fields - optional <= set(body), f"members {fields - optional - set(body)} missing"


def points(client: httpx.Client, sid: str, values: list, seq: int, **extra: object) -> dict[str, Any]:
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": values, "seq": seq, **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_points_replies_in_every_shape(client: httpx.Client, start_worker) -> None:
    start_worker()
    plain = client.post("/v1/sessions", json={"kind": "memnet", "model": TEST_MODEL}).json()["id"]
    scaled = client.post("/v1/sessions", json={"kind": "memnet", "model": SCALED_TEST_MODEL}).json()["id"]
    two_dims = [[1.0, 2.0], [1.5, 2.5]]
    conforms(PointsResponse, points(client, plain, two_dims, 0))
    conforms(PointsResponse, points(client, plain, two_dims, 2, horizon=3))
    wave = (50 + 10 * np.sin(np.arange(40) / 4)).tolist()
    spiky = points(client, scaled, wave, 0, horizon=4, level=[80, 95])
    conforms(PointsResponse, spiky)
    assert spiky["intervals"] and spiky["forecast_intervals"] and spiky["anomalies"] is not None
    again = points(client, scaled, wave, 0, horizon=4, level=[80, 95])  # a retry: the stored reply
    conforms(PointsResponse, again)
    assert again["repeat"] is True


def test_vma_replies_in_every_shape(client: httpx.Client, start_worker) -> None:
    start_worker()
    sid = client.post("/v1/sessions", json={"kind": "vma"}).json()["id"]
    images = drawings(4, seed=3)
    items = [{"pixels": img.tolist(), "label": lab} for img, lab in zip(images, "aabb", strict=True)]
    added = client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items})
    assert added.status_code == 201, added.text
    conforms(AddedExemplars, added.json())
    url = f"/v1/sessions/{sid}"
    for fmt, absent in (("png", {"probs"}), ("probs", {"image"})):
        body = client.post(f"{url}/samples", json={"n": 2, "seed": 1, "format": fmt}).json()
        conforms(SampleResponse, body)
        for sample in body["samples"]:
            assert not set(sample) & absent  # a sample carries its format's member only
    query = {"images": [{"pixels": drawings(2, seed=9)[0].tolist()}]}
    for extra in ({"samples": 0}, {"samples": 2}, {"method": "importance", "samples": 2}):
        r = client.post(f"{url}/classify", json={**query, **extra})
        assert r.status_code == 200, r.text
        conforms(ClassifyResponse, r.json())
