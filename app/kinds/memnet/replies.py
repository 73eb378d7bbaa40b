"""MemNet's reply: what a worker answers for a chunk of points, and what the route documents."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Interval(BaseModel):
    """Lower and upper bounds at one level, the shape of the values they bound."""

    lower: list[list[float]]
    upper: list[list[float]]


class Anomaly(BaseModel):
    """A point outside the 99 % interval of the prediction the session made for it."""

    index: int = Field(description="position in the chunk")
    seq: int = Field(description="position in the session's stream")
    dim: int = Field(description="the channel (0 for a univariate series)")
    scales: float = Field(description="(value - prediction) / predicted std")


class PointsResponse(BaseModel):
    """Predictions of the next value after each point, and the optional forecast."""

    seq: int = Field(description="index of the chunk's first point")
    step: int = Field(description="points applied after this chunk (the next chunk's seq)")
    predictions: list[list[float]] = Field(description="T x D: prediction of the next value")
    forecast: list[list[float]] | None = Field(description="horizon x D, or null")
    intervals: dict[str, Interval] | None = Field(
        None, description="per requested level (key: the level, e.g. 95): bounds of each prediction, T x D"
    )
    forecast_intervals: dict[str, Interval] | None = Field(
        None, description="per requested level: bounds of each forecast step (horizon x D) from sampled paths"
    )
    anomalies: list[Anomaly] | None = Field(
        None, description="points outside their own 99 % one-step interval; null for a model without one"
    )
    repeat: bool = Field(description="true when this answers a retry of the last chunk")
