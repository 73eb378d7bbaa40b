"""Scripts in pipelines: checked once per client, and loaded again when Redis has lost them."""

from __future__ import annotations

import asyncio
import uuid

import redis

from app.config import Settings
from app.store.client import async_client, sync_client


def _fresh_script() -> str:
    """A script this Redis has never seen (its text, hence its SHA, is new)."""
    return f"-- {uuid.uuid4().hex}\nreturn redis.call('INCR', KEYS[1])"


def test_a_pipeline_checks_its_script_once_and_reloads_it_after_noscript(
    settings: Settings, key_prefix: str
) -> None:
    r = sync_client(settings)
    key = f"{key_prefix}:counter"
    script = r.register_script(_fresh_script())
    monitor = redis.Redis.from_url(settings.require_redis_url())

    def script_calls() -> int:  # SCRIPT EXISTS and LOAD (one counter, or one per subcommand)
        stats = monitor.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_script"))

    def run() -> None:
        with r.pipeline(transaction=False) as p:
            script(keys=[key], client=p)
            p.get(key)
            p.execute()

    before = script_calls()
    run()
    first = script_calls()
    run()
    run()
    assert first > before  # the first run checked the script (and loaded it)
    assert script_calls() == first  # the next two did not
    # The client believes a script loaded that Redis does not have (as after a Redis restart):
    # the pipeline gets NOSCRIPT, loads it and runs again, and its answer is the second run's.
    lost = r.register_script(_fresh_script())
    r.known_scripts.add(lost.sha)  # type: ignore[attr-defined]
    with r.pipeline(transaction=False) as p:
        lost(keys=[f"{key_prefix}:other"], client=p)
        assert p.execute() == [1]
    assert r.get(f"{key_prefix}:counter") == b"3"
    r.close()
    monitor.close()


def test_the_asyncio_pipeline_reloads_a_lost_script_too(settings: Settings, key_prefix: str) -> None:
    async def main() -> list[object]:
        r = async_client(settings)
        lost = r.register_script(_fresh_script())
        r.known_scripts.add(lost.sha)  # type: ignore[attr-defined]
        async with r.pipeline(transaction=False) as p:
            await lost(keys=[f"{key_prefix}:async"], client=p)
            out = await p.execute()
        await r.aclose()
        return out

    assert asyncio.run(main()) == [1]
