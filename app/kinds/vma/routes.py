"""VMA's routes: exemplars (add, embedded once by a worker; list; delete), samples and class scores."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import ServicesDep, TenantDep
from app.api.fastlane import hot
from app.api.schemas import INT64_MAX
from app.errors import CapacityReached, InvalidRequest, PayloadTooLarge, from_slug
from app.kinds.vma.images import decode_items, encode_png
from app.kinds.vma.replies import (
    AddedExemplars,
    ClassifyResponse,
    ExemplarEntry,
    ExemplarPage,
    SampleResponse,
)
from app.kinds.vma.requests import AddExemplars, ClassifyRequest, SampleRequest, parse_label
from app.kinds.vma.wire import AUTO_SAMPLES, VmaJob
from app.logs import current_request_id

router = APIRouter(prefix="/v1/sessions", tags=["vma"])
routers = [router]  # what the API includes for this kind (app.registry)


@router.post("/{sid}/exemplars", response_model=AddedExemplars, status_code=status.HTTP_201_CREATED)
@hot
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


# Decoder evaluations per image when the request does not say. The posterior method's scores,
# top addresses and (cosine or address) novelty need none, so it leaves the choice to the worker
# (AUTO_SAMPLES): 0, or 1 where the model's novelty rule is on the bound. Computing the bound
# unasked would more than double a request's work (docs/benchmarks).
DEFAULT_SAMPLES = {"posterior": AUTO_SAMPLES, "importance": 16}


@router.post("/{sid}/samples", response_model=SampleResponse)
@hot
async def post_samples(sid: str, body: SampleRequest, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Draw new drawings from the memory: a ~ p(a|M) (or among one label's or one exemplar), z ~ p(z|m_a),
    x ~ p(x|z, m_a). Each sample names the exemplar it came from; the same seed gives the same samples."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/samples")
    if body.label is not None and body.exemplar_id is not None:
        raise InvalidRequest("give label or exemplar_id, not both")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
    label = None if body.label is None else parse_label(body.label, "label")
    job = VmaJob.new(
        sid, meta.model, "sample", svc.queue.channel, None, current_request_id(),
        model_version=meta.model_version,
        n=body.n, label=label, exemplar_id=body.exemplar_id, seed=seed, format=body.format,
        temperature=body.temperature, anchor=body.anchor, ttl=meta.ttl_s,
    )  # fmt: skip
    return await _run(svc, job)


@router.post("/{sid}/classify", response_model=ClassifyResponse)
@hot
async def classify(sid: str, body: ClassifyRequest, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Per drawing: p(c|x) per label, the top addresses, KL(q(a|x)||p(a)), a log-likelihood bound and
    whether the drawing is unlike everything in memory."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/classify")
    most = svc.settings.max_images_per_request
    if len(body.images) > most:
        raise PayloadTooLarge(f"at most {most} images per request", max_images=most)
    samples = DEFAULT_SAMPLES[body.method] if body.samples is None else body.samples
    per_image = max(samples, 1)  # AUTO_SAMPLES is at most one
    evals, cap = len(body.images) * per_image, svc.settings.max_decoder_evals
    if evals > cap:  # refused before decoding or queueing: the worker's time is the scarce part
        raise PayloadTooLarge(
            f"{len(body.images)} images x {per_image} samples = {evals} decoder evaluations; at most {cap} "
            "per request: send fewer images per request, or fewer samples",
            max_decoder_evals=cap,
        )
    images = await decode_items([(e.image, e.pixels) for e in body.images], "images")  # (N, 28, 28)
    if body.method == "importance" and samples == 0:
        raise InvalidRequest("the importance method needs samples >= 1")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
    job = VmaJob.new(
        sid, meta.model, "classify", svc.queue.channel, images, current_request_id(),
        model_version=meta.model_version,
        method=body.method, samples=samples, top_k=body.top_k, seed=seed, ttl=meta.ttl_s,
    )  # fmt: skip
    return await _run(svc, job)


async def _run(svc: ServicesDep, job: VmaJob) -> Response:
    reply = await svc.queue.run(
        svc.keys.stream("vma"), job, svc.settings.request_timeout_s, hint="it changes nothing: retry it"
    )
    if not reply.ok:
        raise from_slug(reply.slug, reply.detail, **(reply.extra or {}))
    return Response(reply.body, media_type="application/json")
