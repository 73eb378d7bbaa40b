"""Prometheus metrics of the API process (`ApiMetrics`) and of the whole service (`cluster_metrics`).

Two scopes, both served by ``GET /metrics``:

- this process: HTTP requests per route template, method and status, their latency, requests
  in flight, sessions created and exemplars added through it, and the process' CPU and
  memory. Each API replica counts its own; sum them over instances.
- the service, read from Redis at scrape time: the job streams (depth, pending, age of the
  oldest job), live sessions, and the workers' counters and batch histograms from their
  heartbeats (see app.store.worker_stats for why heartbeats). Every replica reports the same
  values; aggregate them with ``max without (instance)`` (or scrape one replica for them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from app import registry
from app.store.keys import Keys
from app.store.queue_view import QueueView, read_queue
from app.store.session_index import SessionIndex
from app.store.worker_stats import Buckets, KindStats, parse_stats

log = logging.getLogger("memserve.api")

# The *_created series double every counter for no use here.
disable_created_metrics()

# Request latency: 1 ms (a health check) to 30 s (beyond MEMSERVE_REQUEST_TIMEOUT_S's default).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class ApiMetrics:
    """The metrics this API process records itself, in a registry of its own (several apps may
    live in one process, as in the tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "memserve_http_requests", "HTTP requests answered, by route template, method and status",
            labels, registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "memserve_http_request_duration_seconds",
            "time from a request's arrival to the end of its response, by route template, method and status",
            labels, buckets=HTTP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "memserve_http_requests_in_flight", "requests being handled now", registry=self.registry
        )
        self.sessions_created = Counter(
            "memserve_sessions_created", "sessions created through this API process", ("kind",),
            registry=self.registry,
        )  # fmt: skip
        self.exemplars_added = Counter(
            "memserve_exemplars_added", "VMA exemplars added through this API process", registry=self.registry
        )
        ProcessCollector(registry=self.registry)
        # labels() costs a lock and a tuple hash per call: keep the children per label set.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            method_label = method if method in _METHODS else "other"  # bounded label values
            values = (method_label, route, str(status))
            pair = self._children[key] = (self.requests.labels(*values), self.latency.labels(*values))
        pair[0].inc()
        pair[1].observe(seconds)


