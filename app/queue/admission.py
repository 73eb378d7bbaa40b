"""Admission: queue a job only when the workers can answer it before the request times out.

A fixed cap on queued jobs (`MEMSERVE_QUEUE_CAP`) counts jobs, not time: far below it, a
queue can already hold more work than the workers finish within `MEMSERVE_REQUEST_TIMEOUT_S`,
and every request past that point would wait only to get a 504. So each API process
estimates, per model kind, how many jobs per second the live workers answer while busy (from
the job counts and busy seconds in their heartbeats, over the last few seconds of work) and
admits a job only while the queue is shorter than what they answer within a fraction of the
timeout; beyond it the client gets 429 with a Retry-After at once, and can back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass

import redis.asyncio as aioredis

from app.store.keys import Keys
from app.store.worker_stats import parse_stats
from app.store.workers import live_beats

log = logging.getLogger(__name__)

HEADROOM = 0.5  # admit what the workers answer in half the timeout: batches and rates vary
MIN_BUSY_S = 0.25  # busy seconds a worker's new rate is measured over, at least
REFRESH_S = 1.0


@dataclass
class _Seen:
    jobs: int
    busy_s: float
    rate: float | None = None  # jobs per busy second, once measured


class Admission:
    """The per-kind queue depth that the workers answer within the request timeout."""

    def __init__(self, r: aioredis.Redis, keys: Keys, timeout_s: float, queue_cap: int) -> None:
        self.r = r
        self.keys = keys
        self.timeout_s = timeout_s
        self.queue_cap = queue_cap
        self.rates: dict[str, float] = {}  # kind -> jobs per second of all live workers
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._task: asyncio.Task[None] | None = None

    def cap(self, kind: str) -> int:
        """Jobs of ``kind`` that may wait; `queue_cap` while no rate is known yet."""
        rate = self.rates.get(kind)
        if rate is None:
            return self.queue_cap
        return max(1, min(self.queue_cap, int(rate * self.timeout_s * HEADROOM)))

    def retry_after_s(self, kind: str) -> int:
        """When a refused client should try again: between once and twice the time the admitted
        queue takes to drain, at random, so that clients refused together do not all return in
        the same second as another burst."""
        rate = self.rates.get(kind)
        drain = 1 if not rate else max(1, math.ceil(self.cap(kind) / rate))
        return random.randint(drain, 2 * drain)

    async def refresh(self) -> None:
        """Read the live workers' heartbeats and update each kind's rate."""
        rates: dict[str, float] = {}
        live = set()
        for beat in await live_beats(self.r, self.keys):
            for kind, stats in parse_stats(beat).items():
                key = (str(beat.get("id")), kind)
                live.add(key)
                rate = self._update(key, stats.jobs, stats.busy_seconds)
                if rate is not None:
                    rates[kind] = rates.get(kind, 0.0) + rate
        self._seen = {k: v for k, v in self._seen.items() if k in live}
        self.rates = rates

    def _update(self, key: tuple[str, str], jobs: int, busy_s: float) -> float | None:
        seen = self._seen.get(key)
        if seen is None or jobs < seen.jobs:  # new, or restarted under the same id
            self._seen[key] = _Seen(jobs, busy_s, jobs / busy_s if busy_s >= MIN_BUSY_S else None)
            return self._seen[key].rate
        if busy_s - seen.busy_s >= MIN_BUSY_S:
            self._seen[key] = _Seen(jobs, busy_s, (jobs - seen.jobs) / (busy_s - seen.busy_s))
        return self._seen[key].rate

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: keep the last rates; requests fail on their own
                log.debug("admission refresh failed: %s", e)
            await asyncio.sleep(REFRESH_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="admission")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
