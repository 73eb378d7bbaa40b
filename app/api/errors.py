"""The one mapping from exceptions to `application/problem+json` responses."""

from __future__ import annotations

import email.message
import json
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    InvalidRequest,
    MemserveError,
    MethodNotAllowed,
    NotFound,
    RedisUnavailable,
    StoreFull,
    UnsupportedMediaType,
)
from app.logs import current_request_id
from app.store.tenants import out_of_memory

log = logging.getLogger("memserve.api")

PROBLEM = "application/problem+json"
_BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's detail when json.loads raises


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A problem+json response; it names the request (``request_id``) so a client can quote it."""
    rid = current_request_id()
    if rid and "request_id" not in body:
        body = {**body, "request_id": rid}
    return Response(_encode(body), status_code=status, media_type=PROBLEM, headers=headers)


def _encode(body: dict[str, Any]) -> bytes:
    """JSON of a problem; never fails, so an error handler cannot become a 500 itself: what orjson
    refuses (an integer past 64 bits, a lone surrogate echoed from the request) is escaped."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, default=str, ensure_ascii=True).encode()


def problem_of(exc: MemserveError, instance: str | None = None) -> Response:
    body: dict[str, Any] = {
        "type": exc.type_uri(),
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if instance:
        body["instance"] = instance
    body.update(exc.extra)
    return problem_response(exc.status, body, exc.headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        out.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "")})
    return out


async def _on_memserve(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MemserveError)
    return problem_of(exc, request.url.path)


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters aside (FastAPI's rule)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    sub = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _unreadable_body(request: Request, exc: RequestValidationError) -> MemserveError | None:
    """What is wrong with a body that could not be read as JSON at all: malformed JSON (422,
    with its line and column), or a body sent without a JSON content type (415, naming the
    header); None when the body was read and its contents are what failed."""
    errors = list(exc.errors())
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        loc = bad_json.get("loc", ())
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        doc = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        line = doc.count("\n", 0, pos) + 1
        column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
        why = (bad_json.get("ctx") or {}).get("error", "invalid JSON")
        return InvalidRequest(
            f"body: malformed JSON at line {line}, column {column}: {why}",
            line=line, column=column, errors=_validation_errors(exc),
        )  # fmt: skip
    body_failed = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
    content_type = request.headers.get("content-type")
    if body_failed and isinstance(exc.body, bytes | bytearray) and exc.body and not _is_json(content_type):
        got = f"is {content_type!r}" if content_type else "is missing"
        return UnsupportedMediaType(
            f"the body must be JSON, sent with the header `content-type: application/json`; "
            f"this request's content-type header {got}",
            content_type=content_type,
        )
    return None


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    unreadable = _unreadable_body(request, exc)
    if unreadable is not None:
        return problem_of(unreadable, request.url.path)
    errors = _validation_errors(exc)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    err = InvalidRequest(f"{where}: {first['msg']}", errors=errors)
    return problem_of(err, request.url.path)


def _allowed_methods(request: Request) -> str:
    """Methods of every route on this path (Starlette names only the first route's)."""
    path = request.url.path
    table = getattr(request.app.state, "route_methods", [])
    methods = {m for regex, ms in table if regex.match(path) for m in ms}
    return ", ".join(sorted(methods))


def _undecodable_body(exc: StarletteHTTPException) -> InvalidRequest | None:
    """FastAPI's bare 400 for a JSON body that `json.loads` could not even start on (bytes that
    are not UTF-8, nesting deeper than the parser's recursion limit), as the 422 that any other
    malformed JSON gets; None for any other 400."""
    if exc.status_code != 400 or exc.detail != _BODY_PARSE_ERROR:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        prefix = bytes(cause.object[: cause.start]).decode("utf-8", "replace")
        line = prefix.count("\n") + 1
        column = len(prefix) - (prefix.rfind("\n") + 1) + 1
        return InvalidRequest(
            f"body: malformed JSON at line {line}, column {column}: not UTF-8 text "
            f"(byte {cause.start}: {cause.reason})",
            line=line, column=column, byte=cause.start,
        )  # fmt: skip
    if isinstance(cause, RecursionError):
        return InvalidRequest("body: malformed JSON: arrays or objects nested too deeply")
    return InvalidRequest("body: malformed JSON: the body could not be read as JSON text")


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    undecodable = _undecodable_body(exc)
    if undecodable is not None:
        return problem_of(undecodable, request.url.path)
    if exc.status_code == 404:
        return problem_of(NotFound(f"no route {request.url.path}"), request.url.path)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        err = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}",
            headers={"Allow": allowed},
        )
        return problem_of(err, request.url.path)
    body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code}
    return problem_response(exc.status_code, body, dict(exc.headers or {}))


async def _on_redis(request: Request, exc: Exception) -> Response:
    log.warning("redis unreachable during %s %s: %s", request.method, request.url.path, exc)
    err = RedisUnavailable("the session store is unreachable; try again shortly")
    err.headers = {"Retry-After": "1"}
    return problem_of(err, request.url.path)


async def _on_redis_response(request: Request, exc: Exception) -> Response:
    if not out_of_memory(exc):
        return await _on_unknown(request, exc)
    # Redis runs with noeviction (docker-compose.yml): full, it refuses writes and keeps every
    # session. That is the operator's to fix (maxmemory, more shards); the client may retry.
    log.warning("redis is out of memory during %s %s: %s", request.method, request.url.path, exc)
    err = StoreFull(
        "the session store is full and takes no new data; reads still work. Retry later",
        headers={"Retry-After": "5"},
    )
    return problem_of(err, request.url.path)


def bare_500() -> Response:
    """What an unknown error becomes: no detail that could leak internals."""
    return problem_response(500, {"type": "about:blank", "title": "Internal Server Error", "status": 500})


async def _on_unknown(request: Request, exc: Exception) -> Response:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return bare_500()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the problem+json contract."""
    app.add_exception_handler(MemserveError, _on_memserve)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RedisConnectionError, _on_redis)
    app.add_exception_handler(RedisTimeoutError, _on_redis)
    # Redis Cluster: no node reachable, a slot without a master, CLUSTERDOWN. (Misuse raises
    # RedisClusterException as well; the warning logged names it, and the tests catch it.)
    app.add_exception_handler(RedisClusterException, _on_redis)
    app.add_exception_handler(ClusterDownError, _on_redis)
    app.add_exception_handler(RedisResponseError, _on_redis_response)
    app.add_exception_handler(Exception, _on_unknown)
