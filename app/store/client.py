"""The one place that builds Redis clients from settings: plain Redis, or Redis Cluster.

With ``MEMSERVE_REDIS_CLUSTER=true`` the URL names any node of a Redis Cluster; the client
discovers the others and routes each command by its key's slot. Everything memserve does
fits a cluster because of the key schema (app.store.keys): a session's keys share the hash
tag ``{sid}``, so its scripts and MULTI blocks stay on one slot; the job streams share
``{jobs}``, so one XREADGROUP reads them all. Two gaps in redis-py's cluster clients are
closed here, so that the rest of the code runs unchanged on either kind of client:

- a script queued in a cluster pipeline is sent as EVAL. redis-py's blocking cluster
  pipelines refuse EVALSHA, and its asyncio ones, unlike plain pipelines, do not load missing
  scripts first: a master that restarted, was promoted or has just joined has an empty script
  cache and would answer NOSCRIPT. Outside pipelines scripts run as EVALSHA, reloaded on
  NOSCRIPT as usual.
- MGET over keys of several slots (the workers' heartbeats) is one MGET per slot.

On a plain Redis, a pipeline that holds a script asks ``SCRIPT EXISTS`` before it runs, in
redis-py: one more round trip for each batch a worker commits and each group of jobs the API
submits. Here that check is made once per script (`_Pipeline`); should Redis lose its script
cache later (a restart), the pipeline's scripts answer NOSCRIPT, and it loads them and runs again.

Elsewhere, `is_cluster` picks the cluster's way where the two differ: replies go by sharded
pub/sub (SPUBLISH to the shard of the API's channel, rather than PUBLISH over the cluster bus
to every node; app.queue.reader, app.queue.submit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.typing import EncodableT, KeysT, KeyT

from app.config import Settings, SettingsError

# The API answers within its request timeout; a worker blocks up to a second in XREADGROUP
# and writes whole session states, so it waits longer before calling Redis gone.
API_TIMEOUTS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}
WORKER_TIMEOUTS: dict[str, Any] = {"socket_timeout": 30}


class _ClusterScript(Script):
    """A script that runs as EVAL inside cluster pipelines (see the module docstring)."""

    def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> Any:
        if isinstance(client, ClusterPipeline):
            keys = list(keys or [])
            return client.execute_command("EVAL", self.script, len(keys), *keys, *(args or []))
        return super().__call__(keys, args, client)


class _AsyncClusterScript(AsyncScript):
    """The asyncio twin of `_ClusterScript`."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> Any:
        if isinstance(client, AsyncClusterPipeline):
            keys = list(keys or [])
            # Queued, not awaited: awaiting a cluster pipeline empties its queue.
            return client.execute_command("EVAL", self.script, len(keys), *keys, *(args or []))
        return await super().__call__(keys, args, client)


class _Cluster(RedisCluster):
    """redis-py's cluster client with memserve's two fixes (module docstring)."""

    def register_script(self, script: Any) -> Script:
        return _ClusterScript(self, script)

    def mget(self, keys: KeysT, *args: Any) -> Any:
        """One MGET per slot: atomic within a slot, which is all a cluster can offer."""
        return self.mget_nonatomic(keys, *args)


class _AsyncCluster(AsyncRedisCluster):
    """The asyncio twin of `_Cluster`."""

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        return _AsyncClusterScript(self, script)

    async def mget(self, keys: KeysT, *args: Any) -> Any:
        """One MGET per slot: atomic within a slot, which is all a cluster can offer."""
        return await self.mget_nonatomic(keys, *args)


def _no_script(result: Any) -> bool:
    return isinstance(result, list) and any(isinstance(r, NoScriptError) for r in result)


