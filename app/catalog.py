"""Model cards in the checkpoint directory, read as JSON (no torch: the API uses this)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know of one checkpoint without loading its weights."""

    name: str
    kind: str
    version: str
    input_dim: int
    card: dict[str, Any] = field(repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.card.get("config", {}))


def read_catalog(directory: Path) -> dict[str, ModelInfo]:
    """Every model card in `directory` whose weights file is present, by name."""
    models: dict[str, ModelInfo] = {}
    for card_path in sorted(directory.glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
            name = str(card.get("name") or card_path.stem)
            if not (directory / f"{card_path.stem}.safetensors").is_file():
                continue
            cfg = card.get("config", {})
            models[name] = ModelInfo(
                name=name,
                kind=str(card["kind"]),
                version=str(card.get("version", "1")),
                input_dim=int(card.get("input_dim") or cfg.get("input_dim", 1)),
                card=card,
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("skipping unreadable model card %s: %s", card_path, e)
    return models