class Families:
    """A collector of metric families computed beforehand (what `generate_latest` takes)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        """The families, as given."""
        return self.families


async def cluster_metrics(r: aioredis.Redis, keys: Keys, index: SessionIndex) -> list[Metric]:
    """The service-wide families, read from Redis now; only ``memserve_redis_up 0`` when Redis
    cannot be reached (the process' own metrics are still served)."""
    up = GaugeMetricFamily("memserve_redis_up", "1 when this scrape could read Redis, else 0")
    try:
        queue = await read_queue(r, keys, [keys.stream(kind) for kind in registry.names()])
        live = await index.count()
    except RedisError as e:
        log.warning("metrics: Redis unreachable: %s", e)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    sessions = GaugeMetricFamily(
        "memserve_sessions_live", "sessions whose keys exist, by kind", labels=["kind"]
    )
    for kind, n in live.items():
        sessions.add_metric([kind], n)
    return [up, sessions, *_stream_families(queue), *worker_families(queue.beats)]


def _stream_families(queue: QueueView) -> list[Metric]:
    """Per stream: depth, pending, waiting and the oldest job's age."""
    labels = ["stream"]
    depth = GaugeMetricFamily(
        "memserve_queue_depth", "jobs in the stream: waiting plus pending", labels=labels
    )
    pending = GaugeMetricFamily(
        "memserve_queue_pending", "jobs handed to a worker and not yet acknowledged", labels=labels
    )
    waiting = GaugeMetricFamily("memserve_queue_waiting", "jobs no worker has read yet", labels=labels)
    age = GaugeMetricFamily(
        "memserve_queue_oldest_job_age_seconds", "age of the oldest job in the stream (0 when empty)",
        labels=labels,
    )  # fmt: skip
    for key, view in queue.streams.items():
        depth.add_metric([key], view.length)
        pending.add_metric([key], view.pending)
        waiting.add_metric([key], max(view.length - view.pending, 0))
        age.add_metric([key], view.oldest_age_s)
    return [depth, pending, waiting, age]


def worker_families(beats: list[dict[str, Any]]) -> list[Metric]:
    """One series per live worker (label ``worker``) of the counters and histograms in its heartbeat."""
    live = GaugeMetricFamily("memserve_workers_live", "workers whose heartbeat has not expired")
    live.add_metric([], len(beats))
    info = GaugeMetricFamily(
        "memserve_worker_info",
        "1 per live worker, with where it runs",
        labels=["worker", "host", "backend", "device"],
    )
    counters = {
        "reclaimed": CounterMetricFamily(
            "memserve_worker_reclaimed_jobs", "jobs claimed from dead or stuck workers", labels=["worker"]
        ),
        "errors": CounterMetricFamily(
            "memserve_worker_failed_batches", "batches that failed and were retried", labels=["worker"]
        ),
    }
    cache_hits = CounterMetricFamily(
        "memserve_worker_cache_hits", "worker cache hits (state: MemNet states; memory: VMA memories)",
        labels=["worker", "cache"],
    )  # fmt: skip
    cache_misses = CounterMetricFamily(
        "memserve_worker_cache_misses", "worker cache misses", labels=["worker", "cache"]
    )
    per_kind = _KindFamilies()
    for beat in beats:
        wid = str(beat.get("id", ""))
        info.add_metric(
            [wid, str(beat.get("host", "")), str(beat.get("backend", "")), str(beat.get("device", ""))], 1
        )
        for field, family in counters.items():
            family.add_metric([wid], _number(beat.get(field)))
        for cache, prefix in (("state", "cache"), ("memory", "memory_cache")):
            cache_hits.add_metric([wid, cache], _number(beat.get(f"{prefix}_hits")))
            cache_misses.add_metric([wid, cache], _number(beat.get(f"{prefix}_misses")))
        for kind, stats in parse_stats(beat).items():
            per_kind.add(wid, kind, stats)
    return [live, info, *counters.values(), cache_hits, cache_misses, *per_kind.families()]


def _number(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


class _KindFamilies:
    """The per-worker, per-kind families of the heartbeats' ``stats``."""

    def __init__(self) -> None:
        self.jobs = CounterMetricFamily(
            "memserve_worker_jobs",
            "jobs a worker acknowledged (answered or refused)",
            labels=["worker", "kind"],
        )
        self.steps = CounterMetricFamily(
            "memserve_stream_steps", "MemNet time steps (points) applied to sessions", labels=["worker"]
        )
        self.vma_items = CounterMetricFamily(
            "memserve_vma_items", "VMA work items run: exemplar-add jobs plus query images", labels=["worker"]
        )
        self.batch_jobs = HistogramMetricFamily(
            "memserve_worker_batch_jobs", "jobs of one kind in one worker batch", labels=["worker", "kind"]
        )
        self.batch_seconds = HistogramMetricFamily(
            "memserve_worker_batch_seconds",
            "time a runner spent on one batch: load the sessions, run the model, commit",
            labels=["worker", "kind"],
        )

    def add(self, worker: str, kind: str, stats: KindStats) -> None:
        """Add one worker's statistics of one kind."""
        self.jobs.add_metric([worker, kind], stats.jobs)
        if kind == "memnet":
            self.steps.add_metric([worker], stats.steps)
        elif kind == "vma":
            self.vma_items.add_metric([worker], stats.steps)
        _add_histogram(self.batch_jobs, [worker, kind], stats.batch_jobs)
        _add_histogram(self.batch_seconds, [worker, kind], stats.batch_seconds)

    def families(self) -> list[Metric]:
        """Every family, for the exposition."""
        return [self.jobs, self.steps, self.vma_items, self.batch_jobs, self.batch_seconds]


def _add_histogram(family: HistogramMetricFamily, labels: list[str], b: Buckets) -> None:
    buckets = [(floatToGoString(bound), float(n)) for bound, n in b.cumulative()]
    family.add_metric(labels, buckets, sum_value=b.total)
