"""Hot reload of checkpoints through the real service: a new version dropped into the checkpoint
directory is served next to the old one by the running worker, without a restart.

Each test works on its own copy of the test checkpoints (the session-scoped ``ckpt_dir`` stays
as it is), with a short reload interval for the worker and the API.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from app.config import Settings
from app.store.backup import decode, encode
from models.checkpoint import read_card, save_checkpoint, write_card
from models.export import export_checkpoint
from models.memnet import MemNet, MemNetConfig
from models.vma import VMA
from tests.conftest import TEST_MODEL, VMA_TEST_CONFIG, VMA_TEST_MODEL, drawings, run_offline
from tests.integration.test_backup import export, import_doc
from tests.integration.test_stream import post, series
from tests.integration.test_vma import add, classify

MEMNET_CONFIG = MemNetConfig(input_dim=2, hidden_dim=16, key_dim=8, value_dim=8, capacity=8)  # conftest's
T = TypeVar("T")


@pytest.fixture
def hot_dir(ckpt_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of the checkpoint directory, to drop versions into."""
    return Path(shutil.copytree(ckpt_dir, tmp_path / "checkpoints"))


@pytest.fixture
def settings(settings: Settings, hot_dir: Path) -> Settings:
    return settings.model_copy(update={"checkpoint_dir": hot_dir, "reload_interval_s": 0.2})


def stage_version(directory: Path, staging: Path, name: str, version: str, model: nn.Module) -> str:
    """Write ``model`` as version ``version`` of ``name`` into ``staging`` (card, weights, ONNX graphs)
    under the file stem ``<name>.v<version>``, copying what the card says beyond its weights from the
    model's card in ``directory``; returns the stem."""
    base = read_card(name, directory)
    stem = f"{name}.v{version}"
    keep = ("input_dim", "normalization", "data", "serving")
    save_checkpoint(model, {k: v for k, v in base.items() if k in keep}, staging, stem)
    card = read_card(stem, staging)
    card.update(name=name, version=version)
    write_card(staging / f"{stem}.json", card)
    export_checkpoint(stem, staging)
    return stem


def drop(staging: Path, directory: Path, stem: str) -> None:
    """Copy a staged version into the directory as docs/operations.md says: graphs and weights, card last."""
    shutil.copytree(staging / f"{stem}-onnx", directory / f"{stem}-onnx")
    shutil.copy2(staging / f"{stem}.safetensors", directory)
    shutil.copy2(staging / f"{stem}.json", directory)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def versions(client: httpx.Client, name: str) -> dict[str, dict[str, Any]]:
    return {m["version"]: m for m in client.get("/v1/models").json()["models"] if m["name"] == name}


def serving(client: httpx.Client, name: str, version: str, worker_id: str) -> bool:
    """Whether /v1/models shows ``version`` as the latest, loaded by the worker."""
    entry = versions(client, name).get(version)
    return bool(entry and entry["latest"] and worker_id in entry["workers"])


def worker_id(client: httpx.Client, pid: int) -> str:
    ids = [w["id"] for w in client.get("/health/ready").json()["workers"] if w["pid"] == pid]
    assert len(ids) == 1, ids
    return str(ids[0])


def new_session(client: httpx.Client, kind: str) -> dict[str, Any]:
    r = client.post("/v1/sessions", json={"kind": kind})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def predictions(client: httpx.Client, sid: str, xs: np.ndarray, seq: int) -> np.ndarray:
    r = post(client, sid, xs, seq)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["predictions"])


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def reseeded_memnet(seed: int) -> MemNet:
    torch.manual_seed(seed)
    return MemNet(MEMNET_CONFIG)


