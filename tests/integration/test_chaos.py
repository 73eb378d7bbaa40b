"""`memserve chaos`: a short run with worker kills and Redis crashes finds every acknowledged step
applied once, in order, with the replay's predictions; and its checks do find what they look for."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.bench import chaos
from app.bench.chaos_report import Acked, FaultEvent, Stream, Tally, recover, step_accounting
from tests.conftest import REPO

MODEL = "memnet-universal"  # the service's default model, which the suite streams


def test_step_accounting_tells_lost_from_doubled() -> None:
    assert step_accounting(acked=10, pending=0, step=10) == (0, 0)
    assert step_accounting(acked=10, pending=3, step=13) == (0, 0)  # the unacknowledged chunk applied
    assert step_accounting(acked=10, pending=0, step=8) == (2, 0)
    assert step_accounting(acked=10, pending=0, step=14) == (0, 4)
    assert step_accounting(acked=10, pending=3, step=11) == (2, 0)  # a chunk applied in part
    assert step_accounting(acked=10, pending=0, step=None) == (10, 0)  # the session is gone


def test_recovery_is_timed_from_the_fault_to_requests_sent_after_it() -> None:
    fault = FaultEvent("redis crash", at=5.0, target="redis-server pid 1", back_at=6.0)
    # (start, done, session) in completion order; session 1 was answered late after the fault.
    tally = Tally(successes=[(4.0, 5.5, 0), (5.1, 5.2, 0), (4.9, 6.0, 1), (6.5, 7.5, 1)])
    tally.failures = [(5.5, 5.6, "503 redis-unavailable", "a"), (6.2, 6.3, "503 redis-unavailable", "b")]
    [r] = recover([fault], tally, {0: 8.0, 1: 8.0})
    assert r.first_ok_s == pytest.approx(0.2) and r.all_ok_s == pytest.approx(2.5)
    assert r.failed_after_back == ["503 redis-unavailable (b)"]  # sent when Redis was back
    tally.successes = tally.successes[:2]  # session 1 kept trying, in vain
    [never] = recover([fault], tally, {0: 8.0, 1: 8.0})
    assert never.first_ok_s == pytest.approx(0.2) and never.all_ok_s is None


def fake_service(step: int) -> httpx.MockTransport:
    """A service whose model predicts twice the value and whose session stands at `step`."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"step": step})
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": "replay", "model": MODEL, "input_dim": 1})
        body = json.loads(request.content)
        preds = [[2 * v[0]] for v in body["values"]]
        n = len(preds)
        return httpx.Response(200, json={"seq": body["seq"], "step": body["seq"] + n, "predictions": preds})

    return httpx.MockTransport(handle)


def check(step: int, chunks: list[Acked]) -> Any:
    stream = Stream(0, "sid", MODEL, 1, chunks=chunks, seq=sum(len(c.values) for c in chunks))

    async def go() -> Any:
        async with httpx.AsyncClient(transport=fake_service(step), base_url="http://chaos") as http:
            return await chaos.check_stream(http, stream, 1e-5)

    return asyncio.run(go())


def test_the_checks_find_wrong_predictions_and_wrong_steps() -> None:
    good = [Acked(0, [[1.0], [2.0]], [[2.0], [4.0]]), Acked(2, [[3.0]], [[6.0]])]
    ok = check(3, good)
    assert (ok.lost, ok.doubled, ok.mismatched, ok.replayed, ok.max_diff) == (0, 0, 0, 3, 0.0)
    wrong = [good[0], Acked(2, [[3.0]], [[6.001]])]  # what a step applied twice would leave
    bad = check(5, wrong)
    assert (bad.doubled, bad.mismatched) == (2, 1) and bad.max_diff == pytest.approx(0.001)
    assert check(1, good).lost == 2


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "checkpoints" / f"{MODEL}.safetensors").is_file(), reason=f"{MODEL} missing")
def test_a_short_chaos_run_loses_doubles_and_reorders_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Workers that load only the streamed model start (and restart) in seconds less.
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in (f"{MODEL}.json", f"{MODEL}.safetensors"):
        shutil.copy(REPO / "checkpoints" / name, ckpt / name)
    shutil.copytree(REPO / "checkpoints" / f"{MODEL}-onnx", ckpt / f"{MODEL}-onnx")
    monkeypatch.setenv("MEMSERVE_CHECKPOINT_DIR", str(ckpt))
    argv = ["--workers", "2", "--sessions", "4", "--seconds", "30", "--kill-every", "6"]
    argv += ["--redis-crash-every", "10", "--seed", "3", "--json", "--no-progress"]
    status = chaos.main(argv)
    out, err = capsys.readouterr()
    assert out, err
    report = json.loads(out)
    integrity, faults = report["integrity"], report["faults"]
    assert status == 0, (report["result"], report.get("logs"))
    assert (integrity["lost"], integrity["doubled"], integrity["reordered"], integrity["mismatched"]) == (
        0, 0, 0, 0,
    )  # fmt: skip
    assert integrity["predictions_compared"] == report["requests"]["points_acked"] > 0
    assert not integrity["conflicts"] and not integrity["sessions_stopped"] and not integrity["sessions_lost"]
    assert faults["worker_kills"] >= 1 and faults["redis_crashes"] >= 1
    assert faults["worker_restarts"] >= 1 and faults["redis_restarts"] >= 1
    for row in report["recovery"]:  # every session was answered again after every fault
        assert row["first_ok_s"] is not None and row["all_ok_s"] is not None, row
