"""A session's fields as any kind's runner reads and commits them: the least a kind needs.

MemNet and VMA have their own batched stores (app.store.point_states, app.store.exemplars); a
new kind starts with this one. `commit` applies a job at most once: it keeps the job's reply
under its reply key in the same script, and a re-delivered job gets that reply back instead of
being applied again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from app.errors import SessionNotFound
from app.store.keys import Keys

# Set a session's state fields and keep the job's reply, once per job, if the session exists.
# Returns the reply kept (this one, or the one a first run of the job kept), or 'gone'.
# KEYS: meta, state, reply. ARGV: reply, reply ttl, field, value, ...
_COMMIT = """
local done = redis.call('GET', KEYS[3])
if done then return done end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '-1')
if ttl < 0 then return 'gone' end
if #ARGV > 2 then redis.call('HSET', KEYS[2], unpack(ARGV, 3)) end
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('SET', KEYS[3], ARGV[1], 'EX', tonumber(ARGV[2]))
return ARGV[1]
"""


@dataclass(frozen=True)
class SessionRead:
    """A session's state fields as a job found them."""

    values: list[bytes | None]  # the fields asked for, in order
    reply: bytes | None  # the reply of this job if it was applied before (a re-delivery)


class WorkerSessions:
    """Reads and commits one job's session fields at a time."""

    def __init__(self, r: redis.Redis, keys: Keys, reply_ttl_s: int) -> None:
        self.r = r
        self.keys = keys
        self.reply_ttl_s = reply_ttl_s
        self._commit = r.register_script(_COMMIT)

    def read(self, sid: str, job_id: str, fields: Sequence[str]) -> SessionRead:
        """The state fields and any kept reply; raises `SessionNotFound` for an ended session."""
        with self.r.pipeline(transaction=False) as p:
            p.exists(self.keys.meta(sid))
            p.hmget(self.keys.state(sid), list(fields))
            p.get(self.keys.reply(sid, job_id))
            exists, values, reply = p.execute()
        if reply is None and not exists:
            raise SessionNotFound(f"session {sid} does not exist")
        return SessionRead(values, reply)

    def commit(self, sid: str, job_id: str, fields: Mapping[str, bytes | str | int], reply: bytes) -> bytes:
        """Set ``fields`` and keep ``reply``; returns the reply kept for the job (an earlier run's,
        if one committed first); raises `SessionNotFound` when the session has ended."""
        pairs = [x for kv in fields.items() for x in kv]
        keys = [self.keys.meta(sid), self.keys.state(sid), self.keys.reply(sid, job_id)]
        kept = self._commit(keys=keys, args=[reply, self.reply_ttl_s, *pairs])
        if kept == b"gone":
            raise SessionNotFound(f"session {sid} does not exist")
        return bytes(kept)

    def keep_reply(self, sid: str, job_id: str, reply: bytes) -> None:
        """Keep a refusal as the job's reply, so that a re-delivery answers the same."""
        self.r.set(self.keys.reply(sid, job_id), reply, ex=self.reply_ttl_s)
