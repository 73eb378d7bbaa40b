"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# Points are checked with numpy in app.jobs.points (one clear message, and fast on long
# chunks); the schema still documents their shape.
_POINTS_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        {"type": "array", "items": {"type": "number"}},
    ],
    "minItems": 1,
}
Points = Annotated[list[Any], Field(min_length=1), WithJsonSchema(_POINTS_SCHEMA)]


class CreateSession(BaseModel):
    """`POST /v1/sessions`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["memnet", "vma"]
    model: str | None = Field(None, description="checkpoint name; default: the kind's default")
    ttl_s: int | None = Field(None, ge=1, description="idle seconds before the session expires")
    capacity: int | None = Field(None, ge=1, description="VMA: exemplars at most; MemNet: fixed by the model")


class SessionInfo(BaseModel):
    """A session as `GET /v1/sessions/{sid}` reports it."""

    id: str
    kind: str
    model: str
    model_version: str
    created: str
    ttl_s: int
    expires_in_s: int
    capacity: int
    input_dim: int
    step: int = Field(description="MemNet: points applied so far (the next chunk's seq)")
    version: int = Field(description="increments with every change of the session's memory")
    memory_bytes: int = Field(description="Redis memory the session's keys take")


class PointsRequest(BaseModel):
    """`POST /v1/sessions/{sid}/points`: a chunk of T points of dimension D."""

    model_config = ConfigDict(extra="forbid")

    values: Points = Field(description="T x D finite numbers; a flat list of T numbers when D = 1")
    seq: int | None = Field(None, ge=0, description="index of the chunk's first point; omitted: append")
    horizon: int = Field(0, ge=0, description="forecast this many steps after the last point")


class PointsResponse(BaseModel):
    """Predictions of the next value after each point, and the optional forecast."""

    seq: int = Field(description="index of the chunk's first point")
    step: int = Field(description="points applied after this chunk (the next chunk's seq)")
    predictions: list[list[float]] = Field(description="T x D: prediction of the next value")
    forecast: list[list[float]] | None = Field(description="horizon x D, or null")
    repeat: bool = Field(description="true when this answers a retry of the last chunk")


class ModelEntry(BaseModel):
    name: str
    kind: str
    version: str
    workers: list[str]
    card: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelEntry]


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not-ready"]
    redis: bool
    models: list[str]
    workers: list[dict[str, Any]]
    reasons: list[str]
