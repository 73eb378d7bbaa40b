"""What every job and reply on the queue shares: a job's header, the reply framing.

A job carries everything needed to run it again (its inputs themselves, not a reference to
them), so a job re-delivered after a worker died is re-run idempotently; each kind's job
format is its own (`app.kinds.<kind>.wire`). A reply is the same for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import MemserveError


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
