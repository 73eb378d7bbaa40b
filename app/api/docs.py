"""The API documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), with their scripts and
styles served from the package (app/docs_assets/, vendored; see its README.md): no CDN, so the
pages work offline and behind firewalls, and load nothing from third parties."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute

ASSETS = Path(__file__).resolve().parents[1] / "docs_assets"
ASSET_PREFIX = "/docs-assets"
# The files a page may load, by name; nothing else under the folder is served.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

router = APIRouter(tags=["docs"], include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _title(request: Request) -> str:
    return str(request.app.title)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on this service's OpenAPI document."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{_title(request)} - Swagger UI",
        swagger_js_url=f"{root}{ASSET_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSET_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSET_PREFIX}/favicon-32x32.png",
        oauth2_redirect_url=None,
        # no online validator badge (it would call validator.swagger.io); keep the key across reloads
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc on this service's OpenAPI document."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{_title(request)} - ReDoc",
        redoc_js_url=f"{root}{ASSET_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSET_PREFIX}/favicon-32x32.png",
        with_google_fonts=False,
    )


@router.get(ASSET_PREFIX + "/{name}")
async def asset(name: str) -> FileResponse:
    """One vendored script, style sheet or icon, by name."""
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404)
    headers = {"Cache-Control": "public, max-age=86400"}
    return FileResponse(ASSETS / name, media_type=media_type, headers=headers)


def install_docs(app: FastAPI) -> None:
    """Serve the documentation pages and their assets (construct the app with docs_url=None and
    redoc_url=None), and let a 405 on their paths name their methods."""
    app.include_router(router)
    table = getattr(app.state, "route_methods", None)
    if table is not None:
        table.extend((r.path_regex, r.methods) for r in router.routes if isinstance(r, APIRoute))
