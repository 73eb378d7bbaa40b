"""aiohttp load generation for ``bench stream``: per-session closed loops and the ceiling probe.

A shard is the set of sessions one client process drives. All shards follow the same
wall-clock schedule (:class:`Phases`), so several spawned processes stay in step without
talking to each other while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from app.bench.stats import ShardResult
from app.runtime import tune_gc

JSON_HEADERS = {"Content-Type": "application/json"}
T = TypeVar("T")

# Sleep after a 5xx or unexpected 4xx: a fast-failing server must not turn the closed
# loop into a hot spin that only measures how quickly errors come back.
ERROR_BACKOFF_S = 0.05
MAX_RETRY_AFTER_S = 1.0


class Progress(Protocol):
    """Per-shard completed-request counters (a list, or a shared ``multiprocessing.Array``)."""

    def __setitem__(self, index: int, value: int, /) -> None: ...

    def __getitem__(self, index: int, /) -> int: ...


@dataclass(frozen=True)
class Phases:
    """Absolute ``time.time()`` instants that every shard follows."""

    ceiling_start: float
    ceiling_end: float
    stream_start: float
    measure_start: float
    measure_end: float

    @classmethod
    def plan(cls, t0: float, ceiling_s: float, warmup_s: float, duration_s: float) -> Phases:
        # The short gap lets ceiling requests drain before the sessions start streaming.
        stream = t0 + ceiling_s + (0.2 if ceiling_s > 0 else 0.0)
        return cls(t0, t0 + ceiling_s, stream, stream + warmup_s, stream + warmup_s + duration_s)


@dataclass(frozen=True)
class ShardSpec:
    """What a client process needs to drive its share of the sessions (picklable)."""

    base_url: str
    sids: tuple[str, ...]
    points: int
    dim: int
    slot: int
    first_index: int  # global index of sids[0]; keeps signal phases distinct across shards
    timeout_s: float
    ceiling: bool
    level: tuple[float, ...] = ()  # interval levels each request asks for


@dataclass
class StreamSession:
    """Client-side view of one streaming session: its next seq and its signal."""

    sid: str
    phase: float
    seq: int = 0
    dim: int = 1
    period: float = 64.0
    level: tuple[float, ...] = ()

    def values(self, n: int) -> list[list[float]]:
        """The next ``n`` points; a pure function of the step index, so resyncs stay smooth."""
        w = 2.0 * math.pi / self.period
        return [
            [
                0.6 * math.sin(w * t + self.phase + 0.9 * d) + 0.2 * math.sin(0.37 * w * t + 2.0 * self.phase)
                for d in range(self.dim)
            ]
            for t in range(self.seq, self.seq + n)
        ]

    def body(self, n: int) -> bytes:
        body: dict[str, Any] = {"values": self.values(n), "seq": self.seq, "horizon": 0}
        if self.level:
            body["level"] = list(self.level)
        return orjson.dumps(body)

    def on_reply(self, status: int | str, body: Any, sent: int) -> None:
        """Advance on success; on a 409 seq conflict adopt the server's ``expected_seq``."""
        if isinstance(status, int) and 200 <= status < 300:
            self.seq += sent
        elif status == 409 and isinstance(body, dict):
            expected = body.get("expected_seq")
            if isinstance(expected, int):
                self.seq = expected


def session_phase(index: int) -> float:
    """Per-session phase offset; golden-ratio spacing keeps the sessions decorrelated."""
    return (index * 0.6180339887 % 1.0) * 2.0 * math.pi


