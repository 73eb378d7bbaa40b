"""Workers under abuse: a job that kills its worker is set aside without taking its batch-mates
with it, and heavy VMA work stays within the worker's memory budget."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from app.config import Settings
from app.store.keys import Keys
from tests.conftest import VMA_TEST_MODEL, drawings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Room for three worker starts within one request."""
    return settings.model_copy(update={"request_timeout_s": 90.0})


def _post_points(url: str, sid: str, request_id: str, out: dict[str, httpx.Response]) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        body = {"values": [[0.1, 0.0], [0.2, 0.1], [0.3, 0.2]], "seq": 0}
        out[request_id] = c.post(
            f"/v1/sessions/{sid}/points", json=body, headers={"X-Request-ID": request_id}
        )


def test_a_job_that_kills_workers_is_set_aside_and_its_batch_mates_are_answered(
    api, client: httpx.Client, start_worker, rdb: redis.Redis, settings: Settings
) -> None:
    sids = [client.post("/v1/sessions", json={"kind": "memnet"}).json()["id"] for _ in range(4)]
    rids = ["poison", "ok-1", "ok-2", "ok-3"]
    replies: dict[str, httpx.Response] = {}
    threads = [
        threading.Thread(target=_post_points, args=(api.url, sid, rid, replies))
        for sid, rid in zip(sids, rids, strict=True)
    ]
    for t in threads:
        t.start()
    stream = Keys(settings.key_prefix).stream("memnet")
    deadline = time.monotonic() + 10
    while rdb.xlen(stream) < 4:  # all four wait, so that one worker reads them as one batch
        assert time.monotonic() < deadline, "the four jobs were not queued"
        time.sleep(0.02)
    fault = {"fault_crash_request": "poison", "max_deliveries": 1}
    dead = [start_worker(wait=False, **fault)]
    for _ in range(2):  # the batch kills the first; the poison job, run alone, kills the second
        dead[-1].proc.wait(timeout=60)
        dead.append(start_worker(wait=False, **fault))
    for t in threads:
        t.join(90)
    for rid in rids[1:]:
        assert replies[rid].status_code == 200, replies[rid].text
        assert len(replies[rid].json()["predictions"]) == 3
    poison = replies["poison"]
    assert poison.status_code == 500 and poison.json()["type"].endswith("/job-failed"), poison.text
    assert "set aside" in poison.json()["detail"]
    assert dead[-1].proc.poll() is None, "the third worker refused the job instead of running it"


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_saturating_importance_classify_stays_within_the_memory_budget(
    api, client: httpx.Client, start_worker
) -> None:
    budget_mb = 1024
    worker = start_worker(worker_memory_mb=budget_mb, memory_cache_mb=64, state_cache_mb=64, backend="torch")
    sid = client.post("/v1/sessions", json={"kind": "vma", "model": VMA_TEST_MODEL}).json()["id"]
    imgs = drawings(40, seed=11)
    items = [{"pixels": img.tolist(), "label": f"c{i % 8}"} for i, img in enumerate(imgs[:32])]
    assert client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items}).status_code == 201
    queries = [{"pixels": img.tolist()} for img in imgs[32:]]

    def one(i: int) -> int:
        body = {"images": queries * (3 if i % 4 == 0 else 1), "method": "importance", "samples": 256}
        with httpx.Client(base_url=api.url, timeout=120) as c:
            return c.post(f"/v1/sessions/{sid}/classify", json=body).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert set(codes) <= {200, 413, 429}, codes
    assert codes.count(200) >= 4 and codes.count(413) == 4, codes  # 24 x 256 > 4096 evaluations
    assert worker.proc.poll() is None, "the worker died"
    peak = _peak_rss_mb(worker.pid)
    assert peak < budget_mb, f"peak RSS {peak:.0f} MB over the {budget_mb} MB budget"
    print(
        f"classify under a {budget_mb} MB budget: {codes.count(200)} x 200, {codes.count(413)} x 413, "
        f"{codes.count(429)} x 429; worker peak RSS {peak:.0f} MB"
    )
