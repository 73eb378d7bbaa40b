"""API keys and tenancy through the real API (uvicorn) on a real Redis.

Sessions belong to the tenant of the key that created them; any other key gets exactly the
404 a never-issued id gets, and nothing changes. Per-tenant limits on live sessions and on
request rate answer 429 with Retry-After, counted in Redis so that API processes agree.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from app.api.auth import key_digest, new_api_key
from app.config import ApiKey, Settings
from app.store.keys import Keys, new_session_id
from tests.conftest import REPO, ApiServer, drawings, free_port, png_b64, settings_env
from tests.integration.test_stream import post, series

PROBLEM = "application/problem+json"

ALICE, ALICE_2, BOB, TIGHT, SLOW, BUSY, HERD = (new_api_key() for _ in range(7))


def keyed(settings: Settings, **extra: object) -> Settings:
    """`settings` with authentication on and the keys of these tests."""
    keys = [
        ApiKey(tenant="alice", sha256=key_digest(ALICE)),
        ApiKey(tenant="alice", sha256=key_digest(ALICE_2)),  # a second key: rotation
        ApiKey(tenant="bob", sha256=key_digest(BOB)),
        ApiKey(tenant="tight", sha256=key_digest(TIGHT), max_sessions=2),
        ApiKey(tenant="slow", sha256=key_digest(SLOW), rate_per_s=2, burst=3),
        ApiKey(tenant="busy", sha256=key_digest(BUSY), rate_per_s=200, burst=20),
        ApiKey(tenant="herd", sha256=key_digest(HERD), rate_per_s=5000, burst=1000),
    ]
    return settings.model_copy(update={"auth": "keys", "api_keys": keys, **extra})


@pytest.fixture
def keyed_api(settings: Settings) -> Iterator[ApiServer]:
    server = ApiServer(keyed(settings)).start()
    yield server
    server.stop()


def as_(api: ApiServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=api.url, timeout=30, headers=headers)


def new_session(c: httpx.Client, kind: str = "memnet", **body: object) -> str:
    r = c.post("/v1/sessions", json={"kind": kind, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def same_problem(a: httpx.Response, b: httpx.Response) -> bool:
    """Two problem responses that differ only in which id and request they name."""

    def strip(r: httpx.Response) -> dict:
        body = {k: v for k, v in r.json().items() if k not in ("instance", "request_id")}
        body["detail"] = re.sub(r"[0-9a-f]{32}", "<sid>", body["detail"])
        return body

    return a.status_code == b.status_code and strip(a) == strip(b)


def test_v1_needs_a_known_bearer_key_and_probes_do_not(keyed_api: ApiServer) -> None:
    with as_(keyed_api, None) as anon:
        r = anon.post("/v1/sessions", json={"kind": "no-such-kind"})  # the key is checked first
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["type"].endswith("/unauthorized")
        for header in ("Bearer " + new_api_key(), "Basic " + ALICE, ALICE, "Bearer"):
            r = anon.get("/v1/models", headers={"Authorization": header})
            assert r.status_code == 401, header
            assert "invalid_token" in r.headers["www-authenticate"]
        assert anon.get("/health/live").status_code == 200
        assert anon.get("/metrics").status_code == 200
    with as_(keyed_api, ALICE) as alice:
        assert alice.get("/v1/models").status_code == 200
        me = alice.get("/v1/tenant").json()
        assert me["tenant"] == "alice" and me["auth"] == "keys" and me["max_sessions"] == 1000


def test_a_session_is_invisible_to_other_tenants_and_unchanged_by_them(
    keyed_api: ApiServer, start_worker, settings: Settings
) -> None:
    start_worker()
    with as_(keyed_api, ALICE) as alice, as_(keyed_api, BOB) as bob, as_(keyed_api, ALICE_2) as alice2:
        sid = new_session(alice)
        assert re.fullmatch(r"[0-9a-f]{32}", sid)  # 128-bit random id
        xs = series(10)
        assert post(alice, sid, xs[:6], 0).status_code == 200
        before = alice.get(f"/v1/sessions/{sid}").json()
        nobody = new_session_id()
        attempts = [
            ("GET", "/v1/sessions/{}", None),
            ("POST", "/v1/sessions/{}/points", {"values": xs[6:].tolist(), "seq": 6}),
            ("GET", "/v1/sessions/{}/export", None),
            ("POST", "/v1/sessions/{}/fork", None),
            ("DELETE", "/v1/sessions/{}", None),
        ]
        for method, path, body in attempts:
            theirs = bob.request(method, path.format(sid), json=body)
            unknown = bob.request(method, path.format(nobody), json=body)
            assert theirs.status_code == 404, (method, path, theirs.text)
            assert same_problem(theirs, unknown), (theirs.json(), unknown.json())
        after = alice.get(f"/v1/sessions/{sid}").json()
        assert after["step"] == before["step"] == 6 and after["version"] == before["version"]
        assert bob.get("/v1/tenant").json()["live_sessions"] == 0
        # The tenant's other key sees and uses the same session.
        assert post(alice2, sid, xs[6:], 6).status_code == 200
        assert alice.get(f"/v1/sessions/{sid}").json()["step"] == 10
    r = redis.Redis.from_url(settings.require_redis_url())
    assert r.hget(Keys(settings.key_prefix).meta(sid), "owner") == b"alice"
    r.close()


def test_vma_routes_check_the_owner_too(keyed_api: ApiServer, start_worker) -> None:
    start_worker()
    ink = drawings(2)
    exemplars = [{"image": png_b64(img), "label": str(i)} for i, img in enumerate(ink)]
    with as_(keyed_api, ALICE) as alice, as_(keyed_api, BOB) as bob:
        sid = new_session(alice, "vma")
        assert alice.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": exemplars}).status_code == 201
        image = [{"image": png_b64(ink[0])}]
        for method, path, body in [
            ("POST", "exemplars", {"exemplars": exemplars}),
            ("GET", "exemplars", None),
            ("DELETE", "exemplars/0", None),
            ("POST", "classify", {"images": image}),
            ("POST", "samples", {"n": 1}),
        ]:
            r = bob.request(method, f"/v1/sessions/{sid}/{path}", json=body)
            assert r.status_code == 404 and r.json()["type"].endswith("/session-not-found"), (path, r.text)
        page = alice.get(f"/v1/sessions/{sid}/exemplars").json()
        assert page["total"] == 2
        assert alice.post(f"/v1/sessions/{sid}/classify", json={"images": image}).status_code == 200


def test_live_sessions_are_limited_per_tenant_with_retry_after(keyed_api: ApiServer) -> None:
    with as_(keyed_api, TIGHT) as tight, as_(keyed_api, ALICE) as alice:
        first = new_session(tight, ttl_s=300)
        new_session(tight, ttl_s=1)
        for r in (
            tight.post("/v1/sessions", json={"kind": "memnet"}),
            tight.post(f"/v1/sessions/{first}/fork"),
        ):
            assert r.status_code == 429 and r.headers["content-type"] == PROBLEM, r.text
            assert r.json()["type"].endswith("/session-limit") and r.json()["max_sessions"] == 2
            assert 1 <= int(r.headers["retry-after"]) <= 2  # the 1 s session ends first
        doc = tight.get(f"/v1/sessions/{first}/export").content
        r = tight.post("/v1/sessions/import", content=doc)
        assert r.status_code == 429
        assert tight.get("/v1/tenant").json()["live_sessions"] == 2
        assert new_session(alice)  # other tenants are not affected
        # An expired session frees its place (found lazily, when the set is full)...
        time.sleep(1.3)
        third = new_session(tight)
        assert tight.post("/v1/sessions", json={"kind": "memnet"}).status_code == 429
        # ... and so does a deleted one, at once.
        assert tight.delete(f"/v1/sessions/{third}").status_code == 204
        r = tight.post("/v1/sessions/import", content=doc)
        assert r.status_code == 201, r.text
        assert tight.get("/v1/tenant").json()["live_sessions"] == 2


def test_request_rate_is_limited_per_tenant_across_api_processes(settings: Settings) -> None:
    # Two API processes on one Redis: the tenant's budget is shared, not doubled.
    one = ApiServer(keyed(settings)).start()
    two = ApiServer(keyed(settings, port=free_port())).start()
    try:
        with as_(one, SLOW) as a, as_(two, SLOW) as b, as_(one, ALICE) as alice:
            codes = [c.get("/v1/models").status_code for c in (a, b, a, b)]
            assert codes == [200, 200, 200, 429]  # burst 3, then 2 per second
            r = a.get("/v1/models")
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            body = r.json()
            assert body["type"].endswith("/rate-limited") and 0 < body["retry_after_ms"] <= 500
            assert alice.get("/v1/models").status_code == 200  # another tenant: its own budget
            time.sleep(body["retry_after_ms"] / 1000 + 0.05)
            assert b.get("/v1/models").status_code == 200
            # Refused requests count for nothing: a wrong key is not charged to anyone.
            assert a.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        one.stop()
        two.stop()


def test_rate_leases_save_round_trips_and_never_admit_more_than_the_limit(
    keyed_api: ApiServer, settings: Settings
) -> None:
    # rate 200/s: an API process leases up to 10 requests (50 ms of the rate) per call to Redis.
    r = redis.Redis.from_url(settings.require_redis_url())

    def evalsha_calls() -> int:
        return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    with as_(keyed_api, BUSY) as busy, ThreadPoolExecutor(8) as pool:
        before = evalsha_calls()
        started = time.monotonic()
        assert [busy.get("/v1/tenant").status_code for _ in range(10)] == [200] * 10
        assert evalsha_calls() - before <= 2  # one lease (two if the machine stalled 100 ms)
        # Then more at once than the rate can admit, whatever this machine's speed: one at a
        # time, a busy machine may answer them slower than the rate refills.
        codes = list(pool.map(lambda _: busy.get("/v1/tenant").status_code, range(150)))
        elapsed = time.monotonic() - started
    r.close()
    # 10 + codes.count(200) admitted since the bucket was full: never more than the burst plus
    # what the rate refilled meanwhile, though unused leased requests may make it fewer.
    allowed = 20 + 200 * elapsed + 1
    assert 10 + len(codes) > allowed, f"{10 + len(codes)} requests in {elapsed:.2f} s: none over the rate"
    assert set(codes) <= {200, 429} and 429 in codes
    assert 10 + codes.count(200) <= allowed


def test_concurrent_requests_share_one_lease_and_are_not_refused(keyed_api: ApiServer) -> None:
    # 32 requests at once, well within 5000/s with a burst of 1000. Were each to lease its own
    # 250 (50 ms of the rate), they would ask for 8000 at once and refuse one another.
    with as_(keyed_api, HERD) as herd, ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda _: herd.get("/v1/tenant").status_code, range(320)))
    assert codes == [200] * 320


def memserve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the `memserve` command line as a user would; returns what it printed."""
    cmd = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_api_refuses_to_start_without_keys_unless_auth_is_off(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    env.pop("MEMSERVE_AUTH", None)
    env.pop("MEMSERVE_API_KEYS", None)
    run = memserve("api", env=env)
    assert run.returncode == 2
    assert "MEMSERVE_API_KEYS" in run.stderr and "MEMSERVE_AUTH=off" in run.stderr
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('[{"tenant": "x", "sha256": "not hex"}]')
    env["MEMSERVE_API_KEYS_FILE"] = str(keys_file)
    run = memserve("api", env=env)
    assert run.returncode == 2 and "MEMSERVE_API_KEYS_FILE" in run.stderr and "sha256" in run.stderr


def test_keys_new_prints_a_key_whose_entry_authenticates(settings: Settings, tmp_path: Path) -> None:
    run = memserve("keys", "new", "carol", "--max-sessions", "5", env=settings_env(settings))
    assert run.returncode == 0, run.stderr
    key, entry = run.stdout.splitlines()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(f"[{entry}]")
    server = ApiServer(settings.model_copy(update={"auth": "keys", "api_keys_file": keys_file})).start()
    try:
        with as_(server, key) as carol:
            me = carol.get("/v1/tenant").json()
            assert me["tenant"] == "carol" and me["max_sessions"] == 5
        assert key not in keys_file.read_text()  # only the hash is configured
    finally:
        server.stop()


def test_auth_off_acts_for_one_local_tenant_without_limits(client: httpx.Client) -> None:
    me = client.get("/v1/tenant").json()
    assert me == {
        "tenant": "", "auth": "off", "max_sessions": 0, "live_sessions": None, "rate_per_s": 0.0, "burst": 1,
    }  # fmt: skip
    sid = new_session(client)
    assert client.get(f"/v1/sessions/{sid}", headers={"Authorization": "Bearer anything"}).status_code == 200
    assert np.isfinite(client.get(f"/v1/sessions/{sid}").json()["expires_in_s"])


def test_access_log_names_the_tenant(settings: Settings, json_logs: io.StringIO) -> None:
    server = ApiServer(keyed(settings, access_log=True)).start()
    try:
        with as_(server, BOB) as bob, as_(server, None) as anon:
            assert bob.get("/v1/tenant").status_code == 200
            assert anon.get("/v1/tenant").status_code == 401
    finally:
        server.stop()
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    mine = [x for x in lines if x.get("route") == "/v1/tenant"]
    assert [(x["status"], x.get("tenant")) for x in mine] == [(200, "bob"), (401, None)]
