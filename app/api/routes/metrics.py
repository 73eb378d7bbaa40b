"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from app.api.deps import ServicesDep
from app.api.metrics import Families, cluster_metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(svc: ServicesDep) -> Response:
    """This process' metrics and the service's (queues, workers, live sessions, read from Redis
    now), in the Prometheus text format. docs/operations.md lists them."""
    families = await cluster_metrics(svc.redis, svc.keys, svc.live_sessions)
    body = generate_latest(svc.metrics.registry) + generate_latest(Families(families))
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
