"""VMA replies: one definition of each body, which the worker builds and the routes document."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AddedExemplars(BaseModel):
    ids: list[int] = Field(description="ids of the new exemplars, in the order given")
    count: int = Field(description="exemplars in the session now")
    version: int = Field(description="the session's memory version after the change")


class ExemplarEntry(BaseModel):
    id: int
    label: str
    image: str | None = Field(None, description="base64 PNG of the stored 28 x 28 drawing, when asked")


class ExemplarPage(BaseModel):
    exemplars: list[ExemplarEntry]
    total: int
    offset: int
    limit: int


class Sample(BaseModel):
    exemplar_id: int = Field(description="the memory entry the sample was drawn from")
    label: str
    image: str | None = Field(None, description="base64 PNG, dark ink on white (format png)")
    probs: list[list[float]] | None = Field(None, description="28 x 28 ink probabilities (format probs)")


class SampleResponse(BaseModel):
    samples: list[Sample]
    seed: int = Field(
        description="pass it again (with the same temperature and anchor) to get the same samples"
    )
    temperature: float = Field(description="the temperature the samples were drawn at")
    anchor: float = Field(description="the anchor the samples were drawn at")


class AddressScore(BaseModel):
    exemplar_id: int
    label: str
    p: float = Field(description="q(a|x); with the importance method, the importance-weighted p(a|x)")


class Classification(BaseModel):
    label: str = Field(description="the most probable label")
    scores: dict[str, float] = Field(description="p(c|x) per label; sums to 1")
    top: list[AddressScore]
    kl_nats: float = Field(description="KL(q(a|x) || p(a)): what the memory lookup gained, in nats")
    log_likelihood_nats: float | None = Field(description="a lower bound on log p(x|M) (null: samples 0)")
    novel: bool | None = Field(
        description="the drawing is unlike every exemplar (null: samples 0, or the model has no threshold)"
    )


class ClassifyResponse(BaseModel):
    method: str
    samples: int
    results: list[Classification]
