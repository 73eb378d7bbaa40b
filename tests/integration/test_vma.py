"""VMA through the real service: uvicorn API, real worker processes, real Redis."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
import redis
import torch
from PIL import Image

from app.config import Settings
from app.store.keys import Keys
from models.checkpoint import load_checkpoint
from tests.conftest import VMA_TEST_MODEL, drawings, png_b64, problem, wait_until_pending


def new_session(client: httpx.Client, **body: object) -> str:
    r = client.post("/v1/sessions", json={"kind": "vma", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add(client: httpx.Client, sid: str, images: np.ndarray, labels: list[str]) -> httpx.Response:
    items = [{"pixels": img.tolist(), "label": lab} for img, lab in zip(images, labels, strict=True)]
    return client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items})


def classify(client: httpx.Client, sid: str, images: np.ndarray, **body: object) -> httpx.Response:
    return client.post(
        f"/v1/sessions/{sid}/classify", json={"images": [{"pixels": i.tolist()} for i in images], **body}
    )


def decode(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("L"))


@pytest.fixture
def served(client: httpx.Client, start_worker) -> httpx.Client:
    start_worker()
    return client


def test_exemplars_are_added_listed_and_counted(
    served: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    sid = new_session(served)
    imgs = drawings(5, seed=1)
    r = add(served, sid, imgs[:3], ["a", "b", "a"])
    assert r.status_code == 201, r.text
    assert r.json() == {"ids": [0, 1, 2], "count": 3, "version": 1}
    # A PNG at 4x the size, light ink on dark: decoded back to the same drawing.
    body = {"exemplars": [{"image": png_b64(imgs[3], scale=4, invert=True), "label": 7}]}
    r = served.post(f"/v1/sessions/{sid}/exemplars", json=body)
    assert r.json() == {"ids": [3], "count": 4, "version": 2}
    page = served.get(f"/v1/sessions/{sid}/exemplars", params={"images": True}).json()
    assert page["total"] == 4
    assert [(e["id"], e["label"]) for e in page["exemplars"]] == [(0, "a"), (1, "b"), (2, "a"), (3, "7")]
    for e, img in zip(page["exemplars"], imgs[:4], strict=True):
        assert np.array_equal(decode(e["image"]) < 128, img.astype(bool))  # dark ink on white
    second = served.get(f"/v1/sessions/{sid}/exemplars", params={"offset": 1, "limit": 2}).json()
    assert [e["id"] for e in second["exemplars"]] == [1, 2] and second["total"] == 4
    info = served.get(f"/v1/sessions/{sid}").json()
    assert info["exemplars"] == 4 and info["version"] == 2 and info["kind"] == "vma"
    assert info["capacity"] == settings.vma_capacity
    # The cached embeddings equal h(m) computed offline.
    model, _ = load_checkpoint(VMA_TEST_MODEL, settings.checkpoint_dir)
    h = np.frombuffer(rdb.hget(Keys(settings.key_prefix).exemplars(sid), "h"), dtype="<f4").reshape(4, -1)
    x = torch.from_numpy(imgs[:4].astype(np.float32)).unsqueeze(1)
    np.testing.assert_allclose(h, model.memory_embedding(x).numpy(), atol=1e-5)


def test_classify_scores_match_the_model_offline(served: httpx.Client, settings: Settings) -> None:
    sid = new_session(served)
    imgs = drawings(6, seed=2)
    labels = ["a", "b", "c", "d", "e", "a"]
    assert add(served, sid, imgs, labels).status_code == 201
    r = classify(served, sid, imgs[:5], top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    # The test model's novelty rule is on the bound, so the default computes it (one sample).
    assert body["method"] == "posterior" and body["samples"] == 1
    model, _ = load_checkpoint(VMA_TEST_MODEL, settings.checkpoint_dir)
    m = torch.from_numpy(imgs.astype(np.float32))[None, :, None]  # (1, A, 1, S, S)
    h_m, _ = model.embed_memory(m)
    lab = torch.tensor([[0, 1, 2, 3, 4, 0]])
    scores, kl = model.classify(torch.from_numpy(imgs[:5].astype(np.float32)).unsqueeze(1), h_m, None, lab, 5)
    for i, res in enumerate(body["results"]):
        got = [res["scores"][c] for c in "abcde"]
        np.testing.assert_allclose(got, scores[i].numpy(), atol=1e-5)
        assert sum(res["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert res["kl_nats"] == pytest.approx(float(kl[i]), abs=1e-4)
        # An exact copy of an exemplar is its own best address (h_q starts as h).
        assert res["top"][0]["exemplar_id"] == i and res["top"][0]["label"] == labels[i]
        assert res["label"] == "abcde"[int(scores[i].argmax())]
        assert len(res["top"]) == 3 and res["top"][0]["p"] >= res["top"][1]["p"] >= res["top"][2]["p"]
        assert np.isfinite(res["log_likelihood_nats"]) and res["log_likelihood_nats"] < 0
        assert isinstance(res["novel"], bool)
    # samples: 0, the scores alone: no bound, and no flag from a rule on the bound.
    plain = classify(served, sid, imgs[:5], top_k=3, samples=0).json()
    assert plain["samples"] == 0
    for res, bounded in zip(plain["results"], body["results"], strict=True):
        assert res["log_likelihood_nats"] is None and res["novel"] is None
        assert res["scores"] == bounded["scores"]


def test_importance_method_and_seeded_bound(served: httpx.Client) -> None:
    sid = new_session(served)
    imgs = drawings(4, seed=3)
    assert add(served, sid, imgs, ["a", "b", "c", "d"]).status_code == 201
    first = classify(served, sid, imgs, method="importance", samples=8, seed=5).json()
    again = classify(served, sid, imgs, method="importance", samples=8, seed=5).json()
    other = classify(served, sid, imgs, method="importance", samples=8, seed=6).json()
    assert first == again  # z noise drawn per request from its seed
    assert first["method"] == "importance" and first["samples"] == 8
    lls = [r["log_likelihood_nats"] for r in first["results"]]
    assert lls != [r["log_likelihood_nats"] for r in other["results"]]
    for res in first["results"]:
        assert sum(res["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert set(res["scores"]) == {"a", "b", "c", "d"}
        # One exemplar per label: the top address is the label's, with its score as p.
        assert res["top"][0]["label"] == res["label"]
        assert res["top"][0]["p"] == pytest.approx(res["scores"][res["label"]], abs=1e-6)


def test_samples_are_seeded_and_restricted(served: httpx.Client) -> None:
    sid = new_session(served)
    assert add(served, sid, drawings(6, seed=4), ["x", "x", "y", "y", "z", "z"]).status_code == 201
    url = f"/v1/sessions/{sid}/samples"
    a = served.post(url, json={"n": 16, "seed": 11}).json()
    b = served.post(url, json={"n": 16, "seed": 11}).json()
    c = served.post(url, json={"n": 16, "seed": 12}).json()
    assert a == b and a["seed"] == 11 and len(a["samples"]) == 16
    assert [s["image"] for s in a["samples"]] != [s["image"] for s in c["samples"]]
    assert all(decode(s["image"]).shape == (28, 28) for s in a["samples"])
    only_y = served.post(url, json={"n": 12, "label": "y", "seed": 1}).json()["samples"]
    assert {s["label"] for s in only_y} == {"y"} and {s["exemplar_id"] for s in only_y} <= {2, 3}
    one = served.post(url, json={"n": 5, "exemplar_id": 4, "format": "probs"}).json()["samples"]
    assert {s["exemplar_id"] for s in one} == {4}
    probs = np.array([s["probs"] for s in one])
    assert probs.shape == (5, 28, 28) and probs.min() >= 0 and probs.max() <= 1
    assert "image" not in one[0] or one[0]["image"] is None


def _sampler(
    served: httpx.Client, url: str, field: str, **fixed: object
) -> Callable[..., tuple[np.ndarray, float]]:
    """Samples of one exemplar as probabilities, and the reply's ``field`` (temperature, anchor)."""

    def probs(**kw: object) -> tuple[np.ndarray, float]:
        r = served.post(url, json={"format": "probs", **fixed, **kw}).json()
        return np.array([s["probs"] for s in r["samples"]]), r[field]

    return probs


