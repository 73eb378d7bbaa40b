"""What the sync and async clients share: the reply types, the errors, one definition of each
request (`Call`) and of its reply parsing, and the retry policy.

Nothing here does I/O: `Client` and `AsyncClient` (memserve.client) send the calls and sleep.
"""

from __future__ import annotations

import base64
import email.utils
import io
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

T = TypeVar("T")
PROBLEM_BASE = "https://memserve.dev/problems/"
SESSION_MEDIA_TYPE = "application/vnd.memserve.session"
MAX_BACKOFF_S = 10.0

ImageLike = bytes | str | os.PathLike[str] | np.ndarray
"""A drawing: PNG bytes, the path of an image file, or a 28 x 28 array in [0, 1] (1 = ink)."""


# ----------------------------------------------------------------------------- errors
class ProblemError(Exception):
    """A non-2xx reply, from its RFC 9457 problem+json body when it has one.

    `type` is the problem type URI, `slug` its last part (``session-not-found``), `extra` the
    body's other members (``expected_seq``, ``errors``, ``max_points``, ...). `retry_after` is in
    seconds (``Retry-After`` or ``retry_after_ms``), None when the server gave none.
    """

    def __init__(
        self, status: int, type: str, title: str, detail: str, request_id: str | None = None,
        extra: dict[str, Any] | None = None, retry_after: float | None = None, problem: bool = True,
    ) -> None:  # fmt: skip
        self.status = status
        self.type = type
        self.slug = type.removeprefix(PROBLEM_BASE) if type.startswith(PROBLEM_BASE) else ""
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.extra = extra or {}
        self.retry_after = retry_after
        self.problem = problem  # False: the body was not problem+json (a proxy, a bare 500)
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.status} {self.slug or self.type}: {self.title}"
        text = f"{head}: {self.detail}" if self.detail else head
        return f"{text} (request_id {self.request_id})" if self.request_id else text


class InvalidRequest(ProblemError):
    """400 or 422: a malformed body, invalid values or images (`extra["errors"]`)."""


class Unauthorized(ProblemError):
    """401: no API key, or an unknown one."""


class NotFound(ProblemError):
    """404: unknown (or expired, or another tenant's) session, model, exemplar, label or route."""


class Conflict(ProblemError):
    """409: seq-conflict (`expected_seq`), wrong-session-kind, empty-memory, capacity-reached, ..."""

    @property
    def expected_seq(self) -> int | None:
        """seq-conflict: the session's step, where the next chunk must start."""
        value = self.extra.get("expected_seq")
        return None if value is None else int(value)


class PayloadTooLarge(ProblemError):
    """413: too many points, exemplars or images, or too large a body."""


class RateLimited(ProblemError):
    """429: rate-limited, queue-full or session-limit; `retry_after` says when to retry."""


class Unavailable(ProblemError):
    """503: Redis unreachable or full, no worker with the model."""


class GatewayTimeout(ProblemError):
    """504: no worker answered in time (a points chunk may still be applied: retry with the same seq)."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: InvalidRequest, 429: RateLimited, 503: Unavailable, 504: GatewayTimeout,
}  # fmt: skip


def _retry_after(resp: httpx.Response, body: dict[str, Any]) -> float | None:
    ms = body.get("retry_after_ms")
    if isinstance(ms, int | float):
        return float(ms) / 1000.0
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def problem(resp: httpx.Response) -> ProblemError:
    """The error a non-2xx reply stands for."""
    body: dict[str, Any] = {}
    is_problem = resp.headers.get("content-type", "").startswith("application/problem+json")
    try:
        parsed = resp.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        is_problem = False
    known = ("type", "title", "status", "detail", "request_id")
    extra = {k: v for k, v in body.items() if k not in known}  # instance, expected_seq, errors, ...
    cls = _BY_STATUS.get(resp.status_code, ProblemError)
    return cls(
        resp.status_code, str(body.get("type", "about:blank")),
        str(body.get("title") or resp.reason_phrase),
        str(body.get("detail", "" if body else resp.text[:300])),
        body.get("request_id") or resp.headers.get("x-request-id"), extra, _retry_after(resp, body),
        is_problem,
    )  # fmt: skip


# ----------------------------------------------------------------------------- reply types
@dataclass(frozen=True)
class SessionInfo:
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
    step: int  # MemNet: points applied so far, the next chunk's seq
    version: int  # increments with every change of the session's memory
    memory_bytes: int
    exemplars: int = 0  # VMA: exemplars in memory

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionInfo:
        ints = ("ttl_s", "expires_in_s", "capacity", "input_dim", "step", "version", "memory_bytes")
        return cls(
            id=str(d["id"]), kind=str(d.get("kind", "")), model=str(d.get("model", "")),
            model_version=str(d.get("model_version", "")), created=str(d.get("created", "")),
            **{k: int(d.get(k) or 0) for k in ints}, exemplars=int(d.get("exemplars") or 0),
        )  # fmt: skip


@dataclass(frozen=True)
class SessionPage:
    """A page of the caller's sessions (`GET /v1/sessions`); `raw` is the body as sent."""

    sessions: list[SessionInfo]
    total: int | None
    offset: int
    limit: int
    raw: dict[str, Any]


