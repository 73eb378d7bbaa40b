"""The models: every version of every checkpoint, with its model card and the workers that loaded it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.schemas import ModelEntry, ModelList
from app.catalog import loaded_versions
from app.store.workers import live_beats

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(svc: ServicesDep) -> ModelList:
    """Every version of every checkpoint in the directory (oldest first), whether new sessions get it,
    and the live workers that have it loaded; then the versions live workers still serve whose files
    have been removed (their sessions keep working on those workers)."""
    loaded = loaded_versions(await live_beats(svc.redis, svc.keys, stats=False))
    catalog = svc.catalog
    entries = []
    for m in catalog.all():
        by = loaded.get(m.key)
        entries.append(
            ModelEntry(
                name=m.name,
                kind=m.kind,
                version=m.version,
                latest=catalog[m.name].key == m.key,
                workers=by.workers if by else [],
                card=m.card,
            )
        )
    for (name, version), by in sorted(loaded.items()):
        if catalog.version(name, version) is None:
            entries.append(
                ModelEntry(
                    name=name,
                    kind=by.kind,
                    version=version,
                    latest=False,
                    workers=by.workers,
                    on_disk=False,
                    card={},
                )
            )
    return ModelList(models=entries, latest={name: m.version for name, m in catalog.items()})
