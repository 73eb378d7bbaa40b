"""Operations through the real service: /metrics, request ids, JSON logs.

A real uvicorn API, real worker processes and a real Redis; /metrics is read with
prometheus_client's own parser.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.config import Settings
from app.store.keys import Keys
from tests.conftest import ApiServer, drawings

PROBLEM = "application/problem+json"
ROWS = [[1.0, -2.0], [1.5, -1.5], [2.0, -2.5], [2.5, -1.0], [3.0, -2.0]]


def scrape(client: httpx.Client) -> list[Sample]:
    """Every sample of /metrics, parsed as Prometheus does."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def wait_for(client: httpx.Client, ok: Callable[[list[Sample]], bool], timeout: float = 10) -> list[Sample]:
    """Scrape until `ok` holds (worker figures arrive with the next heartbeat)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(client)
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def new_session(client: httpx.Client, kind: str, **body: object) -> str:
    r = client.post("/v1/sessions", json={"kind": kind, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
def logged_api(settings: Settings) -> Iterator[httpx.Client]:
    """An API with MEMSERVE_ACCESS_LOG on."""
    server = ApiServer(settings.model_copy(update={"access_log": True})).start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
    server.stop()


def test_queue_gauges_show_a_waiting_job_until_a_worker_takes_it(
    client: httpx.Client, start_worker: Any, settings: Settings
) -> None:
    sid = new_session(client, "memnet")
    stream = Keys(settings.key_prefix).stream("memnet")
    answers: list[httpx.Response] = []
    poster = threading.Thread(
        target=lambda: answers.append(client.post(f"/v1/sessions/{sid}/points", json={"values": ROWS[:2]}))
    )
    poster.start()  # no worker yet: the job waits in the stream
    samples = wait_for(client, lambda s: value(s, "memserve_queue_depth", stream=stream) == 1)
    assert value(samples, "memserve_queue_waiting", stream=stream) == 1
    assert value(samples, "memserve_queue_pending", stream=stream) == 0
    time.sleep(0.2)
    samples = scrape(client)
    assert value(samples, "memserve_queue_oldest_job_age_seconds", stream=stream) >= 0.15
    assert value(samples, "memserve_workers_live") == 0 and value(samples, "memserve_redis_up") == 1
    start_worker()
    poster.join(30)
    assert answers and answers[0].status_code == 200, answers
    samples = scrape(client)
    assert value(samples, "memserve_queue_depth", stream=stream) == 0
    assert value(samples, "memserve_queue_oldest_job_age_seconds", stream=stream) == 0


def test_metrics_count_requests_per_route_and_the_workers_batches(
    client: httpx.Client, start_worker: Any
) -> None:
    start_worker()
    sid = new_session(client, "memnet")
    for seq, size in ((0, 2), (2, 3)):
        r = client.post(f"/v1/sessions/{sid}/points", json={"values": ROWS[seq : seq + size], "seq": seq})
        assert r.status_code == 200, r.text
    assert client.post(f"/v1/sessions/{sid}/points", json={"values": ROWS[:1], "seq": 0}).status_code == 409
    vma = new_session(client, "vma")
    items = [{"pixels": img.tolist(), "label": lab} for img, lab in zip(drawings(3), "aab", strict=True)]
    assert client.post(f"/v1/sessions/{vma}/exemplars", json={"exemplars": items}).status_code == 201
    query = {"images": [{"pixels": drawings(1, seed=9)[0].tolist()}]}
    assert client.post(f"/v1/sessions/{vma}/classify", json=query).status_code == 200
    assert client.get(f"/v1/sessions/{'0' * 32}").status_code == 404
    assert client.get("/v2/nowhere/7").status_code == 404

    def all_counted(s: list[Sample]) -> bool:  # the last heartbeat has seen every job
        jobs = value(s, "memserve_worker_jobs_total", kind="memnet") + value(s, "memserve_vma_items_total")
        return value(s, "memserve_stream_steps_total") == 5 and jobs == 5

    samples = wait_for(client, all_counted)
    assert value(samples, "memserve_stream_steps_total") == 5  # the points posted and applied
    points = "/v1/sessions/{sid}/points"
    assert value(samples, "memserve_http_requests_total", route=points, method="POST", status="200") == 2
    assert value(samples, "memserve_http_requests_total", route=points, status="409") == 1
    assert value(samples, "memserve_http_requests_total", route="/v1/sessions/{sid}", status="404") == 1
    assert value(samples, "memserve_http_requests_total", route="unmatched", status="404") == 1
    assert not any(sid in str(s.labels) or "nowhere" in str(s.labels) for s in samples)  # templates only
    buckets = [s for s in samples if s.name == "memserve_http_request_duration_seconds_bucket"
               and s.labels["route"] == points and s.labels["status"] == "200"]  # fmt: skip
    assert {s.labels["le"] for s in buckets} >= {"0.005", "1.0", "+Inf"}
    assert max(s.value for s in buckets) == 2
    for kind in ("memnet", "vma"):
        assert value(samples, "memserve_worker_batch_jobs_count", kind=kind) > 0
        assert value(samples, "memserve_worker_batch_jobs_bucket", kind=kind, le="+Inf") > 0
        assert value(samples, "memserve_worker_batch_seconds_count", kind=kind) > 0
        assert value(samples, "memserve_worker_batch_seconds_sum", kind=kind) > 0
    assert value(samples, "memserve_worker_jobs_total", kind="memnet") == 3  # the conflict is a job too
    assert value(samples, "memserve_vma_items_total") == 2  # one add job, one query image
    assert value(samples, "memserve_exemplars_added_total") == 3
    assert value(samples, "memserve_sessions_created_total", kind="vma") == 1
    assert value(samples, "memserve_workers_live") == 1 and value(samples, "memserve_worker_info") == 1
    assert value(samples, "memserve_sessions_live", kind="memnet") == 1
    assert value(samples, "memserve_sessions_live", kind="vma") == 1
    assert value(samples, "memserve_worker_reclaimed_jobs_total") == 0
    assert value(samples, "memserve_http_requests_in_flight") == 1  # the scrape itself
    assert value(samples, "process_cpu_seconds_total") > 0
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert value(scrape(client), "memserve_sessions_live", kind="memnet") == 0


def test_live_sessions_follow_expiry_and_sliding(
    client: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix)
    short, slid = new_session(client, "memnet", ttl_s=1), new_session(client, "memnet", ttl_s=1)
    new_session(client, "memnet")
    rdb.expire(keys.meta(slid), 60)  # what a worker's commit does: the expiry slides
    assert value(scrape(client), "memserve_sessions_live", kind="memnet") == 3
    time.sleep(1.3)
    assert rdb.exists(keys.meta(short)) == 0
    assert value(scrape(client), "memserve_sessions_live", kind="memnet") == 2
    score = rdb.zscore(f"{settings.key_prefix}:sessions:memnet", slid)
    assert score is not None and score > time.time() + 50  # re-scored with its true expiry


def test_a_request_id_comes_back_reaches_the_worker_and_the_logs(
    logged_api: httpx.Client, start_worker: Any, json_logs: io.StringIO
) -> None:
    worker = start_worker(log_format="json", access_log=True)
    sid = new_session(logged_api, "memnet")
    rid = "client-req-0042"
    r = logged_api.post(
        f"/v1/sessions/{sid}/points", json={"values": ROWS[:2]}, headers={"X-Request-ID": rid}
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    # Invalid ids (too long, a space, a control character) are replaced; none given: one is made.
    for bad in ("x" * 129, "two words", "tab\there"):
        got = logged_api.get(f"/v1/sessions/{sid}", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32 and int(got, 16) >= 0
    made = {logged_api.get("/health/live").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3
    assert logged_api.get(f"/v1/sessions/{sid}", headers={"X-Request-ID": "x" * 128}).status_code == 200
    # A problem names the request it answers.
    missing = logged_api.get(f"/v1/sessions/{'0' * 32}", headers={"X-Request-ID": "lost-1"})
    assert missing.headers["content-type"] == PROBLEM and missing.json()["request_id"] == "lost-1"
    assert missing.headers["x-request-id"] == "lost-1"

    api_lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    mine = next(e for e in api_lines if e.get("request_id") == rid)
    assert mine["route"] == "/v1/sessions/{sid}/points" and mine["status"] == 200
    assert mine["logger"] == "memserve.access" and mine["level"] == "INFO" and mine["time"].endswith("Z")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [ln for ln in worker.log_path.read_text().splitlines() if ln.strip()]
        entries = [json.loads(ln) for ln in lines]  # every line of the worker's log is JSON
        job_lines = [e for e in entries if e.get("request_id") == rid]
        if job_lines:
            break
        time.sleep(0.1)
    assert job_lines, lines[-5:]
    assert job_lines[0]["sid"] == sid and job_lines[0]["op"] == "points" and job_lines[0]["kind"] == "memnet"
    assert {"time", "level", "logger", "message", "process"} <= job_lines[0].keys()
