"""Liveness, readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from redis.exceptions import RedisError

from app.api.deps import ServicesDep
from app.api.schemas import Live, Ready
from app.store.workers import live_beats

router = APIRouter(prefix="/health", tags=["health"])


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
        workers = await live_beats(svc.redis, svc.keys, stats=False)
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