def make_http(timeout_s: float) -> aiohttp.ClientSession:
    """One pooled keep-alive client; ``limit=0`` so the pool never caps concurrency. It sends
    the API key in MEMSERVE_API_KEY, for a server that requires keys."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
    key = os.environ.get("MEMSERVE_API_KEY")
    return aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {key}"} if key else None,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        json_serialize=lambda o: orjson.dumps(o).decode(),
    )


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None
) -> tuple[int | str, Any, float]:
    """One request; returns (status or error name, parsed JSON or None, Retry-After s)."""
    headers = JSON_HEADERS if body is not None else None
    try:
        async with http.request(method, url, data=body, headers=headers) as resp:
            raw = await resp.read()
            retry = _retry_after(resp.headers.get("Retry-After"))
            status: int | str = resp.status
    except TimeoutError:
        return "timeout", None, 0.0
    except aiohttp.ClientError as exc:
        return f"client:{type(exc).__name__}", None, 0.0
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    return status, parsed, retry


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else 0.0
    except ValueError:
        return ERROR_BACKOFF_S


@dataclass
class Recorder:
    """Counts replies that complete inside ``[start, end]`` and keeps their latencies."""

    start: float
    end: float
    slot: int
    progress: Progress | None = None
    latencies_ms: array = field(default_factory=lambda: array("d"))
    requests: int = 0
    ok: int = 0
    points: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, done: float, latency_s: float, status: int | str, points: int) -> None:
        if not self.start <= done <= self.end:
            return
        self.requests += 1
        # Only successes feed the percentiles: fast 429s would otherwise flatter them.
        if isinstance(status, int) and 200 <= status < 300:
            self.latencies_ms.append(latency_s * 1000.0)
            self.ok += 1
            self.points += points
        else:
            self.errors[str(status)] += 1
        if self.progress is not None:
            self.progress[self.slot] = self.requests


async def sleep_until(t: float) -> None:
    """Sleep until wall-clock instant ``t`` (no-op if it has passed)."""
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def stream_loop(
    http: aiohttp.ClientSession, base: str, sess: StreamSession, points: int, rec: Recorder
) -> None:
    """Closed loop for one session: post a chunk, wait for the reply, repeat until the end."""
    url = f"{base}/v1/sessions/{sess.sid}/points"
    while time.time() < rec.end:
        body = sess.body(points)
        t0 = time.perf_counter()
        status, reply, retry = await call(http, "POST", url, body)
        latency = time.perf_counter() - t0
        rec.add(time.time(), latency, status, points)
        sess.on_reply(status, reply, points)
        if isinstance(status, int) and 200 <= status < 300:
            continue
        if status == 409 and isinstance(reply, dict) and "expected_seq" in reply:
            continue  # resynced: the next post should succeed right away
        await asyncio.sleep(retry if status == 429 and retry else ERROR_BACKOFF_S)


async def ceiling_loop(
    http: aiohttp.ClientSession, base: str, start: float, end: float, counts: Counter[str]
) -> None:
    """Hammer the no-op ``/health/live``; counts replies completed inside the window."""
    url = f"{base}/health/live"
    await sleep_until(start)
    while time.time() < end:
        status, _, _ = await call(http, "GET", url)
        if time.time() <= end:
            counts["ok" if status == 200 else "error"] += 1


async def cpu_between(start: float, end: float) -> float:
    """CPU seconds this process used between two wall-clock instants."""
    await sleep_until(start)
    c0 = time.process_time()
    await sleep_until(end)
    return time.process_time() - c0


async def run_shard(spec: ShardSpec, phases: Phases, progress: Progress | None = None) -> ShardResult:
    """Drive ``spec.sids`` through the ceiling probe, warm-up and measured window."""
    sessions = [
        StreamSession(sid, session_phase(spec.first_index + i), dim=spec.dim, level=spec.level)
        for i, sid in enumerate(spec.sids)
    ]
    rec = Recorder(phases.measure_start, phases.measure_end, spec.slot, progress)
    ceiling: Counter[str] = Counter()
    async with make_http(spec.timeout_s) as http:
        cpu_c = asyncio.ensure_future(cpu_between(phases.ceiling_start, phases.ceiling_end))
        cpu_m = asyncio.ensure_future(cpu_between(phases.measure_start, phases.measure_end))
        if spec.ceiling:
            await asyncio.gather(
                *(
                    ceiling_loop(http, spec.base_url, phases.ceiling_start, phases.ceiling_end, ceiling)
                    for _ in sessions
                )
            )
        await sleep_until(phases.stream_start)
        await asyncio.gather(*(stream_loop(http, spec.base_url, s, spec.points, rec) for s in sessions))
        cpu_ceiling, cpu_measure = await asyncio.gather(cpu_c, cpu_m)
    return ShardResult(
        latencies_ms=rec.latencies_ms,
        requests=rec.requests,
        ok=rec.ok,
        points=rec.points,
        errors=dict(rec.errors),
        ceiling_requests=ceiling["ok"],
        ceiling_errors=ceiling["error"],
        cpu_ceiling_s=cpu_ceiling,
        cpu_measure_s=cpu_measure,
    )


async def bounded_gather(
    factories: list[Callable[[], Awaitable[T]]], limit: int = 32
) -> list[T | BaseException]:
    """Run coroutine factories with at most ``limit`` in flight; exceptions are returned."""
    sem = asyncio.Semaphore(limit)

    async def one(make: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await make()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop when installed (~15-25% less client CPU per request here).

    The collector is tuned as in the server, so the client's own pauses do not show up as
    server latency.
    """
    tune_gc()
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)
