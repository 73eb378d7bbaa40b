"""What routes get injected: the services of this API process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from app.api.auth import KeyRing, check_rate
from app.api.metrics import ApiMetrics
from app.catalog import Catalog
from app.config import Settings
from app.queue.submit import JobQueue
from app.store.backup import BackupStore
from app.store.exemplars import ExemplarStore
from app.store.keys import Keys
from app.store.session_index import SessionIndex
from app.store.sessions import SessionStore
from app.store.tenants import Tenant, TenantStore


@dataclass
class Services:
    """Everything a route may use; built once in the app's lifespan."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    sessions: SessionStore
    queue: JobQueue
    catalog: Catalog  # name -> the version new sessions get; every version (hot reload)
    exemplars: ExemplarStore
    backups: BackupStore
    metrics: ApiMetrics
    live_sessions: SessionIndex
    keyring: KeyRing
    tenants: TenantStore


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_tenant(request: Request, svc: ServicesDep) -> Tenant:
    """Who the request acts for (its bearer key), counted against that tenant's rate limit.

    Every /v1 router depends on this, so no route can forget it; a route that needs the
    tenant takes ``TenantDep`` too and gets the same object (FastAPI caches it per request).
    """
    tenant = svc.keyring.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant.name
    await check_rate(svc.tenants, tenant)
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
