"""Per-request telemetry: the request id, the HTTP metrics, the access log line.

One ASGI layer, outermost, so that it sees every response (a 413 of the body limit, a bare
500, a 404 of an unknown route) and adds one wrapper of `send` instead of three.

Request ids: a client's ``X-Request-ID`` is kept when it is 1 to 128 visible ASCII
characters (no spaces or control characters, which would let a client forge or break log
lines); otherwise, or when absent, a new random one is made. It is returned in the response's
``X-Request-ID``, bound to every log line of the request (app.logs), written into the jobs
the request queues (``rid``, so the worker's lines about the job carry it), and added to
problem+json bodies as ``request_id``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.metrics import ApiMetrics
from app.logs import bind_request_id, reset_context

access_log = logging.getLogger("memserve.access")

HEADER = b"x-request-id"
_VALID = re.compile(rb"[\x21-\x7e]{1,128}")
UNMATCHED = "unmatched"  # the route label of a path no route serves (bounded, unlike the path)


def request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The client's request id when it is acceptable, else a new one (32 hex digits)."""
    for name, value in headers:
        if name == HEADER:
            if _VALID.fullmatch(value):
                return value.decode("ascii")
            break
    return secrets.token_hex(16)


class RequestTelemetry:
    """Binds a request id, times the request, counts it per route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: list[BaseRoute], access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's live route list, for requests answered before routing
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id_from(scope.get("headers", ()))
        header = (HEADER, rid.encode("ascii"))
        token = bind_request_id(rid)
        status = 500  # what the client gets when the app raises before answering
        self.metrics.in_flight.inc()

        async def send_with_id(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", ()), header]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.in_flight.dec()
            route = self._template(scope)
            self.metrics.observe_request(scope["method"], route, status, seconds)
            if self.access:
                extra = {"method": scope["method"], "path": scope["path"], "route": route,
                         "status": status, "duration_ms": round(seconds * 1000, 3)}  # fmt: skip
                tenant = scope.get("state", {}).get("tenant")  # set by the API-key check
                if tenant is not None:
                    extra["tenant"] = tenant
                access_log.info(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000, extra=extra
                )
            reset_context(token)

    def _template(self, scope: Scope) -> str:
        """The path template of the route that served the request (``/v1/sessions/{sid}``)."""
        route = scope.get("route")
        if route is None:  # answered before routing (a body over the limit): match it here
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else UNMATCHED
