"""GET /playground: a browser page (plain HTML, CSS and JavaScript shipped in the package, no build
step, nothing loaded from another host) that calls /predict, /evaluate and /agent with the key the
user types in. The page itself is open, like /docs: it holds no data, and every call it makes goes
through the key check. It is left out of the OpenAPI document (it is not part of the API)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import NotFoundError

STATIC = Path(__file__).resolve().parent.parent / "static" / "playground"

# The page's own files only: no inline script or style, no other origin, not framed by another site.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}
FILES = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@router.get("/playground")
async def page() -> FileResponse:
    """The playground page: static HTML whose script calls this gateway's own API with the user's key."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/playground/{name}")
async def asset(name: str) -> FileResponse:
    """One of the page's own files (its script or stylesheet); any other name is a 404."""
    media_type = FILES.get(name)
    if media_type is None:
        raise NotFoundError(f"no playground file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
