"""End to end against the Docker images: docker-compose.cpu.yml's Redis, API and CPU worker,
talked to over HTTP with an API key, as a client of a deployment would.

`make docker-smoke` builds the images, starts the stack and runs this file with
MEMSERVE_DOCKER_URL (the API's address) and MEMSERVE_DOCKER_API_KEY (a key the stack's API
accepts); without them every test here is skipped. The MemNet replies must equal the shipped
checkpoint run here, offline, and the VMA session must tell the example drawings apart.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.timeseries import mackey_glass
from tests.conftest import REPO, run_offline

URL = os.environ.get("MEMSERVE_DOCKER_URL", "")
API_KEY = os.environ.get("MEMSERVE_DOCKER_API_KEY", "")
SHIPPED = REPO / "checkpoints"
EXAMPLES = REPO / "examples"
MEMNET = "memnet-mackey-glass"
VMA = "vma-omniglot"
CHARACTERS = ["alpha", "beta", "gamma", "delta"]

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not (URL and API_KEY),
        reason="needs the running compose stack: MEMSERVE_DOCKER_URL and MEMSERVE_DOCKER_API_KEY "
        "(`make docker-smoke` sets both)",
    ),
]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=URL, headers=headers, timeout=120) as c:
        yield c


def png(name: str) -> str:
    return base64.b64encode((EXAMPLES / f"{name}.png").read_bytes()).decode("ascii")


def test_the_stack_is_ready_with_a_cpu_worker_and_requires_keys() -> None:
    ready = httpx.get(f"{URL}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["redis"] is True
    assert [w["device"] for w in body["workers"]] == ["cpu"], body["workers"]
    # The key file reached the API as a secret: no key, or a wrong one, is refused.
    assert httpx.get(f"{URL}/v1/tenant", timeout=10).status_code == 401
    wrong = httpx.get(f"{URL}/v1/tenant", headers={"Authorization": "Bearer msk_wrong"}, timeout=10)
    assert wrong.status_code == 401
    tenant = httpx.get(f"{URL}/v1/tenant", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert tenant.status_code == 200 and tenant.json()["tenant"] == "smoke", tenant.text


def test_memnet_stream_predictions_and_forecast_equal_the_offline_model(client: httpx.Client) -> None:
    series = mackey_glass(301).reshape(-1, 1).astype(np.float32)  # (T, 1), client units
    r = client.post("/v1/sessions", json={"kind": "memnet", "model": MEMNET})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    got: list[list[float]] = []
    for seq in range(0, 300, 50):
        r = client.post(
            f"/v1/sessions/{sid}/points", json={"values": series[seq : seq + 50].tolist(), "seq": seq}
        )
        assert r.status_code == 200, r.text
        got += r.json()["predictions"]
    horizon = 25
    last = client.post(
        f"/v1/sessions/{sid}/points", json={"values": series[300:].tolist(), "seq": 300, "horizon": horizon}
    )
    assert last.status_code == 200, last.text
    got += last.json()["predictions"]
    forecast = np.asarray(last.json()["forecast"])
    assert client.get(f"/v1/sessions/{sid}").json()["step"] == 301

    want, want_fc = run_offline(MEMNET, SHIPPED, series, horizon=horizon)
    assert want_fc is not None
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    assert forecast.shape == (horizon, 1)
    np.testing.assert_allclose(forecast, want_fc, rtol=1e-3, atol=1e-4)
    # And the model is good at its job: one-step predictions track the series.
    err = np.asarray(got)[50:-1, 0] - series[51:, 0]
    assert np.sqrt(np.mean(err**2)) / series[51:, 0].std() < 0.2
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204


def test_vma_exemplars_samples_and_classes_of_the_example_drawings(client: httpx.Client) -> None:
    r = client.post("/v1/sessions", json={"kind": "vma", "model": VMA, "capacity": 64})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    exemplars = [{"image": png(name), "label": name} for name in CHARACTERS]
    added = client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": exemplars})
    assert added.status_code == 201, added.text
    assert added.json()["ids"] == [0, 1, 2, 3] and added.json()["count"] == 4

    listing = client.get(f"/v1/sessions/{sid}/exemplars").json()
    assert [(e["id"], e["label"]) for e in listing["exemplars"]] == list(enumerate(CHARACTERS))

    # Second drawings of each character (never in memory) and a third drawing of alpha.
    queries = [f"{name}-2" for name in CHARACTERS] + ["query"]
    r = client.post(
        f"/v1/sessions/{sid}/classify", json={"images": [{"image": png(q)} for q in queries], "top_k": 4}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for res in results:
        assert set(res["scores"]) == set(CHARACTERS)
        assert sum(res["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert res["log_likelihood_nats"] < 0
    labels = [res["label"] for res in results]
    assert labels[-1] == "alpha", results[-1]
    assert sum(got == want for got, want in zip(labels[:4], CHARACTERS, strict=True)) >= 3, labels

    drawn = client.post(f"/v1/sessions/{sid}/samples", json={"n": 8, "label": "beta", "seed": 7})
    assert drawn.status_code == 200, drawn.text
    assert drawn.json()["seed"] == 7
    samples = drawn.json()["samples"]
    assert len(samples) == 8 and {s["label"] for s in samples} == {"beta"}
    ink = []
    for s in samples:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["image"]))).convert("L"))
        assert img.shape == (28, 28)
        ink.append((img < 128).mean())
    assert 0.01 < float(np.mean(ink)) < 0.5, ink  # drawings, not blank or solid squares
    # The same request with the same seed draws the same samples.
    again = client.post(f"/v1/sessions/{sid}/samples", json={"n": 8, "label": "beta", "seed": 7})
    assert [s["image"] for s in again.json()["samples"]] == [s["image"] for s in samples]
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
