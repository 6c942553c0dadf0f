"""The API edge of the error tree: HTTP status per error class, one JSON shape for all.

Every 4xx/5xx body is ``{"error": {"code", "message", "details"}}`` (:class:`schemas.api.
ErrorResponse`), whoever raised it: our own errors, FastAPI's request validation, Starlette's
404/405, an unavailable Redis (503 with ``Retry-After``) or a bug (500, logged, never shown).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from schemas.api import MAX_BATCH_IDS
from service.errors import NotFound, SegmentsError, StoreUnavailable

log = logging.getLogger(__name__)


class ApiError(SegmentsError):
    """An error answered to the client as is; ``status`` is the HTTP status."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.headers = headers


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class CustomerNotFound(ApiError, NotFound):
    status = 404
    code = "customer_not_found"


class SegmentNotFound(ApiError, NotFound):
    status = 404
    code = "segment_not_found"


class BodyTooLarge(ApiError):
    status = 413
    code = "body_too_large"


_STATUS_OF_CORE: dict[type[SegmentsError], int] = {
    StoreUnavailable: 503,
    NotFound: 404,
}
"""Core errors (service/errors.py) that can reach the edge; anything else is a 500."""

_STARLETTE_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    400: "bad_request",
    413: "body_too_large",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"error": {"code": code, "message": message, "details": list(details)}}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _field(loc: Sequence[int | str]) -> str | None:
    """``("body", "customer_ids", 3)`` -> ``customer_ids[3]``; ``("query", "limit")`` ->
    ``limit``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        source = parts.pop(0)
        if not parts:
            return "body" if source == "body" else None
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or None


def _validation_response(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    details = [
        {"field": _field(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in errors
    ]
    if any(
        e.get("type") == "too_long" and tuple(e.get("loc", ())) == ("body", "customer_ids")
        for e in errors
    ):
        # 422 (not 413): the body is well-formed but breaks the documented maxItems, and
        # clients and tools treat schema violations as 422; the code says what it is.
        return error_response(
            422,
            "batch_too_large",
            f"at most {MAX_BATCH_IDS} customer ids per batch-get",
            details,
        )
    return error_response(422, "validation_failed", "the request is not valid", details)


def _route(request: Request) -> str:
    """The route template (``/v1/customers/{customer_id}/segment``): bounded, and no customer
    id in logs or labels."""
    return getattr(request.scope.get("route"), "path", None) or "unmatched"


def _store_unavailable(request: Request) -> Response:
    request.app.state.metrics.redis_error(_route(request))
    retry_after = str(request.app.state.settings.api.retry_after_s)
    return error_response(
        503,
        StoreUnavailable.code,
        "the state store (Redis) is unavailable; retry shortly",
        headers={"Retry-After": retry_after},
    )


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route of the app fully matches at the request's path (asked of the
    routes themselves, included routers too)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            # Starlette's Allow names the first route matching the path only; a path served
            # by several routes (GET and PUT /v1/rules) must list every method it accepts.
            return error_response(
                405,
                "method_not_allowed",
                "Method Not Allowed",
                headers={"Allow": _allowed_methods(request)},
            )
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not read the body (e.g. JSON that is not UTF-8): a request as
            # invalid as malformed JSON, which it answers 422, so answer the same.
            return error_response(
                422,
                "validation_failed",
                "the request is not valid",
                [{"field": "body", "message": "not JSON in UTF-8"}],
            )
        code = _STARLETTE_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, code, message, headers=exc.headers)

    async def on_core_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SegmentsError)
        for cls, status in _STATUS_OF_CORE.items():
            if isinstance(exc, cls):
                if status == 503:
                    return _store_unavailable(request)
                return error_response(status, exc.code, str(exc))
        return await on_unexpected(request, exc)

    async def on_redis_down(request: Request, exc: Exception) -> Response:
        log.warning("redis unavailable", extra={"route": _route(request), "error": repr(exc)})
        return _store_unavailable(request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc, extra={"route": _route(request)})
        return error_response(500, "internal", "internal error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SegmentsError, on_core_error)
    for redis_error in (RedisConnectionError, RedisTimeoutError, RedisClusterException):
        app.add_exception_handler(redis_error, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)
