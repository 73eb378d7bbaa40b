"""Every error of the HTTP API, through the real service: a real uvicorn server, a real Redis.

Each refusal is checked for its status, `application/problem+json`, its stable problem
type and a detail that says what is wrong, and for having changed nothing: the session's
step and version stay put and no job reaches the stream. Most tests run without a worker,
so a job that slipped into the stream would stay there and be seen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.config import Settings
from app.embedded import EmbeddedRedis
from app.store.keys import Keys, new_session_id
from app.store.sessions import SessionMeta
from tests.conftest import PROBLEM, TEST_MODEL, ApiServer, free_port, problem

GOOD_ROWS = [[1.0, -2.0], [1.5, -1.5], [2.0, -2.5]]


def stream(settings: Settings) -> str:
    return Keys(settings.key_prefix).stream("memnet")


def metas(rdb: redis.Redis, settings: Settings) -> set[bytes]:
    return set(rdb.scan_iter(match=f"{settings.key_prefix}:*:meta", count=1000))


def snapshot(client: httpx.Client, sid: str) -> tuple[int, int]:
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    return r.json()["step"], r.json()["version"]


def new_session(client: httpx.Client, **body: object) -> str:
    r = client.post("/v1/sessions", json={"kind": "memnet", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def points_url(sid: str) -> str:
    return f"/v1/sessions/{sid}/points"


@pytest.fixture
def sid(client: httpx.Client) -> str:
    return new_session(client)


@pytest.fixture
def unchanged(client: httpx.Client, sid: str, rdb: redis.Redis, settings: Settings) -> Iterator[None]:
    """After the test: the session is where it was, no job was queued, no state was written."""
    before = snapshot(client, sid)
    assert rdb.xlen(stream(settings)) == 0
    yield
    assert snapshot(client, sid) == before
    assert rdb.xlen(stream(settings)) == 0
    assert not rdb.exists(Keys(settings.key_prefix).state(sid))


@pytest.fixture
def api_with(settings: Settings) -> Iterator[Callable[..., httpx.Client]]:
    """Factory: a client of an API started with `settings` overridden (stopped at teardown)."""
    started: list[tuple[ApiServer, httpx.Client]] = []

    def start(**update: object) -> httpx.Client:
        server = ApiServer(settings.model_copy(update={"port": free_port(), **update})).start()
        c = httpx.Client(base_url=server.url, timeout=30)
        started.append((server, c))
        return c

    yield start
    for server, c in started:
        c.close()
        server.stop()


# --- sessions ----------------------------------------------------------------------------

SIDS = {
    "well-formed": new_session_id(),
    "short": "0123abcd",
    "uppercase": "ABCDEF0123456789ABCDEF0123456789",
    "non-hex": "not-a-session-id-not-a-session-x",
    "hash-tag": "{" + "0" * 30 + "}",
}


@pytest.mark.parametrize("bad_sid", SIDS.values(), ids=SIDS.keys())
def test_an_unknown_session_is_404_on_get_delete_and_points(
    client: httpx.Client, rdb: redis.Redis, settings: Settings, bad_sid: str
) -> None:
    before = metas(rdb, settings)
    problem(client.get(f"/v1/sessions/{bad_sid}"), 404, "session-not-found", "does not exist")
    problem(client.delete(f"/v1/sessions/{bad_sid}"), 404, "session-not-found", "does not exist")
    r = client.post(points_url(bad_sid), json={"values": GOOD_ROWS, "seq": 0})
    problem(r, 404, "session-not-found", "does not exist")
    assert metas(rdb, settings) == before
    assert rdb.xlen(stream(settings)) == 0


def test_an_unknown_model_is_404_at_creation(client: httpx.Client, rdb: redis.Redis, settings) -> None:
    body = problem(
        client.post("/v1/sessions", json={"kind": "memnet", "model": "no-such-model"}),
        404, "model-not-found", "no-such-model", TEST_MODEL,
    )  # fmt: skip
    assert body["model"] == "no-such-model"
    assert metas(rdb, settings) == set()


@pytest.mark.parametrize("kind", ["lstm", "MEMNET", "", None, 1])
def test_a_kind_other_than_memnet_or_vma_is_422(client: httpx.Client, rdb, settings, kind) -> None:
    body = problem(client.post("/v1/sessions", json={"kind": kind}), 422, "invalid-request", "kind")
    assert body["errors"] and body["errors"][0]["loc"] == ["body", "kind"]
    assert metas(rdb, settings) == set()


def test_a_missing_kind_is_422(client: httpx.Client, rdb, settings) -> None:
    problem(client.post("/v1/sessions", json={"model": TEST_MODEL}), 422, "invalid-request", "kind")
    assert metas(rdb, settings) == set()


@pytest.mark.parametrize("model", [None, "vma-omniglot"])
def test_a_vma_session_without_a_vma_model_loaded_is_404(
    rdb, settings: Settings, ckpt_dir: Path, tmp_path: Path, model: str | None
) -> None:
    only_memnet = tmp_path / "ckpt"
    only_memnet.mkdir()
    for f in ckpt_dir.glob(f"{TEST_MODEL}.*"):
        (only_memnet / f.name).write_bytes(f.read_bytes())
    server = ApiServer(settings.model_copy(update={"checkpoint_dir": only_memnet})).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v1/sessions", json={"kind": "vma", "model": model})
    finally:
        server.stop()
    problem(r, 404, "model-not-found", "vma")
    assert metas(rdb, settings) == set()


def test_a_memnet_model_for_a_vma_session_is_422(client: httpx.Client, rdb, settings) -> None:
    r = client.post("/v1/sessions", json={"kind": "vma", "model": TEST_MODEL})
    problem(r, 422, "invalid-request", TEST_MODEL, "memnet")
    assert metas(rdb, settings) == set()


def test_points_to_a_vma_session_are_409_wrong_session_kind(
    client: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    # A VMA session record as SessionStore.create writes it.
    keys = Keys(settings.key_prefix)
    meta = SessionMeta(
        new_session_id(), "vma", "vma-test", "1", "2026-01-01T00:00:00.000+00:00", 600, 784, 16
    )
    rdb.hset(keys.meta(meta.sid), mapping=meta.to_hash())  # type: ignore[arg-type]
    rdb.expire(keys.meta(meta.sid), meta.ttl_s)
    before = snapshot(client, meta.sid)
    r = client.post(points_url(meta.sid), json={"values": [[0.0] * 784], "seq": 0})
    problem(r, 409, "wrong-session-kind", "vma", "memnet")
    assert snapshot(client, meta.sid) == before
    assert rdb.xlen(stream(settings)) == 0 and not rdb.exists(keys.state(meta.sid))


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "memnet", "owner": "me"},
        {"kind": "memnet", "ttl": 60},
        {"kind": "memnet", "model": TEST_MODEL, "input_dim": 3},
    ],
)
def test_unknown_fields_at_creation_are_422(client: httpx.Client, rdb, settings, body) -> None:
    extra = next(k for k in body if k not in ("kind", "model"))
    problem(client.post("/v1/sessions", json=body), 422, "invalid-request", extra)
    assert metas(rdb, settings) == set()


@pytest.mark.parametrize("capacity", [7, 9, 4096])
def test_a_memnet_capacity_other_than_the_models_is_422(
    client: httpx.Client, rdb, settings, capacity
) -> None:
    r = client.post("/v1/sessions", json={"kind": "memnet", "capacity": capacity})
    problem(r, 422, "invalid-request", "capacity", "(8)")
    assert metas(rdb, settings) == set()
    ok = client.post("/v1/sessions", json={"kind": "memnet", "capacity": 8})  # the model's: fine
    assert ok.status_code == 201 and ok.json()["capacity"] == 8


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_capacity_below_one_is_422(client: httpx.Client, rdb, settings, capacity) -> None:
    problem(
        client.post("/v1/sessions", json={"kind": "memnet", "capacity": capacity}), 422, "invalid-request"
    )
    assert metas(rdb, settings) == set()


@pytest.mark.parametrize("ttl_s", [0, -5])
def test_a_ttl_below_one_second_is_422(client: httpx.Client, rdb, settings, ttl_s) -> None:
    problem(
        client.post("/v1/sessions", json={"kind": "memnet", "ttl_s": ttl_s}), 422, "invalid-request", "ttl_s"
    )
    assert metas(rdb, settings) == set()


def test_a_ttl_above_the_maximum_is_422(client: httpx.Client, rdb, settings: Settings) -> None:
    r = client.post("/v1/sessions", json={"kind": "memnet", "ttl_s": settings.max_ttl_s + 1})
    body = problem(r, 422, "invalid-request", "ttl_s", str(settings.max_ttl_s))
    assert body["max_ttl_s"] == settings.max_ttl_s
    assert metas(rdb, settings) == set()
    ok = client.post("/v1/sessions", json={"kind": "memnet", "ttl_s": settings.max_ttl_s})
    assert ok.status_code == 201 and ok.json()["ttl_s"] == settings.max_ttl_s


# --- points ------------------------------------------------------------------------------

# (raw JSON body, problem slug, fragment of the detail); the test model has input_dim 2.
BAD_POINTS: dict[str, tuple[str, str, str]] = {
    "nan": ('{"values": [[1.0, 2.0], [NaN, 1.0]], "seq": 0}', "invalid-input", "values[1][0]"),
    "infinity": ('{"values": [[1.0, Infinity]], "seq": 0}', "invalid-input", "values[0][1]"),
    "minus-infinity": (
        '{"values": [[1.0, 2.0], [3.0, 4.0], [5.0, -Infinity]]}',
        "invalid-input",
        "values[2][1]",
    ),
    "beyond-float32": ('{"values": [[1e39, 0.0]], "seq": 0}', "invalid-input", "values[0][0]"),
    "beyond-float64": ('{"values": [[0.0, -1e400]], "seq": 0}', "invalid-input", "values[0][1]"),
    "strings": ('{"values": [["1.0", "2.0"]], "seq": 0}', "invalid-input", "numbers"),
    "a-string": ('{"values": [[1.0, "x"]], "seq": 0}', "invalid-input", "numbers"),
    "booleans": ('{"values": [[true, false]], "seq": 0}', "invalid-input", "numbers"),
    "nulls": ('{"values": [[null, null]], "seq": 0}', "invalid-input", "numbers"),
    "a-null": ('{"values": [[1.0, null]], "seq": 0}', "invalid-input", "numbers"),
    "empty": ('{"values": [], "seq": 0}', "invalid-request", "values"),
    "empty-row": ('{"values": [[]], "seq": 0}', "invalid-input", "numbers"),
    "not-a-list": ('{"values": {"a": 1}, "seq": 0}', "invalid-request", "values"),
    "ragged": ('{"values": [[1.0, 2.0], [3.0]], "seq": 0}', "invalid-input", "same number"),
    "rows-of-one": ('{"values": [[1.0], [2.0]], "seq": 0}', "invalid-input", "2 value(s)"),
    "rows-of-three": ('{"values": [[1.0, 2.0, 3.0]], "seq": 0}', "invalid-input", "2 value(s)"),
    "flat": ('{"values": [1.0, 2.0], "seq": 0}', "invalid-input", "flat list"),
    "negative-seq": ('{"values": [[1.0, 2.0]], "seq": -1}', "invalid-request", "seq"),
    "negative-horizon": ('{"values": [[1.0, 2.0]], "horizon": -1}', "invalid-request", "horizon"),
    "extra-field": ('{"values": [[1.0, 2.0]], "seq": 0, "reset": true}', "invalid-request", "reset"),
    "missing-values": ('{"seq": 0}', "invalid-request", "values"),
    "malformed-json": ('{"values": [[1.0, 2.0]', "invalid-request", "JSON"),
    "not-an-object": ("[[1.0, 2.0]]", "invalid-request", "body"),
    "missing-body": ("", "invalid-request", "body"),
}


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("raw", "slug", "fragment"), BAD_POINTS.values(), ids=BAD_POINTS.keys())
def test_bad_points_are_422_and_change_nothing(
    client: httpx.Client, sid: str, raw: str, slug: str, fragment: str
) -> None:
    r = client.post(points_url(sid), content=raw, headers={"content-type": "application/json"})
    problem(r, 422, slug, fragment)


def test_booleans_among_numbers_are_422(api_with: Callable[..., httpx.Client], rdb, settings) -> None:
    c = api_with(request_timeout_s=0.5)  # with the bug the chunk is queued; no worker answers
    sid = new_session(c)
    r = c.post(points_url(sid), content='{"values": [[1.5, true]], "seq": 0}',
               headers={"content-type": "application/json"})  # fmt: skip
    problem(r, 422, "invalid-input", "numbers")
    assert rdb.xlen(stream(settings)) == 0


def test_a_horizon_above_the_maximum_is_422(
    api_with: Callable[..., httpx.Client], rdb: redis.Redis, settings: Settings
) -> None:
    c = api_with(max_horizon=5)
    sid = new_session(c)
    before = snapshot(c, sid)
    body = problem(
        c.post(points_url(sid), json={"values": GOOD_ROWS, "horizon": 6}), 422, "invalid-request", "5"
    )
    assert body["max_horizon"] == 5
    assert snapshot(c, sid) == before and rdb.xlen(stream(settings)) == 0


def test_more_points_than_allowed_is_413(api_with: Callable[..., httpx.Client], rdb, settings) -> None:
    c = api_with(max_points_per_request=10)
    sid = new_session(c)
    before = snapshot(c, sid)
    body = problem(
        c.post(points_url(sid), json={"values": [[0.5, 0.5]] * 11, "seq": 0}),
        413, "payload-too-large", "11 points", "10",
    )  # fmt: skip
    assert body["max_points"] == 10
    assert snapshot(c, sid) == before and rdb.xlen(stream(settings)) == 0


def big_body() -> bytes:
    rows = ",".join(["[1.25, -2.5]"] * 400)
    raw = f'{{"values": [{rows}], "seq": 0}}'.encode()
    assert len(raw) > 4096
    return raw


def test_a_body_over_the_limit_with_content_length_is_413(
    api_with: Callable[..., httpx.Client], rdb, settings
) -> None:
    c = api_with(max_body_bytes=4096)
    sid = new_session(c)
    before = snapshot(c, sid)
    r = c.post(points_url(sid), content=big_body(), headers={"content-type": "application/json"})
    problem(r, 413, "payload-too-large", "4096")
    assert snapshot(c, sid) == before and rdb.xlen(stream(settings)) == 0


def test_a_chunked_body_over_the_limit_is_413(api_with: Callable[..., httpx.Client], rdb, settings) -> None:
    c = api_with(max_body_bytes=4096)
    sid = new_session(c)
    before = snapshot(c, sid)
    raw = big_body()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    r = c.post(points_url(sid), content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers  # really sent chunked
    try:
        problem(r, 413, "payload-too-large", "4096")
    finally:
        assert snapshot(c, sid) == before and rdb.xlen(stream(settings)) == 0


def test_a_chunked_body_over_the_limit_is_refused_and_changes_nothing(
    api_with: Callable[..., httpx.Client], rdb, settings
) -> None:
    c = api_with(max_body_bytes=4096)
    sid = new_session(c)
    before = snapshot(c, sid)
    raw = big_body()
    r = c.post(
        points_url(sid), content=iter([raw[:3000], raw[3000:]]), headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM, r.text
    assert snapshot(c, sid) == before and rdb.xlen(stream(settings)) == 0
    small = c.post(points_url(sid), content=iter([b'{"values": [[1.0, NaN]]}']),
                   headers={"content-type": "application/json"})  # fmt: skip
    problem(small, 422, "invalid-input", "values[0][1]")  # chunked bodies under the limit are read


# --- overload, timeouts, Redis down ------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after(api_with: Callable[..., httpx.Client], rdb, settings) -> None:
    c = api_with(queue_cap=2)  # and no worker: nothing drains the stream
    sid = new_session(c)
    before = snapshot(c, sid)
    for i in range(2):
        rdb.xadd(stream(settings), {"op": "placeholder", "n": i})
    ids = [e[0] for e in rdb.xrange(stream(settings))]
    r = c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 0})
    problem(r, 429, "queue-full", "2 jobs")
    assert int(r.headers["retry-after"]) >= 1
    assert [e[0] for e in rdb.xrange(stream(settings))] == ids
    assert snapshot(c, sid) == before


def test_no_reply_in_time_is_504_and_a_retry_with_the_same_seq_gets_the_predictions(
    api_with: Callable[..., httpx.Client], start_worker, rdb: redis.Redis, settings: Settings
) -> None:
    c = api_with(request_timeout_s=0.5)
    sid = new_session(c)
    body = {"values": GOOD_ROWS, "seq": 0, "horizon": 2}
    t0 = time.monotonic()
    r = c.post(points_url(sid), json=body)
    assert time.monotonic() - t0 < 5
    problem(r, 504, "timeout", "same seq")
    assert snapshot(c, sid) == (0, 0)
    assert rdb.xlen(stream(settings)) == 1  # queued: a worker will still apply it

    start_worker()
    deadline = time.monotonic() + 30
    while snapshot(c, sid)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot(c, sid) == (3, 1)  # the timed-out chunk was applied, once

    while True:  # the safe-retry story: retry the same chunk and seq until answered
        again = c.post(points_url(sid), json=body)
        if again.status_code != 504 or time.monotonic() > deadline:
            break
    assert again.status_code == 200, again.text
    got = again.json()
    assert got["repeat"] is True and (got["seq"], got["step"]) == (0, 3)
    assert len(got["predictions"]) == 3 and len(got["forecast"]) == 2
    assert snapshot(c, sid) == (3, 1)  # not applied twice
    nxt = c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 3})
    assert nxt.status_code == 200 and nxt.json()["repeat"] is False and nxt.json()["step"] == 6


def test_refused_chunks_leave_an_advanced_session_unchanged(
    client: httpx.Client, start_worker, rdb, settings
) -> None:
    start_worker()
    sid = new_session(client)
    assert client.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 0}).status_code == 200
    before = snapshot(client, sid)
    assert before == (3, 1)
    bad = [
        ('{"values": [[1.0, NaN]], "seq": 3}', 422, "invalid-input"),
        ('{"values": [[1.0, 2.0, 3.0]], "seq": 3}', 422, "invalid-input"),
        ('{"values": [[1.0, 2.0]], "seq": 2}', 409, "seq-conflict"),
        ('{"values": [[1.0, 2.0]], "seq": 4}', 409, "seq-conflict"),
        ('{"values": [[1.0, 2.0]], "seq": 3, "horizon": -1}', 422, "invalid-request"),
    ]
    for raw, status, slug in bad:
        r = client.post(points_url(sid), content=raw, headers={"content-type": "application/json"})
        problem(r, status, slug)
        assert snapshot(client, sid) == before, raw
    assert rdb.xlen(stream(settings)) == 0  # refused by the worker are acknowledged and gone
    assert client.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 3}).json()["step"] == 6


def test_redis_unreachable_is_503_with_retry_after_and_the_api_stays_up(
    settings: Settings, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    api = ApiServer(settings.model_copy(update={"redis_url": server.url, "port": free_port()})).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            sid = new_session(c)
            assert snapshot(c, sid) == (0, 0)
            assert c.get("/health/ready").json()["redis"] is True
            # EmbeddedRedis.stop() keeps the server up while the API holds connections: shut it
            # down the way an operator (or a crash) would.
            with redis.Redis.from_url(server.url) as admin:
                admin.shutdown(nosave=True)
            calls = {
                "get": lambda: c.get(f"/v1/sessions/{sid}"),
                "points": lambda: c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 0}),
                "create": lambda: c.post("/v1/sessions", json={"kind": "memnet"}),
                "delete": lambda: c.delete(f"/v1/sessions/{sid}"),
            }
            for name, call in calls.items():
                r = call()
                problem(r, 503, "redis-unavailable", "unreachable")
                assert int(r.headers["retry-after"]) >= 1, name
            ready = c.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["redis"] is False and ready.json()["status"] == "not-ready"
            assert any("redis" in reason for reason in ready.json()["reasons"])
            assert c.get("/health/live").status_code == 200
            assert api.thread.is_alive()
    finally:
        api.stop()
        server.stop()


# --- routing and internal errors ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/sessions", "/v1/session", "/v1/sessions/abc/predict", "/nothing-here"])
def test_an_unknown_route_is_404_problem(client: httpx.Client, path: str) -> None:
    problem(client.get(path), 404, "not-found", path)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PATCH", "/v1/sessions"), ("PUT", "/v1/sessions/{sid}"), ("GET", "/v1/sessions/{sid}/points"),
     ("POST", "/health/live")],
)  # fmt: skip
def test_a_wrong_method_is_405_problem_and_changes_nothing(
    client: httpx.Client, sid: str, rdb, settings, method: str, path: str
) -> None:
    before = snapshot(client, sid)
    r = client.request(method, path.format(sid=sid), json={"values": GOOD_ROWS, "seq": 0})
    problem(r, 405, "method-not-allowed", method)
    assert snapshot(client, sid) == before and rdb.xlen(stream(settings)) == 0


def test_a_405_names_the_allowed_methods(client: httpx.Client, sid: str) -> None:
    r = client.put(f"/v1/sessions/{sid}")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "DELETE"}


def test_unreadable_session_meta_is_a_bare_500_problem_and_is_logged(
    client: httpx.Client, rdb: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # No mock: a meta hash without its fields, as a foreign writer (or a bad migration) would leave it.
    sid = new_session_id()
    rdb.hset(Keys(settings.key_prefix).meta(sid), mapping={"ttl": 60, "input_dim": "two"})
    with caplog.at_level(logging.ERROR, logger="memserve.api"):
        r = client.get(f"/v1/sessions/{sid}")
        deadline = time.monotonic() + 5
        while not any("unhandled error" in m for m in caplog.messages) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body.pop("request_id") == r.headers["x-request-id"]  # what a client quotes to the operator
    assert body == {"type": "about:blank", "title": "Internal Server Error", "status": 500}
    assert "Traceback" not in r.text and "input_dim" not in r.text  # no internals leak
    record = next(rec for rec in caplog.records if "unhandled error" in rec.getMessage())
    assert f"/v1/sessions/{sid}" in record.getMessage() and record.exc_info is not None
    # The process stays up. (uvicorn closes the connection of a request that raised, so ask
    # on a fresh one: a pooled keep-alive connection may be reset.)
    with httpx.Client(base_url=str(client.base_url), timeout=10) as fresh:
        assert fresh.get("/health/live").status_code == 200


def test_concurrent_refusals_do_not_leak_jobs(api: ApiServer, sid: str, rdb, settings) -> None:
    """Many bad chunks at once (a client gone wrong): each is refused, none is queued."""
    codes: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            for raw in ('{"values": [[NaN, 1.0]]}', '{"values": [[1.0]]}', '{"values": []}'):
                codes.append(c.post(points_url(sid), content=raw,
                                    headers={"content-type": "application/json"}).status_code)  # fmt: skip

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [422] * 12
    assert rdb.xlen(stream(settings)) == 0
