"""End to end: the same requests to `memserve serve --backend torch` and `--backend onnx`
get the same answers (MemNet within 1e-4 of the series' scale; VMA: the same rankings,
addresses and samples, scores and probabilities within 1e-4), both on their float32 paths: the
int8 query embedding and the bfloat16 decoder of CPU workers are tested on their own
(tests/unit/test_vma_int8.py, tests/unit/test_vma_bf16.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from models.checkpoint import read_card
from models.data.timeseries import mackey_glass
from tests.conftest import drawings
from tests.e2e.test_serve import SHIPPED, Serve

TOL = 1e-4
BACKENDS = ("torch", "onnx")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Serve]]:
    started: dict[str, Serve] = {}
    try:
        for name in BACKENDS:
            d = tmp_path_factory.mktemp(name)
            exact = {"query_embedding": "fp32", "decoder_precision": "fp32"}
            started[name] = Serve(d / "data", d / "serve.log", backend=name, **exact)
        for s in started.values():
            s.wait_ready()
        yield started
    finally:
        for s in started.values():
            s.interrupt()


def _both(servers: dict[str, Serve], method: str, path: str, **kw: Any) -> list[httpx.Response]:
    return [httpx.request(method, servers[b].url + path, timeout=60, **kw) for b in BACKENDS]


def test_ready_reports_each_backend(servers: dict[str, Serve]) -> None:
    for name in BACKENDS:
        ready = httpx.get(f"{servers[name].url}/health/ready", timeout=10).json()
        (worker,) = ready["workers"]
        assert worker["backend"] == name
        if name == "torch":
            assert worker["provider"] is None
        elif worker["provider"] == "CPUExecutionProvider":  # no usable GPU: says why it fell back
            assert worker["device"] == "cpu" and "CUDA execution provider" in worker["fallback"]
        else:
            assert worker["provider"] == "CUDAExecutionProvider" and worker["device"].startswith("cuda:")


@pytest.mark.parametrize("model", ["memnet-mackey-glass", "memnet-santafe"])
def test_memnet_predictions_and_forecasts_agree(servers: dict[str, Serve], model: str) -> None:
    norm = read_card(model, SHIPPED)["normalization"]
    mean, std = norm["mean"][0], norm["std"][0]
    if model == "memnet-mackey-glass":
        series = mackey_glass(600)
    else:  # a periodic stream in the laser's units (the series itself may be absent here)
        t = np.arange(600)
        series = mean + std * (np.sin(0.3 * t) + 0.05 * np.random.default_rng(0).standard_normal(600))
    sids = [
        r.json()["id"]
        for r in _both(servers, "POST", "/v1/sessions", json={"kind": "memnet", "model": model})
    ]
    for start in range(0, 600, 200):
        body = {"values": series[start : start + 200].tolist(), "horizon": 25 if start == 400 else 0}
        got = [
            httpx.post(f"{servers[b].url}/v1/sessions/{sid}/points", json=body, timeout=60).json()
            for b, sid in zip(BACKENDS, sids, strict=True)
        ]
        a, b = (np.asarray(g["predictions"], dtype=np.float64) for g in got)
        assert a.shape == b.shape == (200, 1)
        assert np.abs(a - b).max() / std <= TOL  # in the model's units: client units / std
        assert got[0]["step"] == got[1]["step"] == start + 200
    fa, fb = (np.asarray(g["forecast"], dtype=np.float64) for g in got)
    assert fa.shape == (25, 1) and np.abs(fa - fb).max() / std <= TOL


def test_vma_rankings_scores_and_samples_agree(servers: dict[str, Serve]) -> None:
    chars = drawings(12, seed=7)
    exemplars = [{"pixels": c.tolist(), "label": f"c{i % 6}"} for i, c in enumerate(chars)]
    queries = np.roll(chars, 1, axis=1) * (np.random.default_rng(2).random(chars.shape) > 0.1)
    sids = []
    for b in BACKENDS:
        sid = httpx.post(f"{servers[b].url}/v1/sessions", json={"kind": "vma"}, timeout=10).json()["id"]
        r = httpx.post(
            f"{servers[b].url}/v1/sessions/{sid}/exemplars", json={"exemplars": exemplars}, timeout=60
        )
        assert r.status_code == 201, r.text
        sids.append(sid)

    def ask(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for b, sid in zip(BACKENDS, sids, strict=True):
            r = httpx.post(f"{servers[b].url}/v1/sessions/{sid}/{path}", json=body, timeout=60)
            assert r.status_code == 200, r.text
            out.append(r.json())
        return out

    images = [{"pixels": q.astype(int).tolist()} for q in queries]
    for method in ("posterior", "importance"):
        got = ask("classify", {"images": images, "method": method, "samples": 8, "seed": 5, "top_k": 12})
        for ra, rb in zip(got[0]["results"], got[1]["results"], strict=True):
            assert ra["label"] == rb["label"]
            assert sorted(ra["scores"], key=ra["scores"].get) == sorted(rb["scores"], key=rb["scores"].get)
            assert max(abs(ra["scores"][k] - rb["scores"][k]) for k in ra["scores"]) <= TOL
            assert [t["exemplar_id"] for t in ra["top"]] == [t["exemplar_id"] for t in rb["top"]]
            assert abs(ra["kl_nats"] - rb["kl_nats"]) <= TOL
            bound_a, bound_b = ra["log_likelihood_nats"], rb["log_likelihood_nats"]
            assert abs(bound_a - bound_b) <= 1e-6 * abs(bound_a)  # hundreds of nats: relative
            assert ra["novel"] == rb["novel"]
    got = ask("samples", {"n": 16, "seed": 11, "format": "probs"})
    assert [s["exemplar_id"] for s in got[0]["samples"]] == [s["exemplar_id"] for s in got[1]["samples"]]
    pa, pb = (np.asarray([s["probs"] for s in g["samples"]]) for g in got)
    assert pa.shape == (16, 28, 28) and np.abs(pa - pb).max() <= TOL + 1e-5  # replies round to 5 places
