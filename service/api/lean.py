"""A lean path through FastAPI for the hottest reads (checkout calls them on every order).

FastAPI spends more time solving dependencies and validating parameters than the rest of a
single-customer read takes (profiled: about a third of the worker's CPU). A :class:`LeanRoute`
first offers the request to the endpoint's *lean handler*, which checks the common, valid case
by hand and answers it with the same code the endpoint uses; anything it does not recognise
(an invalid id, an unusual query string) returns None and goes through FastAPI's standard
handler, so validation errors and the OpenAPI document stay exactly FastAPI's.

Both paths run inside the route, under the app's exception handlers: an error raised by the
lean handler (401, 404, Redis unavailable) is answered exactly as from the endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

LeanHandler = Callable[[Request], Awaitable[Response | None]]
"""Answers the request, or returns None to leave it to FastAPI."""

_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def lean(handler: LeanHandler) -> Callable[[_Endpoint], _Endpoint]:
    """Marks an endpoint (of a router with ``route_class=LeanRoute``) with its lean handler."""

    def mark(endpoint: _Endpoint) -> _Endpoint:
        endpoint.__lean__ = handler  # type: ignore[attr-defined]
        return endpoint

    return mark


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()
        fast: LeanHandler | None = getattr(self.endpoint, "__lean__", None)
        if fast is None:
            return standard

        async def handler(request: Request) -> Response:
            response = await fast(request)
            return response if response is not None else await standard(request)

        return handler