@dataclass(frozen=True)
class Anomaly:
    """A point outside the 99 % interval of the prediction the session made for it."""

    index: int  # position in the chunk
    seq: int  # position in the session's stream
    dim: int
    scales: float  # (value - prediction) / predicted std


Bounds = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PointsReply:
    """The reply to one chunk of T points of dimension D.

    `intervals` and `forecast_intervals` map a level (``95``; float keys, so ``[95]`` works) to
    (lower, upper) arrays shaped like `predictions` (T, D) and `forecast` (horizon, D); they are
    empty unless levels were asked for. `anomalies` is None for a model without a predictive scale.
    """

    seq: int
    step: int
    predictions: np.ndarray
    forecast: np.ndarray | None
    intervals: dict[float, Bounds]
    forecast_intervals: dict[float, Bounds]
    anomalies: list[Anomaly] | None
    repeat: bool


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    version: str
    latest: bool
    workers: list[str]
    on_disk: bool
    card: dict[str, Any]


@dataclass(frozen=True)
class ModelList:
    """Every version of every model (`GET /v1/models`) and the version new sessions get."""

    models: list[ModelEntry]
    latest: dict[str, str]


@dataclass(frozen=True)
class TenantInfo:
    tenant: str
    auth: str
    max_sessions: int
    live_sessions: int | None
    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class Health:
    """`/health/live` and `/health/ready` together."""

    live: bool
    ready: bool
    redis: bool
    models: list[str]
    workers: list[dict[str, Any]]
    reasons: list[str]


@dataclass(frozen=True)
class AddedExemplars:
    ids: list[int]
    count: int
    version: int


@dataclass(frozen=True)
class Exemplar:
    id: int
    label: str
    image: bytes | None = None  # the stored 28 x 28 drawing as PNG, when asked for


@dataclass(frozen=True)
class ExemplarPage:
    exemplars: list[Exemplar]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class Sample:
    exemplar_id: int
    label: str
    image: bytes | None = None  # PNG, dark ink on white (format "png")
    probs: np.ndarray | None = None  # 28 x 28 ink probabilities (format "probs")

    def array(self) -> np.ndarray:
        """The sample as a 28 x 28 float array in [0, 1], 1 = ink."""
        if self.probs is not None:
            return self.probs
        assert self.image is not None
        return png_to_ink(self.image)


@dataclass(frozen=True)
class SampleSet:
    samples: list[Sample]
    seed: int  # pass it again (with the same temperature and anchor) to get the same samples
    temperature: float | None = None  # what they were drawn at; None from a server that predates it
    anchor: float | None = None  # likewise

    def arrays(self) -> np.ndarray:
        """All samples as one (n, 28, 28) float array in [0, 1], 1 = ink."""
        return np.stack([s.array() for s in self.samples])

    def pngs(self) -> list[bytes]:
        """The samples' PNGs (format "png")."""
        return [s.image for s in self.samples if s.image is not None]


@dataclass(frozen=True)
class AddressScore:
    exemplar_id: int
    label: str
    p: float


