"""The OpenAPI document: every /v1 operation's problem+json errors and the bearer key.

FastAPI documents what it can see: response models, parameters, and a 422 of its own
(`HTTPValidationError`) that this service never sends. `install_openapi` post-processes the
generated document once: each /v1 operation gets the errors it can answer with, under
`application/problem+json` with the `Problem` schema (FastAPI's 422 is replaced), and the HTTP
bearer security scheme. Which errors a route has is listed here, by method and path, on top of
what every /v1 route shares; a /v1 route not listed still gets the shared ones and those its
parameters and body imply.

The document also says the limits this process enforces and that depend on its settings and
models (`document_limits`: the longest TTL, a VMA session's largest capacity and a MemNet
model's fixed one, the forecast horizon, items per request), gives integer bounds exactly (FastAPI
writes them as floats, and 2^63 - 1 as a float is 2^63), and links each session-creating response
to the operations that take its id (OpenAPI links), so that the contract a client or a fuzzer reads
is the one the service applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from app import registry
from app.api.schemas import INT32_MAX, INT64_MAX, Problem
from app.catalog import Catalog
from app.config import Settings
from app.errors import BY_SLUG, PROBLEM_BASE
from app.registry import CapacityDoc

PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER = "bearerAuth"
_REF = "#/components/schemas/"

Slugs = dict[int, tuple[str, ...]]  # status -> problem slugs

# Every /v1 operation: the key is checked and counted (401, 429), Redis may be down or full (503).
SHARED: Slugs = {
    401: ("unauthorized",),
    429: ("rate-limited",),
    503: ("redis-unavailable", "store-full"),
}

_JOB: Slugs = {429: ("queue-full",), 503: ("model-unavailable",), 504: ("timeout",)}  # a worker answers
_SESSION: Slugs = {404: ("session-not-found",)}

# (method, path) -> status -> problem slugs, beyond SHARED and what the parameters and body imply.
ROUTES: dict[tuple[str, str], Slugs] = {
    ("post", "/v1/sessions"): {404: ("model-not-found",), 429: ("session-limit",)},
    ("get", "/v1/sessions"): {},
    ("get", "/v1/sessions/{sid}"): _SESSION,
    ("delete", "/v1/sessions/{sid}"): _SESSION,
    ("post", "/v1/sessions/{sid}/points"): {
        **_SESSION,
        **_JOB,
        409: ("seq-conflict", "wrong-session-kind"),
        422: ("invalid-input",),
    },
    ("post", "/v1/sessions/{sid}/exemplars"): {
        **_SESSION,
        **_JOB,
        409: ("wrong-session-kind", "capacity-reached"),
        422: ("invalid-image",),
    },
    ("get", "/v1/sessions/{sid}/exemplars"): {**_SESSION, 409: ("wrong-session-kind",)},
    ("delete", "/v1/sessions/{sid}/exemplars/{eid}"): {
        404: ("session-not-found", "exemplar-not-found"),
        409: ("wrong-session-kind",),
    },
    ("post", "/v1/sessions/{sid}/samples"): {
        **_JOB,
        404: ("session-not-found", "label-not-found", "exemplar-not-found"),
        409: ("wrong-session-kind", "empty-memory"),
    },
    ("post", "/v1/sessions/{sid}/classify"): {
        **_SESSION,
        **_JOB,
        409: ("wrong-session-kind", "empty-memory"),
        422: ("invalid-image",),
    },
    # wrong-session-kind: a kind that declares no backup (app.registry.BackupRules)
    ("get", "/v1/sessions/{sid}/export"): {**_SESSION, 409: ("wrong-session-kind",)},
    ("post", "/v1/sessions/import"): {
        404: ("model-not-found",),
        409: ("model-version-mismatch", "backup-kind-mismatch", "wrong-session-kind"),
        422: ("invalid-backup", "unsupported-backup-version"),
        429: ("session-limit",),
    },
    ("post", "/v1/sessions/{sid}/fork"): {**_SESSION, 429: ("session-limit",)},
    ("get", "/v1/tenant"): {},
    ("get", "/v1/models"): {},
}

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# Response headers the service sets, and the problems that always carry them.
HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "whole seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "the scheme to authenticate with: `Bearer`",
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
    "Location": {"description": "the path of the new session", "schema": {"type": "string"}},
}
_HEADERS_OF: dict[str, tuple[str, ...]] = {
    "unauthorized": ("WWW-Authenticate",),
    "rate-limited": ("Retry-After",),
    "queue-full": ("Retry-After",),
    "session-limit": ("Retry-After",),
    "redis-unavailable": ("Retry-After",),
    "store-full": ("Retry-After",),
}


def _has_json_body(op: dict[str, Any]) -> bool:
    content = op.get("requestBody", {}).get("content", {})
    return any(t == "application/json" or t.endswith("+json") for t in content)


def _can_fail_validation(op: dict[str, Any]) -> bool:
    """A body, a query parameter or a path parameter that is not any string: FastAPI may refuse it."""
    if "requestBody" in op:
        return True
    for param in op.get("parameters", []):
        schema = param.get("schema", {})
        if param.get("in") != "path" or schema.get("type") != "string" or len(schema) > 2:
            return True
    return False


def statuses_of(method: str, path: str, op: dict[str, Any]) -> dict[int, list[str]]:
    """Status -> problem slugs that the /v1 operation may answer with."""
    out: dict[int, list[str]] = {status: list(slugs) for status, slugs in SHARED.items()}

    def add(status: int, slugs: Iterable[str]) -> None:
        have = out.setdefault(status, [])
        have.extend(s for s in slugs if s not in have)

    if "{sid}" in path:
        add(404, ("session-not-found",))
    if _can_fail_validation(op):
        add(422, ("invalid-request",))
    if "requestBody" in op:
        add(413, ("payload-too-large",))  # MEMSERVE_MAX_BODY_BYTES, and per-route counts
    if _has_json_body(op):
        add(415, ("unsupported-media-type",))
    for status, slugs in ROUTES.get((method, path), {}).items():
        add(status, slugs)
    return dict(sorted(out.items()))


def _title(slug: str) -> str:
    cls = BY_SLUG.get(slug)
    return cls.title if cls is not None else slug


def problem_response(status: int, slugs: list[str]) -> dict[str, Any]:
    """An OpenAPI response object: the Problem schema, one example per problem type."""
    examples = {
        slug: {
            "summary": _title(slug),
            "value": {
                "type": PROBLEM_BASE + slug, "title": _title(slug), "status": status,
                "detail": "what is wrong with this request, in words", "instance": "/v1/...",
                "request_id": "5f0c9a...",
            },
        }
        for slug in slugs
    }  # fmt: skip
    response: dict[str, Any] = {
        "description": "; ".join(f"`{slug}`: {_title(slug)}" for slug in slugs),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF + "Problem"}, "examples": examples}},
    }
    headers = {name for slug in slugs for name in _HEADERS_OF.get(slug, ())}
    if headers:
        response["headers"] = {
            name: {**HEADERS[name], "required": all(name in _HEADERS_OF.get(slug, ()) for slug in slugs)}
            for name in sorted(headers)
        }
    return response


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (FastAPI's document) with the problems and the bearer scheme of every /v1 operation."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template=_REF + "{model}")
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (`memserve keys new TENANT`) as `Authorization: Bearer <key>`; "
        "ignored when the service runs with authentication off",
    }
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            if not path.startswith("/v1/") and path != "/v1":
                continue
            responses.pop("422", None)  # FastAPI's HTTPValidationError: never sent
            for status, slugs in statuses_of(method, path, op).items():
                responses[str(status)] = problem_response(status, slugs)
            op["responses"] = dict(sorted(responses.items()))
            op["security"] = [{BEARER: []}]
    # FastAPI's validation schemas, once no operation refers to them any more.
    if _REF + "HTTPValidationError" not in set(_refs(schema.get("paths", {}))):
        schemas.pop("HTTPValidationError", None)
        if _REF + "ValidationError" not in set(_refs(schema.get("paths", {}))):
            schemas.pop("ValidationError", None)
    return schema


# ----------------------------------------------------------------------------- exact integers
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def exact_integer_bounds(node: Any) -> None:
    """Integer bounds as JSON integers again, in place. FastAPI's document models hold them as
    floats, which cannot hold 2^63 - 1: it comes out as 2^63, one past what the service takes."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = INT64_MAX if value == float(INT64_MAX) else int(value)
        for child in node.values():
            exact_integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            exact_integer_bounds(child)


