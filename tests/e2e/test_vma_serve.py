"""End to end with the shipped VMA checkpoint: `memserve serve`, exemplars in, samples and classes out."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.omniglot import load_omniglot, sample_episode
from tests.conftest import SHARED_DATA, drawings, png_b64
from tests.e2e.test_serve import SHIPPED, Serve

MODEL = "vma-omniglot"

pytestmark = pytest.mark.skipif(
    not (SHIPPED / f"{MODEL}.safetensors").is_file(), reason=f"shipped checkpoint {MODEL} is missing"
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "data", tmp_path / "serve.log")
    yield s
    s.interrupt()


def _session(c: httpx.Client, images: np.ndarray, labels: list[str]) -> str:
    sid = c.post("/v1/sessions", json={"kind": "vma", "model": MODEL}).json()["id"]
    items = [{"image": png_b64(img, scale=4), "label": lab} for img, lab in zip(images, labels, strict=True)]
    r = c.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items})
    assert r.status_code == 201, r.text
    return sid


def _accuracy(c: httpx.Client, sid: str, queries: np.ndarray, truth: list[str]) -> float:
    r = c.post(f"/v1/sessions/{sid}/classify", json={"images": [{"pixels": q.tolist()} for q in queries]})
    assert r.status_code == 200, r.text
    # The shipped model flags novelty by cosine: by default no decoder work, no bound, a flag.
    assert r.json()["samples"] == 0
    assert all(
        res["log_likelihood_nats"] is None and isinstance(res["novel"], bool) for res in r.json()["results"]
    )
    got = [res["label"] for res in r.json()["results"]]
    return float(np.mean([g == t for g, t in zip(got, truth, strict=True)]))


def test_one_shot_samples_and_classes_of_new_drawings(serve: Serve) -> None:
    """Generated 'characters' (never seen in training), queried as perturbed copies."""
    serve.wait_ready()
    rng = np.random.default_rng(0)
    chars = drawings(10, seed=42)
    labels = [f"c{i}" for i in range(10)]
    # A query: the character shifted by one pixel, with a few ink pixels removed.
    queries = np.roll(chars, 1, axis=2) * (rng.random(chars.shape) > 0.1)
    with httpx.Client(base_url=serve.url, timeout=60) as c:
        sid = _session(c, chars, labels)
        assert _accuracy(c, sid, queries.astype(np.uint8), labels) >= 0.7
        card = json.loads((SHIPPED / f"{MODEL}.json").read_text())
        served_t = card["serving"].get("sample_temperature", 1.0)
        served_anchor = card["serving"].get("sample_anchor", 0.0)
        # Samples of one exemplar resemble it more than they resemble the other characters: the
        # ink the 8 samples share, as a share of each character's ink, for every exemplar.
        own, others = [], []
        for k in range(10):
            reply = c.post(f"/v1/sessions/{sid}/samples", json={"n": 8, "exemplar_id": k, "seed": 1}).json()
            assert (reply["temperature"], reply["anchor"]) == (served_t, served_anchor), (
                "the card's measured choice"
            )
            ink = []
            for s in reply["samples"]:
                img = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["image"]))).convert("L")) < 128
                assert s["exemplar_id"] == k and s["label"] == f"c{k}" and img.shape == (28, 28)
                ink.append(img)
            mean = np.mean(ink, axis=0)
            cover = [float((mean * chars[j]).sum() / chars[j].sum()) for j in range(10)]
            own.append(cover[k])
            others.append(float(np.mean(cover[:k] + cover[k + 1 :])))
        wins = sum(o > p for o, p in zip(own, others, strict=True))
        assert wins >= 8, f"samples nearer another character than their own for {10 - wins} of 10 exemplars"
        assert np.mean(own) > 1.3 * np.mean(others), (np.mean(own), np.mean(others))


@pytest.mark.skipif(
    not (SHARED_DATA / "omniglot" / "images_evaluation_28x28.npz").is_file(),
    reason="Omniglot evaluation set not found (../shared/data/omniglot); CI has it",
)
def test_held_out_omniglot_characters_rank_their_class_first(serve: Serve) -> None:
    """5-way 5-shot on characters of the evaluation alphabets, never trained on."""
    serve.wait_ready()
    images, _ = load_omniglot("evaluation", SHARED_DATA)
    rng = np.random.default_rng(1)
    chars = rng.choice(len(images), 5, replace=False)
    labels = [f"k{c}" for c in chars]
    memory = images[chars, :5].reshape(-1, 28, 28).astype(np.uint8)  # (5, 5, S, S) -> (25, S, S)
    queries = images[chars, 5:10].reshape(-1, 28, 28).astype(np.uint8)  # other drawers
    with httpx.Client(base_url=serve.url, timeout=60) as c:
        sid = _session(c, memory, [lab for lab in labels for _ in range(5)])
        # Chance is 20%; the card's 5-way 5-shot accuracy over 1000 episodes is what to quote.
        assert _accuracy(c, sid, queries, [lab for lab in labels for _ in range(5)]) > 0.5


def _episodes_through_http(
    c: httpx.Client, images: np.ndarray, ways: int, episodes: int, png: bool, seed: int
) -> list[float]:
    """Per-episode 1-shot accuracy through the API, episodes drawn as the evaluation draws them
    (``sample_episode``): one session per episode, exemplars and queries as PNG or as pixels."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(episodes):
        ep = sample_episode(images, rng, ways, 1, 1)
        labels = [f"c{int(i)}" for i in ep.memory_labels]
        sid = c.post("/v1/sessions", json={"kind": "vma", "model": MODEL}).json()["id"]
        as_image = (lambda d: {"image": png_b64(d, scale=4)}) if png else (lambda d: {"pixels": d.tolist()})
        items = [
            {**as_image(d.astype(np.uint8)), "label": lab} for d, lab in zip(ep.memory, labels, strict=True)
        ]
        assert c.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items}).status_code == 201
        body = {"images": [as_image(q.astype(np.uint8)) for q in ep.queries], "samples": 0}
        r = c.post(f"/v1/sessions/{sid}/classify", json=body)
        assert r.status_code == 200, r.text
        got = [res["label"] for res in r.json()["results"]]
        accs.append(float(np.mean([g == f"c{int(t)}" for g, t in zip(got, ep.query_labels, strict=True)])))
        c.delete(f"/v1/sessions/{sid}")
    return accs


