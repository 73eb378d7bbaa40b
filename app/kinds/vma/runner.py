"""Runs VMA jobs: add exemplars, classify drawings, draw samples, batched across sessions.

Per batch: every ``add`` job's drawings go through h(m) in one forward pass and are
committed per session by a script (ids, pixels, embeddings, version, reply: all or nothing,
once per job). Queries first read every session's version in one round trip and load only
the memories the device-side cache lacks; then all drawings to classify go through h_q in
one pass, the likelihood bound's decoder evaluations of all of them in another, and all
samples of all sessions through the decoder in a third.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import torch
from torch import Tensor

from app.catalog import ModelKey
from app.errors import EmptyMemory, ExemplarNotFound, LabelNotFound, MemserveError, SessionNotFound
from app.kinds.vma.images import encode_png
from app.kinds.vma.memory import DeviceMemory, MemoryCache, PriorCache, to_device
from app.kinds.vma.replies import Sample, SampleResponse
from app.kinds.vma.served import PIX_FLOATS, NoveltyRule, ServedVMA
from app.kinds.vma.wire import AUTO_SAMPLES, VmaJob, auto_samples
from app.queue.messages import error_reply, ok_reply
from app.queue.reader import Delivery
from app.store.exemplars import AddCommit, WorkerExemplars, unpack_pixels
from app.store.keys import Keys
from app.worker.budget import UNBOUNDED, WorkBudget
from app.worker.runner import Outcome, Runner
from models.vma import address_kl, label_scores

log = logging.getLogger(__name__)

# The fewest VMA jobs a CPU worker's batch is split down to unless set (MEMSERVE_VMA_SPLIT_BATCH):
# a batch that takes every waiting job makes the worker and the API wait on each other in turn,
# and a drawing's arithmetic costs about the same per drawing past 8 to a batch; below that,
# each batch's own round trips weigh more (docs/benchmarks.md).
CPU_SPLIT = 8

Item = tuple[Delivery, VmaJob, DeviceMemory]


class VmaRunner(Runner[ServedVMA]):
    """Processes batches of VMA jobs for every loaded VMA checkpoint."""

    kind = "vma"

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        models: dict[ModelKey, ServedVMA],
        reply_ttl_s: int,
        max_deliveries: int,
        cache_bytes: int = 512 << 20,
        latest: dict[str, ModelKey] | None = None,
        budget: WorkBudget = UNBOUNDED,
        split: int | None = None,
    ) -> None:
        """``split``: the fewest jobs a batch is split down to (MEMSERVE_VMA_SPLIT_BATCH); None:
        `CPU_SPLIT` on a CPU, no split on a GPU."""
        super().__init__(r, keys, models, reply_ttl_s, max_deliveries, latest)
        self.split = split
        # A quarter of the budget keeps exemplars' p(z|m_a) and pyramids for the likelihood bound.
        self.priors = PriorCache(cache_bytes // 4)
        self.cache = MemoryCache(cache_bytes - self.priors.max_bytes)
        self.budget = budget
        self.exemplars = WorkerExemplars(r, keys, reply_ttl_s)

    def batch_cap(self, in_hand: int) -> int | None:
        """Half the jobs in hand, at least the split: the other half waits for the next batch, which
        runs while the API sends this one's replies and queues the next requests."""
        split = self.split
        if split is None:
            if any(served.on_gpu for served in self.models.values()):
                return None
            split = CPU_SPLIT
        return max(split, -(-in_hand // 2))

    def beat(self) -> dict[str, Any]:
        """The caches' hits and misses and the arithmetic options in use, for the heartbeat."""
        first = next(iter(self.models.values()), None)  # every model of a worker has the same
        precision = (first.precision if first is not None else None) or {}
        return {
            "memory_cache_hits": self.cache.hits, "memory_cache_misses": self.cache.misses,
            "prior_cache_hits": self.priors.hits, "prior_cache_misses": self.priors.misses,
            **{f"vma_{k}": v for k, v in precision.items()},
        }  # fmt: skip

    def process(self, deliveries: list[Delivery]) -> Outcome:
        """Run one batch; returns what to acknowledge and the replies to send."""
        out = Outcome()
        adds: list[tuple[Delivery, VmaJob]] = []
        queries: list[tuple[Delivery, VmaJob]] = []
        for d in deliveries:
            try:
                job = VmaJob.from_fields(d.fields)
            except (KeyError, ValueError) as e:
                log.error("dropping malformed job %s: %s", d.entry_id, e)
                out.ack.append(d.entry_id)
                continue
            if (why := self.cannot_run(d, job.model, job.model_version)) is not None:
                self._refuse(out, d, job, why)
            else:
                (adds if job.op == "add" else queries).append((d, job))
        if adds:
            self._add(adds, out)
        if queries:
            # Query replies are only published, not also kept under a reply key as those of
            # adds are: a query changes nothing, so a client that missed one simply asks again,
            # and keeping them would cost Redis a copy of every answer.
            self._query(queries, out)
        return out

    def _refuse(self, out: Outcome, d: Delivery, job: VmaJob, why: MemserveError) -> None:
        out.replies.append((job.reply_to, error_reply(job.job_id, why)))
        out.ack.append(d.entry_id)

    # ------------------------------------------------------------------ add
    def _add(self, adds: list[tuple[Delivery, VmaJob]], out: Outcome) -> None:
        by_model: dict[ModelKey | None, list[tuple[Delivery, VmaJob]]] = {}
        for d, job in adds:
            by_model.setdefault(self.key_of(job.model, job.model_version), []).append((d, job))
        for group in by_model.values():
            served = self.served(group[0][1].model, group[0][1].model_version)
            x = torch.from_numpy(np.concatenate([job.images() for _, job in group]))
            x = x.unsqueeze(1).to(served.device)  # (N, S, S) -> (N, 1, S, S)
            emb = self.budget.map_rows(served.model.memory_embedding, [x], served.costs.embed)
            h = emb.cpu().numpy()  # (N, D)
            commits, start = [], 0
            for _, job in group:
                p = job.params
                rows = h[start : start + job.count]
                commits.append(
                    AddCommit(job.sid, job.job_id, p["ttl"], p["capacity"], p["labels"], job.pixels, rows)
                )
                start += job.count
            results = self.exemplars.commit(commits)
            for (d, job), res in zip(group, results, strict=True):
                if res == b"gone":
                    self._refuse(out, d, job, _gone(job))
                    continue
                out.replies.append((job.reply_to, res))
                out.ack.append(d.entry_id)
            out.steps += len(group)

    # -------------------------------------------------------------- queries
    def _memories(self, jobs: list[VmaJob]) -> dict[str, DeviceMemory | None]:
        """Each job's session memory as it is now (None: the session has ended).

        The cache is keyed on the version and the random etag of the session's last change:
        a version alone can name two memories once Redis has lost acknowledged writes (a
        restored snapshot, a failover) and counts the version up again."""
        sids = sorted({j.sid for j in jobs})
        job_of = {j.sid: j for j in jobs}
        found: dict[str, DeviceMemory | None] = {}
        load = []
        for sid, head in zip(sids, self.exemplars.heads(sids), strict=True):
            if head.version is None:
                found[sid] = None
            elif (mem := self.cache.get(sid, head.version, head.etag)) is not None:
                found[sid] = mem
            else:
                load.append(sid)
        for sid, stored in zip(load, self.exemplars.read(load) if load else [], strict=True):
            if stored.version is None or stored.memory is None:
                found[sid] = None
                continue
            job = job_of[sid]
            served = self.served(job.model, job.model_version)
            mem = to_device(
                stored.memory, stored.version, job.model, served.model, served.device, stored.etag
            )
            self.cache.put(sid, mem)
            found[sid] = mem
        return found

    def _query(self, queries: list[tuple[Delivery, VmaJob]], out: Outcome) -> None:
        memories = self._memories([job for _, job in queries])
        groups: dict[tuple[str, ModelKey | None], list[Item]] = {}
        for d, job in queries:
            mem = memories.get(job.sid)
            if mem is None:
                self._refuse(out, d, job, _gone(job))
            elif mem.size == 0:
                detail = "the session's memory is empty: add exemplars first"
                self._refuse(out, d, job, EmptyMemory(detail))
            else:
                key = self.key_of(job.model, job.model_version)
                groups.setdefault((job.op, key), []).append((d, job, mem))
        for (op, _key), items in groups.items():
            run = self._classify if op == "classify" else self._sample
            served = self.served(items[0][1].model, items[0][1].model_version)
            for (d, job, _), body in zip(items, run(served, items), strict=True):
                payload = body if isinstance(body, bytes) else ok_reply(job.job_id, body)
                out.replies.append((job.reply_to, payload))
                out.ack.append(d.entry_id)
            out.steps += len(items)

    # ------------------------------------------------------------- classify
    @torch.inference_mode()
    def _classify(self, served: ServedVMA, items: list[Item]) -> list[dict[str, Any] | bytes]:
        model, dev = served.model, served.device
        x = torch.from_numpy(np.concatenate([job.images() for _, job, _ in items])).unsqueeze(1).to(dev)
        for _, job, _ in items:
            if int(job.params["samples"]) == AUTO_SAMPLES:
                job.params["samples"] = auto_samples(served.novelty.score if served.novelty else None)
        # (N, D): every drawing of every session, in as few passes as the budget allows
        e = self.budget.map_rows(model.query_embedding, [x], served.costs.embed)
        parts, log_q = _address(items, x, e)
        _bounds(served, parts, self.budget, self.priors)
        return list(_classify_bodies(parts, log_q, served.novelty))

    # --------------------------------------------------------------- sample
    @torch.inference_mode()
    def _sample(self, served: ServedVMA, items: list[Item]) -> list[dict[str, Any] | bytes]:
        bodies: list[dict[str, Any] | bytes] = []
        slots, noise, owners = [], [], []
        for i, (_, job, mem) in enumerate(items):
            if job.params.get("temperature") is None:
                job.params["temperature"] = served.sample_temperature
            if job.params.get("anchor") is None:
                job.params["anchor"] = served.sample_anchor
            picked = _pick_slots(mem, job, served.model.config.z_dim)
            if isinstance(picked, MemserveError):
                bodies.append(error_reply(job.job_id, picked))
                continue
            bodies.append({})
            slots.append(picked[0])
            noise.append(picked[1])
            owners.append(i)
        if owners:
            pairs = zip(owners, slots, strict=True)
            m_a = torch.cat([items[i][2].pixels(s, served.device) for i, s in pairs])  # (N, 1, S, S)
            z = torch.cat(noise).to(served.device)
            anchor = torch.tensor(
                [float(items[i][1].params["anchor"]) for i, s in zip(owners, slots, strict=True) for _ in s],
                device=served.device,
            )  # (N,): each sample's job's
            decoded = self.budget.map_rows(served.model.sample_from, [m_a, z, anchor], served.costs.sample)
            probs = decoded.cpu().numpy()
            start = 0
            for i, s in zip(owners, slots, strict=True):
                job, mem = items[i][1], items[i][2]
                bodies[i] = _sample_body(mem, job, s, probs[start : start + len(s)])
                start += len(s)
        return bodies


# --------------------------------------------------------------------------- helpers
def _gone(job: VmaJob) -> SessionNotFound:
    return SessionNotFound(f"session {job.sid} does not exist")


@dataclass
class _Addressing:
    """One classify job's addressing results and the candidates of its likelihood bound."""

    job: VmaJob
    mem: DeviceMemory
    x: Tensor  # (n, 1, S, S)
    log_q: Tensor  # (n, A)
    best_logit: Tensor  # (n,) max_a S(m_a, x): the address novelty score
    best_cosine: Tensor  # (n,) best_logit / ||h_q(x)||: the cosine novelty score
    kl: Tensor  # (n,)
    cand: Tensor  # (n, T) top addresses under q(a|x)
    samples: int  # z samples per candidate
    log_w: Tensor | None = None  # (n, T) log E_z[...] per candidate
    bound: list[float] | None = None  # (n,) the likelihood bound log sum_a p(a) E_z[...]


def _address(items: list[Item], x: Tensor, e: Tensor) -> tuple[list[_Addressing], Tensor]:
    """Each classify job's addressing: its drawings' logits against its own memory, then the
    softmaxes, KLs, best logits and top candidates of all jobs in one pass over a padded
    (N, A_max) block (padded slots have logit and prior -inf, so q = 0 there); and that
    block's log q(a|x)."""
    a_max = max(mem.size for _, _, mem in items)
    logits = torch.full((e.shape[0], a_max), float("-inf"), device=e.device)  # (N, A_max)
    log_prior = torch.full_like(logits, float("-inf"))
    rows, start = [], 0
    for _, job, mem in items:
        at = slice(start, start + job.count)
        # `models.vma.similarity`, with the memory's unit directions kept with it: one product per job.
        logits[at, : mem.size] = e[at] @ mem.directions  # (n, D) @ (D, A) -> (n, A)
        log_prior[at, : mem.size] = mem.log_prior
        rows.append(at)
        start = at.stop
    log_q = logits.log_softmax(-1)
    kl = address_kl(log_q, log_prior)  # (N,)
    best = logits.max(-1).values  # (N,)
    cosine = best / e.norm(dim=-1)
    # Candidates of the bound: the top min(A, samples) addresses, so `samples` decoder
    # evaluations split over them (0 samples: addressing only, no bound).
    t_of = [min(mem.size, int(job.params["samples"])) for _, job, mem in items]
    top = log_q.topk(max(t_of), dim=-1).indices  # (N, T_max); padded slots sort last
    parts = []
    for (_, job, mem), at, t in zip(items, rows, t_of, strict=True):
        samples = max(1, int(job.params["samples"]) // max(t, 1))
        parts.append(_Addressing(
            job, mem, x[at], log_q[at, : mem.size], best[at], cosine[at], kl[at], top[at, :t], samples
        ))  # fmt: skip
    return parts, log_q


def _bounds(served: ServedVMA, parts: list[_Addressing], budget: WorkBudget, priors: PriorCache) -> None:
    """Fill each part's log_w and bound: the decoder evaluations of all parts with the same (T, K)
    in as few passes as the budget allows (a drawing's T K evaluations stay in one pass), with the
    candidates' p(z|m_a) and pyramids from ``priors`` (when it has a budget)."""
    groups: dict[tuple[int, int], list[_Addressing]] = {}
    for p in parts:
        if p.cand.shape[1]:
            groups.setdefault((p.cand.shape[1], p.samples), []).append(p)
    for (t, k), group in groups.items():
        rows = [(p, a) for p in group for a in p.cand.cpu().numpy()]  # per drawing: its part, its slots
        eps = torch.cat([_z_noise(p, k, served.model.config.z_dim) for p in group])  # (R, T, K, z)
        x = torch.cat([p.x for p in group])  # (R, 1, S, S)
        pixel_bytes = t * k * PIX_FLOATS * 4  # a drawing's candidates expanded K times
        spans = budget.spans([t * k * served.costs.decoder_eval + pixel_bytes] * len(rows))
        log_w = torch.cat([_span_log_weights(served, rows[at], x[at], eps[at], k, priors) for at in spans])
        # log w_a = log p(a) + log E_z[...] per candidate (R, T); the bound is their log-sum-exp
        log_wa = log_w + torch.cat([p.mem.log_prior[p.cand] for p in group])
        bound = torch.logsumexp(log_wa, dim=-1).tolist()  # (R, T) -> R
        start = 0
        for p in group:
            at = slice(start, start + p.x.shape[0])
            p.log_w, p.bound, start = log_w[at], bound[at], at.stop


def _z_noise(p: _Addressing, k: int, z_dim: int) -> Tensor:
    """The noise of z (n, T, K, z) for a part's candidates: from its request's seed, so that the
    answer does not depend on the batch."""
    gen = torch.Generator().manual_seed(int(p.job.params["seed"]))
    return torch.randn(p.x.shape[0], p.cand.shape[1], k, z_dim, generator=gen)


def _span_log_weights(
    served: ServedVMA, rows: list[tuple[_Addressing, np.ndarray]], x: Tensor, eps: Tensor, k: int,
    priors: PriorCache,
) -> Tensor:  # fmt: skip
    """log E_z[...] (c, T) of c drawings x (c, 1, S, S) against their candidates, eps (c, T, K, z)."""
    model = served.model
    packed = [p.mem.packed(a) for p, slots in rows for a in slots.tolist()]
    m_a = torch.from_numpy(unpack_pixels(b"".join(packed))).unsqueeze(1).to(x.device)  # (c T, 1, S, S)
    prior = None
    if priors.max_bytes > 0:
        keys = [(p.job.sid, int(p.mem.ids[a])) for p, slots in rows for a in slots.tolist()]
        prior = priors.lookup(model, served.token, keys, packed, m_a)
    m_a = m_a.view(len(rows), -1, *x.shape[1:])  # (c T, 1, S, S) -> (c, T, 1, S, S)
    return model.candidate_log_weights(x, m_a, k, eps=eps.to(x.device), prior=prior)  # (c, T)


def _novel(p: _Addressing, rule: NoveltyRule | None) -> list[bool | None]:
    """Per drawing: below the card's threshold on its novelty score; None where it has none."""
    if rule is not None and rule.score in ("address", "cosine"):
        score = p.best_logit if rule.score == "address" else p.best_cosine
        return [b < rule.threshold for b in score.tolist()]
    if rule is None or p.log_w is None:  # no threshold, or samples = 0 with the bound score
        return [None] * p.x.shape[0]
    best_single = p.log_w.max(dim=-1).values.tolist()  # the best one-exemplar bound log p(x|m_a)
    return [b < rule.threshold for b in best_single]


@dataclass
class _Tops:
    """The posterior method's label scores and top addresses of a whole batch, on the CPU."""

    scores: np.ndarray  # (N, L_max) p(c|x); columns past a job's own labels are 0
    top_p: np.ndarray  # (N, K_max) q(a|x) of the top addresses, best first
    top_a: np.ndarray  # (N, K_max) their slots


def _posterior_tops(parts: list[_Addressing], log_q: Tensor) -> _Tops:
    """Label scores and top addresses of every drawing of every job in one pass over the
    padded (N, A_max) block of `_address`, instead of a few small tensor operations per job."""
    labels = np.zeros(log_q.shape, dtype=np.int64)  # padded slots add q = 0 to label 0
    start = 0
    for p in parts:
        labels[start : start + p.x.shape[0], : p.mem.size] = p.mem.label_idx.cpu().numpy()
        start += p.x.shape[0]
    q = log_q.exp()  # (N, A_max)
    n_labels = max(len(p.mem.label_names) for p in parts)
    scores = label_scores(q, torch.from_numpy(labels).to(q.device), n_labels)  # (N, L_max)
    # Ranked on log q: padded slots (-inf) rank below every real one, even one whose q underflows to 0.
    k = max(min(int(p.job.params["top_k"]), p.mem.size) for p in parts)
    top_log_q, top_a = log_q.topk(k, dim=-1)  # (N, K_max)
    return _Tops(scores.cpu().numpy(), top_log_q.exp().cpu().numpy(), top_a.cpu().numpy())


def _classify_bodies(
    parts: list[_Addressing], log_q: Tensor, rule: NoveltyRule | None
) -> list[dict[str, Any]]:
    """Each job's reply, in the shape of the route's response model (`ClassifyResponse`)."""
    tops = _posterior_tops(parts, log_q)
    bodies, start = [], 0
    for p in parts:
        rows = slice(start, start + p.x.shape[0])
        start = rows.stop
        bodies.append(_classify_body(p, rule, tops, rows))
    return bodies


def _classify_body(p: _Addressing, rule: NoveltyRule | None, tops: _Tops, rows: slice) -> dict[str, Any]:
    mem, job = p.mem, p.job
    names, n = mem.label_names, p.x.shape[0]
    bound: list[float] | list[None] = [None] * n if p.bound is None else p.bound  # None: samples = 0
    top_k = min(int(job.params["top_k"]), mem.size)
    if job.params["method"] == "importance":
        assert p.log_w is not None, "the importance method needs samples"
        log_wa = p.log_w + mem.log_prior[p.cand]  # (n, T): log w_a = log p(a) + log E_z[...]
        weights = log_wa.softmax(-1)  # (n, T): p(a|x) self-normalised over the candidates
        scores = label_scores(weights, mem.label_idx[p.cand], len(names)).cpu().numpy()
        top_p, at = weights.topk(min(top_k, weights.shape[1]), dim=-1)
        top_a = p.cand.gather(1, at).cpu().numpy()
        top_q = top_p.cpu().numpy()
    else:
        scores = tops.scores[rows, : len(names)]
        top_q, top_a = tops.top_p[rows, :top_k], tops.top_a[rows, :top_k]
    novel, kl = _novel(p, rule), p.kl.tolist()
    results = []
    for i in range(n):
        results.append({
            "label": names[int(scores[i].argmax())],
            "scores": dict(zip(names, scores[i].tolist(), strict=True)),
            "top": [
                {"exemplar_id": int(mem.ids[a]), "label": mem.labels[a], "p": q}
                for a, q in zip(top_a[i].tolist(), top_q[i].tolist(), strict=True)
            ],
            "kl_nats": kl[i],
            "log_likelihood_nats": bound[i],
            "novel": novel[i],
        })  # fmt: skip
    # Built as plain data for speed; tests/unit/test_vma_replies.py holds it to ClassifyResponse.
    return {"method": job.params["method"], "samples": int(job.params["samples"]), "results": results}


def _pick_slots(mem: DeviceMemory, job: VmaJob, z_dim: int) -> tuple[np.ndarray, Tensor] | MemserveError:
    """The slots a ~ p(a|M) (restricted as asked) and the z noise of one sample job, from its seed,
    scaled by its temperature."""
    label, eid = job.params.get("label"), job.params.get("exemplar_id")
    allowed = np.arange(mem.size)
    if eid is not None:
        slot = mem.slot_of(int(eid))
        if slot is None:
            return ExemplarNotFound(f"session {job.sid} has no exemplar {eid}", exemplar_id=int(eid))
        allowed = np.array([slot])
    elif label is not None:
        if label not in mem.label_names:
            return LabelNotFound(f"no exemplar of session {job.sid} has label {label!r}")
        allowed = (mem.label_idx == mem.label_names.index(label)).nonzero()[:, 0].cpu().numpy()
    gen = torch.Generator().manual_seed(int(job.params["seed"]))
    probs = mem.log_prior[torch.from_numpy(allowed).to(mem.log_prior.device)].softmax(-1).cpu()
    picks = torch.multinomial(probs, int(job.params["n"]), replacement=True, generator=gen).numpy()
    noise = torch.randn(len(picks), z_dim, generator=gen)
    return allowed[picks], float(job.params["temperature"]) * noise  # z = mu + t sigma noise


def _sample_body(mem: DeviceMemory, job: VmaJob, slots: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    as_png = job.params.get("format", "png") == "png"
    samples = []
    for slot, p in zip(slots.tolist(), probs, strict=True):
        s: dict[str, Any] = {"exemplar_id": int(mem.ids[slot]), "label": mem.labels[slot]}
        if as_png:
            s["image"] = encode_png(p)
        else:
            s["probs"] = np.round(p, 5).tolist()
        samples.append(Sample.model_validate(s))
    # Only the members set: a png sample has no probs member, a probs sample no image.
    seed, temperature, anchor = (
        int(job.params["seed"]),
        float(job.params["temperature"]),
        float(job.params["anchor"]),
    )
    reply = SampleResponse(samples=samples, seed=seed, temperature=temperature, anchor=anchor)
    return reply.model_dump(exclude_unset=True)
