"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, WithJsonSchema

INT64_MAX = 2**63 - 1  # what Redis, the job wire format and the stored state can hold
INT32_MAX = 2**31 - 1  # a session's TTL and capacity, as stored
F32_MAX = 3.4028234663852886e38  # a point's value must fit a float32 (app.jobs.points)
MAX_LABEL_CHARS = 200


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate such as \\ud800 is not)") from None
    return text


# Integers are strict (true, 1.5 and "7" are refused, not read as numbers) and bounded by what
# the service stores; text must be encodable as UTF-8. Either way the refusal is a 422 naming
# the field, never a failure further in.
Text = Annotated[str, AfterValidator(_valid_unicode)]
Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]

# Points are checked with numpy in app.jobs.points (one clear message, and fast on long
# chunks); the schema still documents their shape and range. How many points a request may
# hold is a setting: the served document adds it (app.api.openapi).
_POINT_VALUE = {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}
_POINTS_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "array", "items": _POINT_VALUE, "minItems": 1}},
        {"type": "array", "items": _POINT_VALUE},
    ],
    "minItems": 1,
}
Points = Annotated[list[Any], Field(min_length=1), WithJsonSchema(_POINTS_SCHEMA)]


class CreateSession(BaseModel):
    """`POST /v1/sessions`."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "memnet", "ttl_s": 3600}, {"kind": "vma"}]}
    )

    kind: Literal["memnet", "vma"]
    model: Text | None = Field(None, description="checkpoint name; default: the kind's default")
    # The served document narrows both to this process' settings and models (app.api.openapi).
    ttl_s: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=INT32_MAX, description="idle seconds before the session expires"
    )
    capacity: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=INT32_MAX, description="VMA: exemplars at most; MemNet: fixed by the model"
    )


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
    exemplars: int = Field(0, description="VMA: exemplars in memory")


class PointsRequest(BaseModel):
    """`POST /v1/sessions/{sid}/points`: a chunk of T points of dimension D."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"values": [50.0, 51.25, 52.47]}, {"values": [44.28], "horizon": 10, "level": [95]}]
        },
    )

    values: Points = Field(description="T x D finite numbers; a flat list of T numbers when D = 1")
    seq: Count | None = Field(None, description="index of the chunk's first point; omitted: append")
    horizon: Count = Field(0, description="forecast this many steps after the last point")
    level: list[Annotated[float, Field(gt=0, lt=100)]] | None = Field(
        None, max_length=8,
        description="prediction interval levels in percent, e.g. [80, 95]: adds `intervals` for "
        "every prediction and `forecast_intervals` for every forecast step",
    )  # fmt: skip


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


class ModelEntry(BaseModel):
    """One version of one model."""

    name: str
    kind: str
    version: str
    latest: bool = Field(description="new sessions of this model get this version")
    workers: list[str] = Field(description="ids of the live workers that have this version loaded")
    on_disk: bool = Field(
        default=True, description="its files are in the checkpoint directory (false: removed, still loaded)"
    )
    card: dict[str, Any] = Field(description="the model card ({} when its files are gone)")


class ModelList(BaseModel):
    """Every version of every model; a session keeps the version it was created with."""

    models: list[ModelEntry]
    latest: dict[str, str] = Field(default_factory=dict, description="name -> the version new sessions get")


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not-ready"]
    redis: bool
    models: list[str]
    workers: list[dict[str, Any]]
    reasons: list[str]


# ----------------------------------------------------------------------------- VMA
# A 28 x 28 drawing of an "F", dark ink on white: the examples' drawing.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAALklEQVR42mP8z4AbMDEMMkkWOIsRIfifisYiGUc3r8B985/"
    "axv4f7PHJOKRSHwCuKwY7wkTbzwAAAABJRU5ErkJggg=="
)
# Standard base64 with its padding (app.jobs.images decodes it strictly) of a PNG, JPEG or
# WebP, bare or as a data URL (docs/drawings.md).
_PNG_SCHEMA = {
    "type": "string",
    "pattern": "^(?:data:image/(?:[Pp][Nn][Gg]|[Jj][Pp][Ee]?[Gg]|[Ww][Ee][Bb][Pp]);base64,)?"
    "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}
# Pixel arrays are checked with numpy in app.jobs.images (one clear message per item).
_PIXELS_ROW = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 28}
_PIXELS_SCHEMA = {"type": "array", "items": {**_PIXELS_ROW, "maxItems": 28}, "minItems": 28, "maxItems": 28}
Pixels = Annotated[Any, WithJsonSchema(_PIXELS_SCHEMA)]
# A label's length is checked in app.api.routes.exemplars (a 422 `invalid-image` naming the item).
_LABEL_SCHEMA = {
    "anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS}, {"type": "integer"}],
    "description": f"class label, 1 to {MAX_LABEL_CHARS} characters (numbers are taken as strings)",
}
Label = Annotated[Text | Annotated[int, Strict()], WithJsonSchema(_LABEL_SCHEMA)]


