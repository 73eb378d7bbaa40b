"""What routes get injected: the services of this API process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from app.catalog import ModelInfo
from app.config import Settings
from app.jobs.queue import JobQueue
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


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
