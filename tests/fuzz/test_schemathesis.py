"""schemathesis against the live service: `memserve api` (uvicorn) on a free port with keys on, a
real worker, the test checkpoints. Every operation of the served OpenAPI document is fuzzed
through `memserve fuzz`'s runner (app/bench/fuzz.py) with a fixed seed: no 5xx, and every status,
content type, header and body as the document says. `memserve fuzz --max-examples N` runs the
same with more cases (docs/fuzzing.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.auth import key_digest, new_api_key
from app.bench.fuzz import SEED, run_fuzz
from app.config import Settings
from tests.conftest import REPO, settings_env

pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")

# Cases per operation and phase: about 2,900 cases in all, under 2 minutes of fuzzing on 2 cores.
CI_MAX_EXAMPLES = 120
MIN_CASES = 2000


class ApiProc:
    """`memserve api` as a subprocess on the settings' port, with one API key; stopped by its pid."""

    def __init__(self, settings: Settings, key: str, log_path: Path) -> None:
        entry = {"tenant": "fuzz", "sha256": key_digest(key), "max_sessions": 0, "rate_per_s": 0}
        env = settings_env(settings)
        # Unlimited: the run makes thousands of requests and sessions, and limits are not what it tests.
        env.update(MEMSERVE_AUTH="keys", MEMSERVE_API_KEYS=json.dumps([entry]))
        self.url = f"http://127.0.0.1:{settings.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api"], env=env, cwd=REPO, stdout=self._log, stderr=self._log
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"api exited:\n{self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"api not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def api_key() -> str:
    return new_api_key()


@pytest.fixture
def live_api(settings: Settings, start_worker, api_key: str, tmp_path: Path) -> Iterator[ApiProc]:
    start_worker()
    api = ApiProc(settings, api_key, tmp_path / "api.log")
    try:
        api.wait_ready()
        yield api
    finally:
        api.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failure_in_any_operation(
    live_api: ApiProc, api_key: str, tmp_path: Path
) -> None:
    out = tmp_path / "schemathesis.txt"
    result = run_fuzz(live_api.url, api_key, max_examples=CI_MAX_EXAMPLES, seed=SEED, output=out)
    tail = out.read_text(errors="replace")[-12000:]
    print(f"schemathesis: {result.summary()}")
    doc = httpx.get(f"{live_api.url}/openapi.json", timeout=10).json()
    methods = {"get", "put", "post", "delete", "patch"}
    operations = sum(1 for item in doc["paths"].values() for m in item if m in methods)
    assert result.operations == operations, tail
    assert result.cases >= MIN_CASES, (result.summary(), tail)
    assert result.failed == 0 and result.errored == 0 and result.ok, f"{result.summary()}\n{tail}"
    # The API logged no unhandled error (a 500 that a check might have missed).
    assert "unhandled error" not in live_api.log_path.read_text(errors="replace")
