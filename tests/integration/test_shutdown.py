"""SIGTERM in the middle of a batch, on a real worker process: it stops taking jobs, finishes
the batch in hand, acknowledges it and exits 0; what came in meanwhile waits for another worker."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from app.config import Settings
from app.store.keys import Keys
from tests.conftest import wait_until_pending
from tests.integration.test_stream import new_session, offline, post, series

SESSIONS = 4


def test_sigterm_mid_batch_finishes_and_acks_it_then_exits(
    client: httpx.Client, start_worker, settings: Settings, rdb: redis.Redis, ckpt_dir: Path
) -> None:
    # The worker stalls 2 s after reading a batch: the signal lands while the batch is in hand.
    worker = start_worker(fault_batch_delay_ms=2000, max_wait_ms=300)
    stream = Keys(settings.key_prefix).stream("memnet")
    sids = [new_session(client) for _ in range(SESSIONS)]
    xs = series(5)
    replies: dict[str, httpx.Response] = {}

    def send(sid: str) -> None:
        replies[sid] = post(client, sid, xs, 0)

    threads = [threading.Thread(target=send, args=(sid,)) for sid in sids]
    for t in threads:
        t.start()
    wait_until_pending(rdb, stream)
    time.sleep(0.4)  # the batch window (max_wait_ms) closes: the batch is read, the worker stalls
    in_hand = rdb.xpending(stream, "workers")["pending"]
    assert in_hand >= 1
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    late_sid = new_session(client)
    late: dict[str, httpx.Response] = {}
    late_thread = threading.Thread(target=lambda: late.update(r=post(client, late_sid, xs, 0)))
    late_thread.start()

    assert worker.proc.wait(30) == 0  # it finished the batch and exited cleanly
    log = worker.log_path.read_text()
    assert "finishing the batch in hand" in log and "stopped" in log
    assert rdb.xpending(stream, "workers")["pending"] == 0  # everything it took is acknowledged
    # It said goodbye: no heartbeat left for others to wait on, it is out of the registry.
    assert not list(rdb.scan_iter(match=f"{settings.key_prefix}:workers:*-{worker.pid}-*"))
    assert not [
        w for w in rdb.zrange(f"{settings.key_prefix}:workers", 0, -1) if f"-{worker.pid}-" in w.decode()
    ]
    answered = [sid for sid in sids if sid in replies and replies[sid].status_code == 200]
    assert len(answered) == in_hand  # the batch in hand, answered before the worker exited
    want, _ = offline(ckpt_dir, xs)
    for sid in answered:
        np.testing.assert_allclose(np.asarray(replies[sid].json()["predictions"]), want, rtol=1e-5, atol=1e-5)

    # The job that came after the signal was not taken by the stopping worker: it waits in the
    # stream, and a new worker answers it (and any of the first jobs not in that batch).
    assert late_thread.is_alive() and rdb.xlen(stream) >= 1
    start_worker()
    late_thread.join(30)
    for t in threads:
        t.join(30)
    assert late["r"].status_code == 200, late["r"].text
    assert all(replies[sid].status_code == 200 for sid in sids)
    for sid in [*sids, late_sid]:
        assert client.get(f"/v1/sessions/{sid}").json()["step"] == 5  # each chunk applied once
