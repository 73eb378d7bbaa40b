"""The moving-average kind's worker half; importing it lets `load_checkpoint` build its model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from app.catalog import ModelKey
from app.config import Settings
from app.store.keys import Keys
from app.worker.backends import Backend
from app.worker.budget import WorkBudget
from models import checkpoint
from tests.kinds.movavg.model import MovAvg, MovAvgConfig
from tests.kinds.movavg.runner import MovAvgRunner, ServedMovAvg

checkpoint.register("movavg", MovAvgConfig, MovAvg)


def serve(model: MovAvg, card: dict[str, Any], card_dir: Path, backend: Backend) -> ServedMovAvg:
    """The module itself on the CPU, whatever the backend: it has no exported graph."""
    return ServedMovAvg(model.cpu().eval())


def runner(
    r: redis.Redis, keys: Keys, models: dict[ModelKey, ServedMovAvg], settings: Settings,
    latest: dict[str, ModelKey], budget: WorkBudget,
) -> MovAvgRunner:  # fmt: skip
    return MovAvgRunner(r, keys, models, settings.reply_ttl_s, settings.max_deliveries, latest)
