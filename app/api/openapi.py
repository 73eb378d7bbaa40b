"""The OpenAPI document: every /v1 operation's problem+json errors and the bearer key.

FastAPI documents what it can see: response models, parameters, and a 422 of its own
(`HTTPValidationError`) that this service never sends. `install_openapi` post-processes the
generated document once: each /v1 operation gets the errors it can answer with, under
`application/problem+json` with the `Problem` schema (FastAPI's 422 is replaced), and the HTTP
bearer security scheme. Which errors a route has is listed here, by method and path, on top of
what every /v1 route shares; a /v1 route not listed still gets the shared ones and those its
parameters and body imply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from app.api.schemas import Problem
from app.errors import BY_SLUG, PROBLEM_BASE

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
    ("get", "/v1/sessions/{sid}/export"): _SESSION,
    ("post", "/v1/sessions/import"): {
        404: ("model-not-found",),
        409: ("model-version-mismatch", "backup-kind-mismatch"),
        422: ("invalid-backup", "unsupported-backup-version"),
        429: ("session-limit",),
    },
    ("post", "/v1/sessions/{sid}/fork"): {**_SESSION, 429: ("session-limit",)},
    ("get", "/v1/tenant"): {},
    ("get", "/v1/models"): {},
}

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


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
    return {
        "description": "; ".join(f"`{slug}`: {_title(slug)}" for slug in slugs),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF + "Problem"}, "examples": examples}},
    }


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


def install_openapi(app: FastAPI) -> None:
    """Serve `document_problems` of FastAPI's document at `app.openapi_url` (built once)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
