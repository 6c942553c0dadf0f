"""``/``: the operator dashboard, a static page that calls the API with a read key."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_STATIC = resources.files("service.api").joinpath("static")
_HEADERS = {
    "Cache-Control": "no-cache",
    # Everything is served from here; nothing is fetched from elsewhere.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/")
async def dashboard() -> Response:
    return HTMLResponse(_STATIC.joinpath("index.html").read_bytes(), headers=_HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    media_type = _TYPES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no asset {name!r}")
    return Response(_STATIC.joinpath(name).read_bytes(), media_type=media_type, headers=_HEADERS)
