"""A worker's own bookkeeping across a job run alone and across a Redis failure between a
batch's commit and its acknowledgement: no job is left pending unanswered until the stuck-job
claim, and no waiting request runs into its timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.config import Settings
from app.store.keys import Keys
from app.worker.main import Worker
from tests.conftest import ApiServer


@pytest.fixture
def served(settings: Settings, ckpt_dir: Path) -> Iterator[tuple[ApiServer, Worker, Settings]]:
    """The API in this process and a worker driven batch by batch by the test (no loop of its own)."""
    settings = settings.model_copy(update={"request_timeout_s": 4.0})
    api = ApiServer(settings).start()
    worker = Worker(settings)
    assert worker._register(), "Redis is unreachable"
    try:
        yield api, worker, settings
    finally:
        api.stop()


@pytest.mark.parametrize("innocent_first", [False, True])
def test_next_jobs_dropped_after_an_alone_batch(served, rdb, innocent_first: bool) -> None:
    """Jobs read with the last acknowledgement survive the jobs run one at a time, whether the
    one taken alone is the re-delivered job or an innocent one queued before it."""
    api, worker, settings = served
    out: dict[str, tuple[int, float]] = {}
    with httpx.Client(base_url=api.url, timeout=30) as c:
        sids = [c.post("/v1/sessions", json={"kind": "memnet"}).json()["id"] for _ in range(3)]

        def post(sid: str) -> None:
            with httpx.Client(base_url=api.url, timeout=30) as cc:
                t0 = time.monotonic()
                r = cc.post(f"/v1/sessions/{sid}/points", json={"values": [[1.0, 2.0]], "seq": 0})
                out[sid] = (r.status_code, round(time.monotonic() - t0, 2))

        threads = []
        for sid in sids:  # one job each, in order
            threads.append(threading.Thread(target=post, args=(sid,)))
            threads[-1].start()
            time.sleep(0.5)
        first, second, third = worker.reader.read_batch(block_ms=500)
        second.deliveries = 2  # as claim_orphans hands over a dead worker's job
        worker._retry = [first, second] if innocent_first else [second]
        worker._next = [third] if innocent_first else [first, third]  # read with the last ack
        for _ in range(6):
            worker._one_batch()
        for t in threads:
            t.join(30)
        stream = Keys(settings.key_prefix).stream("memnet")
        assert all(status == 200 for status, _ in out.values()), out
        assert all(elapsed < 3.0 for _, elapsed in out.values()), out
        assert rdb.xpending(stream, "workers")["pending"] == 0


def test_ack_lost_after_commit(served, rdb) -> None:
    api, worker, settings = served
    with httpx.Client(base_url=api.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"kind": "memnet"}).json()["id"]
        out: dict[str, object] = {}

        def post() -> None:
            t0 = time.monotonic()
            r = c.post(f"/v1/sessions/{sid}/points", json={"values": [[1.0, 2.0]], "seq": 0})
            out["status"], out["elapsed"] = r.status_code, time.monotonic() - t0

        t = threading.Thread(target=post)
        t.start()
        real_ack = worker.reader.ack

        def ack_fails(*a, **k):  # Redis goes away right after the commit script ran
            raise redis.ConnectionError("Connection closed by server.")

        worker.reader.ack = ack_fails  # type: ignore[method-assign]
        with contextlib.suppress(redis.ConnectionError):  # Worker.run catches it and goes on
            worker._one_batch()
        worker.reader.ack = real_ack  # type: ignore[method-assign]
        for _ in range(4):  # Redis is back: the loop goes on
            worker._one_batch()
        t.join(30)
        stream = Keys(settings.key_prefix).stream("memnet")
        pending = rdb.xpending(stream, "workers")["pending"]
        assert out["status"] == 200
        assert out["elapsed"] < 2.0, f"the reply was never published: {out['elapsed']:.1f} s"
        assert pending == 0, "the job was never acknowledged"
