"""`GET /v1/sessions` through the real API (uvicorn), a real Redis and a real worker: the caller's
live sessions only, newest first, paginated; deleted and expired sessions are never listed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.api.auth import key_digest, new_api_key
from app.config import ApiKey, Settings
from tests.conftest import PROBLEM, TEST_MODEL, VMA_TEST_MODEL, ApiServer, drawings, png_b64

ALICE, BOB, CAROL = (new_api_key() for _ in range(3))


@pytest.fixture
def keyed_api(settings: Settings) -> Iterator[ApiServer]:
    keys = [
        ApiKey(tenant="alice", sha256=key_digest(ALICE)),  # the default limit: her own session set
        ApiKey(tenant="bob", sha256=key_digest(BOB), max_sessions=50),
        ApiKey(tenant="carol", sha256=key_digest(CAROL), max_sessions=0),  # unlimited: the kinds' index
    ]
    server = ApiServer(settings.model_copy(update={"auth": "keys", "api_keys": keys})).start()
    yield server
    server.stop()


def as_(api: ApiServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"})


def create(c: httpx.Client, kind: str, **body: object) -> dict:
    r = c.post("/v1/sessions", json={"kind": kind, **body})
    assert r.status_code == 201, r.text
    time.sleep(0.005)  # `created` has millisecond resolution: keep the order of creation visible
    return dict(r.json())


def listing(c: httpx.Client, **params: int) -> dict:
    r = c.get("/v1/sessions", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return dict(r.json())


def ids(page: dict) -> list[str]:
    return [s["id"] for s in page["sessions"]]


def test_each_tenant_lists_its_own_sessions_newest_first_paginated(
    keyed_api: ApiServer, start_worker, settings: Settings, rdb: redis.Redis
) -> None:
    start_worker()
    with as_(keyed_api, ALICE) as alice, as_(keyed_api, BOB) as bob, as_(keyed_api, CAROL) as carol:
        a = [create(alice, "memnet"), create(alice, "vma", capacity=16), create(alice, "memnet", ttl_s=900)]
        b = [create(bob, "vma"), create(bob, "memnet")]
        c = [create(carol, "memnet"), create(carol, "vma")]
        r = alice.post(f"/v1/sessions/{a[0]['id']}/points", json={"values": [[1.0, 2.0]] * 3, "seq": 0})
        assert r.status_code == 200, r.text
        pngs = [{"image": png_b64(d), "label": str(i)} for i, d in enumerate(drawings(2))]
        r = alice.post(f"/v1/sessions/{a[1]['id']}/exemplars", json={"exemplars": pngs})
        assert r.status_code == 201, r.text

        mine = listing(alice)
        assert ids(mine) == [s["id"] for s in reversed(a)]  # newest first
        assert (mine["total"], mine["offset"], mine["limit"]) == (3, 0, 100)
        by_id = {s["id"]: s for s in mine["sessions"]}
        memnet, vma, fresh = (by_id[s["id"]] for s in a)
        assert memnet["kind"] == "memnet" and memnet["model"] == TEST_MODEL and memnet["model_version"] == "1"
        assert memnet["step"] == 3 and memnet["exemplars"] is None
        assert vma["kind"] == "vma" and vma["model"] == VMA_TEST_MODEL
        assert vma["exemplars"] == 2 and vma["step"] is None and vma["capacity"] == 16
        assert fresh["step"] == 0 and fresh["ttl_s"] == 900 and 0 < fresh["expires_in_s"] <= 900
        assert fresh["created"] == a[2]["created"] and fresh["input_dim"] == 2
        assert set(memnet) == {"id", "kind", "model", "model_version", "created", "ttl_s", "expires_in_s",
                               "capacity", "input_dim", "step", "exemplars"}  # fmt: skip

        assert ids(listing(bob)) == [s["id"] for s in reversed(b)]
        assert ids(listing(carol)) == [s["id"] for s in reversed(c)]  # unlimited: filtered by owner

        pages = [listing(alice, offset=o, limit=2) for o in (0, 2, 4)]
        assert [len(p["sessions"]) for p in pages] == [2, 1, 0]
        assert all(p["total"] == 3 and p["limit"] == 2 for p in pages)
        assert [sid for p in pages for sid in ids(p)] == ids(mine)

        # Others' sessions are listed to no one else, and deleting one removes it at once.
        assert alice.delete(f"/v1/sessions/{a[1]['id']}").status_code == 204
        after = listing(alice)
        assert ids(after) == [a[2]["id"], a[0]["id"]] and after["total"] == 2
        assert bob.delete(f"/v1/sessions/{a[0]['id']}").status_code == 404  # not bob's
        assert ids(listing(bob)) == [s["id"] for s in reversed(b)]


def test_expired_sessions_are_not_listed_and_leave_the_index(
    keyed_api: ApiServer, settings: Settings, rdb: redis.Redis
) -> None:
    with as_(keyed_api, ALICE) as alice, as_(keyed_api, CAROL) as carol:
        keep = create(alice, "memnet")
        brief = create(alice, "memnet", ttl_s=1)
        carol_brief = create(carol, "vma", ttl_s=1)
        assert set(ids(listing(alice))) == {keep["id"], brief["id"]}
        assert ids(listing(carol)) == [carol_brief["id"]]
        time.sleep(2.2)
        page = listing(alice)
        assert ids(page) == [keep["id"]] and page["total"] == 1
        assert listing(carol) == {"sessions": [], "total": 0, "offset": 0, "limit": 100}
    # The gone members left the sets they were listed from (a deletion, never a write of data).
    tenant_set = f"{settings.key_prefix}:tenant:{{alice}}:sessions"  # TenantStore.sessions_key
    assert rdb.zscore(tenant_set, brief["id"]) is None
    assert rdb.zscore(tenant_set, keep["id"]) is not None
    assert rdb.zscore(f"{settings.key_prefix}:sessions:vma", carol_brief["id"]) is None


def test_with_auth_off_every_session_is_listed(client: httpx.Client) -> None:
    made = [create(client, "memnet"), create(client, "vma"), create(client, "memnet")]
    page = listing(client)
    assert ids(page) == [s["id"] for s in reversed(made)] and page["total"] == 3
    assert ids(listing(client, offset=1, limit=1)) == [made[1]["id"]]


def test_listing_slides_no_ttl(client: httpx.Client, rdb: redis.Redis, settings: Settings) -> None:
    sid = create(client, "memnet", ttl_s=100)["id"]
    key = f"{settings.key_prefix}:{{{sid}}}:meta"
    rdb.expire(key, 50)
    listing(client)
    assert rdb.ttl(key) <= 50


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}])
def test_bad_pagination_is_422(client: httpx.Client, params: dict) -> None:
    r = client.get("/v1/sessions", params=params)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("/invalid-request")
    assert next(iter(params)) in r.json()["detail"]


def test_listing_needs_a_key_when_keys_are_on(keyed_api: ApiServer) -> None:
    with httpx.Client(base_url=keyed_api.url, timeout=30) as anon:
        r = anon.get("/v1/sessions")
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