class _Pipeline(Pipeline):
    """A pipeline that checks its scripts once per client rather than before each run.

    Run again after a NOSCRIPT, a pipeline must hold only commands that may run twice: reads and
    the idempotent scripts of app.store.scripts (what every pipeline here holds). Transactions
    keep redis-py's check before each run.
    """

    known: set[str]  # SHAs this client has seen loaded

    def load_scripts(self) -> None:
        multi = bool(self.__dict__["transaction"]) or self.explicit_transaction  # the flag, not the method
        if multi or any(s.sha not in self.known for s in self.scripts):
            super().load_scripts()
            self.known.update(s.sha for s in self.scripts)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, scripts = list(self.command_stack), set(self.scripts)
        try:
            result = super().execute(raise_on_error)
        except NoScriptError:
            result = None
        if result is not None and not _no_script(result):
            return result
        self.known.clear()  # Redis lost its script cache: check (and load) them all again
        self.command_stack, self.scripts = stack, scripts
        return super().execute(raise_on_error)


class _AsyncPipeline(AsyncPipeline):
    """The asyncio twin of `_Pipeline`."""

    known: set[str]

    async def load_scripts(self) -> None:
        multi = self.is_transaction or self.explicit_transaction
        if multi or any(s.sha not in self.known for s in self.scripts):
            await super().load_scripts()
            self.known.update(s.sha for s in self.scripts)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, scripts = list(self.command_stack), set(self.scripts)
        try:
            result = await super().execute(raise_on_error)
        except NoScriptError:
            result = None
        if result is not None and not _no_script(result):
            return result
        self.known.clear()
        self.command_stack, self.scripts = stack, scripts
        return await super().execute(raise_on_error)


class _Plain(redis.Redis):
    """redis-py's client with pipelines that check their scripts once (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_scripts: set[str] = set()

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        p = _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        p.known = self.known_scripts
        return p


class _AsyncPlain(aioredis.Redis):
    """The asyncio twin of `_Plain`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_scripts: set[str] = set()

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> AsyncPipeline:
        p = _AsyncPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        p.known = self.known_scripts
        return p


def is_cluster(r: object) -> bool:
    """Whether `r` (a client of either kind) talks to a Redis Cluster."""
    return isinstance(r, RedisCluster | AsyncRedisCluster)


def _url(settings: Settings) -> str:
    url = settings.require_redis_url()
    if settings.redis_cluster and not url.startswith(("redis://", "rediss://")):
        raise SettingsError(
            f"MEMSERVE_REDIS_CLUSTER=true needs MEMSERVE_REDIS_URL to name a cluster node over TCP "
            f"(redis:// or rediss://), not {url}; the embedded Redis of `memserve serve` is no cluster"
        )
    return url


def async_client(settings: Settings, **overrides: Any) -> aioredis.Redis:
    """The API's client (asyncio). `overrides` replace the default timeouts."""
    url = _url(settings)
    options = {**API_TIMEOUTS, **overrides}
    if settings.redis_cluster:
        options["max_connections"] = settings.redis_max_connections
        # The cluster client has the plain client's command surface, which is all that the
        # callers use; its class is not a subclass, hence the cast.
        return cast(aioredis.Redis, _AsyncCluster.from_url(url, **options))
    # A bounded pool that waits for a free connection (up to the pool timeout) instead of failing
    # at once: under many concurrent requests the API queues its own Redis calls, and admission
    # (app.queue.admission) keeps the wait in check.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections, timeout=settings.redis_pool_timeout_s, **options
    )
    return _AsyncPlain(connection_pool=pool)


def sync_client(settings: Settings, **overrides: Any) -> redis.Redis:
    """A blocking client (workers, health checks). `overrides` replace the default timeouts."""
    url = _url(settings)
    options = {**WORKER_TIMEOUTS, **overrides}
    if settings.redis_cluster:
        return cast(redis.Redis, _Cluster.from_url(url, **options))
    return _Plain.from_url(url, **options)


async def connect(settings: Settings, attempts: int = 20) -> aioredis.Redis:
    """An asyncio client that has answered a PING: Redis may still be starting (a few seconds);
    then a `SettingsError` that names the setting to check."""
    url = settings.require_redis_url()
    r = async_client(settings)
    for attempt in range(attempts):
        try:
            await r.ping()
            return r
        except (RedisError, RedisClusterException) as e:  # the latter: no cluster node reachable
            if attempt == attempts - 1:
                raise SettingsError(f"cannot reach Redis at {url} ({e}): check MEMSERVE_REDIS_URL") from e
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")