# ----------------------------------------------------------------------------- served limits
@dataclass(frozen=True)
class Limits:
    """What bounds request fields beyond the request models' own constraints: this process'
    settings and the models it serves (which change with hot reload)."""

    max_ttl_s: int
    capacities: tuple[tuple[str, CapacityDoc], ...]  # per kind, the capacities its sessions take
    models: tuple[tuple[str, str], ...]  # (name, kind) of every model new sessions may name
    max_horizon: int
    max_points_per_request: int
    max_exemplars_per_request: int
    max_images_per_request: int

    @classmethod
    def of(cls, settings: Settings, catalog: Catalog) -> Limits:
        capacities = tuple(
            (k.name, k.sessions().capacity_doc(settings, [m for m in catalog.values() if m.kind == k.name]))
            for k in registry.kinds()
        )
        return cls(
            max_ttl_s=min(settings.max_ttl_s, INT32_MAX),
            capacities=capacities,
            models=tuple(sorted((m.name, m.kind) for m in catalog.values())),
            max_horizon=min(settings.max_horizon, INT64_MAX),
            max_points_per_request=settings.max_points_per_request,
            max_exemplars_per_request=settings.max_exemplars_per_request,
            max_images_per_request=settings.max_images_per_request,
        )


def _integer(prop: dict[str, Any]) -> dict[str, Any]:
    """The integer schema of a property (`X | None` is an anyOf with null)."""
    if prop.get("type") == "integer":
        return prop
    return next(branch for branch in prop.get("anyOf", []) if branch.get("type") == "integer")


