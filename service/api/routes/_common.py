"""Shared by the routers: JSON responses and the documented error answers."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Path
from fastapi.responses import Response

from schemas.api import ID_PATTERN, ErrorResponse

CustomerId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="1-128 characters of `A-Za-z0-9._:@-`, as in events.",
        examples=["c-42"],
    ),
]

_DESCRIPTIONS = {
    401: "No API key, an unknown one, or none configured on the server (`unauthorized`).",
    403: "The API key lacks the scope (`forbidden`).",
    404: "Not found (`customer_not_found`, `segment_not_found`).",
    413: "Request body larger than the configured cap (`body_too_large`).",
    422: "Invalid request; `details` name each field (`validation_failed`; "
    "`batch_too_large` over 1,000 ids).",
    503: "Redis unavailable (`store_unavailable`); retry after `Retry-After` seconds.",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds", "schema": {"type": "string"}}},
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the one error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


PROTECTED = (401, 422, 503)
"""Errors every read endpoint can answer (403 needs an endpoint with a scope beyond
``segments:read``: every key holds that one or ``admin``)."""


def json_response(body: object) -> Response:
    """Serialised by orjson; the route's ``response_model`` documents the shape."""
    return Response(orjson.dumps(body), media_type="application/json")