def test_a_new_memnet_version_is_served_next_to_the_old_one(
    client: httpx.Client, start_worker, hot_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker()
    wid = worker_id(client, worker.pid)
    xs = series(20)
    old = new_session(client, "memnet")
    assert old["model_version"] == "1"
    first = predictions(client, old["id"], xs[:10], 0)
    stem = stage_version(hot_dir, tmp_path / "staging", TEST_MODEL, "2", reseeded_memnet(7))
    # Half copied (graphs and card there, weights cut short): neither the API nor the worker takes it.
    shutil.copytree(tmp_path / "staging" / f"{stem}-onnx", hot_dir / f"{stem}-onnx")
    shutil.copy2(tmp_path / "staging" / f"{stem}.json", hot_dir)
    weights = (tmp_path / "staging" / f"{stem}.safetensors").read_bytes()
    (hot_dir / f"{stem}.safetensors").write_bytes(weights[: len(weights) // 2])
    time.sleep(1.0)  # five reload intervals
    assert set(versions(client, TEST_MODEL)) == {"1"}
    assert new_session(client, "memnet")["model_version"] == "1"
    (hot_dir / f"{stem}.safetensors").write_bytes(weights)  # the copy completes
    wait_for("v2 loaded and latest", lambda: serving(client, TEST_MODEL, "2", wid))
    listed = versions(client, TEST_MODEL)
    assert set(listed) == {"1", "2"} and not listed["1"]["latest"] and listed["1"]["workers"] == [wid]
    assert listed["2"]["card"]["files"]["weights"] == f"{stem}.safetensors"
    assert client.get("/v1/models").json()["latest"][TEST_MODEL] == "2"
    new = new_session(client, "memnet")
    assert new["model_version"] == "2"
    # The old session goes on exactly as v1 run offline; the new one is v2.
    rest = predictions(client, old["id"], xs[10:], 10)
    close(np.concatenate([first, rest]), run_offline(TEST_MODEL, hot_dir, xs)[0])
    v2 = predictions(client, new["id"], xs, 0)
    close(v2, run_offline(stem, hot_dir, xs)[0])
    assert not np.allclose(v2, run_offline(TEST_MODEL, hot_dir, xs)[0], atol=1e-3)
    assert client.get(f"/v1/sessions/{old['id']}").json()["model_version"] == "1"
    assert worker.proc.poll() is None and worker_id(client, worker.pid) == wid  # no restart


def test_removed_version_keeps_serving_on_the_worker_that_loaded_it(
    client: httpx.Client, start_worker, hot_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker()
    wid = worker_id(client, worker.pid)
    xs = series(8)
    old = new_session(client, "memnet")["id"]
    stem = stage_version(hot_dir, tmp_path / "staging", TEST_MODEL, "2", reseeded_memnet(3))
    drop(tmp_path / "staging", hot_dir, stem)
    wait_for("v2 latest", lambda: serving(client, TEST_MODEL, "2", wid))
    want_v1 = run_offline(TEST_MODEL, hot_dir, xs)[0]
    for path in hot_dir.glob(f"{TEST_MODEL}.*"):  # v1's card and weights go
        if not path.name.startswith(stem):
            path.unlink()
    shutil.rmtree(hot_dir / f"{TEST_MODEL}-onnx")

    def v1_off_disk() -> dict[str, Any] | None:
        entry = versions(client, TEST_MODEL).get("1")
        return entry if entry and not entry["on_disk"] else None

    gone = wait_for("v1 off disk", v1_off_disk)
    assert gone["workers"] == [wid] and gone["card"] == {} and not gone["latest"]
    close(predictions(client, old, xs[:4], 0), want_v1[:4])  # the loaded v1 still serves it
    # A worker started after the removal has no v1: its jobs get a clear 503.
    worker.stop()
    fresh = start_worker()
    r = post(client, old, xs[4:], 4)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["type"].endswith("model-unavailable") and f"{TEST_MODEL} version 1 " in body["detail"]
    new = new_session(client, "memnet")
    assert new["model_version"] == "2"
    close(predictions(client, new["id"], xs, 0), run_offline(stem, hot_dir, xs)[0])
    assert fresh.proc.poll() is None


def test_a_job_for_a_version_not_loaded_yet_makes_the_worker_rescan_at_once(
    client: httpx.Client, start_worker, hot_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker(reload_interval_s=3600)  # it would not look again by itself for an hour
    stem = stage_version(hot_dir, tmp_path / "staging", TEST_MODEL, "2", reseeded_memnet(5))
    drop(tmp_path / "staging", hot_dir, stem)
    wait_for("v2 listed", lambda: "2" in versions(client, TEST_MODEL))
    time.sleep(0.5)  # API refreshes: it still hands out v1, the version the worker has
    assert not versions(client, TEST_MODEL)["2"]["workers"]
    assert new_session(client, "memnet")["model_version"] == "1"
    # Import a session written by v2 (a fresh session's document, relabelled): the API takes
    # any version in the directory, and the worker loads v2 when its first job comes.
    doc = decode(export(client, new_session(client, "memnet")["id"]))
    r = import_doc(client, encode(replace(doc, header=replace(doc.header, model_version="2"))))
    assert r.status_code == 201, r.text
    assert r.json()["model_version"] == "2"
    xs = series(6)
    close(predictions(client, r.json()["id"], xs, 0), run_offline(stem, hot_dir, xs)[0])
    wid = worker_id(client, worker.pid)
    wait_for("v2 latest", lambda: serving(client, TEST_MODEL, "2", wid))


def test_a_new_vma_version_is_served_next_to_the_old_one(
    client: httpx.Client, start_worker, hot_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker()
    wid = worker_id(client, worker.pid)
    imgs = drawings(5, seed=4)
    labels = ["a", "b", "c", "d"]

    def scores(sid: str) -> list[dict[str, float]]:
        r = classify(client, sid, imgs[4:], seed=11, samples=4)
        assert r.status_code == 200, r.text
        return [res["scores"] | {"ll": res["log_likelihood_nats"]} for res in r.json()["results"]]

    old = new_session(client, "vma")
    assert old["model_version"] == "1" and add(client, old["id"], imgs[:4], labels).status_code == 201
    before = scores(old["id"])
    torch.manual_seed(9)
    stem = stage_version(hot_dir, tmp_path / "staging", VMA_TEST_MODEL, "2", VMA(VMA_TEST_CONFIG))
    drop(tmp_path / "staging", hot_dir, stem)
    wait_for("vma v2 latest", lambda: serving(client, VMA_TEST_MODEL, "2", wid))
    new = new_session(client, "vma")
    assert new["model_version"] == "2" and add(client, new["id"], imgs[:4], labels).status_code == 201
    assert scores(old["id"]) == before  # the old session: still v1, to the last bit
    assert scores(new["id"]) != before  # the same memory and query on v2's weights
    assert worker.proc.poll() is None and worker_id(client, worker.pid) == wid
