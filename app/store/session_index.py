"""Live sessions per kind, counted without scanning the keyspace.

One sorted set per kind, ``<prefix>:sessions:<kind>``, holds the id of every session created
through this API, scored by when its keys expire (epoch seconds, the API's clock). A
session's expiry slides with every write, in many places (the workers' commit scripts, the
touch script, backups); rather than follow each of them, the index is corrected lazily:

- create adds the session with score now + ttl; delete removes it;
- at scrape time, the members whose score has passed (at most `PRUNE_BATCH` of them) are
  checked against Redis with PTTL on their meta key: gone ones are removed, living ones get
  their true expiry as their new score. Then the count is the set's size.

So a session is never counted after it has gone for longer than one scrape interval (while
no more than `PRUNE_BATCH` sessions expire per interval; the rest follow at the next
scrapes), and never missed while it lives, as long as it was created through the API. The
cost is independent of the number of sessions: a ZADD at create, a ZREM at delete, and at
scrape a ZCARD plus a PTTL per session that expired (or slid) since the last scrape.
Sessions created before this index existed are not counted until they are re-created.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from app.store.expiries import settle
from app.store.keys import Keys

# Members checked per kind per scrape: bounds the scrape's cost when many sessions expire at once.
PRUNE_BATCH = 1000


class SessionIndex:
    """The sorted sets of session expiry times, one per kind."""

    def __init__(self, r: aioredis.Redis, keys: Keys, kinds: tuple[str, ...]) -> None:
        self.r = r
        self.keys = keys
        self.kinds = kinds

    def key(self, kind: str) -> str:
        """The sorted set of `kind` sessions (no hash tag: one key per kind)."""
        return f"{self.keys.prefix}:sessions:{kind}"

    async def add(self, sid: str, kind: str, ttl_s: int) -> None:
        """A session was created (or restored) with this idle ttl."""
        await self.r.zadd(self.key(kind), {sid: time.time() + ttl_s})

    async def remove(self, sid: str) -> None:
        """A session was deleted (its kind need not be known)."""
        async with self.r.pipeline(transaction=False) as p:
            for kind in self.kinds:
                p.zrem(self.key(kind), sid)
            await p.execute()

    async def count(self) -> dict[str, int]:
        """Live sessions per kind, after correcting the entries whose expiry has passed."""
        now = time.time()
        async with self.r.pipeline(transaction=False) as p:
            for kind in self.kinds:
                p.zcard(self.key(kind))
                p.zrangebyscore(self.key(kind), "-inf", now, start=0, num=PRUNE_BATCH)
            res: list[Any] = await p.execute()
        counts = {kind: int(res[2 * i]) for i, kind in enumerate(self.kinds)}
        due = {kind: [m.decode() for m in res[2 * i + 1]] for i, kind in enumerate(self.kinds)}
        if any(due.values()):
            gone = await settle(self.r, self.keys, {self.key(kind): sids for kind, sids in due.items()}, now)
            for kind in self.kinds:
                counts[kind] -= gone[self.key(kind)]
        return counts