def _at_most(schema: dict[str, Any], most: int) -> None:
    schema["maximum"] = min(int(schema.get("maximum", most)), most)


def document_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """`schema` (in place, and returned) with the limits this process applies to requests."""
    models = schema.get("components", {}).get("schemas", {})
    create = models["CreateSession"]
    _at_most(_integer(create["properties"]["ttl_s"]), limits.max_ttl_s)
    capacity = create["properties"]["capacity"]
    _at_most(_integer(capacity), max([doc.most for _, doc in limits.capacities] + [1]))
    capacity["description"] = ". ".join(doc.text for _, doc in limits.capacities)
    # Per kind: the capacities it takes (its own rule, `SessionRules.capacity_doc`), and no model
    # of another kind (a 422; a name no model has is a 404).
    rules = []
    for kind, doc in limits.capacities:
        then: dict[str, Any] = {"capacity": {"anyOf": [doc.schema, {"type": "null"}]}}
        others = [name for name, of in limits.models if of != kind]
        if others:
            then["model"] = {"not": {"enum": others}}
        rules.append(
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": then},
            }
        )
    create["allOf"] = rules
    points = models["PointsRequest"]["properties"]
    _at_most(points["horizon"], limits.max_horizon)
    points["horizon"]["description"] = (
        f"forecast this many steps after the last point, at most {limits.max_horizon}"
    )
    points["values"]["maxItems"] = limits.max_points_per_request  # 413 past it
    for model, field, most in (
        ("AddExemplars", "exemplars", limits.max_exemplars_per_request),
        ("ClassifyRequest", "images", limits.max_images_per_request),
    ):
        prop = models[model]["properties"][field]
        prop["maxItems"] = most  # 413 past it
        prop["description"] = f"at most {most} per request"
    for param in schema["paths"]["/v1/sessions/import"]["post"].get("parameters", []):
        if param["name"] == "ttl_s":
            _at_most(_integer(param["schema"]), limits.max_ttl_s)
    return schema


# ----------------------------------------------------------------------------- links
_CREATED_BY = (("post", "/v1/sessions"), ("post", "/v1/sessions/import"), ("post", "/v1/sessions/{sid}/fork"))


def _link_name(op: dict[str, Any]) -> str:
    """`PostPoints` for the operation summarised "Post Points" (its function's name)."""
    return "".join(str(op.get("summary", op["operationId"])).title().split())


def document_links(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links and the `Location` of a new session, in place: the id in a 201 that made a
    session is the `sid` of every operation on a session, and an exemplar id that was added is the
    `eid` that deletes it."""
    paths = schema.get("paths", {})
    by_sid = [
        (_link_name(op), op["operationId"])
        for path, item in paths.items()
        if "{sid}" in path and "{eid}" not in path
        for method, op in item.items()
        if method in _METHODS and "operationId" in op
    ]
    for method, path in _CREATED_BY:
        created = paths.get(path, {}).get(method, {}).get("responses", {}).get("201")
        if created is None:
            continue
        created.setdefault("headers", {})["Location"] = {**HEADERS["Location"], "required": True}
        params = {"sid": "$response.body#/id"}
        created["links"] = {name: {"operationId": op_id, "parameters": params} for name, op_id in by_sid}
    added = paths.get("/v1/sessions/{sid}/exemplars", {}).get("post", {}).get("responses", {}).get("201")
    delete = paths.get("/v1/sessions/{sid}/exemplars/{eid}", {}).get("delete", {})
    if added is not None and "operationId" in delete:
        params = {"sid": "$request.path.sid", "eid": "$response.body#/ids/0"}
        added["links"] = {_link_name(delete): {"operationId": delete["operationId"], "parameters": params}}
    return schema


def _limits_of(app: FastAPI) -> Limits | None:
    """The limits of the running process; None before its services exist (no lifespan yet)."""
    services = getattr(app.state, "services", None)
    return None if services is None else Limits.of(services.settings, services.catalog)


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's document, post-processed (`document_problems`, `document_links`,
    `document_limits`), at `app.openapi_url`; built again only when the limits change (hot
    reload brought or removed a model)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    built_for: list[Limits | None] = []

    def openapi() -> dict[str, Any]:
        limits = _limits_of(app)
        if app.openapi_schema is None or built_for != [limits]:
            app.openapi_schema = None  # FastAPI's own builder returns its cached document otherwise
            doc = document_links(document_problems(generate()))
            if limits is not None:
                document_limits(doc, limits)
            exact_integer_bounds(doc)
            app.openapi_schema = doc
            built_for[:] = [limits]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
