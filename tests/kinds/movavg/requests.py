"""The body of `POST /v1/sessions/{sid}/average`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AverageRequest(BaseModel):
    """Values to append to the session's series, oldest first."""

    model_config = ConfigDict(extra="forbid")

    values: list[float] = Field(min_length=1, max_length=1000)
