"""A Redis that loses acknowledged writes (restored from an older snapshot) must never make a
worker answer from the lost branch: the state cache is keyed on a random token per commit,
not on the version counter, which counts again after the rollback and reuses its values."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import numpy as np
import redis
import torch

from app.config import Settings
from app.store.keys import Keys
from models.checkpoint import load_checkpoint
from tests.conftest import SCALED_TEST_MODEL, VMA_TEST_MODEL, drawings


def post(client: httpx.Client, sid: str, values: np.ndarray, seq: int) -> np.ndarray:
    r = client.post(f"/v1/sessions/{sid}/points", json={"values": values.tolist(), "seq": seq})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["predictions"])[:, 0]


def offline(ckpt_dir: Path, xs: np.ndarray) -> np.ndarray:
    model, _ = load_checkpoint(SCALED_TEST_MODEL, ckpt_dir)
    with torch.inference_mode():
        y, _ = model(torch.from_numpy(xs.astype(np.float32)).view(1, -1, 1))
    return y[0, :, 0].numpy()


def test_after_a_rollback_the_next_chunk_equals_a_fresh_replay(
    client: httpx.Client, start_worker, rdb: redis.Redis, settings: Settings, ckpt_dir: Path
) -> None:
    keys = Keys(settings.key_prefix)
    rng = np.random.default_rng(0)
    a, b, c, d = (10 + rng.standard_normal(n).cumsum().astype(np.float32) for n in (12, 6, 6, 5))
    first = start_worker()
    r = client.post("/v1/sessions", json={"kind": "memnet", "model": SCALED_TEST_MODEL})
    sid = r.json()["id"]
    post(client, sid, a, 0)
    names = (keys.meta(sid), keys.state(sid))
    snapshot = {k: (rdb.dump(k), rdb.pttl(k)) for k in names}  # what a 4-second-old backup holds
    post(client, sid, b, len(a))  # acknowledged, then lost: the first worker caches this branch
    for k, (blob, ttl) in snapshot.items():
        rdb.restore(k, ttl, blob, replace=True)
    os.kill(first.pid, signal.SIGSTOP)  # a second worker applies the client's next chunk
    try:
        second = start_worker()
        post(client, sid, c, len(a))  # other values at the same seq: the session moved on from a
        second.kill()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    got = post(client, sid, d, len(a) + len(c))  # the first worker, its cache from the lost branch
    want = offline(ckpt_dir, np.concatenate([a, c, d]))[-len(d) :]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_vma_memory_after_a_rollback_is_the_one_in_redis(
    client: httpx.Client, start_worker, rdb: redis.Redis, settings: Settings
) -> None:
    """The same for a VMA session: the worker's memory cache must not answer from exemplars
    that Redis lost, even though the version counter reaches the same value again."""
    keys = Keys(settings.key_prefix)
    start_worker()
    r = client.post("/v1/sessions", json={"kind": "vma", "model": VMA_TEST_MODEL})
    sid = r.json()["id"]
    imgs = drawings(6, seed=3)

    def add(label: str, at: int) -> None:
        items = [{"pixels": imgs[i].tolist(), "label": label} for i in (at, at + 1)]
        r = client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": items})
        assert r.status_code == 201, r.text

    def labels_seen() -> set[str]:
        r = client.post(f"/v1/sessions/{sid}/classify", json={"images": [{"pixels": imgs[0].tolist()}]})
        assert r.status_code == 200, r.text
        return set(r.json()["results"][0]["scores"])

    add("a", 0)
    names = (keys.meta(sid), keys.exemplars(sid))
    snapshot = {k: (rdb.dump(k), rdb.pttl(k)) for k in names}
    add("b", 2)
    assert labels_seen() == {"a", "b"}  # the worker caches the branch about to be lost
    for k, (blob, ttl) in snapshot.items():
        rdb.restore(k, ttl, blob, replace=True)
    add("c", 4)  # version 2 again, other exemplars
    assert int(rdb.hget(keys.meta(sid), "version") or 0) == 2
    assert labels_seen() == {"a", "c"}
