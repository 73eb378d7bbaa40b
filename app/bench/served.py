"""``memserve bench stream|vma --backend torch,onnx``: the same benchmark against a fresh
``memserve serve`` per backend, then the headline numbers side by side.

Each server runs as a subprocess on a free port with an embedded Redis of its own (under a
temporary directory) and is stopped by its pid, also when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(backend: str, device: str | None, workdir: Path) -> Iterator[str]:
    """`memserve serve --backend BACKEND` until the block ends; yields its base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MEMSERVE_REDIS_URL", "MEMSERVE_PORT")}
    env.update(MEMSERVE_BACKEND=backend, MEMSERVE_REDIS_DATA_DIR=str(workdir / "redis"), PYTHONUNBUFFERED="1")
    if device:
        env["MEMSERVE_DEVICE"] = device
    log_path = workdir / f"serve-{backend}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, log_path)
            yield url
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"memserve serve exited: {log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"memserve serve not ready after {timeout:.0f} s (log: {log_path})")


def _option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of ``name`` (``--x v`` or ``--x=v``) and argv without it."""
    rest, value, i = [], None, 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith(name + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return value, rest


def compare(kind: str, argv: list[str], run: Callable[[list[str]], int]) -> int:
    """Run ``run`` (a bench's main) once per backend of ``--backend``, then print a summary."""
    backends, argv = _option(argv, "--backend")
    device, argv = _option(argv, "--device")
    assert backends, "compare needs --backend"
    _, argv = _option(argv, "--url")
    user_json, argv = _option(argv, "--json")
    results: dict[str, dict[str, Any]] = {}
    status = 0
    with tempfile.TemporaryDirectory(prefix="memserve-bench-") as tmp:
        for backend in backends.split(","):
            work = Path(tmp) / backend
            work.mkdir()
            out = work / "result.json"
            print(f"== {kind} with --backend {backend}", file=sys.stderr)
            with served(backend, device, work) as url:
                status = max(status, run([*argv, "--url", url, "--json", str(out)]))
            if out.exists():
                results[backend] = json.loads(out.read_text())
    print(summary(kind, results))
    if user_json:
        Path(user_json).write_text(json.dumps(results, indent=2) + "\n")
    return status


def summary(kind: str, results: dict[str, dict[str, Any]]) -> str:
    """Headline numbers per backend: MemNet steps/s and p99, VMA classified images/s."""
    lines = [f"backends ({kind}):"]
    for backend, r in results.items():
        if kind == "stream":
            lat = r.get("latency_ms") or {}
            lines.append(
                f"  {backend:6} {r['steps'] / r['duration_s']:10,.0f} steps/s  "
                f"p50 {lat.get('p50') or 0:7.2f} ms  p99 {lat.get('p99') or 0:7.2f} ms"
            )
        else:
            cells = []
            for size in r["sizes"]:
                c = size.get("classify") or {}
                cells.append(f"|M|={size['memory']}: {c.get('units_per_s', 0):,.0f} img/s")
            lines.append(f"  {backend:6} " + ", ".join(cells))
    return "\n".join(lines)
