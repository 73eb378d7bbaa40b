"""End to end with the shipped VMA checkpoint: `memserve serve`, exemplars in, samples and classes out."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.omniglot import load_omniglot
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
        one = c.post(f"/v1/sessions/{sid}/samples", json={"n": 8, "exemplar_id": 3, "seed": 1}).json()
        ink = []
        for s in one["samples"]:
            img = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["image"]))).convert("L")) < 128
            assert s["exemplar_id"] == 3 and s["label"] == "c3" and img.shape == (28, 28)
            ink.append(img)
        # Samples of one exemplar resemble it more than they resemble the other characters.
        mean = np.mean(ink, axis=0)
        own = float((mean * chars[3]).sum() / chars[3].sum())
        others = float(np.mean([(mean * chars[j]).sum() / chars[j].sum() for j in range(10) if j != 3]))
        assert own > others


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