@dataclass(frozen=True)
class Classification:
    label: str
    scores: dict[str, float]
    top: list[AddressScore]
    kl_nats: float
    log_likelihood_nats: float | None
    novel: bool | None


@dataclass(frozen=True)
class ClassifyReply:
    method: str
    samples: int
    results: list[Classification]


# ----------------------------------------------------------------------------- parsing
def _arr(rows: Any) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def _bounds(d: dict[str, Any] | None) -> dict[float, Bounds]:
    return {float(k): (_arr(v["lower"]), _arr(v["upper"])) for k, v in (d or {}).items()}


def parse_points(d: dict[str, Any]) -> PointsReply:
    anomalies = d.get("anomalies")
    return PointsReply(
        seq=int(d["seq"]), step=int(d["step"]), predictions=_arr(d["predictions"]),
        forecast=None if d.get("forecast") is None else _arr(d["forecast"]),
        intervals=_bounds(d.get("intervals")), forecast_intervals=_bounds(d.get("forecast_intervals")),
        anomalies=None if anomalies is None else [
            Anomaly(int(a["index"]), int(a["seq"]), int(a["dim"]), float(a["scales"])) for a in anomalies
        ],
        repeat=bool(d.get("repeat", False)),
    )  # fmt: skip


def parse_session_page(d: dict[str, Any], offset: int, limit: int) -> SessionPage:
    items = d.get("sessions", d.get("items", []))
    total = d.get("total")
    return SessionPage(
        [SessionInfo.from_json(s) for s in items], None if total is None else int(total),
        int(d.get("offset", offset)), int(d.get("limit", limit)), d,
    )  # fmt: skip


def parse_models(d: dict[str, Any]) -> ModelList:
    models = [
        ModelEntry(m["name"], m["kind"], str(m["version"]), bool(m["latest"]), list(m.get("workers", [])),
                   bool(m.get("on_disk", True)), dict(m.get("card", {})))
        for m in d["models"]
    ]  # fmt: skip
    return ModelList(models, dict(d.get("latest", {})))


def parse_tenant(d: dict[str, Any]) -> TenantInfo:
    live = d.get("live_sessions")
    return TenantInfo(
        str(d["tenant"]), str(d["auth"]), int(d["max_sessions"]), None if live is None else int(live),
        float(d["rate_per_s"]), int(d["burst"]),
    )  # fmt: skip


def parse_health(live: bool, d: dict[str, Any]) -> Health:
    return Health(
        live, d.get("status") == "ready", bool(d.get("redis", False)), list(d.get("models", [])),
        list(d.get("workers", [])), list(d.get("reasons", [])),
    )  # fmt: skip


def parse_exemplar_page(d: dict[str, Any]) -> ExemplarPage:
    entries = [
        Exemplar(
            int(e["id"]), str(e["label"]), None if e.get("image") is None else base64.b64decode(e["image"])
        )
        for e in d["exemplars"]
    ]
    return ExemplarPage(entries, int(d["total"]), int(d["offset"]), int(d["limit"]))


def parse_samples(d: dict[str, Any]) -> SampleSet:
    samples = [
        Sample(
            int(s["exemplar_id"]),
            str(s["label"]),
            None if s.get("image") is None else base64.b64decode(s["image"]),
            None if s.get("probs") is None else _arr(s["probs"]),
        )
        for s in d["samples"]
    ]
    temperature = None if d.get("temperature") is None else float(d["temperature"])
    anchor = None if d.get("anchor") is None else float(d["anchor"])
    return SampleSet(samples, int(d["seed"]), temperature, anchor)


def parse_classify(d: dict[str, Any]) -> ClassifyReply:
    results = [
        Classification(
            str(r["label"]),
            {str(k): float(v) for k, v in r["scores"].items()},
            [AddressScore(int(t["exemplar_id"]), str(t["label"]), float(t["p"])) for t in r["top"]],
            float(r["kl_nats"]),
            None if r.get("log_likelihood_nats") is None else float(r["log_likelihood_nats"]),
            None if r.get("novel") is None else bool(r["novel"]),
        )
        for r in d["results"]
    ]
    return ClassifyReply(str(d["method"]), int(d["samples"]), results)


