"""MemNet's worker half: a loaded checkpoint served on the worker's backend, and its runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from app.catalog import ModelKey
from app.config import Settings
from app.kinds.memnet.engine import TorchMemNet
from app.kinds.memnet.runner import MemNetRunner, ServedMemNet
from app.store.keys import Keys
from app.worker.backends import Backend
from app.worker.budget import WorkBudget
from models.memnet import MemNet


def serve(model: MemNet, card: dict[str, Any], card_dir: Path, backend: Backend) -> ServedMemNet:
    """Wrap a loaded checkpoint for the runner, on the torch module or on its exported graph."""
    if backend.name == "torch":
        return ServedMemNet(TorchMemNet(model, backend.device), card, backend.device)
    from app.kinds.memnet.onnx import OnnxMemNet  # onnxruntime only for workers that run it

    paths, placement = backend.graphs(card, card_dir)
    return ServedMemNet(OnnxMemNet(model, paths, placement, backend.threads), card, backend.device)


def runner(
    r: redis.Redis, keys: Keys, models: dict[ModelKey, ServedMemNet], settings: Settings,
    latest: dict[str, ModelKey], budget: WorkBudget,
) -> MemNetRunner:  # fmt: skip
    """The runner of every loaded MemNet version, with its state cache."""
    return MemNetRunner(
        r, keys, models, settings.reply_ttl_s, settings.max_deliveries,
        cache_bytes=settings.state_cache_mb << 20, latest=latest, budget=budget,
    )  # fmt: skip
