"""Worker batch statistics (the heartbeat's wire format) and request id validation."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.api.metrics import Families, worker_families
from app.api.telemetry import request_id_from
from app.store.worker_stats import BATCH_JOBS_BUCKETS, Buckets, WorkerStats, parse_stats


def test_buckets_count_each_value_under_the_first_bound_not_below_it() -> None:
    b = Buckets((1.0, 2.0, 4.0))
    for v in (0.5, 1.0, 1.5, 4.0, 9.0):
        b.observe(v)
    assert b.counts == [2, 1, 1, 1]  # <=1, (1, 2], (2, 4], above
    assert b.cumulative() == [(1.0, 2), (2.0, 3), (4.0, 4), (float("inf"), 5)]
    assert b.total == 16.0


def test_worker_stats_round_trip_through_the_heartbeat_json() -> None:
    stats = WorkerStats()
    stats.batch_ran("memnet", 3, 0.004)
    stats.batch_done("memnet", acked=3, steps=30)
    stats.batch_ran("memnet", 64, 0.02)
    beat = json.loads(json.dumps({"id": "w1", "stats": stats.snapshot()}))
    back = parse_stats(beat)["memnet"]
    assert back.jobs == 3 and back.steps == 30
    assert back.batch_jobs.bounds == BATCH_JOBS_BUCKETS and sum(back.batch_jobs.counts) == 2
    assert back.batch_seconds.total == pytest.approx(0.024)


SHORT_COUNTS = {
    "jobs": 1, "steps": 1, "batch_jobs": {"le": [1], "counts": [1], "sum": 1},
    "batch_seconds": {"le": [1], "counts": [1, 0], "sum": 1},
}  # fmt: skip


@pytest.mark.parametrize("stats", [None, "x", {"memnet": {"jobs": 1}}, {"memnet": SHORT_COUNTS}])
def test_a_heartbeat_without_readable_stats_gives_none(stats: object) -> None:
    assert parse_stats({"stats": stats}) == {}


def test_worker_families_render_as_prometheus_text() -> None:
    stats = WorkerStats()
    stats.batch_ran("memnet", 2, 0.003)
    stats.batch_done("memnet", acked=2, steps=7)
    stats.batch_ran("vma", 1, 0.05)
    stats.batch_done("vma", acked=1, steps=4)
    beats = [
        {"id": "w1", "host": "h", "backend": "torch", "device": "cpu", "reclaimed": 2, "errors": 1,
         "cache_hits": 5, "stats": stats.snapshot()},
        {"id": "old-version-worker", "reclaimed": 0},
    ]  # fmt: skip
    text = generate_latest(Families(worker_families(beats))).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("memserve_workers_live", ())] == 2
    assert samples[("memserve_stream_steps_total", (("worker", "w1"),))] == 7
    assert samples[("memserve_vma_items_total", (("worker", "w1"),))] == 4
    assert samples[("memserve_worker_reclaimed_jobs_total", (("worker", "w1"),))] == 2
    bucket = ("memserve_worker_batch_jobs_bucket", (("kind", "memnet"), ("le", "2.0"), ("worker", "w1")))
    assert samples[bucket] == 1
    assert samples[("memserve_worker_batch_seconds_count", (("kind", "vma"), ("worker", "w1")))] == 1
    assert ("memserve_stream_steps_total", (("worker", "old-version-worker"),)) not in samples


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(b"abc-123", True), (b"x" * 128, True), (b"~!#$%&'*+.^_`|", True), (b"x" * 129, False), (b"", False),
     (b"a b", False), (b"a\tb", False), (b"caf\xc3\xa9", False), (b"a\x00b", False)],
)  # fmt: skip
def test_a_clients_request_id_is_kept_only_when_it_is_short_visible_ascii(sent: bytes, kept: bool) -> None:
    got = request_id_from([(b"accept", b"*/*"), (b"x-request-id", sent)])
    if kept:
        assert got == sent.decode()
    else:
        assert len(got) == 32 and int(got, 16) >= 0


def test_a_request_id_is_made_when_there_is_none() -> None:
    a, b = request_id_from([]), request_id_from([])
    assert a != b and len(a) == 32
