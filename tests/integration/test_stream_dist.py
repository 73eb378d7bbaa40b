"""A session-scaled MemNet with a predictive scale, through the real API, Redis and a worker:
intervals, forecast bands from sampled paths, anomaly flags, any magnitude, retries and forks."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.memnet import MemNet
from tests.conftest import SCALED_TEST_MODEL, TEST_MODEL


def new_session(client: httpx.Client, model: str = SCALED_TEST_MODEL) -> str:
    r = client.post("/v1/sessions", json={"kind": "memnet", "model": model})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def post(client: httpx.Client, sid: str, values: np.ndarray, seq: int, **extra: object) -> dict:
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": values.tolist(), "seq": seq, **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())


def wave(n: int, level: float = 50.0, amp: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (level + amp * np.sin(t / 8) + 0.3 * amp * rng.standard_normal(n)).astype(np.float32)


def offline(ckpt_dir: Path, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_checkpoint(SCALED_TEST_MODEL, ckpt_dir)
    assert isinstance(model, MemNet)
    with torch.inference_mode():
        mean, std, _ = model.forward_dist(torch.from_numpy(xs.reshape(1, -1, 1)))
    return mean[0, :, 0].numpy(), std[0, :, 0].numpy()


def test_intervals_match_the_model_and_forecast_bands_widen(client, start_worker, ckpt_dir) -> None:
    start_worker()
    sid = new_session(client)
    xs = wave(60)
    first = post(client, sid, xs[:25], 0, level=[80, 95])
    body = post(client, sid, xs[25:], 25, level=[95, 80], horizon=20)
    preds = np.concatenate([first["predictions"], body["predictions"]])[:, 0]
    mean, std = offline(ckpt_dir, xs)
    np.testing.assert_allclose(preds, mean, rtol=1e-5, atol=1e-4)
    lo95 = np.concatenate([first["intervals"]["95"]["lower"], body["intervals"]["95"]["lower"]])[:, 0]
    hi95 = np.concatenate([first["intervals"]["95"]["upper"], body["intervals"]["95"]["upper"]])[:, 0]
    np.testing.assert_allclose((hi95 - lo95) / 2, 1.959964 * std, rtol=1e-4, atol=1e-4)
    lo80, hi80 = (np.asarray(body["intervals"]["80"][k])[:, 0] for k in ("lower", "upper"))
    assert np.all(lo95[25:] < lo80) and np.all(hi80 < hi95[25:])
    assert np.all(lo80 < np.asarray(body["predictions"])[:, 0])
    fc = body["forecast_intervals"]
    assert set(fc) == {"80", "95"} and np.asarray(fc["95"]["lower"]).shape == (20, 1)
    width = np.asarray(fc["95"]["upper"])[:, 0] - np.asarray(fc["95"]["lower"])[:, 0]
    assert np.all(width > 0) and width[-5:].mean() > width[:3].mean()  # uncertainty grows with h
    assert body["anomalies"] == [] or all(a["index"] < 35 for a in body["anomalies"])


def test_a_first_point_of_any_magnitude_gives_a_sane_prediction(client, start_worker) -> None:
    start_worker()
    for level in (1e-3, 1e6, -4e4, 0.0):
        sid = new_session(client)
        xs = level + level * 0.01 * np.sin(np.arange(30) / 3)  # 1 % wiggle around the level
        one = post(client, sid, xs[:1], 0, level=[95])
        assert np.isfinite(one["predictions"]).all()
        body = post(client, sid, xs[1:], 1, level=[95])
        preds = np.asarray(body["predictions"])[:, 0]
        assert np.isfinite(preds).all()
        spread = max(abs(level) * 0.05, 1e-6)
        assert np.abs(preds - xs[1:]).max() <= spread, (level, preds[:3])
        lo, hi = (np.asarray(body["intervals"]["95"][k])[:, 0] for k in ("lower", "upper"))
        assert np.all(lo <= preds) and np.all(preds <= hi)


def test_spikes_are_flagged_with_their_index_and_scale(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    xs = wave(80, amp=1.0)
    xs[[50, 67]] += np.float32(40.0)  # two spikes of 40 series stds
    post(client, sid, xs[:45], 0)
    body = post(client, sid, xs[45:], 45)
    flagged = {a["seq"]: a for a in body["anomalies"]}
    assert {50, 67} <= set(flagged)
    assert flagged[50]["index"] == 5 and flagged[50]["dim"] == 0 and flagged[50]["scales"] > 2.576


def test_a_retry_returns_the_same_intervals_bands_and_flags(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    xs = wave(40)
    xs[30] += 80
    post(client, sid, xs[:20], 0)
    first = post(client, sid, xs[20:], 20, level=[90], horizon=8)
    again = post(client, sid, xs[20:], 20, level=[90], horizon=8)
    assert again["repeat"] is True
    for key in ("predictions", "intervals", "forecast", "forecast_intervals", "anomalies"):
        assert again[key] == first[key], key
    assert any(a["seq"] == 30 for a in first["anomalies"])


def test_a_fork_carries_the_running_statistics(client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    xs = wave(50, level=1e4, amp=500)
    post(client, sid, xs[:30], 0)
    r = client.post(f"/v1/sessions/{sid}/fork")
    assert r.status_code == 201, r.text
    fork = r.json()["id"]
    doc = client.get(f"/v1/sessions/{sid}/export")
    assert doc.status_code == 200
    imported = client.post("/v1/sessions/import", content=doc.content).json()["id"]
    a = post(client, sid, xs[30:], 30, level=[80], horizon=5)
    for other in (fork, imported):
        b = post(client, other, xs[30:], 30, level=[80], horizon=5)
        for key in ("predictions", "intervals", "forecast", "anomalies"):
            assert a[key] == b[key], key


@pytest.mark.parametrize("level", [[0], [100], [50, 120], [-5]])
def test_levels_outside_0_100_are_refused(client, start_worker, level) -> None:
    start_worker()
    sid = new_session(client)
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": [1.0], "seq": 0, "level": level})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0


def test_a_model_without_a_predictive_scale_refuses_intervals(client, start_worker) -> None:
    start_worker()
    sid = new_session(client, TEST_MODEL)
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": [[1.0, 2.0]], "seq": 0, "level": [80]})
    assert r.status_code == 422 and "predictive scale" in r.json()["detail"]
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 0
    ok = client.post(f"/v1/sessions/{sid}/points", json={"values": [[1.0, 2.0]], "seq": 0}).json()
    assert ok["anomalies"] is None and ok["intervals"] is None
