"""A full Redis (maxmemory with noeviction, as deployed) through the real API and a real worker:
writes are refused with 503 store-full and Retry-After, reads go on, nothing is lost, and
service resumes once memory is freed."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from app.api.auth import key_digest, new_api_key
from app.config import ApiKey, Settings
from app.embedded import EmbeddedRedis
from tests.conftest import ApiServer, free_port
from tests.integration.test_errors import GOOD_ROWS, new_session, points_url, problem, snapshot

KEY = new_api_key()


def fill(r: redis.Redis) -> None:
    """Write 2 MB of filler, then cap Redis 1 MB below what it uses: full until the filler goes."""
    for n in range(256):
        r.set(f"filler:{n}", b"x" * 8192)
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - (1 << 20))
    try:
        r.set("probe", b"x")
        raise AssertionError("Redis still takes writes")
    except redis.exceptions.OutOfMemoryError:
        pass


def test_a_full_store_refuses_writes_with_503_and_loses_nothing(
    settings: Settings, start_worker, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    keyed = settings.model_copy(
        update={
            "redis_url": server.url, "port": free_port(), "auth": "keys",
            "api_keys": [ApiKey(tenant="t", sha256=key_digest(KEY), rate_per_s=1000)],
        }
    )  # fmt: skip
    api = ApiServer(keyed).start()
    admin = redis.Redis.from_url(server.url)
    try:
        start_worker(wait=False, redis_url=server.url).wait_ready(admin, settings.key_prefix)
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=api.url, timeout=30, headers=headers) as c:
            sid = new_session(c)
            assert c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 0}).status_code == 200
            fill(admin)
            for r in (
                c.post("/v1/sessions", json={"kind": "memnet"}),
                c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 3}),
                c.post(f"/v1/sessions/{sid}/fork"),
            ):
                problem(r, 503, "store-full", "full")
                assert r.headers["retry-after"] == "5"
            # Reads still work (the rate limiter lets them through though it cannot count).
            assert snapshot(c, sid) == (3, 1)
            for key in admin.scan_iter(match="filler:*", count=1000):
                admin.delete(key)
            r = c.post(points_url(sid), json={"values": GOOD_ROWS, "seq": 3})
            assert r.status_code == 200, r.text
            assert snapshot(c, sid) == (6, 2)
            assert c.post("/v1/sessions", json={"kind": "memnet"}).status_code == 201
    finally:
        api.stop()
        admin.close()
        server.stop()