class ImageItem(BaseModel):
    """One drawing: a base64 PNG, JPEG or WebP (any size, grey or colour; bare or as a data URL) or
    28 x 28 numbers in [0, 1] (1 = ink); see docs/drawings.md."""

    # Exactly one of the two (app.jobs.images refuses both and neither with a 422 naming the item).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["pixels"]}]}
    )

    image: Annotated[Text | None, WithJsonSchema(_PNG_SCHEMA)] = Field(
        None, description="base64 PNG, JPEG or WebP, bare or as a data: URL"
    )
    pixels: Pixels = Field(None, description="28 x 28 numbers in [0, 1], 1 = ink")


class ExemplarItem(ImageItem):
    label: Label


def _all_given(*names: str) -> dict[str, Any]:
    """JSON Schema: every one of `names` is given and not null."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


_IMPORTANCE_WITHOUT_SAMPLES: dict[str, Any] = {
    "required": ["method", "samples"],
    "properties": {"method": {"const": "importance"}, "samples": {"const": 0}},
}


class AddExemplars(BaseModel):
    """`POST /v1/sessions/{sid}/exemplars`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"exemplars": [{"image": EXAMPLE_PNG, "label": "f"}]}]},
    )

    exemplars: list[ExemplarItem] = Field(min_length=1, description="at most 256 per request")


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


class SampleRequest(BaseModel):
    """`POST /v1/sessions/{sid}/samples`: a ~ p(a|M) (or among one label's / one exemplar), z, x."""

    # A label or an exemplar, not both (app.api.routes.vma refuses both with a 422).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": _all_given("label", "exemplar_id"),
            "examples": [{"n": 8, "label": "a", "seed": 7}, {"n": 2, "format": "probs"}],
        },
    )

    n: Annotated[int, Strict()] = Field(8, ge=1, le=64, description="number of samples")
    label: Label | None = Field(None, description="sample from the exemplars of this label only")
    exemplar_id: Count | None = Field(None, description="sample from this exemplar only")
    seed: Count | None = Field(None, description="the same seed gives the same samples")
    format: Literal["png", "probs"] = Field("png", description="base64 PNG or 28 x 28 ink probabilities")


class Sample(BaseModel):
    exemplar_id: int = Field(description="the memory entry the sample was drawn from")
    label: str
    image: str | None = Field(None, description="base64 PNG, dark ink on white (format png)")
    probs: list[list[float]] | None = Field(None, description="28 x 28 ink probabilities (format probs)")


class SampleResponse(BaseModel):
    samples: list[Sample]
    seed: int = Field(description="pass it again to get the same samples")


class ClassifyRequest(BaseModel):
    """`POST /v1/sessions/{sid}/classify`."""

    # The importance method weighs decoder samples: `samples: 0` with it is a 422 (app.api.routes.vma).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": _IMPORTANCE_WITHOUT_SAMPLES,
            "examples": [{"images": [{"image": EXAMPLE_PNG}], "top_k": 3}],
        },
    )

    images: list[ImageItem] = Field(min_length=1, description="at most 64 drawings")
    method: Literal["posterior", "importance"] = Field(
        "posterior", description="p(c|x) from q(a|x) alone, or importance-weighted with the decoder"
    )
    samples: Annotated[int, Strict()] | None = Field(
        None,
        ge=0,
        le=256,
        description="decoder evaluations per image for the likelihood bound and novelty flag (and the "
        "importance scores); 0: addressing only. Default: 1 (posterior), 16 (importance)",
    )
    top_k: Annotated[int, Strict()] = Field(5, ge=1, le=64, description="top addresses to report")
    seed: Count | None = Field(None, description="seed of the z samples")


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


class TenantInfo(BaseModel):
    """Who the key acts for, its limits and what it uses of them (0: unlimited)."""

    tenant: str = Field(description='the key\'s tenant; "" when authentication is off')
    auth: Literal["keys", "off"]
    max_sessions: int
    live_sessions: int | None = Field(description="counted for the limit; null when there is none")
    rate_per_s: float
    burst: int


class SessionSummary(BaseModel):
    """One session in `GET /v1/sessions`."""

    id: str
    kind: Literal["memnet", "vma"]
    model: str
    model_version: str
    created: str = Field(description="when the session was made (ISO 8601, UTC)")
    ttl_s: int = Field(description="idle seconds before the session expires")
    expires_in_s: int = Field(description="seconds until it expires unless used (every use slides it)")
    capacity: int = Field(description="MemNet: memory slots; VMA: exemplars at most")
    input_dim: int
    step: int | None = Field(description="MemNet: points applied so far (the next chunk's seq); null for VMA")
    exemplars: int | None = Field(description="VMA: exemplars in memory; null for MemNet")


class SessionList(BaseModel):
    """A page of the caller's live sessions, newest first."""

    sessions: list[SessionSummary]
    total: int = Field(description="the caller's live sessions in all")
    offset: int
    limit: int


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (`application/problem+json`). Problems may carry more
    members than these (`expected_seq`, `errors`, `max_points`, `retry_after_ms`, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="the problem type, stable: https://memserve.dev/problems/<slug> (about:blank for a "
        "bare 500)"
    )
    title: str = Field(description="a short summary of the problem type")
    status: int = Field(description="the HTTP status code")
    detail: str | None = Field(None, description="what is wrong with this request, in words")
    instance: str | None = Field(None, description="the path of the request")
    request_id: str | None = Field(None, description="the request's X-Request-ID: quote it to the operator")
