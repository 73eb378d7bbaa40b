"""Per-tenant limits, kept in Redis so that every API process enforces the same ones.

- Request rate: a GCRA (generic cell rate algorithm) bucket, one key per tenant holding the
  theoretical arrival time of the next request; Redis' clock decides, so API processes on
  hosts with skewed clocks agree. Asking Redis on every request cost about 7% of the stream
  benchmark's throughput, so an API process takes a small lease at a time (up to `LEASE_S`
  of the tenant's rate, within its burst) and hands it out locally for at most
  `LEASE_TTL_S`; whatever it leased counts in Redis, so the limit is never exceeded, and
  leased requests left unused are dropped (a tenant may get slightly less, never more).
- Live sessions: a sorted set per tenant of its session ids scored by when they expire. A
  session's expiry slides with every write, in places that do not know its tenant (workers'
  commit scripts, touches, backups), so scores are corrected lazily (app.store.expiries):
  only when the set is full, its members whose score has passed are checked against their
  meta key's PTTL; gone ones leave, living ones get their true expiry.
  A set never grows past the limit plus the creates racing at that moment.

Both keys carry the tenant in a hash tag of their own, so they work on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ResponseError

from app.store.expiries import settle
from app.store.keys import Keys

# KEYS: the tenant's rate key. ARGV: emission interval (ms), burst tolerance (ms), requests
# wanted. Returns {granted, 0} with 1 <= granted <= wanted, or {0, ms until one would be}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, tolerance, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((now + tolerance - tat) / interval + 1e-6)
if free < 1 then return {0, math.max(1, math.ceil(tat + interval - tolerance - now))} end
local n = math.min(want, free)
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {n, 0}
"""

# KEYS: the tenant's session set. ARGV: now (s), limit, sid, expiry (s).
# Returns {1} when the session is admitted (added), {0, soonest expiry} when the tenant is
# at its limit with live sessions only, {-1} when members whose expiry passed need checking.
ADMIT = """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return {1}
end
if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf') < limit then return {-1} end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {0, first[2]}
"""

log = logging.getLogger(__name__)

LEASE_S = 0.05  # a lease holds at most this many seconds' worth of the tenant's rate
LEASE_TTL_S = 0.1  # leased requests not used by then are dropped, never banked


def out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for want of memory: its OOM error, as redis-py types it, or as
    Redis before 7 reports it from inside a script (a generic error that names OOM)."""
    return isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc)


# Members checked per correction: bounds the cost when many sessions expired at once.
CHECK_BATCH = 1000


@dataclass(frozen=True)
class Tenant:
    """Who a request acts for, and the limits that apply to it (0: unlimited)."""

    name: str
    max_sessions: int = 0
    rate_per_s: float = 0.0
    burst: int = 1


@dataclass
class _Lease:
    """Requests this API process may let through for a tenant without asking Redis."""

    left: int = 0
    until: float = 0.0
    refill: asyncio.Future[None] | None = None  # a call to Redis for more, in flight


@dataclass(frozen=True)
class Admission:
    """The outcome of asking for a new session: admitted, or when to try again."""

    admitted: bool
    retry_after_s: int = 0


class TenantStore:
    """Rate buckets and live-session sets of tenants."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._take = r.register_script(TAKE)
        self._admit = r.register_script(ADMIT)
        self._leases: dict[str, _Lease] = {}

    def rate_key(self, tenant: str) -> str:
        return f"{self.keys.prefix}:tenant:{{{tenant}}}:rate"

    def sessions_key(self, tenant: str) -> str:
        return f"{self.keys.prefix}:tenant:{{{tenant}}}:sessions"

    async def take(self, tenant: Tenant) -> float:
        """Count one request; 0 when it may go ahead, else the seconds until one would."""
        if tenant.rate_per_s <= 0:
            return 0.0
        lease = self._leases.setdefault(tenant.name, _Lease())
        while True:
            if lease.left > 0 and lease.until > time.monotonic():
                lease.left -= 1
                return 0.0
            if lease.refill is None:
                break
            # One refill at a time per tenant: concurrent requests that each leased a share
            # would drain the burst at once and refuse one another.
            await asyncio.shield(lease.refill)
        lease.refill = asyncio.get_running_loop().create_future()
        try:
            return await self._refill(tenant, lease)
        finally:
            lease.refill.set_result(None)
            lease.refill = None

    async def _refill(self, tenant: Tenant, lease: _Lease) -> float:
        """Lease requests from the tenant's bucket in Redis and take one of them."""
        interval = 1000.0 / tenant.rate_per_s
        want = max(1, min(int(tenant.rate_per_s * LEASE_S), tenant.burst))
        key = self.rate_key(tenant.name)
        try:
            res: Any = await self._take(keys=[key], args=[interval, interval * tenant.burst, want])
        except ResponseError as e:
            if not out_of_memory(e):
                raise
            # A full Redis (noeviction) cannot record the request. Refusing it would turn a
            # full store into an outage of reads too; let it through, writes fail on their own.
            log.warning("redis is full: the rate of %s is not counted", tenant.name)
            return 0.0
        granted, wait_ms = int(res[0]), int(res[1])
        if granted == 0:
            return wait_ms / 1000.0
        lease.left = granted - 1  # this request takes one; an older lease has run out or expired
        lease.until = time.monotonic() + LEASE_TTL_S
        return 0.0

    async def admit(self, tenant: Tenant, sid: str, ttl_s: int) -> Admission:
        """Count `sid` as one of the tenant's live sessions, unless that passes its limit."""
        if tenant.max_sessions <= 0:
            return Admission(True)
        key = self.sessions_key(tenant.name)
        for _ in range(5):  # each round drops or re-scores up to CHECK_BATCH stale members
            now = time.time()
            res: Any = await self._admit(keys=[key], args=[now, tenant.max_sessions, sid, now + ttl_s])
            if int(res[0]) == 1:
                return Admission(True)
            if int(res[0]) == 0:
                return Admission(False, max(1, math.ceil(float(res[1]) - now)))
            await self._correct(key, now)
        return Admission(False, 1)

    async def _correct(self, key: str, now: float) -> None:
        """Give the members whose expiry passed their true one, or drop them if gone."""
        stale: Any = await self.r.zrangebyscore(key, "-inf", now, start=0, num=CHECK_BATCH)
        if stale:
            await settle(self.r, self.keys, {key: [sid.decode() for sid in stale]}, now)

    async def release(self, tenant: Tenant, sid: str) -> None:
        """The session ended (deleted): its place is free at once."""
        if tenant.max_sessions > 0:
            await self.r.zrem(self.sessions_key(tenant.name), sid)

    async def live_sessions(self, tenant: Tenant) -> int | None:
        """The tenant's live sessions as counted for its limit (None: not counted, no limit)."""
        if tenant.max_sessions <= 0:
            return None
        key = self.sessions_key(tenant.name)
        await self._correct(key, time.time())
        return int(await self.r.zcard(key))
