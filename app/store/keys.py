"""The Redis key schema (DESIGN.md).

All keys of one session carry the hash tag ``{<sid>}`` so that they live on one Redis
Cluster shard and a Lua script may touch all of them in one atomic step.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

# 128-bit random ids, hex: unguessable, and safe inside a hash tag (no braces).
SESSION_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def new_session_id() -> str:
    """A fresh 128-bit random session id."""
    return secrets.token_hex(16)


def new_job_id() -> str:
    """A fresh 128-bit random job id."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Keys:
    """Builds every key and channel name under one prefix (tests use a prefix of their own)."""

    prefix: str = "ms"

    def meta(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:meta"

    def state(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:state"

    def exemplars(self, sid: str) -> str:
        """VMA: the exemplar memory, one hash of columns (see app.store.exemplars)."""
        return f"{self.prefix}:{{{sid}}}:ex"

    def reply(self, sid: str, job_id: str) -> str:
        return f"{self.prefix}:{{{sid}}}:reply:{job_id}"

    def session_keys(self, sid: str) -> list[str]:
        """The keys that make up a session's lasting data (not its transient replies)."""
        return [self.meta(sid), self.state(sid), self.exemplars(sid)]

    def stream(self, kind: str) -> str:
        """The job stream of a model kind. The streams share the hash tag ``{jobs}``: a worker
        reads all of them in one XREADGROUP, which Redis Cluster allows on one slot only."""
        return f"{self.prefix}:{{jobs}}:{kind}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:workers:{worker_id}"

    def worker_registry(self) -> str:
        """Sorted set of worker ids scored by when their heartbeat expires (epoch seconds)."""
        return f"{self.prefix}:workers"

    def attempts(self, stream: str) -> str:
        """Hash of a stream's jobs run alone after a failure: entry id -> runs (same slot)."""
        return f"{stream}:attempts"

    def reply_channel(self, api_id: str) -> str:
        return f"{self.prefix}:replies:{api_id}"


GROUP = "workers"


def entry_ms(entry_id: bytes | str) -> float:
    """When a stream entry was added: the first part of its id, Redis' clock in ms."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return float(raw.split("-", 1)[0])
