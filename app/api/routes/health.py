"""Liveness, readiness."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Response
from redis.exceptions import RedisError

from app.api.deps import Services, ServicesDep
from app.api.schemas import Live, Ready
from app.store.keys import Keys

router = APIRouter(prefix="/health", tags=["health"])


async def live_workers(svc: Services) -> list[dict[str, Any]]:
    """Heartbeats of the workers alive now (registered, and their heartbeat key not expired),
    without their batch histograms (``stats``: /metrics exposes them)."""
    return await worker_beats(svc.redis, svc.keys)


async def worker_beats(r: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """`live_workers`, from a Redis client and key schema (before the services exist)."""
    ids: list[bytes] = await r.zrangebyscore(keys.worker_registry(), time.time(), "+inf")  # type: ignore[assignment]
    if not ids:
        return []
    beats = await r.mget([keys.worker(i.decode()) for i in ids])
    out = [json.loads(b) for b in beats if b]
    for beat in out:
        beat.pop("stats", None)
    return out


@router.get("/live", response_model=Live)
async def live() -> Live:
    """The process answers; nothing else is checked (also the benchmark's no-op)."""
    return Live(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(svc: ServicesDep, response: Response) -> Ready:
    """Ready when Redis answers, checkpoints are loaded and at least one worker is alive."""
    reasons: list[str] = []
    workers: list[dict[str, Any]] = []
    redis_ok = True
    try:
        await svc.redis.ping()
        workers = await live_workers(svc)
    except RedisError as e:
        redis_ok = False
        reasons.append(f"redis unreachable: {e}")
    if redis_ok and not workers:
        reasons.append("no live worker")
    if not svc.catalog:
        reasons.append(f"no checkpoints in {svc.settings.checkpoint_dir}")
    elif workers and not any(w.get("models") for w in workers):
        reasons.append("no worker has loaded a model")
    if reasons:
        response.status_code = 503
    return Ready(
        status="not-ready" if reasons else "ready",
        redis=redis_ok,
        models=sorted(svc.catalog),
        workers=workers,
        reasons=reasons,
    )
