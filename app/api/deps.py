"""What routes get injected: the services of this API process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from app.api.metrics import ApiMetrics
from app.api.session_index import SessionIndex
from app.catalog import ModelInfo
from app.config import Settings
from app.jobs.queue import JobQueue
from app.store.backup import BackupStore
from app.store.exemplars import ExemplarStore
from app.store.keys import Keys
from app.store.sessions import SessionStore


@dataclass
class Services:
    """Everything a route may use; built once in the app's lifespan."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    sessions: SessionStore
    queue: JobQueue
    catalog: dict[str, ModelInfo]
    exemplars: ExemplarStore
    backups: BackupStore
    metrics: ApiMetrics
    live_sessions: SessionIndex


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_owner() -> str:
    """The tenant a request acts for, stored as a session's ``owner``.

    There is no authentication yet, so every request acts for "" (nobody). API-key tenancy
    sets it here, in one place, for every route that takes ``OwnerDep``.
    """
    return ""


OwnerDep = Annotated[str, Depends(get_owner)]
