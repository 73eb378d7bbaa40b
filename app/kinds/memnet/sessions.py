"""What a MemNet session is made of: its default model, and a capacity its model fixes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.catalog import ModelInfo
from app.config import Settings
from app.errors import InvalidRequest
from app.registry import CapacityDoc, SessionRules


def _default_model(settings: Settings) -> str:
    return settings.default_memnet_model


def _capacity(settings: Settings, info: ModelInfo, asked: int | None) -> int:
    fixed = int(info.config.get("capacity", 0))
    if asked is not None and asked != fixed:
        raise InvalidRequest(f"a MemNet session's capacity is fixed by its model ({fixed})")
    return fixed


def _capacity_doc(settings: Settings, models: Sequence[ModelInfo]) -> CapacityDoc:
    fixed = sorted({c for m in models if (c := int(m.config.get("capacity", 0))) > 0})
    # A capacity must also be its own model's: a 422 says so, the document lists them all.
    schema: dict[str, Any] = {"enum": fixed} if fixed else {"not": {}}
    listed = ", ".join(map(str, fixed)) or "none loaded"
    text = (
        f"MemNet: fixed by the model (omit it, or give the model's own; the MemNet models here have {listed})"
    )
    return CapacityDoc(schema, max(fixed, default=1), text)


rules = SessionRules(_default_model, _capacity, _capacity_doc, progress="step")
