"""What a VMA session is made of: its default model, and a capacity it asks for (exemplars)."""

from __future__ import annotations

from collections.abc import Sequence

from app.api.schemas import INT32_MAX
from app.catalog import ModelInfo
from app.config import Settings
from app.errors import InvalidRequest
from app.registry import CapacityDoc, SessionRules


def _default_model(settings: Settings) -> str:
    return settings.default_vma_model


def _capacity(settings: Settings, info: ModelInfo, asked: int | None) -> int:
    most = settings.max_vma_capacity
    if asked is not None and asked > most:
        raise InvalidRequest(f"capacity is at most {most}", max_capacity=most)
    return asked or settings.vma_capacity


def _capacity_doc(settings: Settings, models: Sequence[ModelInfo]) -> CapacityDoc:
    most = min(settings.max_vma_capacity, INT32_MAX)
    schema = {"type": "integer", "minimum": 1, "maximum": most}
    return CapacityDoc(schema, most, f"VMA: exemplars at most, 1 to {most}")


rules = SessionRules(_default_model, _capacity, _capacity_doc, progress="exemplars")