def test_sample_temperature(served: httpx.Client) -> None:
    sid = new_session(served)
    assert add(served, sid, drawings(2, seed=6), ["a", "b"]).status_code == 201
    url = f"/v1/sessions/{sid}/samples"
    probs = _sampler(served, url, "temperature", n=6, exemplar_id=1, seed=4)

    default, t_default = probs()
    assert t_default == 1.0, "a card without serving.sample_temperature samples at the prior's own"
    one, t_one = probs(temperature=1)
    assert t_one == 1.0 and np.array_equal(default, one)
    mean, _ = probs(temperature=0)
    assert np.abs(mean - mean[0]).max() < 1e-4, "temperature 0 draws the mean drawing every time"
    cool, t_cool = probs(temperature=0.5)
    assert t_cool == 0.5 and not np.allclose(cool, one, atol=1e-4)
    # Nearer the mean at a lower temperature: on average closer to the mean drawing than at 1.
    assert np.abs(cool - mean).mean() < np.abs(one - mean).mean()
    for bad in (2.5, -0.1, "warm"):
        problem(served.post(url, json={"temperature": bad}), 422, "invalid-request")


def test_sample_anchor(served: httpx.Client) -> None:
    sid = new_session(served)
    assert add(served, sid, drawings(2, seed=7), ["a", "b"]).status_code == 201
    url = f"/v1/sessions/{sid}/samples"
    probs = _sampler(served, url, "anchor", n=4, exemplar_id=0, seed=2)

    default, a_default = probs()
    assert a_default == 0.0, "a card without serving.sample_anchor samples around the prior's mean"
    zero, _ = probs(anchor=0)
    assert np.array_equal(default, zero)
    anchored, a_one = probs(anchor=1)
    assert a_one == 1.0 and not np.allclose(anchored, zero, atol=1e-4)
    self_mean, _ = probs(anchor=1, temperature=0)
    assert np.abs(self_mean - self_mean[0]).max() < 1e-4, "anchor 1 at temperature 0: one drawing"
    prior_mean, _ = probs(anchor=0, temperature=0)
    assert not np.allclose(self_mean[0], prior_mean[0], atol=1e-4), "two different centres"
    for bad in (1.5, -0.1, "near"):
        problem(served.post(url, json={"anchor": bad}), 422, "invalid-request")


