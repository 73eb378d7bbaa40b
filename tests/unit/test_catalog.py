"""Model versions: their order, the catalog's choice for new sessions, and the directory scan
that skips checkpoints still being copied (app.catalog, app.checkpoint_scan)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from app.catalog import Catalog, ModelInfo, loaded_versions, newest, numeric_version
from app.checkpoint_scan import CheckpointScanner
from app.errors import ModelVersionMismatch
from app.kinds.memnet.wire import PointsJob
from app.kinds.vma.wire import VmaJob
from app.store.backup import Header, SessionDoc
from app.store.backup_check import check_importable
from models.checkpoint import read_card, save_checkpoint, write_card
from models.export import export_checkpoint
from models.memnet import MemNet, MemNetConfig

CONFIG = MemNetConfig(input_dim=1, hidden_dim=4, key_dim=2, value_dim=2, capacity=3)


def info(version: str, created: str = "", name: str = "m") -> ModelInfo:
    return ModelInfo(name, "memnet", version, 1, {"created": created, "config": {"capacity": 3}})


def test_numbered_versions_compare_as_numbers_part_by_part() -> None:
    assert numeric_version("10") == (10,) and numeric_version("1.10") == (1, 10)
    for other in ("v2", "1..2", "-1", "", "²", "2024-05-01"):
        assert numeric_version(other) == ()
    assert newest([info("9"), info("10"), info("2")]).version == "10"
    assert newest([info("1.9"), info("1.10")]).version == "1.10"
    assert newest([]) is None


def test_named_versions_rank_below_numbered_ones_then_by_creation_time() -> None:
    late_name = info("exp-b", created="2030-01-01T00:00:00+00:00")
    assert newest([info("1", created="2020-01-01T00:00:00+00:00"), late_name]).version == "1"
    a = info("exp-z", created="2024-01-01T00:00:00+00:00")
    b = info("exp-a", created="2024-06-01T00:00:00+00:00")
    assert newest([a, b]) is b  # creation time first, then the string
    assert newest([info("exp-a", created="x"), info("exp-b", created="x")]).version == "exp-b"


def test_new_sessions_get_the_latest_version_a_worker_has_loaded() -> None:
    v1, v2, other = info("1"), info("2"), info("1", name="n")
    catalog = Catalog([v2, v1, other])
    assert [m.version for m in catalog.versions("m")] == ["1", "2"] and catalog.versions("x") == []
    assert catalog["m"] is v2  # no worker reports any version: the directory's latest
    assert catalog.update([v1, v2, other], loaded={("m", "1")}) == []
    assert catalog["m"] is v1  # v2 is listed, not handed out, until a worker has it
    assert catalog.version("m", "2") is v2 and catalog.version("m", "3") is None
    v3 = info("3")
    assert catalog.update([v1, v2, v3, other], loaded={("m", "1"), ("m", "3")}) == [v3]
    assert catalog["m"] is v3 and list(catalog) == ["m", "n"] and len(catalog) == 2
    assert [m.key for m in catalog.all()] == [("m", "1"), ("m", "2"), ("m", "3"), ("n", "1")]
    catalog.update([v2, other])  # v1 and v3 removed; what workers report is kept
    assert catalog["m"] is v2 and catalog.versions("m") == [v2] and catalog.versions("x") == []


def test_loaded_versions_come_from_heartbeats() -> None:
    beats: list[dict[str, Any]] = [
        {"id": "w1", "loaded": [{"name": "m", "version": "1", "kind": "memnet"}]},
        {
            "id": "w2",
            "loaded": [{"name": "m", "version": "1", "kind": "memnet"}, {"name": "m", "version": "2"}],
        },
        {"id": "old", "models": ["m"]},  # a worker from before versions: counts for none
    ]
    loaded = loaded_versions(beats)
    assert loaded[("m", "1")].workers == ["w1", "w2"] and loaded[("m", "1")].kind == "memnet"
    assert loaded[("m", "2")].workers == ["w2"] and set(loaded) == {("m", "1"), ("m", "2")}


def wire(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """A job's fields as a stream entry reads back."""
    return {k.encode(): v for k, v in fields.items()}


