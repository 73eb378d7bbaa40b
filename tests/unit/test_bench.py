"""Unit tests of ``app.bench``: pure result handling plus one tiny in-process server run."""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import uuid
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web

from app.bench import stream
from app.bench.client import Phases, Recorder, StreamSession
from app.bench.stats import (
    BenchResult,
    MemoryReport,
    ShardResult,
    capacity_of,
    format_table,
    latency_summary,
    merge_shards,
    raw_session_bytes,
    worker_delta,
    write_json,
)


def shard(latencies: list[float], **kw: Any) -> ShardResult:
    ok = kw.pop("ok", len(latencies))
    return ShardResult(latencies_ms=array("d", latencies), requests=kw.pop("requests", ok), ok=ok, **kw)


def test_merged_percentiles_are_exact_over_all_samples() -> None:
    rng = np.random.default_rng(0)
    fast, slow = rng.uniform(1, 2, 900).tolist(), rng.uniform(50, 100, 100).tolist()
    merged = merge_shards([shard(fast), shard(slow)])
    summary = latency_summary(merged.latencies_ms)
    expected = np.percentile(np.array(fast + slow), [50, 95, 99])
    assert [summary["p50"], summary["p95"], summary["p99"]] == pytest.approx(expected, abs=1e-3)
    # Averaging per-process p99s would report ~50 ms instead of ~95 ms.
    mean_of_p99 = (np.percentile(fast, 99) + np.percentile(slow, 99)) / 2
    assert summary["p99"] > mean_of_p99 + 10


def test_merge_adds_counters_and_errors() -> None:
    a = shard([1.0], requests=3, points=5, errors={"409": 1, "429": 1}, ceiling_requests=10)
    b = shard([2.0, 3.0], requests=2, points=10, errors={"429": 2}, cpu_measure_s=0.5)
    m = merge_shards([a, b])
    assert (m.requests, m.ok, m.points, m.ceiling_requests) == (5, 3, 15, 10)
    assert m.errors == {"409": 1, "429": 3}
    assert m.cpu_measure_s == 0.5
    assert merge_shards([]).latencies_ms.size == 0


def test_latency_summary_of_no_samples_is_none() -> None:
    assert latency_summary(np.empty(0)) == dict.fromkeys(["p50", "p95", "p99", "mean", "max"])


def test_seq_advances_on_success_and_resyncs_on_409() -> None:
    s = StreamSession("s", 0.0)
    s.on_reply(200, {"seq": 0, "step": 4}, 4)
    assert s.seq == 4
    s.on_reply(409, {"type": "x/seq-conflict", "expected_seq": 17}, 4)
    assert s.seq == 17
    for status, body in [(409, None), (409, {"detail": "?"}), (500, {}), ("timeout", None)]:
        s.on_reply(status, body, 4)
        assert s.seq == 17


def test_signal_is_a_function_of_the_step_index() -> None:
    a, b = StreamSession("a", 0.3, dim=2), StreamSession("b", 0.3, seq=3, dim=2)
    assert a.values(5)[3:] == b.values(2)
    assert all(len(v) == 2 and abs(v[0]) <= 0.8 for v in a.values(200))
    body = orjson.loads(b.body(2))
    assert body["seq"] == 3 and len(body["values"]) == 2


def test_recorder_counts_only_the_window_and_times_only_successes() -> None:
    rec = Recorder(start=10.0, end=20.0, slot=0, progress=[0])
    rec.add(9.9, 0.001, 200, 1)
    rec.add(10.5, 0.002, 200, 3)
    rec.add(11.0, 0.003, 429, 3)
    rec.add(20.1, 0.004, 200, 3)
    assert (rec.requests, rec.ok, rec.points) == (2, 1, 3)
    assert list(rec.latencies_ms) == pytest.approx([2.0])
    assert rec.errors == {"429": 1} and rec.progress == [2]


def test_worker_delta_handles_restarts_and_new_workers() -> None:
    before = {"workers": [{"id": "a", "batches": 10, "jobs": 40, "steps": 40, "time": 100.0}]}
    after = {
        "workers": [
            {"id": "a", "batches": 15, "jobs": 70, "steps": 70, "time": 102.0},
            {"id": "b", "batches": 5, "jobs": 10, "steps": 10},
        ]
    }
    d = worker_delta(before, after)
    assert (d.workers, d.batches, d.jobs, d.steps) == (2, 10, 40, 40)
    assert d.mean_batch == 4.0 and d.span_s == 2.0 and d.steps_per_s == 20.0
    restarted = worker_delta(after, {"workers": [{"id": "a", "batches": 2, "jobs": 3}]})
    assert (restarted.batches, restarted.jobs) == (2, 3)
    assert worker_delta(None, None).mean_batch is None


def test_raw_session_bytes_from_card_config() -> None:
    cfg = {"capacity": 128, "key_dim": 16, "value_dim": 8, "hidden_dim": 32}
    assert capacity_of(cfg) == 128
    assert raw_session_bytes(cfg) == 4 * (128 * 24 + 32)
    assert raw_session_bytes(cfg, capacity=10) == 4 * (10 * 24 + 32)
    assert raw_session_bytes({"key_dim": 1}) is None


def result(**kw: Any) -> BenchResult:
    base: dict[str, Any] = dict(
        url="http://x",
        model="m",
        sessions=64,
        points=1,
        procs=2,
        duration_s=10.0,
        requests=1100,
        ok=1000,
        steps=1000,
        latency_ms=latency_summary(np.arange(1, 101, dtype=float)),
        errors={"429": 100},
        ceiling_rps=400.0,
        ceiling_errors=0,
        client_cpu_pct=50.0,
        ceiling_cpu_pct=90.0,
        workers=worker_delta({}, {"workers": [{"id": "a", "batches": 100, "jobs": 1000}]}),
        memory=MemoryReport(4, 128, 20000.0, 16512),
    )
    return BenchResult(**(base | kw))