def png_to_ink(png: bytes) -> np.ndarray:
    """A PNG drawing (dark ink on light) as a float array in [0, 1] with 1 = ink."""
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return 1.0 - grey / 255.0


def image_item(image: ImageLike) -> dict[str, Any]:
    """One drawing as the API takes it: ``image`` (base64 PNG) or ``pixels`` (28 x 28 in [0, 1])."""
    if isinstance(image, bytes | bytearray | memoryview):
        return {"image": base64.b64encode(bytes(image)).decode("ascii")}
    if isinstance(image, str | os.PathLike):
        return {"image": base64.b64encode(Path(image).read_bytes()).decode("ascii")}
    return {"pixels": np.asarray(image, dtype=np.float64).tolist()}


def image_items(images: ImageLike | Sequence[ImageLike]) -> list[dict[str, Any]]:
    """One drawing, a sequence of them, or an (N, 28, 28) array, as a list of items."""
    if isinstance(images, np.ndarray):
        return [image_item(images)] if images.ndim == 2 else [image_item(i) for i in images]
    if isinstance(images, bytes | str | os.PathLike):
        return [image_item(images)]
    return [image_item(i) for i in images]


# ----------------------------------------------------------------------------- calls
Retry = Literal["seq", "read", "refusal", "none"]
"""When a call is sent again.

seq, read: on any transport error (connection refused or dropped, read timeout) and on 429, 503
  and 504; points with a seq (the server answers a repeat of the last chunk exactly once), GETs,
  samples and classify (they change nothing).
refusal: only when nothing can have been done: a connection that was never made, or a 429 or 503
  problem+json refusal (a refused request changes nothing); create, import, fork, add, delete.
none: never.
"""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its reply."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    retry: Retry
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    accept: tuple[int, ...] = ()  # non-2xx statuses whose body is a reply, not an error


def _sid(sid: str) -> str:
    return quote(str(sid), safe="")


def _json(parse: Callable[[dict[str, Any]], T]) -> Callable[[httpx.Response], T]:
    return lambda r: parse(r.json())


def _none(_: httpx.Response) -> None:
    return None


def _session(r: httpx.Response) -> SessionInfo:
    return SessionInfo.from_json(r.json())


def _compact(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def create_session(
    kind: str, model: str | None, ttl_s: int | None, capacity: int | None
) -> Call[SessionInfo]:
    body = _compact(kind=kind, model=model, ttl_s=ttl_s, capacity=capacity)
    return Call("POST", "/v1/sessions", _session, "refusal", json=body)


def get_session(sid: str) -> Call[SessionInfo]:
    return Call("GET", f"/v1/sessions/{_sid(sid)}", _session, "read")


def list_sessions(offset: int, limit: int) -> Call[SessionPage]:
    params = {"offset": offset, "limit": limit}
    return Call("GET", "/v1/sessions", _json(lambda d: parse_session_page(d, offset, limit)), "read", params)


def delete_session(sid: str) -> Call[None]:
    return Call("DELETE", f"/v1/sessions/{_sid(sid)}", _none, "refusal")


def export_session(sid: str) -> Call[bytes]:
    return Call("GET", f"/v1/sessions/{_sid(sid)}/export", lambda r: r.content, "read")


def import_session(data: bytes, ttl_s: int | None) -> Call[SessionInfo]:
    return Call(
        "POST", "/v1/sessions/import", _session, "refusal", params=_compact(ttl_s=ttl_s), content=bytes(data),
        headers={"content-type": SESSION_MEDIA_TYPE},
    )  # fmt: skip


def fork_session(sid: str) -> Call[SessionInfo]:
    return Call("POST", f"/v1/sessions/{_sid(sid)}/fork", _session, "refusal")


def models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _json(parse_models), "read")


def tenant() -> Call[TenantInfo]:
    return Call("GET", "/v1/tenant", _json(parse_tenant), "read")


def live() -> Call[bool]:
    return Call("GET", "/health/live", lambda r: r.json().get("status") == "ok", "read")


def ready(is_live: bool) -> Call[Health]:
    return Call("GET", "/health/ready", _json(lambda d: parse_health(is_live, d)), "none", accept=(503,))


