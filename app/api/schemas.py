"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
)
from pydantic_core import PydanticCustomError, core_schema

from app import registry

INT64_MAX = 2**63 - 1  # what Redis, the job wire format and the stored state can hold
INT32_MAX = 2**31 - 1  # a session's TTL and capacity, as stored


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


def _served_kind(value: Any) -> str:
    if isinstance(value, str) and registry.get(value) is not None:
        return value
    served = [repr(name) for name in registry.names()]
    expected = " or ".join([", ".join(served[:-1]), served[-1]] if len(served) > 1 else served)
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


class _ServedKind:
    """A kind the registry lists, as a `Literal` of them would be checked and documented; read
    when asked, so that a kind registered after this module was imported is one too."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(_served_kind)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"enum": list(registry.names()), "type": "string"}


KindName = Annotated[str, _ServedKind()]


class CreateSession(BaseModel):
    """`POST /v1/sessions`."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "memnet", "ttl_s": 3600}, {"kind": "vma"}]}
    )

    kind: KindName
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
    kind: KindName
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