def test_deleting_an_exemplar_changes_what_queries_see(served: httpx.Client) -> None:
    sid = new_session(served)
    imgs = drawings(3, seed=5)
    assert add(served, sid, imgs, ["a", "b", "c"]).status_code == 201
    assert classify(served, sid, imgs[1:2]).json()["results"][0]["label"] == "b"  # cached now
    assert served.delete(f"/v1/sessions/{sid}/exemplars/1").status_code == 204
    res = classify(served, sid, imgs[1:2], top_k=5).json()["results"][0]
    assert set(res["scores"]) == {"a", "c"} and {t["exemplar_id"] for t in res["top"]} == {0, 2}
    page = served.get(f"/v1/sessions/{sid}/exemplars").json()
    assert [e["id"] for e in page["exemplars"]] == [0, 2]
    assert served.get(f"/v1/sessions/{sid}").json()["version"] == 2
    gone = served.delete(f"/v1/sessions/{sid}/exemplars/1")
    assert gone.status_code == 404 and gone.json()["type"].endswith("/exemplar-not-found")
    # Ids are never reused: the next exemplar gets 3.
    assert add(served, sid, imgs[1:2], ["b"]).json()["ids"] == [3]


def test_many_sessions_at_once_each_get_their_own_answer(served: httpx.Client) -> None:
    sids = [new_session(served) for _ in range(6)]
    sets = [drawings(4, seed=100 + i) for i in range(6)]
    for i, (sid, imgs) in enumerate(zip(sids, sets, strict=True)):
        assert add(served, sid, imgs, [f"s{i}c{j}" for j in range(4)]).status_code == 201

    def ask(i: int) -> list[str]:
        r = classify(served, sids[i], sets[i])
        assert r.status_code == 200, r.text
        return [res["label"] for res in r.json()["results"]]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, [i % 6 for i in range(24)]))
    for k, labels in enumerate(answers):
        assert labels == [f"s{k % 6}c{j}" for j in range(4)]


