"""Session records in Redis, as the API sees them (async).

A session's meta hash is written once at creation; its state is written by workers. The
API keeps a short-lived cache of meta (kind, model, dimensions never change) so a point
request costs one round trip to Redis; the worker re-checks that the session still
exists before it applies anything, so a stale cache entry cannot resurrect a session.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from app.errors import SessionNotFound, WrongSessionKind
from app.store import scripts
from app.store.keys import SESSION_ID_RE, Keys, new_session_id

_CACHE_S = 2.0
_CACHE_MAX = 100_000


@dataclass(frozen=True)
class SessionMeta:
    """The unchanging facts of a session."""

    sid: str
    kind: str
    model: str
    model_version: str
    created: str
    ttl_s: int
    input_dim: int
    capacity: int
    owner: str = ""

    def to_hash(self) -> dict[str, str | int]:
        return {
            "kind": self.kind, "model": self.model, "model_version": self.model_version,
            "created": self.created, "ttl": self.ttl_s, "input_dim": self.input_dim,
            "capacity": self.capacity, "owner": self.owner, "version": 0,
        }  # fmt: skip

    @classmethod
    def from_hash(cls, sid: str, h: dict[bytes, bytes]) -> SessionMeta:
        g = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            sid=sid, kind=g["kind"], model=g["model"], model_version=g.get("model_version", "1"),
            created=g.get("created", ""), ttl_s=int(g.get("ttl", "0")),
            input_dim=int(g.get("input_dim", "1")), capacity=int(g.get("capacity", "0")),
            owner=g.get("owner", ""),
        )  # fmt: skip


class SessionStore:
    """Create, look up and end sessions."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._cache: dict[str, tuple[float, SessionMeta]] = {}
        self._touch = r.register_script(scripts.TOUCH)

    async def create(
        self,
        kind: str,
        model: str,
        model_version: str,
        ttl_s: int,
        input_dim: int,
        capacity: int,
        owner: str,
        sid: str | None = None,
    ) -> SessionMeta:
        """A new session owned by `owner` (under `sid` when given, e.g. one already counted
        against its tenant's limit); nothing but its meta exists until its first job is applied."""
        created = datetime.now(UTC).isoformat(timespec="milliseconds")
        meta = SessionMeta(
            sid or new_session_id(), kind, model, model_version, created, ttl_s, input_dim, capacity, owner
        )
        key = self.keys.meta(meta.sid)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(key, mapping=meta.to_hash())  # type: ignore[arg-type]
            p.expire(key, ttl_s)
            await p.execute()
        return meta

    async def meta(self, sid: str, owner: str) -> SessionMeta:
        """The session's meta (cached briefly); SessionNotFound when it does not exist or
        belongs to another tenant than `owner`: the same answer, so ids of others' sessions
        cannot be told from ids that were never issued."""
        now = time.monotonic()
        hit = self._cache.get(sid)
        if hit is not None and hit[0] > now:
            return _owned(hit[1], owner)
        if not SESSION_ID_RE.match(sid):
            raise SessionNotFound(f"session {sid} does not exist")
        h: dict[bytes, bytes] = await self.r.hgetall(self.keys.meta(sid))  # type: ignore[assignment]
        if not h:
            self._cache.pop(sid, None)
            raise SessionNotFound(f"session {sid} does not exist")
        meta = SessionMeta.from_hash(sid, h)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[sid] = (now + _CACHE_S, meta)
        return _owned(meta, owner)

    async def meta_of_kind(self, sid: str, owner: str, kind: str, what: str) -> SessionMeta:
        """``meta(sid, owner)``, or WrongSessionKind naming ``what`` needs a ``kind`` session."""
        meta = await self.meta(sid, owner)
        if meta.kind != kind:
            detail = f"session {sid} is a {meta.kind} session; {what} is for {kind} sessions only"
            raise WrongSessionKind(detail)
        return meta

    async def info(self, sid: str, owner: str) -> dict[str, Any]:
        """Meta, progress and the Redis memory the session takes; slides its TTL."""
        self._cache.pop(sid, None)
        meta = await self.meta(sid, owner)
        meta_key, state_key = self.keys.meta(sid), self.keys.state(sid)
        await self._touch(keys=self.keys.session_keys(sid))
        async with self.r.pipeline(transaction=False) as p:
            p.hget(state_key, "step")
            p.hget(meta_key, "version")
            p.ttl(meta_key)
            p.memory_usage(meta_key, samples=0)  # every field counted, not an estimate
            p.memory_usage(state_key, samples=0)
            p.memory_usage(self.keys.exemplars(sid), samples=0)
            p.hget(self.keys.exemplars(sid), "n")
            step, version, ttl, mem_meta, mem_state, mem_ex, n_ex = await p.execute()
        return {
            "meta": meta,
            "step": int(step or 0),
            "version": int(version or 0),
            "expires_in_s": max(int(ttl), 0),
            "memory_bytes": int(mem_meta or 0) + int(mem_state or 0) + int(mem_ex or 0),
            "exemplars": int(n_ex or 0),
        }

    async def list_owned(
        self, index_keys: Sequence[str], owner: str, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """The live sessions of `owner` among the members of the sorted sets `index_keys` (session
        ids scored by expiry: a tenant's session set, or the live-session index of each kind),
        newest first (then by id), as (how many in all, the page ``[offset, offset + limit)``).

        Each member's meta is read, so a session that expired or was deleted is never listed,
        whatever its score says, and so is one of another owner. Members that are gone and whose
        score has passed leave their set (a deletion, allowed even when Redis is full); members
        still scored in the future are kept (a session being created is in its tenant's set
        before its meta exists). Changes no session and slides no TTL.
        """
        now = time.time()
        async with self.r.pipeline(transaction=False) as p:
            for key in index_keys:
                p.zrange(key, 0, -1, withscores=True)
            ranges: list[Any] = await p.execute()
        members: dict[str, list[tuple[str, float]]] = {}  # sid -> (set, score) of each set listing it
        for key, pairs in zip(index_keys, ranges, strict=True):
            for raw, score in pairs:
                members.setdefault(raw.decode(), []).append((key, float(score)))
        sids = [sid for sid in members if SESSION_ID_RE.match(sid)]
        hashes: list[Any] = []
        if sids:
            async with self.r.pipeline(transaction=False) as p:
                for sid in sids:
                    p.hgetall(self.keys.meta(sid))
                hashes = await p.execute()
        owned: list[SessionMeta] = []
        gone: dict[str, list[str]] = {}
        for sid, h in zip(sids, hashes, strict=True):
            if not h:
                for key, score in members[sid]:
                    if score < now:
                        gone.setdefault(key, []).append(sid)
                continue
            try:
                meta = SessionMeta.from_hash(sid, h)
            except (KeyError, ValueError):  # not a meta hash memserve wrote: not listed
                continue
            if meta.owner == owner:
                owned.append(meta)
        if gone:
            async with self.r.pipeline(transaction=False) as p:
                for key, dead in gone.items():
                    p.zrem(key, *dead)
                await p.execute()
        owned.sort(key=lambda m: m.sid)
        owned.sort(key=lambda m: m.created, reverse=True)  # ISO 8601 UTC: newest first
        page = owned[offset : offset + limit]
        progress: list[Any] = []
        if page:
            async with self.r.pipeline(transaction=False) as p:
                for m in page:
                    p.ttl(self.keys.meta(m.sid))
                    p.hget(self.keys.state(m.sid), "step")
                    p.hget(self.keys.exemplars(m.sid), "n")
                progress = await p.execute()
        rows = []
        for i, m in enumerate(page):
            ttl, step, n_ex = progress[3 * i : 3 * i + 3]
            rows.append({
                "meta": m, "expires_in_s": max(int(ttl), 0), "step": int(step or 0),
                "exemplars": int(n_ex or 0),
            })  # fmt: skip
        return len(owned), rows

    async def delete(self, sid: str, owner: str) -> None:
        """End the session: its keys go at once; jobs still queued for it are refused."""
        await self.meta(sid, owner)
        self._cache.pop(sid, None)
        removed = await self.r.delete(*self.keys.session_keys(sid))
        if not removed:
            raise SessionNotFound(f"session {sid} does not exist")


def _owned(meta: SessionMeta, owner: str) -> SessionMeta:
    if meta.owner != owner:
        raise SessionNotFound(f"session {meta.sid} does not exist")
    return meta
