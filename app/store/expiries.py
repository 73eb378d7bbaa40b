"""Sorted sets of session ids scored by when the sessions expire, corrected lazily.

A session's expiry slides with every write, in places that do not know which of these sets
list it (the workers' commit scripts, touches, backups). So the sets are not kept exact;
whoever reads one first looks at its members whose score has passed (`settle`): gone
sessions leave, living ones get their true expiry as their new score. Used by the live
session index (app.store.session_index) and the per-tenant session limits (app.store.tenants).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from app.store.keys import Keys


async def settle(
    r: aioredis.Redis, keys: Keys, due: Mapping[str, Sequence[str]], now: float
) -> dict[str, int]:
    """For each sorted set (its key -> its members due at `now`), re-score the sessions that
    still live and drop the gone ones; returns how many went from each set."""
    async with r.pipeline(transaction=False) as p:
        for sids in due.values():
            for sid in sids:
                p.pttl(keys.meta(sid))
        pttls: list[Any] = await p.execute()
    gone: dict[str, int] = {}
    it = iter(pttls)
    async with r.pipeline(transaction=False) as p:
        for zset, sids in due.items():
            alive = {}
            dead = []
            for sid in sids:
                ms = int(next(it))
                if ms == -2:  # the key does not exist
                    dead.append(sid)
                else:  # -1 (no expiry; not written by memserve) counts as living for a day
                    alive[sid] = now + (ms / 1000 if ms >= 0 else 86400)
            if alive:
                # XX: never re-add a session that a concurrent delete just removed.
                p.zadd(zset, alive, xx=True)
            if dead:
                p.zrem(zset, *dead)
            gone[zset] = len(dead)
        await p.execute()
    return gone