def test_jobs_carry_their_model_version() -> None:
    job = PointsJob("j", "s", "m", 0, b"\0" * 8, 2, 1, 0, "r", model_version="2")
    assert PointsJob.from_fields(wire(job.to_fields())).model_version == "2"
    fields = job.to_fields()
    head = json.loads(fields["h"])
    del head["mv"]  # queued by an API from before versions
    assert (
        PointsJob.from_fields(wire({"h": json.dumps(head).encode(), "v": fields["v"]})).model_version is None
    )
    vma = VmaJob.new("s", "m", "sample", "r", None, model_version="7", n=2)
    again = VmaJob.from_fields(wire(vma.to_fields()))
    assert again.model_version == "7" and again.params == {"n": 2}


def test_import_accepts_any_version_in_the_directory() -> None:
    catalog = Catalog([info("1"), info("2")])
    for version in ("1", "2"):
        doc = SessionDoc(Header("memnet", "m", version, "", 60, 0, 1, 3))
        assert check_importable(doc, catalog, 3600, 10).version == version
    with pytest.raises(ModelVersionMismatch, match=r"version '3'.*at version '1', version '2' only"):
        check_importable(SessionDoc(Header("memnet", "m", "3", "", 60, 0, 1, 3)), catalog, 3600, 10)


# ------------------------------------------------------------------------ the scan


def save_version(directory: Path, stem: str, version: str, seed: int = 0) -> Path:
    """A MemNet checkpoint under file stem ``stem``: model "mn" at ``version``."""
    torch.manual_seed(seed)
    save_checkpoint(MemNet(CONFIG), {}, directory, stem)
    card = read_card(stem, directory)
    card.update(name="mn", version=version)
    write_card(directory / f"{stem}.json", card)
    return directory / f"{stem}.json"


def test_scan_finds_versions_side_by_side(tmp_path: Path) -> None:
    save_version(tmp_path, "mn", "1")
    save_version(tmp_path, "mn.v2", "2", seed=1)
    (tmp_path / "notes.json").write_text('{"what": "not a card"}')
    found = {m.key: m for m in CheckpointScanner(tmp_path).scan()}
    assert set(found) == {("mn", "1"), ("mn", "2")}
    assert found[("mn", "2")].path == tmp_path / "mn.v2.json"
    assert found[("mn", "2")].weights_sha256 == read_card("mn.v2", tmp_path)["files"]["sha256"]


def test_half_copied_checkpoints_are_skipped_until_complete_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    save_version(src, "mn.v2", "2")
    scanner = CheckpointScanner(dst)
    caplog.set_level(logging.INFO, "memserve.checkpoints")
    shutil.copy2(src / "mn.v2.json", dst)  # the card first: its weights are not there yet
    assert scanner.scan() == [] and "is missing" in scanner.skipped[("mn", "2")]
    weights = (src / "mn.v2.safetensors").read_bytes()
    (dst / "mn.v2.safetensors").write_bytes(weights[: len(weights) // 2])  # half copied
    for _ in range(3):
        assert scanner.scan() == []
    assert "does not match the sha256" in scanner.skipped[("mn", "2")]
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 2  # once per reason, not once per scan
    (dst / "mn.v2.safetensors").write_bytes(weights)
    assert [m.key for m in scanner.scan()] == [("mn", "2")] and scanner.skipped == {}
    assert "complete now" in caplog.records[-1].getMessage()
    (dst / "broken.json").write_text('{"kind": "memnet", "na')  # a card being written
    assert [m.key for m in scanner.scan()] == [("mn", "2")]
    assert "unreadable card" in caplog.records[-1].getMessage()


def test_a_duplicate_version_is_ignored(tmp_path: Path) -> None:
    save_version(tmp_path, "a", "1")
    save_version(tmp_path, "b", "1", seed=1)
    found = CheckpointScanner(tmp_path).scan()
    assert [m.path.name for m in found if m.path] == ["a.json"]


def test_the_onnx_backend_also_waits_for_complete_graphs(tmp_path: Path) -> None:
    save_version(tmp_path, "mn.v2", "2")
    scanner = CheckpointScanner(tmp_path, require_onnx=True)
    assert scanner.scan() == [] and "memserve export --model mn.v2" in scanner.skipped[("mn", "2")]
    assert [m.key for m in CheckpointScanner(tmp_path).scan()] == [("mn", "2")]  # the API's scan
    export_checkpoint("mn.v2", tmp_path)
    assert [m.key for m in scanner.scan()] == [("mn", "2")]
    graph = tmp_path / "mn.v2-onnx" / "step.onnx"
    data = graph.read_bytes()
    graph.write_bytes(data[:100])
    assert scanner.scan() == [] and "step.onnx does not match" in scanner.skipped[("mn", "2")]
    graph.write_bytes(data)
    assert [m.key for m in scanner.scan()] == [("mn", "2")]
