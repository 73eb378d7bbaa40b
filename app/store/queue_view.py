"""What the job streams and the worker registry hold right now, as the metrics scrape reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.store import scripts
from app.store.keys import GROUP, Keys, entry_ms
from app.store.workers import read_beats


@dataclass(frozen=True)
class StreamView:
    """One job stream: its entries, those handed to a worker, and its oldest job's age."""

    length: int  # waiting plus pending: acknowledged jobs are deleted from the stream
    pending: int
    oldest_age_s: float  # 0 when empty


@dataclass(frozen=True)
class QueueView:
    streams: dict[str, StreamView]  # by stream key
    beats: list[dict[str, Any]]  # the live workers' heartbeats


async def read_queue(r: aioredis.Redis, keys: Keys, streams: list[str]) -> QueueView:
    """Every stream's counts and the live workers' heartbeats (two round trips; on a plain
    Redis the first time, one more to check the clock script)."""
    clock = r.register_script(scripts.CLOCK)
    async with r.pipeline(transaction=False) as p:
        # Ages from the clock that stamps the entry ids: that of the streams' node (a cluster
        # pipeline refuses TIME, and each master has its own clock).
        await clock(keys=[streams[0]], client=p)
        for stream in streams:
            p.xlen(stream)
            p.xpending(stream, GROUP)
            p.xrange(stream, "-", "+", count=1)
        p.zrangebyscore(keys.worker_registry(), time.time(), "+inf")
        res: list[Any] = await p.execute(raise_on_error=False)
    for item in res:
        if isinstance(item, Exception) and not _no_group(item):
            raise item
    seconds, micros = res[0]
    now_ms = int(seconds) * 1000 + int(micros) / 1000
    views = {}
    for i, stream in enumerate(streams):
        xlen, summary, first = res[1 + 3 * i : 4 + 3 * i]
        oldest = _oldest_ms(summary, first)
        views[stream] = StreamView(
            length=0 if isinstance(xlen, Exception) else int(xlen),
            pending=int(summary["pending"]) if isinstance(summary, dict) else 0,
            oldest_age_s=max(now_ms - oldest, 0) / 1000 if oldest is not None else 0.0,
        )
    return QueueView(views, await read_beats(r, keys, res[-1]))


def _no_group(e: Exception) -> bool:
    # A stream that does not exist yet (deleted by hand, or a fresh prefix): nothing queued.
    return "NOGROUP" in str(e) or "no such key" in str(e)


def _oldest_ms(summary: Any, first: Any) -> float | None:
    """The oldest job: the first pending one (a reclaimed job may predate the stream's head) or the
    stream's first entry."""
    stamps = []
    if isinstance(summary, dict) and summary.get("min"):
        stamps.append(entry_ms(summary["min"]))
    if isinstance(first, list) and first:
        stamps.append(entry_ms(first[0][0]))
    return min(stamps) if stamps else None
