"""The caller's tenant: who its key acts for, its limits and what it uses of them."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.api.schemas import TenantInfo

router = APIRouter(prefix="/v1/tenant", tags=["tenancy"])


@router.get("", response_model=TenantInfo)
async def get_tenant_info(svc: ServicesDep, tenant: TenantDep) -> TenantInfo:
    """The tenant of the bearer key, its live-session and rate limits, and its live sessions."""
    return TenantInfo(
        tenant=tenant.name, auth=svc.settings.auth, max_sessions=tenant.max_sessions,
        live_sessions=await svc.tenants.live_sessions(tenant), rate_per_s=tenant.rate_per_s,
        burst=tenant.burst,
    )  # fmt: skip
