"""VMA queries: one-shot samples and class scores, computed by the workers."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Response

from app.api.deps import ServicesDep, TenantDep
from app.api.routes.exemplars import parse_label
from app.api.schemas import ClassifyRequest, ClassifyResponse, SampleRequest, SampleResponse
from app.errors import InvalidRequest, PayloadTooLarge, from_slug
from app.jobs.images import decode_items
from app.jobs.vma import VmaJob
from app.logs import current_request_id

router = APIRouter(prefix="/v1/sessions", tags=["vma"])

# Decoder evaluations per image for the likelihood bound, when the request does not say.
DEFAULT_SAMPLES = {"posterior": 1, "importance": 16}


@router.post("/{sid}/samples", response_model=SampleResponse)
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
        ttl=meta.ttl_s,
    )  # fmt: skip
    return await _run(svc, job)


@router.post("/{sid}/classify", response_model=ClassifyResponse)
async def classify(sid: str, body: ClassifyRequest, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Per drawing: p(c|x) per label, the top addresses, KL(q(a|x)||p(a)), a log-likelihood bound and
    whether the drawing is unlike everything in memory."""
    meta = await svc.sessions.meta_of_kind(sid, tenant.name, "vma", "/classify")
    most = svc.settings.max_images_per_request
    if len(body.images) > most:
        raise PayloadTooLarge(f"at most {most} images per request", max_images=most)
    samples = DEFAULT_SAMPLES[body.method] if body.samples is None else body.samples
    evals, cap = len(body.images) * samples, svc.settings.max_decoder_evals
    if evals > cap:  # refused before decoding or queueing: the worker's time is the scarce part
        raise PayloadTooLarge(
            f"{len(body.images)} images x {samples} samples = {evals} decoder evaluations; at most {cap} "
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
