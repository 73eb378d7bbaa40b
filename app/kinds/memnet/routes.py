"""MemNet streaming: post points, get next-step predictions and forecasts."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import ServicesDep, TenantDep
from app.api.fastlane import hot
from app.errors import InvalidRequest, from_slug
from app.kinds.memnet.replies import PointsResponse
from app.kinds.memnet.requests import PointsRequest, chunk_array
from app.kinds.memnet.wire import points_job
from app.logs import current_request_id

router = APIRouter(prefix="/v1/sessions", tags=["memnet"])
routers = [router]  # what the API includes for this kind (app.registry)


@router.post("/{sid}/points", response_model=PointsResponse)
@hot
async def post_points(sid: str, body: PointsRequest, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Apply a chunk of points to the session in order and return a prediction per point.

    `seq` must equal the session's step count (409 otherwise, with `expected_seq`), except
    for a repeat of the last applied chunk, which returns the same predictions again.
    """
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "memnet", "/points")
    if body.horizon > svc.settings.max_horizon:
        raise InvalidRequest(
            f"horizon is at most {svc.settings.max_horizon}", max_horizon=svc.settings.max_horizon
        )
    chunk = chunk_array(body.values, meta.input_dim, svc.settings.max_points_per_request)
    job = points_job(
        sid, meta.model, chunk, body.seq, body.horizon, svc.queue.channel,
        current_request_id(), model_version=meta.model_version,
        levels=tuple(sorted(set(body.level or ()))),
    )  # fmt: skip
    reply = await svc.queue.run(svc.keys.stream("memnet"), job, svc.settings.request_timeout_s)
    if not reply.ok:
        raise from_slug(reply.slug, reply.detail, **(reply.extra or {}))
    # The worker's JSON is the response body as is: no second encoding of the predictions.
    return Response(reply.body, media_type="application/json")
