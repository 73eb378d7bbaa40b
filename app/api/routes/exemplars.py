"""VMA exemplars: add (embedded once by a worker), list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import ServicesDep, TenantDep
from app.api.schemas import (
    INT64_MAX,
    MAX_LABEL_CHARS,
    AddedExemplars,
    AddExemplars,
    ExemplarEntry,
    ExemplarPage,
)
from app.errors import CapacityReached, InvalidImage, PayloadTooLarge, from_slug
from app.jobs.images import decode_items, encode_png
from app.jobs.vma import VmaJob
from app.logs import current_request_id

router = APIRouter(prefix="/v1/sessions", tags=["vma"])


def parse_label(value: str | int, where: str) -> str:
    label = str(value)
    if not label or len(label) > MAX_LABEL_CHARS:
        raise InvalidImage(f"{where}: a label is 1 to {MAX_LABEL_CHARS} characters", at=where)
    return label


@router.post("/{sid}/exemplars", response_model=AddedExemplars, status_code=status.HTTP_201_CREATED)
async def add_exemplars(sid: str, body: AddExemplars, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Add labelled drawings to the session's memory; a worker embeds each once. All or none are added."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/exemplars")
    most = svc.settings.max_exemplars_per_request
    if len(body.exemplars) > most:
        raise PayloadTooLarge(f"at most {most} exemplars per request", max_exemplars=most)
    images = await decode_items([(e.image, e.pixels) for e in body.exemplars], "exemplars")  # (N, 28, 28)
    labels = [parse_label(e.label, f"exemplars[{i}].label") for i, e in enumerate(body.exemplars)]
    count = await svc.exemplars.count(sid)
    if count + len(labels) > meta.capacity:  # checked again, atomically, when the worker commits
        raise CapacityReached(
            f"the session holds {count} of {meta.capacity} exemplars; {len(labels)} more do not fit: "
            "delete some or create a session with a larger capacity",
            capacity=meta.capacity, count=count,
        )  # fmt: skip
    job = VmaJob.new(
        sid, meta.model, "add", svc.queue.channel, images, current_request_id(),
        model_version=meta.model_version, labels=labels, capacity=meta.capacity, ttl=meta.ttl_s,
    )  # fmt: skip
    reply = await svc.queue.run(
        svc.keys.stream("vma"), job, svc.settings.request_timeout_s,
        hint="the exemplars may still be added: list them before adding them again",
    )  # fmt: skip
    if not reply.ok:
        raise from_slug(reply.slug, reply.detail, **(reply.extra or {}))
    svc.metrics.exemplars_added.inc(len(labels))
    return Response(reply.body, status_code=status.HTTP_201_CREATED, media_type="application/json")


@router.get("/{sid}/exemplars", response_model=ExemplarPage)
async def list_exemplars(
    sid: str,
    svc: ServicesDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    images: Annotated[bool, Query(description="include each drawing as a base64 PNG")] = False,
) -> ExemplarPage:
    """The session's exemplars in the order they were added, a page at a time."""
    await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/exemplars")
    page = await svc.exemplars.list(sid, offset, limit, images)
    pngs = [encode_png(p) for p in page["pixels"]] if images else [None] * len(page["ids"])
    entries = [
        ExemplarEntry(id=i, label=lab, image=png)
        for i, lab, png in zip(page["ids"], page["labels"], pngs, strict=True)
    ]
    return ExemplarPage(exemplars=entries, total=page["total"], offset=offset, limit=limit)


@router.delete("/{sid}/exemplars/{eid}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_exemplar(
    sid: str, eid: Annotated[int, Path(ge=0, le=INT64_MAX)], svc: ServicesDep, tenant: TenantDep
) -> Response:
    """Remove one exemplar from the session's memory."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/exemplars")
    await svc.exemplars.delete(sid, eid, meta.ttl_s)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
