"""MemNet session state in Redis, the worker's side: one pipelined read per batch, one
pipelined compare-and-set commit per batch.

The state hash ``{prefix}:{sid}:state`` holds the buffers (app.kinds.memnet.state has their
layout) and the small head fields below; its commits go through `scripts.COMMIT_STATE`, which
applies a chunk only when the session is still at the step the worker computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.store import scripts
from app.store.keys import Keys

# The small fields of a session's state read with every job (the buffers only on a cache miss).
# `etag` is a random token written with every commit: the state cache is keyed on it, not on
# the version counter, because a Redis that lost acknowledged writes (a restore from an older
# snapshot, a failover to a lagging replica) counts versions again and reuses them for other
# contents, while a random token never names two states.
HEAD_FIELDS = ("step", "last_seq", "last_digest", "etag")


@dataclass(frozen=True)
class Head:
    """One job's session as a batch first reads it."""

    meta: dict[bytes, bytes]  # empty: the session has ended
    head: list[bytes | None]  # HEAD_FIELDS
    stored_reply: bytes | None  # the reply kept for this job id, if it was applied before


@dataclass(frozen=True)
class Commit:
    """One chunk's new state for `scripts.COMMIT_STATE`: whole fields and byte patches."""

    sid: str
    job_id: str
    expected_step: int
    ttl_s: int
    reply: bytes
    etag: bytes  # the random token among ``pairs``: the worker's cache keys the new state on it
    pairs: Sequence[Any]  # field, value, ...
    patches: Sequence[Any]  # field, byte offset, bytes, ...


class PointStates:
    """Reads and commits MemNet session state for a worker's batches."""

    def __init__(self, r: redis.Redis, keys: Keys, reply_ttl_s: int) -> None:
        self.r = r
        self.keys = keys
        self.reply_ttl_s = reply_ttl_s
        self._commit = r.register_script(scripts.COMMIT_STATE)

    def heads(self, jobs: Sequence[tuple[str, str]]) -> list[Head]:
        """Per (session id, job id): the meta hash, the head fields and any stored reply."""
        with self.r.pipeline(transaction=False) as p:
            for sid, job_id in jobs:
                p.hgetall(self.keys.meta(sid))
                p.hmget(self.keys.state(sid), HEAD_FIELDS)
                p.get(self.keys.reply(sid, job_id))
            res = p.execute()
        return [Head(res[3 * i], res[3 * i + 1], res[3 * i + 2]) for i in range(len(jobs))]

    def states(self, sids: Sequence[str]) -> list[dict[bytes, bytes]]:
        """The whole state hash of each session (empty where it has none)."""
        with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hgetall(self.keys.state(sid))
            return list(p.execute())

    def commit(self, commits: Sequence[Commit]) -> list[object]:
        """Apply each commit; per commit the script's answer: the new version (int), b"gone",
        b"conflict", or the exception Redis raised for it."""
        if not commits:
            return []
        with self.r.pipeline(transaction=False) as p:
            for c in commits:
                n = len(c.pairs) // 2
                args = [c.expected_step, c.ttl_s, c.reply, self.reply_ttl_s, n, *c.pairs, *c.patches]
                keys = [self.keys.meta(c.sid), self.keys.state(c.sid), self.keys.reply(c.sid, c.job_id)]
                self._commit(keys=keys, args=args, client=p)
            return list(p.execute(raise_on_error=False))