def test_vma_errors_change_nothing(served: httpx.Client, settings: Settings) -> None:
    sid = new_session(served, capacity=3)
    url = f"/v1/sessions/{sid}"
    imgs = drawings(4, seed=6)

    problem(classify(served, sid, imgs[:1]), 409, "empty-memory")
    problem(served.post(f"{url}/samples", json={"n": 2}), 409, "empty-memory")
    assert add(served, sid, imgs[:2], ["a", "b"]).status_code == 201
    full = problem(add(served, sid, imgs[2:4], ["c", "d"]), 409, "capacity-reached")
    assert full["capacity"] == 3 and full["count"] == 2
    bad_png = {
        "exemplars": [{"pixels": imgs[2].tolist(), "label": "c"}, {"image": "bm90IGEgcG5n", "label": "d"}]
    }
    assert (
        "exemplars[1]"
        in problem(served.post(f"{url}/exemplars", json=bad_png), 422, "invalid-image")["detail"]
    )
    problem(
        served.post(f"{url}/exemplars", json={"exemplars": [{"image": "***", "label": "d"}]}),
        422,
        "invalid-image",
    )
    wrong_shape = {"exemplars": [{"pixels": [[0.0] * 27] * 28, "label": "c"}]}
    problem(served.post(f"{url}/exemplars", json=wrong_shape), 422, "invalid-image")
    out_of_range = {"exemplars": [{"pixels": (imgs[2] * 2).tolist(), "label": "c"}]}
    problem(served.post(f"{url}/exemplars", json=out_of_range), 422, "invalid-image")
    both = {"exemplars": [{"pixels": imgs[2].tolist(), "image": png_b64(imgs[2]), "label": "c"}]}
    problem(served.post(f"{url}/exemplars", json=both), 422, "invalid-image")
    problem(
        served.post(f"{url}/exemplars", json={"exemplars": [{"pixels": imgs[2].tolist()}]}),
        422,
        "invalid-request",
    )
    many = {"images": [{"pixels": imgs[0].tolist()}] * (settings.max_images_per_request + 1)}
    problem(served.post(f"{url}/classify", json=many), 413, "payload-too-large")
    problem(served.post(f"{url}/samples", json={"label": "nope"}), 404, "label-not-found")
    problem(served.post(f"{url}/samples", json={"exemplar_id": 99}), 404, "exemplar-not-found")
    problem(served.post(f"{url}/samples", json={"label": "a", "exemplar_id": 0}), 422, "invalid-request")
    problem(served.post(f"{url}/samples", json={"n": 65}), 422, "invalid-request")
    problem(served.post(f"{url}/points", json={"values": [1.0]}), 409, "wrong-session-kind")
    nobody = "/v1/sessions/" + "0" * 32 + "/classify"
    problem(served.post(nobody, json={"images": [{"pixels": imgs[0].tolist()}]}), 404, "session-not-found")
    memnet = served.post("/v1/sessions", json={"kind": "memnet"}).json()["id"]
    problem(classify(served, memnet, imgs[:1]), 409, "wrong-session-kind")
    problem(served.post("/v1/sessions", json={"kind": "vma", "capacity": settings.max_vma_capacity + 1}), 422,
            "invalid-request")  # fmt: skip
    # Nothing above changed the memory.
    page = served.get(f"{url}/exemplars").json()
    assert page["total"] == 2 and [e["label"] for e in page["exemplars"]] == ["a", "b"]
    assert served.get(url).json()["version"] == 1


def test_a_killed_workers_exemplar_jobs_complete_elsewhere_once(
    client: httpx.Client, start_worker, api, settings: Settings, rdb: redis.Redis
) -> None:
    # The first worker sleeps after reading each batch, so it dies holding the jobs.
    doomed = start_worker(fault_batch_delay_ms=60_000)
    sids = [new_session(client) for _ in range(3)]
    imgs = drawings(4, seed=7)
    replies: dict[str, httpx.Response] = {}

    def one(sid: str) -> None:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            replies[sid] = add(c, sid, imgs, ["a", "b", "c", "d"])

    threads = [threading.Thread(target=one, args=(s,)) for s in sids]
    for t in threads:
        t.start()
    stream = Keys(settings.key_prefix).stream("vma")
    wait_until_pending(rdb, stream)  # the doomed worker holds jobs it will never finish
    doomed.kill()
    start_worker()
    for t in threads:
        t.join(60)
    for sid in sids:
        assert replies[sid].status_code == 201, replies[sid].text
        assert replies[sid].json()["ids"] == [0, 1, 2, 3]
        assert client.get(f"/v1/sessions/{sid}").json()["exemplars"] == 4  # added once
    assert rdb.xpending(stream, "workers")["pending"] == 0


def test_queries_reuse_the_cached_memory_until_it_changes(
    served: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    sid = new_session(served)
    imgs = drawings(3, seed=8)
    assert add(served, sid, imgs[:2], ["a", "b"]).status_code == 201

    def cache() -> tuple[int, int]:
        threading.Event().wait(settings.heartbeat_interval_s * 3)  # the next heartbeat
        beat = [orjson.loads(rdb.get(k)) for k in rdb.scan_iter(f"{settings.key_prefix}:workers:*")]
        assert (beat[0]["vma_decoder"], beat[0]["vma_query_embedding"]) == ("fp32", "fp32"), "the defaults"
        return beat[0]["memory_cache_hits"], beat[0]["memory_cache_misses"]

    classify(served, sid, imgs[:1])
    hits0, misses0 = cache()
    for _ in range(3):
        classify(served, sid, imgs[:1])
    hits1, misses1 = cache()
    assert hits1 - hits0 == 3 and misses1 == misses0
    assert add(served, sid, imgs[2:3], ["c"]).status_code == 201
    res = classify(served, sid, imgs[2:3]).json()["results"][0]
    assert set(res["scores"]) == {"a", "b", "c"}  # the new version was loaded
    assert cache()[1] == misses1 + 1
