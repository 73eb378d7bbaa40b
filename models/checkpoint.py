"""Checkpoints: safetensors weights plus a JSON model card; loading never unpickles.

``<dir>/<name>.safetensors`` holds the state dict; ``<dir>/<name>.json`` is the model card
(kind, config, normalisation, data, training command, metrics, file hash). The service reads
cards without torch; training, evaluation and serving all load through ``load_checkpoint``.

Models work in z-scored units: callers map inputs with ``(x - mean) / std`` and outputs
back with ``y * std + mean``, using ``card["normalization"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from models.memnet import MemNet, MemNetConfig
from models.vae import VAE, VAEConfig
from models.vma import VMA, VMAConfig

CARD_VERSION = "1"

# kind -> (config dataclass, model class). Other model kinds register here.
REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {
    "memnet": (MemNetConfig, MemNet),
    "vma": (VMAConfig, VMA),
    "vae": (VAEConfig, VAE),
}


def register(kind: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    """Make ``load_checkpoint`` able to build models of ``kind``."""
    REGISTRY[kind] = (config_cls, model_cls)


def kind_of(model: nn.Module) -> str:
    for kind, (_, model_cls) in REGISTRY.items():
        if type(model) is model_cls:
            return kind
    raise KeyError(f"model class {type(model).__name__} is not registered")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a registered model from its card config (unknown keys are an error)."""
    if kind not in REGISTRY:
        raise KeyError(f"unknown model kind {kind!r}; known: {sorted(REGISTRY)}")
    config_cls, model_cls = REGISTRY[kind]
    return model_cls(config_cls(**config))


def state_tensors(model: nn.Module) -> dict:
    """Contiguous, detached CPU copies of the state dict (what safetensors accepts)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    model: nn.Module, card: dict[str, Any], directory: str | Path, name: str
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.safetensors`` and ``<directory>/<name>.json``.

    Fields the card lacks (name, kind, version, created, config, input_dim, files) are
    filled in; the rest of ``card`` is written as given.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / f"{name}.safetensors"
    card_path = directory / f"{name}.json"
    save_file(state_tensors(model), str(weights_path), metadata={"name": name})
    weights_path.chmod(0o644)  # safetensors writes 0600; workers may run as another user
    config = dataclasses.asdict(model.config)  # type: ignore[arg-type]
    full = {
        "name": name,
        "kind": kind_of(model),
        "version": CARD_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "input_dim": config.get("input_dim"),
        **{k: v for k, v in card.items() if k not in ("name", "kind", "config", "files")},
        "files": {"weights": weights_path.name, "sha256": sha256_of(weights_path)},
    }
    write_card(card_path, full)
    return weights_path, card_path


def write_card(card_path: str | Path, card: dict[str, Any]) -> None:
    """Write a card atomically (temp file + rename) so readers never see half a card."""
    card_path = Path(card_path)
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.chmod(0o644)
    tmp.replace(card_path)


def resolve_card_path(name_or_path: str | Path, directory: str | Path | None = None) -> Path:
    """A name (looked up in ``directory``, default ``checkpoints``) or a .json/.safetensors path."""
    p = Path(name_or_path)
    if p.suffix in (".json", ".safetensors"):
        return p.with_suffix(".json")
    return Path(directory or "checkpoints") / f"{p.name}.json"


def read_card(name_or_path: str | Path, directory: str | Path | None = None) -> dict[str, Any]:
    card_path = resolve_card_path(name_or_path, directory)
    if not card_path.exists():
        raise FileNotFoundError(f"model card not found: {card_path} (check --checkpoint/--dir)")
    return json.loads(card_path.read_text())


def load_checkpoint(
    name_or_path: str | Path, directory: str | Path | None = None, map_location: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model from its card, load its safetensors weights, return (model.eval(), card)."""
    card_path = resolve_card_path(name_or_path, directory)
    card = read_card(card_path)
    model = build_model(card["kind"], card["config"])
    weights_path = card_path.parent / card["files"]["weights"]
    if not weights_path.exists():
        raise FileNotFoundError(f"weights file not found: {weights_path}")
    state = load_file(str(weights_path), device=str(map_location))
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model, card