@pytest.mark.skipif(
    not (SHARED_DATA / "omniglot" / "images_evaluation_28x28.npz").is_file(),
    reason="Omniglot evaluation set not found (../shared/data/omniglot); CI has it",
)
@pytest.mark.parametrize(("task", "ways", "episodes"), [("5w1s", 5, 120), ("20w1s", 20, 40)])
def test_few_shot_accuracy_through_http_agrees_with_the_card(
    serve: Serve, task: str, ways: int, episodes: int
):
    """Held-out episodes of the evaluation alphabets, half sent as PNG and half as pixels: the
    service's accuracy lies within the combined 95% interval of the card's offline figure."""
    serve.wait_ready()
    images, _ = load_omniglot("evaluation", SHARED_DATA)
    card = json.loads((SHIPPED / f"{MODEL}.json").read_text())
    offline = card["metrics"]["few_shot"][task]["posterior"]
    with httpx.Client(base_url=serve.url, timeout=60) as c:
        accs = _episodes_through_http(c, images, ways, episodes // 2, True, 7)
        accs += _episodes_through_http(c, images, ways, episodes // 2, False, 8)
    served = float(np.mean(accs))
    se_served = float(np.std(accs, ddof=1) / np.sqrt(len(accs)))
    se_offline = (offline["ci95"][1] - offline["ci95"][0]) / (2 * 1.96)
    margin = 1.96 * float(np.hypot(se_served, se_offline))
    assert abs(served - offline["mean"]) <= margin, f"{task}: served {served:.3f}, card {offline['mean']:.3f}"
