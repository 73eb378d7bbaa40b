"""MemNet streaming through the real API, a real Redis and real worker processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from app.config import Settings
from app.store.keys import Keys
from tests.conftest import SCALED_TEST_MODEL, TEST_MODEL, run_offline, wait_until_pending


def offline(ckpt_dir: Path, series: np.ndarray, horizon: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    return run_offline(TEST_MODEL, ckpt_dir, series, horizon)


def series(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return np.stack(
        [1.5 + np.sin(0.3 * t), -2 + 0.4 * np.cos(0.17 * t)], axis=1
    ) + 0.01 * rng.standard_normal((n, 2)).astype(np.float32)


def new_session(client: httpx.Client, **body: object) -> str:
    r = client.post("/v1/sessions", json={"kind": "memnet", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def post(
    client: httpx.Client, sid: str, values: np.ndarray, seq: int | None, horizon: int = 0
) -> httpx.Response:
    body: dict[str, object] = {"values": values.tolist(), "horizon": horizon}
    if seq is not None:
        body["seq"] = seq
    return client.post(f"/v1/sessions/{sid}/points", json=body)


def test_predictions_match_the_model_run_offline(client, start_worker, ckpt_dir) -> None:
    start_worker()
    xs = series(60)
    sid = new_session(client)
    got, seq = [], 0
    for size in (1, 5, 17, 1, 30, 6):  # longer than capacity 8: the ring buffer wraps
        r = post(client, sid, xs[seq : seq + size], seq, horizon=4 if seq + size == 60 else 0)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["seq"] == seq and body["step"] == seq + size and body["repeat"] is False
        got += body["predictions"]
        seq += size
    want, want_fc = offline(ckpt_dir, xs, horizon=4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(body["forecast"]), want_fc, rtol=1e-5, atol=1e-5)
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 60


def test_a_retry_of_the_last_chunk_returns_the_same_predictions(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    xs = series(12)
    first = post(client, sid, xs[:7], 0, horizon=3).json()
    again = post(client, sid, xs[:7], 0, horizon=3).json()
    assert again["repeat"] is True
    assert again["predictions"] == first["predictions"] and again["forecast"] == first["forecast"]
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 7
    # Same seq, other values: not a retry but a conflict, and nothing changes.
    r = post(client, sid, xs[1:8], 0)
    assert r.status_code == 409 and r.json()["expected_seq"] == 7
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 7


def test_seq_ahead_or_behind_is_refused_with_the_expected_seq(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    assert post(client, sid, series(3), 0).status_code == 200
    before = client.get(f"/v1/sessions/{sid}").json()
    for seq in (0, 2, 4, 100):
        r = post(client, sid, series(2), seq)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/seq-conflict") and r.json()["expected_seq"] == 3
    after = client.get(f"/v1/sessions/{sid}").json()
    assert (after["step"], after["version"]) == (before["step"], before["version"])


def test_without_seq_points_are_appended(client, start_worker, ckpt_dir) -> None:
    start_worker()
    sid = new_session(client)
    xs = series(10)
    a = post(client, sid, xs[:4], None).json()
    b = post(client, sid, xs[4:], None).json()
    assert (a["seq"], b["seq"], b["step"]) == (0, 4, 10)
    want, _ = offline(ckpt_dir, xs)
    np.testing.assert_allclose(np.asarray(a["predictions"] + b["predictions"]), want, rtol=1e-5, atol=1e-5)


def test_two_workers_apply_each_sessions_steps_in_order_once(client, start_worker, api, ckpt_dir) -> None:
    start_worker()
    start_worker()
    xs = series(40)
    ordered = [new_session(client) for _ in range(4)]
    shared = new_session(client)
    results: dict[str, list[list[float]]] = {sid: [] for sid in ordered}
    errors: list[str] = []

    def stream(sid: str) -> None:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            for seq in range(0, 40, 4):
                r = post(c, sid, xs[seq : seq + 4], seq)
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                results[sid] += r.json()["predictions"]

    def append(n: int) -> None:  # many clients appending to one session at once
        with httpx.Client(base_url=api.url, timeout=30) as c:
            for _ in range(n):
                r = post(c, shared, xs[:3], None)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=stream, args=(s,)) for s in ordered]
    threads += [threading.Thread(target=append, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    want, _ = offline(ckpt_dir, xs)
    for sid in ordered:
        np.testing.assert_allclose(np.asarray(results[sid]), want, rtol=1e-5, atol=1e-5)
    assert client.get(f"/v1/sessions/{shared}").json()["step"] == 4 * 10 * 3


def test_a_killed_workers_jobs_complete_elsewhere(
    client, start_worker, api, settings: Settings, rdb: redis.Redis, ckpt_dir
) -> None:
    # The first worker sleeps after reading each batch, so it dies holding its jobs.
    doomed = start_worker(fault_batch_delay_ms=60_000)
    xs = series(24)
    sids = [new_session(client) for _ in range(3)]
    replies: dict[str, httpx.Response] = {}

    def one(sid: str) -> None:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            replies[sid] = post(c, sid, xs, 0)

    threads = [threading.Thread(target=one, args=(s,)) for s in sids]
    for t in threads:
        t.start()
    stream = Keys(settings.key_prefix).stream("memnet")
    wait_until_pending(rdb, stream)  # the doomed worker holds jobs it will never finish
    doomed.kill()
    start_worker()
    for t in threads:
        t.join(60)
    want, _ = offline(ckpt_dir, xs)
    for sid in sids:
        assert replies[sid].status_code == 200, replies[sid].text
        np.testing.assert_allclose(np.asarray(replies[sid].json()["predictions"]), want, rtol=1e-5, atol=1e-5)
        assert client.get(f"/v1/sessions/{sid}").json()["step"] == 24  # applied once
    assert rdb.xpending(stream, "workers")["pending"] == 0


def test_session_expires_after_its_ttl_and_writes_slide_it(client, start_worker, rdb, settings) -> None:
    start_worker()
    sid = new_session(client, ttl_s=2)
    assert client.get(f"/v1/sessions/{sid}").json()["ttl_s"] == 2
    for seq in range(3):  # keeps it alive past its TTL
        assert post(client, sid, series(1), seq).status_code == 200
        threading.Event().wait(1.0)
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert 0 < rdb.ttl(f"{settings.key_prefix}:{{{sid}}}:state") <= 2
    threading.Event().wait(3.0)
    assert client.get(f"/v1/sessions/{sid}").status_code == 404


def test_delete_ends_a_session(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    assert post(client, sid, series(3), 0).status_code == 200
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
    assert post(client, sid, series(3), 3).status_code == 404
    assert client.delete(f"/v1/sessions/{sid}").status_code == 404


def test_models_and_readiness(client, start_worker) -> None:
    r = client.get("/health/ready")
    assert r.status_code == 503 and "no live worker" in r.json()["reasons"]
    worker = start_worker()
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert [w["pid"] for w in ready.json()["workers"]] == [worker.pid]
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert sorted(models) == [TEST_MODEL, SCALED_TEST_MODEL, "vma-test"]
    assert models[TEST_MODEL]["card"]["config"]["capacity"] == 8 and models[TEST_MODEL]["workers"]
    assert models["vma-test"]["kind"] == "vma" and models["vma-test"]["workers"]
    assert client.get("/health/live").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/sessions/{sid}/points", "/v1/sessions/{sid}/classify"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("horizon", [1, 25])
def test_forecast_does_not_change_the_state(client, start_worker, ckpt_dir, horizon) -> None:
    start_worker()
    sid = new_session(client)
    xs = series(20)
    fc = post(client, sid, xs[:10], 0, horizon=horizon).json()["forecast"]
    assert len(fc) == horizon
    rest = post(client, sid, xs[10:], 10).json()["predictions"]
    want, _ = offline(ckpt_dir, xs)
    np.testing.assert_allclose(np.asarray(rest), want[10:], rtol=1e-5, atol=1e-5)


def test_a_job_held_too_long_by_a_worker_that_looks_alive_is_run_again(
    client, start_worker, settings: Settings, rdb: redis.Redis, ckpt_dir
) -> None:
    # A consumer that heartbeats (it is in the registry for the next hour) but never finishes:
    # it reads the job and sits on it.
    rdb.zadd(f"{settings.key_prefix}:workers", {"stuck-worker": time.time() + 3600})
    stream = Keys(settings.key_prefix).stream("memnet")
    sid = new_session(client)
    xs = series(6)
    reply: dict[str, httpx.Response] = {}

    def send() -> None:
        reply["r"] = post(client, sid, xs, 0)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 10
    taken: list = []
    while not taken and time.monotonic() < deadline:
        taken = rdb.xreadgroup("workers", "stuck-worker", {stream: ">"}, count=1, block=100)
    assert taken, "the job never reached the stream"
    start_worker(stuck_job_s=1.0)  # a live worker re-runs what is held over a second
    sender.join(30)
    assert reply["r"].status_code == 200, reply["r"].text
    want, _ = offline(ckpt_dir, xs)
    np.testing.assert_allclose(np.asarray(reply["r"].json()["predictions"]), want, rtol=1e-5, atol=1e-5)
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 6
