"""Checkpoints: safetensors + JSON card round trip, shipped checkpoints, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import REGISTRY, load_checkpoint, register, save_checkpoint
from models.memnet import MemNet, MemNetConfig

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
SHIPPED = ["memnet-mackey-glass", "memnet-santafe", "memnet-universal"]
CARD_FIELDS = {
    "name", "kind", "version", "created", "config", "input_dim",
    "normalization", "data", "training", "metrics", "files",
}  # fmt: skip


def small_model() -> MemNet:
    torch.manual_seed(0)
    cfg = MemNetConfig(input_dim=2, hidden_dim=8, key_dim=4, value_dim=4, capacity=5)
    return MemNet(cfg).eval()


def test_round_trip_identical_outputs(tmp_path: Path) -> None:
    model = small_model()
    card = {"normalization": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "data": {}, "metrics": {}}
    weights, card_path = save_checkpoint(model, card, tmp_path, "m")
    assert weights == tmp_path / "m.safetensors" and card_path == tmp_path / "m.json"
    loaded, loaded_card = load_checkpoint("m", directory=tmp_path)
    assert isinstance(loaded, MemNet) and not loaded.training
    assert loaded_card["kind"] == "memnet" and loaded_card["config"]["hidden_dim"] == 8
    assert len(loaded_card["files"]["sha256"]) == 64
    x = torch.randn(3, 12, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], loaded(x)[0], rtol=0, atol=0)
    # A path to either file works too.
    load_checkpoint(weights)
    load_checkpoint(card_path)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(small_model(), {}, tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    load_checkpoint(tmp_path / "m.json")
    # safetensors files start with an 8-byte header length, then a JSON header.
    raw = (tmp_path / "m.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8 : 8 + header_len])


def test_unknown_kind_and_registry(tmp_path: Path) -> None:
    save_checkpoint(small_model(), {}, tmp_path, "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["kind"] = "nope"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(KeyError, match="nope"):
        load_checkpoint(tmp_path / "m.json")
    register("nope", MemNetConfig, MemNet)
    try:
        model, _ = load_checkpoint(tmp_path / "m.json")
        assert isinstance(model, MemNet)
    finally:
        REGISTRY.pop("nope")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads(name: str) -> None:
    if not (CHECKPOINTS / f"{name}.json").exists():
        pytest.skip(f"{name} not shipped in {CHECKPOINTS}")
    model, card = load_checkpoint(name, directory=CHECKPOINTS)
    assert set(card) >= CARD_FIELDS, CARD_FIELDS - set(card)
    assert card["name"] == name and card["kind"] == "memnet"
    assert card["config"]["capacity"] == 64
    assert len(card["normalization"]["mean"]) == card["input_dim"]
    assert card["training"]["command"].startswith("memserve train memnet")
    if card["data"]["source"] == "corpus":  # scored on held-out series, not on a test split
        assert card["metrics"]["summary"]["all"]["series"] >= 20 and card["data"]["generators"]["families"]
    else:
        for h in ("1", "10", "20", "84"):
            assert set(card["metrics"]["horizons"][h]) == {"model", "persistence", "ar20"}
    assert (CHECKPOINTS / card["files"]["weights"]).stat().st_size < 1_000_000
    y, _ = model(torch.zeros(1, 5, card["input_dim"]))
    assert torch.isfinite(y).all()
