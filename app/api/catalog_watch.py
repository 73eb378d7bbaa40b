"""Keeps an API process's model catalog current while it runs (hot reload of checkpoints).

Every ``MEMSERVE_RELOAD_INTERVAL_S`` the API rescans the checkpoint directory and reads which
versions the live workers report loaded; the `Catalog` then hands new sessions the latest
version some worker can serve. ``0`` reads both once, at startup.

The API checks a version's card and weights (hashes), not its ONNX graphs: it never opens
them, workers may run another backend than its setting says, and a version no worker could
load is never handed out anyway, since no worker reports it loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.catalog import Catalog, loaded_versions
from app.checkpoint_scan import CheckpointScanner
from app.config import Settings
from app.store.keys import Keys
from app.store.workers import live_beats

log = logging.getLogger("memserve.api")


class CatalogWatch:
    """The API's `Catalog` and the task that keeps it current."""

    def __init__(self, settings: Settings, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self.interval = settings.reload_interval_s
        self.scanner = CheckpointScanner(settings.checkpoint_dir)
        self.catalog = Catalog()
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def refresh(self) -> None:
        """Rescan the directory (in a thread: hashing new files takes a while) and the heartbeats."""
        models = await asyncio.to_thread(self.scanner.scan)
        loaded = loaded_versions(await live_beats(self.r, self.keys, stats=False))
        before = {name: info.version for name, info in self.catalog.items()}
        new = self.catalog.update(models, loaded)
        if not self._started:  # the startup line lists the models
            self._started = True
            return
        for info in new:
            log.info("model %s version %s is in the checkpoint directory", info.name, info.version)
        for name, info in self.catalog.items():
            if before.get(name, info.version) != info.version:
                log.info("new %s sessions get version %s (was %s)", name, info.version, before[name])

    def start(self) -> None:
        """Refresh every reload interval from now on (not at all when it is 0)."""
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="catalog-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except (RedisError, OSError) as e:  # the catalog stays as it was; next time, then
                log.warning("could not refresh the model catalog: %s", e)
