"""What making a session takes, shared by creating one and importing a backup: a place under the
tenant's session limit, and the session's reply body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.api.deps import Services
from app.api.schemas import SessionInfo
from app.errors import SessionLimit
from app.store.keys import new_session_id
from app.store.tenants import Tenant


def session_info(sid: str, data: dict[str, Any]) -> SessionInfo:
    """The response body for a session, from ``SessionStore.info``."""
    m = data["meta"]
    return SessionInfo(
        id=sid, kind=m.kind, model=m.model, model_version=m.model_version, created=m.created,
        ttl_s=m.ttl_s, expires_in_s=data["expires_in_s"], capacity=m.capacity,
        input_dim=m.input_dim, step=data["step"], version=data["version"],
        memory_bytes=data["memory_bytes"], exemplars=data["exemplars"],
    )  # fmt: skip


@asynccontextmanager
async def admitted_session(svc: Services, tenant: Tenant, ttl_s: int) -> AsyncIterator[str]:
    """A new session id, counted against the tenant's live-session limit (429 past it); the
    place is given back if the session is not made after all."""
    sid = new_session_id()
    admission = await svc.tenants.admit(tenant, sid, ttl_s)
    if not admission.admitted:
        retry = admission.retry_after_s
        raise SessionLimit(
            f"{tenant.max_sessions} sessions are live, the most this key may hold: delete one, "
            f"or retry when one expires (the soonest in about {retry} s)",
            headers={"Retry-After": str(retry)}, max_sessions=tenant.max_sessions,
        )  # fmt: skip
    try:
        yield sid
    except BaseException:
        await svc.tenants.release(tenant, sid)
        raise
