"""The hot routes' lane: a valid JSON request to a route marked `hot` is answered here,
without the per-request work of FastAPI's router and dependency solver.

The routes a client calls many times a second (a point, a drawing to classify) spend most of
their API time in that machinery, not in their own code. Here the lane parses and validates the
body with the route's own request model, checks the key and the rate as `get_tenant` does, and
calls the route function itself: one definition of each route, two ways in. Anything the lane
is not sure of — a body that is not JSON, or not valid, a content type that is not JSON — goes
on to FastAPI unchanged (the body replayed), so every refusal is FastAPI's own. An error the
route raises is answered by the app's exception handlers, the one problem+json mapping.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import check_rate
from app.api.deps import Services

F = TypeVar("F", bound=Callable[..., Awaitable[Response]])
_HOT = "__memserve_hot__"
_INJECTED = ("body", "svc", "tenant")
# application/json or application/<x>+json, any parameters: FastAPI's rule, without its parser.
_JSON = re.compile(rb"\s*application/([\w.-]+\+)?json\s*(;.*)?", re.IGNORECASE)


def hot(endpoint: F) -> F:
    """Mark a route for the lane: ``async def f(<path params: str>, body: Model, svc, tenant) ->
    Response``, nothing else injected (checked when the app is built)."""
    setattr(endpoint, _HOT, True)
    return endpoint


@dataclass(frozen=True)
class _Hot:
    route: APIRoute
    model: type[BaseModel]
    endpoint: Callable[..., Awaitable[Response]]


def _hot_route(route: APIRoute) -> _Hot:
    fn = route.endpoint
    params = list(inspect.signature(fn).parameters)
    path_params = re.findall(r"{(\w+)}", route.path)
    wanted = [*path_params, *_INJECTED]
    assert params == wanted, f"hot route {route.path} takes ({', '.join(params)}), not ({', '.join(wanted)})"
    assert route.methods == {"POST"}, f"hot route {route.path} must be POST only"
    model = get_type_hints(fn)["body"]
    assert issubclass(model, BaseModel), f"hot route {route.path}: body must be a pydantic model"
    return _Hot(route, model, fn)


class FastLane:
    """ASGI layer in front of FastAPI's router for the routes marked `hot`."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi  # its state (services) and its exception handlers
        routes: list[APIRoute] = fastapi.state.api_routes  # every route of every router (app.api.app)
        self.hot = [_hot_route(r) for r in routes if getattr(r.endpoint, _HOT, False)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self._match(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, path_params = hot
        messages, body = await _read_body(receive)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        parsed = _parse(route.model, body)
        if parsed is None:  # FastAPI's own refusal, word for word
            await self.app(scope, replay, send)
            return
        scope["route"] = route.route  # for the request metrics' route label
        scope["path_params"] = path_params
        response = await self._answer(scope, route, path_params, parsed)
        await response(scope, replay, send)

    def _match(self, scope: Scope) -> tuple[_Hot, dict[str, str]] | None:
        for h in self.hot:
            m = h.route.path_regex.match(scope["path"])
            if m is not None:
                if not any(n == b"content-type" and _JSON.fullmatch(v) for n, v in scope["headers"]):
                    return None
                return h, m.groupdict()
        return None

    async def _answer(self, scope: Scope, hot: _Hot, params: dict[str, str], body: BaseModel) -> Response:
        svc: Services = self.fastapi.state.services
        try:
            # What `app.api.deps.get_tenant` does for every /v1 route.
            tenant = svc.keyring.authenticate(_header(scope, b"authorization"))
            scope.setdefault("state", {})["tenant"] = tenant.name
            await check_rate(svc.tenants, tenant)
            return await hot.endpoint(**params, body=body, svc=svc, tenant=tenant)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            result = await handler(Request(scope), exc)
            assert isinstance(result, Response), "exception handlers return responses"
            return result

    def _handler(self, exc: Exception) -> Callable[[Request, Exception], Awaitable[Any]] | None:
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]  # type: ignore[return-value]
        return None


def _parse(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body as the route's model; None when FastAPI should say what is wrong with it.

    orjson refuses what FastAPI's reader may take (NaN, integers past 64 bits): those go on."""
    try:
        return model.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """Every message of the request body (the body limit outside has bounded it) and the body."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        messages.append(msg)
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return messages, b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for n, v in scope["headers"]:
        if n == name:
            return bytes(v).decode("latin-1")
    return None
