"""The errors memserve reports to clients; each has a stable problem type (RFC 9457).

The API maps these, and only these, to `application/problem+json`; workers refer to
them by `slug` in their replies. Anything else is an internal error: logged with its
traceback and answered with a bare 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://memserve.dev/problems/"


class MemserveError(Exception):
    """Base of every error that becomes a problem+json response."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @classmethod
    def type_uri(cls) -> str:
        return PROBLEM_BASE + cls.slug


class InvalidRequest(MemserveError):
    status, slug, title = 422, "invalid-request", "The request is invalid"


class InvalidInput(MemserveError):
    status, slug, title = 422, "invalid-input", "The input values are invalid"


class SessionNotFound(MemserveError):
    status, slug, title = 404, "session-not-found", "No such session"


class ModelNotFound(MemserveError):
    status, slug, title = 404, "model-not-found", "No such model"


class NotFound(MemserveError):
    status, slug, title = 404, "not-found", "Not found"


class ExemplarNotFound(MemserveError):
    status, slug, title = 404, "exemplar-not-found", "No such exemplar"


class LabelNotFound(MemserveError):
    status, slug, title = 404, "label-not-found", "No exemplar has this label"


class InvalidImage(MemserveError):
    status, slug, title = 422, "invalid-image", "An image could not be used"


class EmptyMemory(MemserveError):
    status, slug, title = 409, "empty-memory", "The session's memory is empty"


class CapacityReached(MemserveError):
    status, slug, title = 409, "capacity-reached", "The session's memory is full"


class MethodNotAllowed(MemserveError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class WrongSessionKind(MemserveError):
    status, slug, title = 409, "wrong-session-kind", "The session is of another kind"


class SeqConflict(MemserveError):
    status, slug, title = 409, "seq-conflict", "The chunk does not continue the session"


class InvalidBackup(MemserveError):
    status, slug, title = 422, "invalid-backup", "The session document is malformed"


class UnsupportedBackupVersion(MemserveError):
    status, slug, title = 422, "unsupported-backup-version", "The session document's format is unknown"


class BackupKindMismatch(MemserveError):
    status, slug, title = 409, "backup-kind-mismatch", "The session document is of another kind"


class ModelVersionMismatch(MemserveError):
    status, slug, title = 409, "model-version-mismatch", "The session is from another model version"


class PayloadTooLarge(MemserveError):
    status, slug, title = 413, "payload-too-large", "The request is too large"


class UnsupportedMediaType(MemserveError):
    status, slug, title = 415, "unsupported-media-type", "The body is not sent as JSON"


class Unauthorized(MemserveError):
    status, slug, title = 401, "unauthorized", "A valid API key is needed"


class RateLimited(MemserveError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class SessionLimit(MemserveError):
    status, slug, title = 429, "session-limit", "Too many live sessions"


class StoreFull(MemserveError):
    status, slug, title = 503, "store-full", "The session store is out of memory"


class QueueFull(MemserveError):
    status, slug, title = 429, "queue-full", "Too many jobs are waiting"


class JobFailed(MemserveError):
    status, slug, title = 500, "job-failed", "The job failed"


class CorruptState(MemserveError):
    status, slug, title = 500, "corrupt-state", "The session's stored state is unreadable"


class RedisUnavailable(MemserveError):
    status, slug, title = 503, "redis-unavailable", "The session store is unreachable"


class ModelUnavailable(MemserveError):
    status, slug, title = 503, "model-unavailable", "No worker has this model loaded"


class ReplyTimeout(MemserveError):
    status, slug, title = 504, "timeout", "No worker answered in time"


def _all_subclasses(cls: type[MemserveError]) -> list[type[MemserveError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


BY_SLUG: dict[str, type[MemserveError]] = {c.slug: c for c in _all_subclasses(MemserveError)}


def from_slug(slug: str, detail: str, **extra: Any) -> MemserveError:
    """The error a worker named in its reply (unknown slugs become internal errors)."""
    return BY_SLUG.get(slug, MemserveError)(detail, **extra)
