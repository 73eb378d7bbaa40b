"""`POST /v1/sessions/{sid}/average`: queue the values for a worker, pass its reply on."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import ServicesDep, TenantDep
from app.errors import from_slug
from tests.kinds.movavg.replies import AverageReply
from tests.kinds.movavg.requests import AverageRequest
from tests.kinds.movavg.wire import average_job

router = APIRouter(prefix="/v1/sessions", tags=["movavg"])
routers = [router]


@router.post("/{sid}/average", response_model=AverageReply)
async def post_average(sid: str, body: AverageRequest, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Append values to the session's series; the moving average ending at each."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "movavg", "/average")
    job = average_job(sid, meta.model, meta.model_version, body.values, svc.queue.channel)
    reply = await svc.queue.run(svc.keys.stream("movavg"), job, svc.settings.request_timeout_s)
    if not reply.ok:
        raise from_slug(reply.slug, reply.detail, **(reply.extra or {}))
    return Response(reply.body, media_type="application/json")
