"""JSON bodies through the real API (uvicorn, real Redis): a body sent without
`content-type: application/json` is refused with 415 `unsupported-media-type`, whose detail
names the header; malformed JSON is 422 `invalid-request` with its line and column. Either way
nothing changes."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from app.config import Settings
from app.store.keys import Keys
from tests.conftest import problem

CREATE = '{"kind": "memnet", "ttl_s": 60}'


def metas(rdb: redis.Redis, settings: Settings) -> set[bytes]:
    return set(rdb.scan_iter(match=f"{settings.key_prefix}:*:meta", count=1000))


@pytest.fixture
def sid(client: httpx.Client) -> str:
    r = client.post("/v1/sessions", json={"kind": "memnet"})
    assert r.status_code == 201
    return str(r.json()["id"])


@pytest.mark.parametrize(
    "content_type", ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                     "application/xml", "multipart/form-data; boundary=x", None],
)  # fmt: skip
def test_a_json_body_without_a_json_content_type_is_415_naming_the_header(
    client: httpx.Client, rdb: redis.Redis, settings: Settings, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/sessions", content=CREATE, headers=headers)
    assert ("content-type" in r.request.headers) == (content_type is not None)
    body = problem(r, 415, "unsupported-media-type")
    assert "content-type: application/json" in body["detail"]
    assert (repr(content_type) if content_type else "is missing") in body["detail"]
    assert body["content_type"] == content_type
    assert metas(rdb, settings) == set()


def test_points_with_a_text_body_are_415_and_change_nothing(
    client: httpx.Client, sid: str, rdb: redis.Redis, settings: Settings
) -> None:
    raw = json.dumps({"values": [[1.0, 2.0]], "seq": 0})
    r = client.post(f"/v1/sessions/{sid}/points", content=raw, headers={"content-type": "text/plain"})
    problem(r, 415, "unsupported-media-type")
    assert rdb.xlen(Keys(settings.key_prefix).stream("memnet")) == 0
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                     "application/vnd.memserve+json"],
)  # fmt: skip
def test_json_content_types_are_accepted(client: httpx.Client, content_type: str) -> None:
    r = client.post("/v1/sessions", content=CREATE, headers={"content-type": content_type})
    assert r.status_code == 201, r.text


def test_an_empty_body_is_still_a_422_whatever_its_content_type(client: httpx.Client) -> None:
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/json"}):
        r = client.post("/v1/sessions", content=b"", headers=headers)
        problem(r, 422, "invalid-request")


MALFORMED = {
    "trailing-comma": '{"kind": "memnet",\n "ttl_s": 60,\n}',
    "unclosed": '{"kind": "memnet",\n  "ttl_s": 60',
    "single-quotes": "{'kind': 'memnet'}",
    "second-line": '{\n  "kind": "memnet"\n  "ttl_s": 60\n}',
    "garbage": "kind=memnet",
    "truncated-string": '{"kind": "mem',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_json_is_422_with_its_line_and_column(
    client: httpx.Client, rdb: redis.Redis, settings: Settings, raw: str
) -> None:
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(raw)
    want = parsed.value
    r = client.post("/v1/sessions", content=raw, headers={"content-type": "application/json"})
    body = problem(r, 422, "invalid-request")
    assert (body["line"], body["column"]) == (want.lineno, want.colno), (body, want)
    assert f"malformed JSON at line {want.lineno}, column {want.colno}" in body["detail"]
    assert want.msg in body["detail"]
    assert metas(rdb, settings) == set()


def test_malformed_points_are_422_with_the_position_and_change_nothing(
    client: httpx.Client, sid: str, rdb: redis.Redis, settings: Settings
) -> None:
    raw = '{"values": [[1.0, 2.0],\n            [3.0 4.0]], "seq": 0}'
    r = client.post(f"/v1/sessions/{sid}/points", content=raw, headers={"content-type": "application/json"})
    body = problem(r, 422, "invalid-request")
    assert (body["line"], body["column"]) == (2, 18)
    assert "JSON" in body["detail"] and "line 2, column 18" in body["detail"]
    assert rdb.xlen(Keys(settings.key_prefix).stream("memnet")) == 0
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0
