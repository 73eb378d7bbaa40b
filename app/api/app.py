"""The FastAPI application: `create_app(settings)` builds one API process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import registry
from app.api.auth import KeyRing
from app.api.catalog_watch import CatalogWatch
from app.api.deps import Services, get_tenant
from app.api.docs import install_docs
from app.api.errors import bare_500, install_error_handlers, problem_of
from app.api.fastlane import FastLane
from app.api.metrics import ApiMetrics
from app.api.openapi import install_openapi
from app.api.routes import backup, health, metrics, models, sessions, tenant, ui
from app.api.telemetry import RequestTelemetry
from app.config import Settings
from app.errors import PayloadTooLarge
from app.logs import use_log_format
from app.queue.admission import Admission
from app.queue.submit import JobQueue, ensure_group
from app.runtime import tune_gc
from app.store.backup import BackupStore
from app.store.client import connect
from app.store.exemplars import ExemplarStore
from app.store.keys import Keys
from app.store.session_index import SessionIndex
from app.store.sessions import SessionStore
from app.store.tenants import TenantStore

log = logging.getLogger("memserve.api")


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, before the app sees any of them.

    The body is read here (it is small by construction) so that a chunked body that grows
    past the limit is refused just like one that declares its length.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"the body is over {self.limit} bytes (MEMSERVE_MAX_BODY_BYTES)")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await problem_of(too_large, scope.get("path"))(scope, receive, send)
                return
        messages: list[Message] = []
        seen = 0
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                await problem_of(too_large, scope.get("path"))(scope, receive, send)
                return
            if not msg.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class CatchAll:
    """Answer an unhandled error with a bare 500 here, inside Starlette's outermost layer,
    which would re-raise it and make the server drop the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or scope["type"] != "http":
                raise
            log.error("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            await bare_500()(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """One API process: stateless; any number of them may share one Redis."""
    settings.check_checkpoints()
    registry.register_extra(settings.extra_kinds)
    keyring = KeyRing(settings)  # fails fast on bad or missing keys
    api_metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here, not in create_app: uvicorn configures its loggers after the app is built.
        use_log_format(settings.log_format)
        r = await connect(settings)
        keys = Keys(settings.key_prefix)
        for kind in registry.names():
            await ensure_group(r, keys.stream(kind))
        admission = Admission(r, keys, settings.request_timeout_s, settings.queue_cap)
        admission.start()
        queue = JobQueue(r, keys, settings.queue_cap, admission)
        await queue.start()
        catalog_watch = CatalogWatch(settings, r, keys)
        await catalog_watch.refresh()
        app.state.services = Services(
            settings=settings, redis=r, keys=keys, sessions=SessionStore(r, keys),
            queue=queue, catalog=catalog_watch.catalog, exemplars=ExemplarStore(r, keys),
            backups=BackupStore(r, keys), metrics=api_metrics, keyring=keyring, tenants=TenantStore(r, keys),
            live_sessions=SessionIndex(r, keys, registry.names()),
        )  # fmt: skip
        tune_gc()
        catalog_watch.start()
        listed = (f"{m.name} {m.version}" for m in catalog_watch.catalog.all())
        log.info("API ready; models: %s", ", ".join(listed))
        try:
            yield
        finally:
            await catalog_watch.stop()
            await admission.stop()
            await queue.stop()
            await r.aclose()

    app = FastAPI(
        title="memserve",
        version="0.1.0",
        summary="Memory-augmented models (VMA, MemNet) with per-session memory in Redis",
        description="Errors are RFC 9457 `application/problem+json` (the `Problem` schema). Every `/v1` "
        "route needs `Authorization: Bearer <key>` unless authentication is off.",
        lifespan=lifespan,
        docs_url=None,  # served by app.api.docs, with local assets
        redoc_url=None,
        # A JSON body needs `content-type: application/json` (or +json): refused with 415 otherwise
        # (app.api.errors), so that no browser page can post one without a CORS preflight.
        strict_content_type=True,
    )
    install_error_handlers(app)
    _add_routes(app)
    install_docs(app)
    install_openapi(app)
    app.add_middleware(FastLane, fastapi=app)  # innermost: the hot routes skip the router only
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # Outermost (added last): it sees every response, the body limit's 413s included.
    app.add_middleware(
        RequestTelemetry, metrics=api_metrics, routes=app.router.routes, access=settings.access_log
    )
    return app


def _add_routes(app: FastAPI) -> None:
    # Every /v1 route acts for a tenant: its key is checked and its rate counted before the
    # route runs. Health and metrics stay open to probes and scrapers.
    # Each kind's routes come from its own folder, through the registry (torch-free halves only).
    by_kind = [router for kind in registry.kinds() for router in kind.api().routers]
    v1 = (sessions.router, backup.router, *by_kind, models.router, tenant.router)
    for router in v1:
        app.include_router(router, dependencies=[Depends(get_tenant)])
    for router in (health.router, metrics.router, ui.router):  # open: probes, scrapers, the page
        app.include_router(router)
    routers = (*v1, health.router, metrics.router, ui.router)
    # What a 405's Allow header lists: every method of every route on the path.
    app.state.api_routes = [
        route for router in routers for route in router.routes if isinstance(route, APIRoute)
    ]
    app.state.route_methods = [(route.path_regex, route.methods) for route in app.state.api_routes]
