"""Session backup: export a session as one binary document, import one, fork a session.

The document format and the checks live in app.store.backup and app.store.backup_check.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import ServicesDep, TenantDep
from app.api.new_sessions import admitted_session, session_info
from app.api.schemas import SessionInfo
from app.store.backup import MEDIA_TYPE, decode
from app.store.backup_check import check_importable

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_DOCUMENT: dict[str, Any] = {"content": {MEDIA_TYPE: _BINARY}}
# Import reads the body whatever its content type; these are the two a client would send.
_IMPORTED: dict[str, Any] = {"content": {MEDIA_TYPE: _BINARY, "application/octet-stream": _BINARY}}


@router.get(
    "/{sid}/export",
    response_class=Response,
    responses={200: {**_DOCUMENT, "description": "the session as one binary document"}},
)
async def export_session(sid: str, svc: ServicesDep, tenant: TenantDep) -> Response:
    """The whole session (meta, state or exemplar memory) as one versioned binary document,
    a consistent snapshot without the session's id; restore it with `POST /v1/sessions/import`.
    Slides the session's TTL like any read."""
    await svc.sessions.meta(sid, tenant.name)  # before the read, which slides the TTL
    data = await svc.backups.export(sid, tenant.name)
    disposition = f'attachment; filename="memserve-session-{sid}.bin"'
    return Response(data, media_type=MEDIA_TYPE, headers={"Content-Disposition": disposition})


@router.post(
    "/import",
    response_model=SessionInfo,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {**_IMPORTED, "required": True}},
)
async def import_session(
    request: Request,
    svc: ServicesDep,
    tenant: TenantDep,
    response: Response,
    ttl_s: Annotated[int | None, Query(ge=1, description="idle expiry; default: the document's")] = None,
) -> SessionInfo:
    """Restore an exported document as a new session (new id). Its model must be loaded, of the
    same kind and version; a refused document changes nothing. Any content type is accepted."""
    doc = decode(await request.body())
    if ttl_s is not None:
        doc = doc.with_ttl(ttl_s)
    check_importable(doc, svc.catalog, svc.settings.max_ttl_s, svc.settings.max_vma_capacity)
    async with admitted_session(svc, tenant, doc.header.ttl_s) as sid:
        await svc.backups.restore(doc, tenant.name, sid)
    response.headers["Location"] = f"/v1/sessions/{sid}"
    info = session_info(sid, await svc.sessions.info(sid, tenant.name))
    await svc.live_sessions.add(sid, info.kind, info.ttl_s)
    return info


@router.post("/{sid}/fork", response_model=SessionInfo, status_code=status.HTTP_201_CREATED)
async def fork_session(sid: str, svc: ServicesDep, tenant: TenantDep, response: Response) -> SessionInfo:
    """Copy the session, from one consistent snapshot, to a new id: both then go on independently
    (what-if forecasts from the same stream state)."""
    source = await svc.sessions.meta(sid, tenant.name)
    async with admitted_session(svc, tenant, source.ttl_s) as new_sid:
        await svc.backups.fork(sid, tenant.name, new_sid)
    response.headers["Location"] = f"/v1/sessions/{new_sid}"
    info = session_info(new_sid, await svc.sessions.info(new_sid, tenant.name))
    await svc.live_sessions.add(new_sid, info.kind, info.ttl_s)
    return info
