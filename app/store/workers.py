"""The worker registry: who is alive, and what each worker's heartbeat says.

A worker's heartbeat is a JSON string under ``ms:workers:<id>`` with a TTL, and the sorted set
``ms:workers`` scores each worker by when that heartbeat expires, so the live workers are one
range query, never a SCAN. Workers write both (`WorkerRegistry`); the API's readiness, model
list, metrics, admission and catalog refresh read them (`live_beats`, `read_beats`), and so does
the container health check (`WorkerRegistry.live_raw`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from app.store.keys import Keys

log = logging.getLogger(__name__)

FORGET_AFTER_S = 3600  # registry members silent this long are dropped


class WorkerRegistry:
    """The registry through a synchronous client: a worker's side, and the health check's."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    def beat(self, worker_id: str, beat: dict[str, Any], ttl_s: float) -> None:
        """Publish a heartbeat that expires unless renewed within ``ttl_s``."""
        now = time.time()
        with self.r.pipeline(transaction=False) as p:
            p.set(self.keys.worker(worker_id), json.dumps(beat), px=int(ttl_s * 1000))
            p.zadd(self.keys.worker_registry(), {worker_id: now + ttl_s})
            p.zremrangebyscore(self.keys.worker_registry(), "-inf", now - FORGET_AFTER_S)
            p.execute()

    def leave(self, worker_id: str) -> None:
        """Leave the registry at once (a clean stop), rather than when the heartbeat expires."""
        with self.r.pipeline(transaction=False) as p:
            p.delete(self.keys.worker(worker_id))
            p.zrem(self.keys.worker_registry(), worker_id)
            p.execute()

    def live_ids(self) -> set[str]:
        """Ids of the workers whose heartbeat has not expired."""
        ids: list[bytes] = self.r.zrangebyscore(self.keys.worker_registry(), time.time(), "+inf")  # type: ignore[assignment]
        return {i.decode() for i in ids}

    def live_raw(self) -> list[bytes | None]:
        """The live workers' heartbeats as stored; None for one that expired since it was listed."""
        ids = sorted(self.live_ids())
        return self.r.mget([self.keys.worker(i) for i in ids]) if ids else []  # type: ignore[return-value]


async def live_ids(r: aioredis.Redis, keys: Keys) -> list[bytes]:
    """Ids of the workers whose heartbeat has not expired (as Redis returns them)."""
    ids: list[bytes] = await r.zrangebyscore(keys.worker_registry(), time.time(), "+inf")  # type: ignore[assignment]
    return ids


async def read_beats(r: aioredis.Redis, keys: Keys, ids: list[bytes]) -> list[dict[str, Any]]:
    """The heartbeats of ``ids``, skipping those expired since and any that cannot be read."""
    if not ids:
        return []
    beats = []
    for raw in await r.mget([keys.worker(i.decode()) for i in ids]):
        if not raw:
            continue
        try:
            beats.append(json.loads(raw))
        except ValueError:
            log.warning("skipping an unreadable worker heartbeat")
    return beats


async def live_beats(r: aioredis.Redis, keys: Keys, stats: bool = True) -> list[dict[str, Any]]:
    """The heartbeats of the workers alive now; without ``stats`` (their batch histograms) unless asked."""
    beats = await read_beats(r, keys, await live_ids(r, keys))
    if not stats:
        for beat in beats:
            beat.pop("stats", None)
    return beats
