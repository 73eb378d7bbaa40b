"""Worker batch statistics, carried in the worker's heartbeat and exposed by the API's /metrics.

Workers are separate processes, possibly on other hosts, with no port of their own to
scrape. Each keeps cumulative counters and histogram buckets of its batches here and
publishes a snapshot in its heartbeat (every `MEMSERVE_HEARTBEAT_INTERVAL_S`); the API reads
the live workers' heartbeats at scrape time and exposes one series per worker (label
``worker``). One scrape target thus covers every worker on every host, and a worker that
goes away simply ends its series (Prometheus' ``rate()`` and ``histogram_quantile()`` over
``sum by (le)`` handle that; a sum published as one series would drop and fake a counter
reset). The wire format names its bucket bounds, so API and workers of different versions
still agree.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

# Jobs per batch: powers of two up to beyond the largest sensible MEMSERVE_MAX_BATCH.
BATCH_JOBS_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Seconds a runner spends on one batch (load sessions, run the model, commit): 0.5 ms to 10 s.
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass
class Buckets:
    """A cumulative histogram: `counts[i]` observations <= `bounds[i]`, the last one above all."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_json(self) -> dict[str, Any]:
        """The heartbeat's form: bounds, per-bucket (not cumulative) counts, sum."""
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_json(cls, d: Any) -> Buckets:
        """The histogram of a heartbeat; ValueError when it is malformed."""
        if not isinstance(d, dict):
            raise ValueError("a histogram is an object")
        bounds = tuple(float(b) for b in d["le"])
        counts = [int(c) for c in d["counts"]]
        if len(counts) != len(bounds) + 1 or any(c < 0 for c in counts) or list(bounds) != sorted(bounds):
            raise ValueError("malformed histogram")
        return cls(bounds, counts, float(d["sum"]))

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (inf, all): Prometheus' buckets."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class KindStats:
    """Cumulative work of one model kind's stream in one worker."""

    jobs: int = 0  # jobs acknowledged (answered, refused or dropped)
    steps: int = 0  # MemNet: time steps applied; VMA: exemplar-add jobs plus query images
    batch_jobs: Buckets = field(default_factory=lambda: Buckets(BATCH_JOBS_BUCKETS))
    batch_seconds: Buckets = field(default_factory=lambda: Buckets(BATCH_SECONDS_BUCKETS))
    busy_seconds: float = 0.0  # wall time from reading its batches to acknowledging them

    def to_json(self) -> dict[str, Any]:
        """The heartbeat's form of one kind's statistics."""
        return {
            "jobs": self.jobs,
            "steps": self.steps,
            "batch_jobs": self.batch_jobs.to_json(),
            "batch_seconds": self.batch_seconds.to_json(),
            "busy_seconds": self.busy_seconds,
        }

    @classmethod
    def from_json(cls, d: Any) -> KindStats:
        """One kind's statistics of a heartbeat; ValueError (or KeyError, TypeError) when malformed."""
        return cls(
            jobs=int(d["jobs"]),
            steps=int(d["steps"]),
            batch_jobs=Buckets.from_json(d["batch_jobs"]),
            batch_seconds=Buckets.from_json(d["batch_seconds"]),
            busy_seconds=float(d.get("busy_seconds", 0.0)),
        )


class WorkerStats:
    """What a worker records per batch; the heartbeat thread reads a consistent snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, KindStats] = {}

    def _of(self, kind: str) -> KindStats:
        stats = self._kinds.get(kind)
        if stats is None:
            stats = self._kinds[kind] = KindStats()
        return stats

    def batch_ran(self, kind: str, jobs: int, seconds: float) -> None:
        """A runner processed a batch of `jobs` jobs of `kind` in `seconds`."""
        with self._lock:
            stats = self._of(kind)
            stats.batch_jobs.observe(jobs)
            stats.batch_seconds.observe(seconds)

    def batch_done(self, kind: str, acked: int, steps: int, busy_s: float = 0.0) -> None:
        """The batch's results were published and `acked` jobs acknowledged, `busy_s` seconds
        after the batch was read (its share of them, for a batch of several kinds)."""
        with self._lock:
            stats = self._of(kind)
            stats.jobs += acked
            stats.steps += steps
            stats.busy_seconds += busy_s

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's ``stats`` member: per kind, counters and histograms."""
        with self._lock:
            return {kind: stats.to_json() for kind, stats in self._kinds.items()}


def parse_stats(beat: dict[str, Any]) -> dict[str, KindStats]:
    """The per-kind statistics of a heartbeat; {} from a worker that publishes none (or bad ones)."""
    raw = beat.get("stats")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, KindStats] = {}
    for kind, d in raw.items():
        try:
            out[str(kind)] = KindStats.from_json(d)
        except (KeyError, TypeError, ValueError):
            continue
    return out
