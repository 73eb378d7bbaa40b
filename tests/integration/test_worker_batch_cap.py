"""A kind's batch cap (VMA: half the jobs in hand, at least MEMSERVE_VMA_SPLIT_BATCH): the worker
runs at most that many of the kind's jobs per batch, keeps the rest in hand for the next batches
in order, answers every one of them, also when asked to stop with some held, and never holds more
than MEMSERVE_MAX_BATCH jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from app.config import Settings
from app.store.keys import Keys
from app.worker.main import Worker
from tests.conftest import ApiServer, drawings

QUERIES = 5


@pytest.fixture
def capped(settings: Settings, ckpt_dir: Path) -> Iterator[tuple[ApiServer, Worker, list[int], Settings]]:
    """The API in this process and a worker that splits VMA batches down to 2, with
    MEMSERVE_MAX_BATCH 4, driven batch by batch by the test; the sizes of the VMA batches it ran;
    its settings."""
    settings = settings.model_copy(update={"vma_split_batch": 2, "max_batch": 4})
    api = ApiServer(settings).start()
    worker = Worker(settings)
    assert worker._register(), "Redis is unreachable"
    sizes: list[int] = []
    vma = worker.by_kind["vma"]
    real = vma.process

    def process(deliveries):  # type: ignore[no-untyped-def]
        sizes.append(len(deliveries))
        return real(deliveries)

    vma.process = process  # type: ignore[method-assign]
    try:
        yield api, worker, sizes, settings
    finally:
        api.stop()


def _drive(worker: Worker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the jobs were not answered in time"
        worker.heartbeat()
        worker._one_batch()


def _queue_queries(api: ApiServer, worker: Worker, rdb: redis.Redis, stream: str) -> list[Future]:
    """A session of four exemplars, then QUERIES classify requests queued together."""
    pool = ThreadPoolExecutor(QUERIES + 1)
    with httpx.Client(base_url=api.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"kind": "vma"}).json()["id"]
    ink = drawings(4, seed=3)
    exemplars = [{"pixels": img.tolist(), "label": f"c{i}"} for i, img in enumerate(ink)]

    def post(path: str, body: dict) -> httpx.Response:
        with httpx.Client(base_url=api.url, timeout=30) as cc:
            return cc.post(f"/v1/sessions/{sid}/{path}", json=body)

    added = pool.submit(post, "exemplars", {"exemplars": exemplars})
    _drive(worker, added.done)
    assert added.result().status_code == 201
    worker.heartbeat()
    queries = [
        pool.submit(post, "classify", {"images": [{"pixels": ink[i % 4].tolist()}]}) for i in range(QUERIES)
    ]
    deadline = time.monotonic() + 10
    while rdb.xlen(stream) < QUERIES:
        assert time.monotonic() < deadline, "the queries were not queued"
        time.sleep(0.02)
    return queries


def test_a_capped_kind_runs_in_batches_of_its_cap_and_every_job_is_answered(capped, rdb) -> None:
    api, worker, sizes, settings = capped
    stream = Keys(settings.key_prefix).stream("vma")
    queries = _queue_queries(api, worker, rdb, stream)
    sizes.clear()
    _drive(worker, lambda: all(q.done() for q in queries))
    # 4 read (MEMSERVE_MAX_BATCH): 2 run, 2 held, the 5th read with the acknowledgement; of those
    # 3 in hand, 2 run (half, rounded up, at least the split); then the last
    assert sizes == [2, 2, 1], sizes
    for i, q in enumerate(queries):
        r = q.result()
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["label"] == f"c{i % 4}"  # each its own drawing's answer
    assert rdb.xpending(stream, "workers")["pending"] == 0
    assert not worker._held and not worker._next


def test_jobs_in_hand_past_the_cap_are_answered_when_the_worker_stops(capped, rdb) -> None:
    api, worker, sizes, settings = capped
    stream = Keys(settings.key_prefix).stream("vma")
    queries = _queue_queries(api, worker, rdb, stream)
    sizes.clear()
    worker._one_batch()  # 4 read, 2 run, 2 held, and the 5th read with the acknowledgement
    assert sizes == [2] and len(worker._held) == 2 and len(worker._next) == 1, (sizes, worker._held)
    worker.stopping.set()
    worker._finish_in_hand()
    assert sizes == [2, 2, 1], sizes
    for q in queries:
        assert q.result(10).status_code == 200
    assert rdb.xpending(stream, "workers")["pending"] == 0 and rdb.xlen(stream) == 0


def test_a_worker_holds_no_more_jobs_than_max_batch(capped, rdb) -> None:
    api, worker, _sizes, settings = capped
    stream = Keys(settings.key_prefix).stream("vma")
    queries = _queue_queries(api, worker, rdb, stream)
    in_hand: list[int] = []
    real_ack = worker.reader.ack

    def ack(*a, **k):  # type: ignore[no-untyped-def]
        taken = real_ack(*a, **k)
        in_hand.append(len(taken) + len(worker._held))
        return taken

    worker.reader.ack = ack  # type: ignore[method-assign]
    _drive(worker, lambda: all(q.done() for q in queries))
    assert in_hand and max(in_hand) <= settings.max_batch, in_hand


def test_the_vma_cap_is_half_in_hand_at_least_8_on_a_cpu_none_on_a_gpu(
    settings: Settings, ckpt_dir: Path
) -> None:
    from types import SimpleNamespace

    import torch

    from app.kinds.vma import worker as vma_worker
    from app.kinds.vma.runner import CPU_SPLIT, VmaRunner
    from app.worker.backends import Backend
    from models.checkpoint import load_checkpoint

    model, card = load_checkpoint("vma-test", ckpt_dir)
    served = vma_worker.serve(model, card, ckpt_dir, Backend("onnx", torch.device("cpu"), 1, "cpu"))
    assert not served.on_gpu  # this host's worker: ONNX Runtime on the CPU
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    try:
        on_cpu = VmaRunner(r, keys, {("vma-test", "1"): served}, 60, 3)
        assert CPU_SPLIT == 8
        assert [on_cpu.batch_cap(n) for n in (1, 8, 9, 16, 17, 40, 64)] == [8, 8, 8, 8, 9, 20, 32]
        # No GPU here: a model served on one is stood in for by its flag, all `batch_cap` reads.
        gpu = {("vma-test", "1"): SimpleNamespace(on_gpu=True)}
        assert VmaRunner(r, keys, gpu, 60, 3).batch_cap(64) is None  # type: ignore[arg-type]
        assert [VmaRunner(r, keys, gpu, 60, 3, split=3).batch_cap(n) for n in (2, 6, 9)] == [3, 3, 5]  # type: ignore[arg-type]
    finally:
        r.close()