def test_table_and_json(tmp_path: Path) -> None:
    r = result()
    assert (r.requests_per_s, r.ceiling_ratio) == (100.0, 0.25)
    table = format_table(r)
    for text in ("steps/s", "p99=", "429: 100", "400.0 req/s", "0.25", "10.00 jobs/batch", "1.21"):
        assert text in table
    write_json(r, tmp_path / "r.json")
    data = orjson.loads((tmp_path / "r.json").read_bytes())
    assert data["ceiling_ratio"] == 0.25 and data["workers"]["mean_batch"] == 10.0
    assert data["memory"]["ratio"] == pytest.approx(20000 / 16512)
    assert data["latency_ms"]["p50"] == 50.5 and data["verdict"] == "server-bound"


def test_verdict_flags_a_saturated_client() -> None:
    assert result(client_cpu_pct=190.0).verdict.startswith("client-bound")
    assert result(ceiling_rps=110.0).verdict.startswith("near the ceiling")
    assert format_table(result(workers=None, memory=None, ceiling_rps=None))


def test_split_sessions_covers_all_in_order() -> None:
    args = stream.parse_args(["--procs", "3", "--sessions", "7"])
    specs = stream.split_sessions(args, [str(i) for i in range(7)])
    assert [len(s.sids) for s in specs] == [2, 2, 3]
    assert [s.first_index for s in specs] == [0, 2, 4]
    assert sum((s.sids for s in specs), ()) == tuple(str(i) for i in range(7))


def test_phases_plan_is_ordered() -> None:
    p = Phases.plan(100.0, ceiling_s=2.0, warmup_s=1.0, duration_s=5.0)
    assert p.ceiling_start < p.ceiling_end < p.stream_start < p.measure_start < p.measure_end
    assert p.measure_end - p.measure_start == 5.0


class FakeServer:
    """Minimal memserve look-alike; every new session starts at step 7 to force a 409."""

    capacity = 16

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.conflicts = 0
        self.worker = {"id": "w", "batches": 0, "jobs": 0, "steps": 0}
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/sessions", self.create)
        app.router.add_get("/v1/sessions/{sid}", self.info)
        app.router.add_delete("/v1/sessions/{sid}", self.delete)
        app.router.add_post("/v1/sessions/{sid}/points", self.points)
        return app

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "workers": [dict(self.worker)]})

    async def models(self, _: web.Request) -> web.Response:
        cfg = {"capacity": self.capacity, "key_dim": 4, "value_dim": 4, "hidden_dim": 8}
        card = {"name": "mg", "kind": "memnet", "card": {"config": cfg}}
        return web.json_response({"models": [card]})

    async def create(self, _: web.Request) -> web.Response:
        sid = uuid.uuid4().hex
        self.steps[sid] = 7
        return web.json_response({"id": sid, "kind": "memnet", "model": "mg"}, status=201)

    async def info(self, req: web.Request) -> web.Response:
        step = self.steps[req.match_info["sid"]]
        mem = 100 * min(step, self.capacity)
        return web.json_response({"id": req.match_info["sid"], "step": step, "memory_bytes": mem})

    async def delete(self, req: web.Request) -> web.Response:
        self.steps.pop(req.match_info["sid"], None)
        return web.Response(status=204)

    async def points(self, req: web.Request) -> web.Response:
        sid, body = req.match_info["sid"], await req.json()
        if body["seq"] != self.steps[sid]:
            self.conflicts += 1
            problem = {"type": "seq-conflict", "expected_seq": self.steps[sid]}
            return web.json_response(problem, status=409)
        n = len(body["values"])
        self.steps[sid] += n
        self.worker["jobs"] += 1
        self.worker["batches"] += self.worker["jobs"] % 2
        return web.json_response({"seq": body["seq"], "step": self.steps[sid]})


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    srv, loop = FakeServer(), asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv.port = sock.getsockname()[1]
    runner = web.AppRunner(srv.app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield srv
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def run_main(srv: FakeServer, tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    argv = ["--url", f"http://127.0.0.1:{srv.port}", "--sessions", "4", "--duration", "0.6"]
    argv += ["--warmup", "0.2", "--ceiling", "0.3", "--mem-sessions", "2", "--no-progress"]
    assert stream.main([*argv, "--json", str(out), *extra]) == 0
    return orjson.loads(out.read_bytes())


def test_end_to_end_against_fake_server(fake_server: FakeServer, tmp_path: Path) -> None:
    data = run_main(fake_server, tmp_path, "--points", "3")
    assert fake_server.conflicts == 4  # one 409 per session, then in sync for good
    assert fake_server.steps == {}  # sessions deleted
    assert data["ok"] > 0 and data["steps"] == 3 * data["ok"]
    assert data["ceiling_rps"] > 0 and data["workers"]["jobs"] > 0
    mem = data["memory"]
    assert mem["sessions_measured"] == 2 and mem["bytes_per_session"] == 1600.0
    assert mem["raw_bytes"] == 4 * (16 * 8 + 8)


@pytest.mark.slow
def test_two_client_processes(fake_server: FakeServer, tmp_path: Path) -> None:
    data = run_main(fake_server, tmp_path, "--procs", "2")
    assert data["procs"] == 2 and data["ok"] > 0 and fake_server.conflicts == 4


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        stream.parse_args(["--sessions", "0"])
    assert isinstance(stream.parse_args([]), argparse.Namespace)
