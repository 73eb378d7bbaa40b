"""The reply of `POST /v1/sessions/{sid}/average`: the route's response model, the worker's body."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AverageReply(BaseModel):
    averages: list[float] = Field(description="per posted value, the moving average ending at it")
    step: int = Field(description="values the session has taken in all")
