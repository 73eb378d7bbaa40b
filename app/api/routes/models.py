"""The loaded checkpoints and their model cards."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.routes.health import live_workers
from app.api.schemas import ModelEntry, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(svc: ServicesDep) -> ModelList:
    """Every checkpoint with its model card, and the workers that have it loaded."""
    workers = await live_workers(svc)
    entries = [
        ModelEntry(
            name=m.name,
            kind=m.kind,
            version=m.version,
            workers=[w["id"] for w in workers if m.name in w.get("models", [])],
            card=m.card,
        )
        for m in svc.catalog.values()
    ]
    return ModelList(models=entries)