def values_json(values: Any) -> list[Any]:
    """A chunk as the API takes it: T x D numbers, or T numbers when D = 1."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(f"values must be T or T x D numbers with T >= 1, not of shape {arr.shape}")
    out: list[Any] = arr.tolist()
    return out


def points(
    sid: str, values: Any, seq: int | None, horizon: int, level: Iterable[float] | None
) -> Call[PointsReply]:
    body: dict[str, Any] = {"values": values_json(values), "horizon": horizon}
    if seq is not None:
        body["seq"] = seq
    if level is not None:
        body["level"] = [float(x) for x in level]
    retry: Retry = "seq" if seq is not None else "refusal"  # without seq a retry would append twice
    return Call("POST", f"/v1/sessions/{_sid(sid)}/points", _json(parse_points), retry, json=body)


def add_exemplars(sid: str, items: Iterable[tuple[ImageLike, str | int]]) -> Call[AddedExemplars]:
    exemplars = [{**image_item(img), "label": label} for img, label in items]
    parse = _json(lambda d: AddedExemplars([int(i) for i in d["ids"]], int(d["count"]), int(d["version"])))
    return Call(
        "POST", f"/v1/sessions/{_sid(sid)}/exemplars", parse, "refusal", json={"exemplars": exemplars}
    )


def list_exemplars(sid: str, offset: int, limit: int, images: bool) -> Call[ExemplarPage]:
    params = {"offset": offset, "limit": limit, "images": "true" if images else "false"}
    return Call("GET", f"/v1/sessions/{_sid(sid)}/exemplars", _json(parse_exemplar_page), "read", params)


def delete_exemplar(sid: str, eid: int) -> Call[None]:
    return Call("DELETE", f"/v1/sessions/{_sid(sid)}/exemplars/{int(eid)}", _none, "refusal")


def samples(
    sid: str, n: int, label: str | int | None, exemplar_id: int | None, seed: int | None, format: str,
    temperature: float | None = None, anchor: float | None = None,
) -> Call[SampleSet]:  # fmt: skip
    body = _compact(n=n, label=label, exemplar_id=exemplar_id, seed=seed, format=format)
    body.update(_compact(temperature=temperature, anchor=anchor))
    return Call("POST", f"/v1/sessions/{_sid(sid)}/samples", _json(parse_samples), "read", json=body)


def classify(
    sid: str, images: ImageLike | Sequence[ImageLike], method: str | None, samples: int | None,
    top_k: int | None, seed: int | None,
) -> Call[ClassifyReply]:  # fmt: skip
    body = {"images": image_items(images), **_compact(method=method, samples=samples, top_k=top_k, seed=seed)}
    return Call("POST", f"/v1/sessions/{_sid(sid)}/classify", _json(parse_classify), "read", json=body)


# ----------------------------------------------------------------------------- retries
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def backoff(attempt: int, backoff_s: float) -> float:
    """Exponential backoff with jitter: about backoff_s * 2**attempt, at most MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, backoff_s * 2**attempt) * (0.5 + random.random() / 2)


def retry_transport(
    call: Call[Any], exc: httpx.TransportError, attempt: int, backoff_s: float
) -> float | None:
    """Seconds to wait before sending `call` again after `exc`, or None: raise it."""
    if call.retry in ("seq", "read") or (call.retry == "refusal" and isinstance(exc, _UNSENT)):
        return backoff(attempt, backoff_s)
    return None


def retry_problem(
    call: Call[Any], err: ProblemError, attempt: int, backoff_s: float, max_wait_s: float
) -> float | None:
    """Seconds to wait before sending `call` again after `err`, or None: raise it.

    A ``Retry-After`` (or ``retry_after_ms``) is honoured; one longer than `max_wait_s` (a session
    limit that lasts until a session expires) is raised at once.
    """
    if call.retry in ("seq", "read"):
        wanted = err.status in (429, 503, 504)
    elif call.retry == "refusal":
        wanted = err.status in (429, 503) and err.problem
    else:
        wanted = False
    if not wanted:
        return None
    if err.retry_after is not None:
        return err.retry_after if err.retry_after <= max_wait_s else None
    return backoff(attempt, backoff_s)
