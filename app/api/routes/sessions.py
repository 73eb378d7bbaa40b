"""Sessions: create, inspect, end."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app import registry
from app.api.deps import Services, ServicesDep, TenantDep
from app.api.new_sessions import admitted_session, session_info
from app.api.schemas import CreateSession, SessionInfo, SessionList, SessionSummary
from app.catalog import ModelInfo
from app.errors import InvalidRequest, ModelNotFound
from app.registry import SessionRules

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


def _rules(kind: str) -> SessionRules:
    served = registry.get(kind)
    assert served is not None, f"{kind} passed CreateSession's check of the kinds served"
    return served.sessions()


def _pick_model(svc: Services, kind: str, name: str | None) -> ModelInfo:
    if name is None:
        name = _rules(kind).default_model(svc.settings)
        if name is None or name not in svc.catalog:  # no default, or it is absent: any model of the kind
            name = next((m.name for m in svc.catalog.values() if m.kind == kind), None)
            if name is None:
                raise ModelNotFound(f"no {kind} model is loaded", kind=kind)
    info = svc.catalog.get(name)
    if info is None:
        known = ", ".join(sorted(m.name for m in svc.catalog.values() if m.kind == kind)) or "none"
        raise ModelNotFound(f"no model {name!r}; {kind} models: {known}", model=name)
    if info.kind != kind:
        raise InvalidRequest(f"model {name!r} is a {info.kind} model, not {kind}")
    return info


def _progress(kind: str) -> str | None:
    """The count a listing reports of a session of ``kind`` (`SessionRules.progress`)."""
    served = registry.get(kind)
    return None if served is None else served.sessions().progress


@router.post("", response_model=SessionInfo, status_code=status.HTTP_201_CREATED)
async def create_session(
    body: CreateSession, svc: ServicesDep, tenant: TenantDep, response: Response
) -> SessionInfo:
    """Start a session holding its own memory; it expires after `ttl_s` idle seconds."""
    info = _pick_model(svc, body.kind, body.model)
    ttl = body.ttl_s or svc.settings.default_ttl_s
    if ttl > svc.settings.max_ttl_s:
        raise InvalidRequest(f"ttl_s is at most {svc.settings.max_ttl_s}", max_ttl_s=svc.settings.max_ttl_s)
    capacity = _rules(body.kind).capacity(svc.settings, info, body.capacity)
    async with admitted_session(svc, tenant, ttl) as sid:
        meta = await svc.sessions.create(
            body.kind, info.name, info.version, ttl, info.input_dim, capacity, tenant.name, sid
        )
    await svc.live_sessions.add(meta.sid, body.kind, ttl)
    svc.metrics.sessions_created.labels(body.kind).inc()
    response.headers["Location"] = f"/v1/sessions/{meta.sid}"
    return session_info(meta.sid, await svc.sessions.info(meta.sid, tenant.name))


@router.get("", response_model=SessionList)
async def list_sessions(
    svc: ServicesDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, description="sessions to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="sessions in the page at most")] = 100,
) -> SessionList:
    """The caller's live sessions, newest first (then by id), a page at a time; `total` counts
    them all. Expired and deleted sessions are never listed. Listing slides no session's TTL."""
    if tenant.max_sessions > 0:  # the tenant's own set, kept for its limit
        index = [svc.tenants.sessions_key(tenant.name)]
    else:  # no limit, no set of its own (authentication off, or an unlimited key): every kind's index
        index = [svc.live_sessions.key(kind) for kind in svc.live_sessions.kinds]
    total, rows = await svc.sessions.list_owned(index, tenant.name, offset, limit)
    page = []
    for row in rows:
        m = row["meta"]
        progress = _progress(m.kind)
        item = SessionSummary(
            id=m.sid, kind=m.kind, model=m.model, model_version=m.model_version, created=m.created,
            ttl_s=m.ttl_s, expires_in_s=row["expires_in_s"], capacity=m.capacity, input_dim=m.input_dim,
            step=row["step"] if progress == "step" else None,
            exemplars=row["exemplars"] if progress == "exemplars" else None,
        )  # fmt: skip
        page.append(item)
    return SessionList(sessions=page, total=total, offset=offset, limit=limit)


@router.get("/{sid}", response_model=SessionInfo)
async def get_session(sid: str, svc: ServicesDep, tenant: TenantDep) -> SessionInfo:
    """The session's model, progress, expiry and memory footprint."""
    return session_info(sid, await svc.sessions.info(sid, tenant.name))


@router.delete("/{sid}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_session(sid: str, svc: ServicesDep, tenant: TenantDep) -> Response:
    """End the session and drop its memory."""
    await svc.sessions.delete(sid, tenant.name)
    await svc.live_sessions.remove(sid)
    await svc.tenants.release(tenant, sid)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
