"""The web page at `/`: static files shipped in the package (no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[2] / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png", ".csv": "text/csv", ".json": "application/json"}  # fmt: skip

# The page loads nothing from anywhere else and talks only to this server; the browser enforces
# it. Images come back from the API as base64 PNGs (data:), uploads are read through blob: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# Revalidated on every load (cheap: ETag / Last-Modified), so a new release's files are never
# mixed with a cached older module.
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(tags=["page"], include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The page: few-shot drawing and live streaming against this service."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/static/{name:path}")
async def static(name: str) -> FileResponse:
    """A file of the page; only files directly under app/static/ and its folders, by name."""
    path = (STATIC / name).resolve()
    if not path.is_file() or STATIC not in path.parents or path.suffix not in _TYPES:
        raise HTTPException(404)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=HEADERS)
