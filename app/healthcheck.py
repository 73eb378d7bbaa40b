"""Container health checks: ``python -m app.healthcheck {api,worker}``, exit 0 when healthy, 1 when not.

``worker``: healthy when Redis holds an unexpired heartbeat (see `Worker.heartbeat`) whose
``host`` is this machine's hostname and whose ``pid`` is a process running here. Run inside
the worker's container, that is the heartbeat of that container's worker: the hostname is
the container's own, so a heartbeat of any other replica does not count. (With
``network_mode: host`` every container on a machine shares the hostname and the check then
only proves that some worker here is alive.)

``api``: healthy when ``GET /health/live`` on this process's API port answers 200. Liveness,
not readiness: an API that waits for Redis or for a worker must not be restarted for it.

Both read the same `Settings` (``MEMSERVE_*``) as the process they check, use only the
standard library and redis-py (no torch: the check starts in a fraction of a second), and
print the reason on failure, which ``docker inspect`` shows in the container's health log.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request

import redis
from redis.exceptions import RedisClusterException

from app.config import Settings, SettingsError
from app.store.client import sync_client
from app.store.keys import Keys
from app.store.workers import WorkerRegistry

# A health check must answer well inside the HEALTHCHECK timeout even when Redis hangs.
TIMEOUT_S = 3.0


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def check_worker(settings: Settings, host: str | None = None) -> str | None:
    """None when a live worker heartbeat from `host` (default: this hostname) and a running pid
    exists, else the reason why not."""
    host = host or socket.gethostname()
    keys = Keys(settings.key_prefix)
    try:
        # A cluster client connects as it is built, so building it may fail too.
        r = sync_client(settings, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    except (redis.RedisError, RedisClusterException) as e:
        return f"redis unreachable: {e}"
    try:
        beats = WorkerRegistry(r, keys).live_raw()
    except (redis.RedisError, RedisClusterException) as e:
        return f"redis unreachable: {e}"
    finally:
        r.close()
    for raw in beats:
        if raw is None:  # registered, but the heartbeat key itself expired
            continue
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(beat, dict) or beat.get("host") != host:
            continue
        pid = beat.get("pid")
        # pid 0 or below would signal a whole process group rather than test one process.
        if isinstance(pid, int) and pid > 0 and _pid_running(pid):
            return None
    return f"no live worker heartbeat from host {host!r} ({len(beats)} live heartbeat(s) of others)"


def check_api(settings: Settings) -> str | None:
    """None when the API on this machine answers /health/live with 200, else the reason."""
    # A wildcard listen address is not somewhere to connect to; loopback reaches it.
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.port}/health/live"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError) as e:
        return f"GET {url}: {e}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 healthy, 1 unhealthy (the HEALTHCHECK convention), 2 bad usage."""
    p = argparse.ArgumentParser(
        prog="python -m app.healthcheck", description="memserve container health check"
    )
    p.add_argument("role", choices=["api", "worker"], help="which process of this container to check")
    args = p.parse_args(argv)
    try:
        # Every field comes from MEMSERVE_*; `**{}` tells mypy (no pydantic plugin here) as much.
        settings = Settings(**{})
        reason = check_api(settings) if args.role == "api" else check_worker(settings)
    except (SettingsError, ValueError) as e:  # ValueError: pydantic's ValidationError of a bad MEMSERVE_*
        reason = str(e)
    if reason is None:
        return 0
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
