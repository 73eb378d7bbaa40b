"""A moving-average session: no default model (any of the kind), its capacity the model's window."""

from __future__ import annotations

from collections.abc import Sequence

from app.catalog import ModelInfo
from app.config import Settings
from app.errors import InvalidRequest
from app.registry import CapacityDoc, SessionRules


def _window(info: ModelInfo) -> int:
    return int(info.config.get("window", 1))


def _capacity(settings: Settings, info: ModelInfo, asked: int | None) -> int:
    if asked is not None and asked != _window(info):
        raise InvalidRequest(f"a movavg session's capacity is its model's window ({_window(info)})")
    return _window(info)


def _capacity_doc(settings: Settings, models: Sequence[ModelInfo]) -> CapacityDoc:
    windows = sorted({_window(m) for m in models})
    text = f"movavg: the model's window ({', '.join(map(str, windows)) or 'none loaded'})"
    return CapacityDoc({"enum": windows} if windows else {"not": {}}, max(windows, default=1), text)


rules = SessionRules(lambda settings: None, _capacity, _capacity_doc, progress="step")
