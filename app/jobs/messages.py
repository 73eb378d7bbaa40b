"""Job and reply messages on the wire.

A job carries everything needed to run it again (the points themselves, not a reference
to them), so a job re-delivered after a worker died is re-run idempotently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import MemserveError


def digest(data: bytes) -> str:
    """Short content hash of a chunk, to tell a client's retry from a different chunk."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass(frozen=True)
class PointsJob:
    """A chunk of T points of dimension D for one MemNet session."""

    job_id: str
    sid: str
    model: str
    seq: int | None
    values: bytes  # T*D float32 little-endian, client units
    length: int
    dim: int
    horizon: int
    reply_to: str
    request_id: str = ""
    model_version: str | None = None  # the session's; None from an API that predates versions
    levels: tuple[float, ...] = ()  # interval levels in percent; () for none

    def to_fields(self) -> dict[str, bytes]:
        """Two stream fields: a JSON header and the raw values (few arguments to pack)."""
        head = {
            "op": "points", "job": self.job_id, "sid": self.sid, "model": self.model,
            "mv": self.model_version, "seq": self.seq, "t": self.length, "d": self.dim,
            "horizon": self.horizon, "reply_to": self.reply_to, "rid": self.request_id,
            "lv": list(self.levels),
        }  # fmt: skip
        return {"h": orjson.dumps(head), "v": self.values}

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> PointsJob:
        """The job stored in a stream entry; KeyError or ValueError when it is malformed."""
        h = orjson.loads(f[b"h"])
        values = f[b"v"]
        job = cls(
            job_id=str(h["job"]), sid=str(h["sid"]), model=str(h["model"]),
            seq=None if h["seq"] is None else int(h["seq"]), values=values,
            length=int(h["t"]), dim=int(h["d"]), horizon=int(h["horizon"]),
            reply_to=str(h["reply_to"]), request_id=str(h.get("rid", "")),
            model_version=job_model_version(h), levels=tuple(float(v) for v in h.get("lv") or ()),
        )  # fmt: skip
        if len(values) != 4 * job.length * job.dim:
            raise ValueError(f"{len(values)} value bytes for {job.length} x {job.dim} points")
        return job

    @property
    def digest(self) -> str:
        return digest(self.values)


def job_model_version(head: dict[str, Any]) -> str | None:
    """The model version a job's header names (``mv``); None when it names none."""
    version = head.get("mv")
    return None if version is None else str(version)


def job_header(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The JSON header (field ``h``) of a points or VMA job's stream entry; {} when unreadable.

    For logging: the worker reads a job's id and request id (``rid``) without decoding the job.
    """
    try:
        head = orjson.loads(fields[b"h"])
    except (KeyError, orjson.JSONDecodeError):
        return {}
    return head if isinstance(head, dict) else {}


@dataclass(frozen=True)
class Reply:
    """A worker's answer to one job.

    On the wire: a JSON header line, then (for a success) the HTTP body as JSON, passed to
    the client byte for byte so the API never re-encodes predictions.
    """

    job_id: str
    ok: bool
    body: bytes = b""
    status: int = 200
    slug: str = ""
    detail: str = ""
    extra: dict[str, Any] | None = None


def ok_reply(job_id: str, body: dict[str, Any]) -> bytes:
    """A success reply: `body` (numpy arrays allowed) is what the HTTP client receives."""
    head = orjson.dumps({"job": job_id, "ok": True})
    return head + b"\n" + orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def error_reply(job_id: str, error: MemserveError) -> bytes:
    """A refusal decided by the worker (unknown session, seq conflict, ...): the same error types,
    statuses and slugs as the API's (app.errors), so one mapping makes every problem+json."""
    head = {"job": job_id, "ok": False, "status": error.status, "slug": error.slug, "detail": error.detail}
    return orjson.dumps({**head, "extra": error.extra})


def parse_reply(raw: bytes) -> Reply:
    """Decode a reply published or stored by a worker."""
    head_raw, _, body = raw.partition(b"\n")
    head: dict[str, Any] = orjson.loads(head_raw)
    return Reply(
        job_id=str(head.get("job", "")),
        ok=bool(head.get("ok")),
        body=body,
        status=int(head.get("status", 200)),
        slug=str(head.get("slug", "")),
        detail=str(head.get("detail", "")),
        extra=head.get("extra") or {},
    )


def frame_replies(replies: list[bytes]) -> bytes:
    """Several replies as one pub/sub message: each one prefixed by its 4-byte length."""
    return b"".join(len(r).to_bytes(4, "big") + r for r in replies)


def unframe_replies(message: bytes) -> list[bytes]:
    """The replies packed by `frame_replies`; ValueError when the framing is broken."""
    out, i = [], 0
    while i < len(message):
        n = int.from_bytes(message[i : i + 4], "big")
        if n <= 0 or i + 4 + n > len(message):
            raise ValueError("broken reply framing")
        out.append(message[i + 4 : i + 4 + n])
        i += 4 + n
    return out
