"""VMA exemplar memory in Redis: one hash ``{prefix}:{sid}:ex`` of columns.

=========  =====================================================================
field      content
=========  =====================================================================
ids        JSON array of exemplar ids (ints, never reused within a session)
labels     JSON array of their labels (strings), in the same order
pix        packed binary pixels: ``PIX_BYTES`` (98) bytes per exemplar, row-major, ink = 1
h          cached embeddings h(m_a): ``4 * dim`` bytes per exemplar, little-endian float32
n          number of exemplars;  next_id: the next id;  dim: embedding size
=========  =====================================================================

Columns rather than a field per exemplar: a worker loads a whole memory of thousands of
exemplars with one HMGET into numpy views, and the memory costs about 98 + 4 dim bytes per
exemplar. Workers append (``scripts.COMMIT_EXEMPLARS``, after embedding); the API deletes
(``scripts.DELETE_EXEMPLAR``). Both bump the session's version, which keys the workers'
device-side caches. No torch here: the API imports this module.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from app.errors import ExemplarNotFound, SessionNotFound
from app.store import scripts
from app.store.keys import Keys

IMAGE_SIZE = 28
PIXELS = IMAGE_SIZE * IMAGE_SIZE
PIX_BYTES = PIXELS // 8  # 784 bits


def pack_pixels(images: np.ndarray) -> bytes:
    """(N, 28, 28) binary images -> N * 98 bytes."""
    assert images.ndim == 3 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE), "images must be (N, 28, 28)"
    flat = images.reshape(len(images), PIXELS).astype(bool)  # (N, S, S) -> (N, S S)
    return np.packbits(flat, axis=1).tobytes()


def unpack_pixels(data: bytes) -> np.ndarray:
    """N * 98 bytes -> (N, 28, 28) float32 in {0, 1}."""
    if len(data) % PIX_BYTES:
        raise ValueError(f"{len(data)} pixel bytes is not a multiple of {PIX_BYTES}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8).reshape(-1, PIX_BYTES), axis=1)  # (N, 784)
    return bits.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.float32)  # (N, S S) -> (N, S, S)


@dataclass(frozen=True)
class Memory:
    """A session's exemplars as read from Redis (numpy views of the stored bytes)."""

    ids: np.ndarray  # (A,) int64
    labels: list[str]
    pix: bytes  # A * PIX_BYTES
    h: np.ndarray  # (A, dim) float32

    @property
    def size(self) -> int:
        return len(self.labels)

    @classmethod
    def from_fields(cls, fields: list[bytes | None]) -> Memory:
        """From HMGET ids labels pix h dim (an absent hash is an empty memory)."""
        ids_raw, labels_raw, pix, h_raw, dim_raw = fields
        ids = np.asarray(orjson.loads(ids_raw or b"[]"), dtype=np.int64)
        labels = [str(x) for x in orjson.loads(labels_raw or b"[]")]
        dim = int(dim_raw or 1)
        h = np.frombuffer(h_raw or b"", dtype="<f4").reshape(-1, dim)  # (A dim,) -> (A, dim)
        if not (len(ids) == len(labels) == len(h) == len(pix or b"") // PIX_BYTES):
            raise ValueError("exemplar columns of different lengths")
        return cls(ids=ids, labels=labels, pix=pix or b"", h=h)


MEMORY_FIELDS = ("ids", "labels", "pix", "h", "dim")


class ExemplarStore:
    """The API's side of exemplar memories: count, list, delete (adding goes through a worker)."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._delete = r.register_script(scripts.DELETE_EXEMPLAR)

    async def count(self, sid: str) -> int:
        return int(await self.r.hget(self.keys.exemplars(sid), "n") or 0)

    async def list(self, sid: str, offset: int, limit: int, with_pixels: bool) -> dict[str, Any]:
        """A page of (id, label[, pixels]) in insertion order, and the total."""
        fields = ["ids", "labels"] + (["pix"] if with_pixels else [])
        raw: list[Any] = await self.r.hmget(self.keys.exemplars(sid), fields)
        ids = orjson.loads(raw[0] or b"[]")
        labels = orjson.loads(raw[1] or b"[]")
        page = slice(offset, offset + limit)
        out: dict[str, Any] = {"ids": ids[page], "labels": labels[page], "total": len(ids)}
        if with_pixels:
            pix = raw[2] or b""
            out["pixels"] = unpack_pixels(pix[offset * PIX_BYTES : (offset + limit) * PIX_BYTES])
        return out

    async def delete(self, sid: str, eid: int, ttl_s: int) -> int:
        """Remove exemplar ``eid``; returns the session's new version."""
        res = await self._delete(
            keys=[self.keys.meta(sid), self.keys.exemplars(sid)],
            args=[eid, ttl_s, PIX_BYTES, secrets.token_hex(8)],
        )
        if res == b"gone":
            raise SessionNotFound(f"session {sid} does not exist")
        if res == b"missing":
            raise ExemplarNotFound(f"session {sid} has no exemplar {eid}", exemplar_id=eid)
        return int(res)


@dataclass(frozen=True)
class AddCommit:
    """One add job's embedded exemplars for `scripts.COMMIT_EXEMPLARS`."""

    sid: str
    job_id: str
    ttl_s: int
    capacity: int
    labels: list[str]
    pixels: bytes  # count * PIX_BYTES
    h: np.ndarray  # (count, dim) float32 embeddings


@dataclass(frozen=True)
class StoredMemory:
    """A session's memory with the version and etag it was read at (version None: ended)."""

    version: int | None
    etag: bytes | None
    memory: Memory | None  # None when only the head was read


class WorkerExemplars:
    """The worker's side of exemplar memories: append embedded exemplars, read memories."""

    def __init__(self, r: redis.Redis, keys: Keys, reply_ttl_s: int) -> None:
        self.r = r
        self.keys = keys
        self.reply_ttl_s = reply_ttl_s
        self._commit = r.register_script(scripts.COMMIT_EXEMPLARS)
        self._touch = r.register_script(scripts.TOUCH)
        self._read = r.register_script(scripts.READ_MEMORY)

    def commit(self, adds: list[AddCommit]) -> list[bytes]:
        """Append each job's exemplars (once per job id); per job the reply, or b"gone"."""
        with self.r.pipeline(transaction=False) as p:
            for a in adds:
                args = [
                    a.ttl_s, self.reply_ttl_s, a.capacity, a.job_id, orjson.dumps(a.labels), len(a.h),
                    a.pixels, a.h.astype("<f4").tobytes(), a.h.shape[1], secrets.token_hex(8),
                ]  # fmt: skip
                keys = [self.keys.meta(a.sid), self.keys.exemplars(a.sid), self.keys.reply(a.sid, a.job_id)]
                self._commit(keys=keys, args=args, client=p)
            return list(p.execute())

    def heads(self, sids: list[str]) -> list[StoredMemory]:
        """Each session's version and etag (no memory), its TTL slid as a read of it."""
        with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hmget(self.keys.meta(sid), ["version", "etag"])
                self._touch(keys=[self.keys.meta(sid), self.keys.exemplars(sid)], client=p)
            res = p.execute()
        return [StoredMemory(_int(v), etag, None) for v, etag in res[::2]]

    def read(self, sids: list[str]) -> list[StoredMemory]:
        """Each session's memory with the version and etag it was read at, in one round trip."""
        with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                keys = [self.keys.meta(sid), self.keys.exemplars(sid)]
                self._read(keys=keys, args=MEMORY_FIELDS, client=p)
            res = p.execute()
        return [
            StoredMemory(_int(v), etag, None if v is None else Memory.from_fields(fields))
            for v, etag, *fields in res
        ]


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)
