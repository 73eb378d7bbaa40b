"""Inputs that used to reach a 500: every one is now a 422 problem that names the field, and
changes nothing (integers past 64 bits, lone surrogates, booleans as numbers)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import SCALED_TEST_MODEL, problem

BIG = 2**64


def post_escaped(client: httpx.Client, url: str, body: object) -> httpx.Response:
    """JSON with \\uXXXX escapes, as a client would send a lone surrogate (httpx cannot encode it)."""
    return client.post(url, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def session(client: httpx.Client, **body: object) -> str:
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("seq", [BIG, 2**63, -1])
def test_a_seq_past_64_bits_is_422(client, seq) -> None:
    sid = session(client, kind="memnet", model=SCALED_TEST_MODEL)
    problem(client.post(f"/v1/sessions/{sid}/points", json={"values": [1.0], "seq": seq}), 422, None, "seq")
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0


def test_an_exemplar_id_past_64_bits_is_422_in_samples_and_in_the_path(client) -> None:
    sid = session(client, kind="vma")
    problem(client.post(f"/v1/sessions/{sid}/samples", json={"exemplar_id": BIG}), 422, None, "exemplar_id")
    r = client.delete(f"/v1/sessions/{sid}/exemplars/{BIG}")
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_a_lone_surrogate_in_a_label_or_a_model_name_is_422(client) -> None:
    sid = session(client, kind="vma")
    pixels = [[0.0] * 28 for _ in range(28)]
    pixels[10][10:18] = [1.0] * 8
    body = {"exemplars": [{"pixels": pixels, "label": "a\ud800b"}]}
    problem(post_escaped(client, f"/v1/sessions/{sid}/exemplars", body), 422, None, "label")
    assert client.get(f"/v1/sessions/{sid}").json()["exemplars"] == 0
    problem(post_escaped(client, "/v1/sessions", {"kind": "memnet", "model": "\udfff"}), 422, None, "model")


@pytest.mark.parametrize("body", [{"ttl_s": True}, {"ttl_s": 1.5}, {"ttl_s": "60"}, {"ttl_s": BIG}])
def test_ttl_must_be_an_integer_in_range(client, body) -> None:
    problem(client.post("/v1/sessions", json={"kind": "memnet", **body}), 422, None, "ttl_s")


def test_a_boolean_horizon_or_top_k_is_not_a_number(client) -> None:
    sid = session(client, kind="memnet", model=SCALED_TEST_MODEL)
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": [1.0], "horizon": True})
    problem(r, 422, None, "horizon")
    vsid = session(client, kind="vma")
    body = {"images": [{"pixels": [[0.0] * 28] * 28}], "top_k": True}  # type: ignore[dict-item]
    problem(client.post(f"/v1/sessions/{vsid}/classify", json=body), 422, None, "top_k")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"kind": "memnet", "model": "\xff"}', "line 1, column 30"),  # not UTF-8
        (b'{"kind":\n "memnet", "model": "a\xc3"}', "line 2, column 23"),  # a truncated UTF-8 sequence
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # past the JSON parser's recursion limit
    ],
)
def test_a_body_json_cannot_even_start_on_is_422_not_a_bare_400(client, body, where) -> None:
    r = client.post("/v1/sessions", content=body, headers={"content-type": "application/json"})
    assert where in problem(r, 422, None, "malformed JSON")["detail"]
    assert r.json()["type"].endswith("/invalid-request")
    assert client.get("/v1/sessions").json()["total"] == 0


def test_the_served_document_states_the_limits_that_are_enforced(client, settings) -> None:
    doc = client.get("/openapi.json").json()
    models = doc["components"]["schemas"]
    create = models["CreateSession"]["properties"]
    ttl = next(b for b in create["ttl_s"]["anyOf"] if b.get("type") == "integer")
    assert ttl["maximum"] == settings.max_ttl_s
    r = client.post("/v1/sessions", json={"kind": "vma", "ttl_s": settings.max_ttl_s + 1})
    problem(r, 422, None, "ttl_s")
    capacity = next(b for b in create["capacity"]["anyOf"] if b.get("type") == "integer")
    assert capacity["maximum"] == settings.max_vma_capacity
    body = {"kind": "vma", "capacity": settings.max_vma_capacity + 1}
    problem(client.post("/v1/sessions", json=body), 422, None, "capacity")
    # A MemNet session's capacity is its model's: the document lists the models' own (8 here).
    memnet_rule = next(
        r for r in models["CreateSession"]["allOf"] if r["if"]["properties"]["kind"]["const"] == "memnet"
    )
    assert memnet_rule["then"]["properties"]["capacity"]["anyOf"][0] == {"enum": [8]}
    problem(client.post("/v1/sessions", json={"kind": "memnet", "capacity": 9}), 422, None, "capacity")
    horizon = models["PointsRequest"]["properties"]["horizon"]
    assert horizon["maximum"] == settings.max_horizon
    sid = session(client, kind="memnet", model=SCALED_TEST_MODEL)
    body = {"values": [1.0], "horizon": settings.max_horizon + 1}
    problem(client.post(f"/v1/sessions/{sid}/points", json=body), 422, None, "horizon")
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0
    # Integer bounds are exact: 2^63 - 1, not the float 2^63 that FastAPI writes.
    seq = next(b for b in models["PointsRequest"]["properties"]["seq"]["anyOf"] if b.get("type") == "integer")
    assert seq["maximum"] == 2**63 - 1 and isinstance(seq["maximum"], int)


def test_values_that_overflow_float32_state_are_refused_and_change_nothing(client, start_worker) -> None:
    """Huge values would leave a per-session scaled state at inf, and every later prediction null."""
    start_worker()
    sid = session(client, kind="memnet", model=SCALED_TEST_MODEL)
    ok = client.post(f"/v1/sessions/{sid}/points", json={"values": [1.0, 2.0, 3.0]})
    assert ok.status_code == 200, ok.text
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": [1e20, -1e20, 1.0]})
    body = problem(r, 422, None, "")
    assert "overflow" in body["detail"]
    after = client.post(f"/v1/sessions/{sid}/points", json={"values": [4.0, 5.0]})
    assert after.status_code == 200, after.text
    assert all(p is not None for row in after.json()["predictions"] for p in row)
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 5
