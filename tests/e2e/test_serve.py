"""End to end: `memserve serve` as a subprocess on a free port, talked to over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from models.data.timeseries import mackey_glass
from tests.conftest import REPO, free_port, run_offline

SHIPPED = REPO / "checkpoints"
MODEL = "memnet-mackey-glass"

pytestmark = pytest.mark.skipif(
    not (SHIPPED / f"{MODEL}.safetensors").is_file(), reason=f"shipped checkpoint {MODEL} is missing"
)


class Serve:
    """`memserve serve` with the embedded Redis (no MEMSERVE_REDIS_URL), stopped by its pid."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSERVE_")}
        env.update(MEMSERVE_REDIS_DATA_DIR=str(data_dir), MEMSERVE_WORKERS="1", PYTHONUNBUFFERED="1")
        env.update({f"MEMSERVE_{k.upper()}": v for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=env, cwd=REPO, stdout=self._log, stderr=self._log,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited early:\n{self.log()[-3000:]}"
            try:
                r = httpx.get(f"{self.url}/health/ready", timeout=2)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"serve not ready:\n{self.log()[-3000:]}")

    def interrupt(self, timeout: float = 30, sig: int = signal.SIGINT) -> int:
        """Ctrl-C as a user would (or SIGTERM, as a supervisor would); returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "data", tmp_path / "serve.log")
    yield s
    s.interrupt()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")  # a zombie has exited


def test_serve_streams_predictions_equal_to_the_offline_model(serve: Serve) -> None:
    ready = serve.wait_ready()
    assert ready["redis"] and len(ready["workers"]) == 1
    assert "authentication is OFF (local use)" in serve.log()  # no keys configured: said aloud
    series = mackey_glass(300).reshape(-1, 1).astype(np.float32)  # (T, 1), client units
    with httpx.Client(base_url=serve.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"kind": "memnet", "model": MODEL}).json()["id"]
        got: list[list[float]] = []
        for seq in range(0, 300, 50):
            r = c.post(
                f"/v1/sessions/{sid}/points", json={"values": series[seq : seq + 50].tolist(), "seq": seq}
            )
            assert r.status_code == 200, r.text
            got += r.json()["predictions"]
        fc = c.post(
            f"/v1/sessions/{sid}/points", json={"values": series[:1].tolist(), "seq": 300, "horizon": 84}
        ).json()["forecast"]
        info = c.get(f"/v1/sessions/{sid}").json()
    np.testing.assert_allclose(np.asarray(got), run_offline(MODEL, SHIPPED, series)[0], rtol=1e-4, atol=1e-5)
    assert len(fc) == 84 and np.isfinite(fc).all()
    assert info["step"] == 301
    # The model is in good shape: one-step predictions track the series in its own units.
    err = np.asarray(got)[50:-1, 0] - series[51:, 0]
    assert np.sqrt(np.mean(err**2)) / series[51:, 0].std() < 0.2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_api_workers_and_redis_and_sessions_persist(tmp_path: Path, sig: int) -> None:
    first = Serve(tmp_path / "data", tmp_path / "serve1.log")
    try:
        worker_pids = [w["pid"] for w in first.wait_ready()["workers"]]
        redis_url = re.search(r"Redis (unix://\S+)", first.log())
        assert redis_url, first.log()
        redis_pid = int(redis.Redis.from_url(redis_url.group(1)).info("server")["process_id"])
        with httpx.Client(base_url=first.url, timeout=30) as c:
            sid = c.post("/v1/sessions", json={"kind": "memnet"}).json()["id"]
            assert c.post(f"/v1/sessions/{sid}/points", json={"values": [0.9, 1.0, 1.1]}).status_code == 200
    finally:
        code = first.interrupt(sig=sig)
    assert code == 0, first.log()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in [*worker_pids, redis_pid]):
        time.sleep(0.1)
    assert not [p for p in [*worker_pids, redis_pid] if _alive(p)], "children outlived serve"
    assert "worker" in first.log() and "stopped" in first.log()

    second = Serve(tmp_path / "data", tmp_path / "serve2.log")  # same data directory
    try:
        second.wait_ready()
        info = httpx.get(f"{second.url}/v1/sessions/{sid}", timeout=10)
        assert info.status_code == 200 and info.json()["step"] == 3
    finally:
        assert second.interrupt() == 0
