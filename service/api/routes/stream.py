"""``GET /v1/segment-changes/stream``: live segment changes as Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from service.api.auth import READ, SECURED, Principal, require
from service.api.changes_hub import (
    ChangeFilter,
    ChangeHub,
    StreamUnavailable,
    Subscription,
    decode_vector,
    encode_vector,
    read_range,
    sse_frame,
)
from service.api.errors import ApiError
from service.api.routes._common import errors
from service.settings import Settings

router = APIRouter(prefix="/v1/segment-changes", tags=["changes"])

_LIST_PATTERN = r"^[a-z][a-z0-9_]{0,63}(,[a-z][a-z0-9_]{0,63}){0,31}$"
"""Up to 32 segment names (:data:`schemas.api.SEGMENT_NAME_PATTERN`), comma-separated."""


class InvalidLastEventId(ApiError):
    status = 422
    code = "invalid_last_event_id"


class ChangeStreamUnavailable(ApiError):
    status = 503
    code = "stream_unavailable"


def _names(value: str | None) -> frozenset[str]:
    return frozenset(value.split(",")) if value else frozenset()


_STREAM_DOC = {
    200: {
        "description": "`text/event-stream`: one `event: change` per segment change (`data` is "
        "the change event of `customer.segment-changes`, `id` a resume position), comment "
        "heartbeats, and `event: overflow` before the server drops a viewer that fell behind.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}


@router.get(
    "/stream",
    response_class=StreamingResponse,
    openapi_extra=SECURED,
    responses={**_STREAM_DOC, **errors(401, 422, 503)},  # type: ignore[dict-item]
    summary="Live segment changes (Server-Sent Events), filterable, resumable",
)
async def stream(
    request: Request,
    _: Annotated[Principal, Depends(require(READ))],
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            pattern=_LIST_PATTERN,
            description="Only changes out of these segments (comma-separated; `none` for a "
            "customer's first segmentation).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(pattern=_LIST_PATTERN, description="Only changes into these segments."),
    ] = None,
    cause: Annotated[
        str | None,
        Query(
            pattern=r"^(event|time|rules)(,(event|time|rules)){0,2}$",
            description="Only these causes: `event`, `time`, `rules`.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=16_384,
            description="Resume after this event (browsers send it when they reconnect).",
        ),
    ] = None,
) -> StreamingResponse:
    """One reader of the changes topic per API worker serves every viewer. Each event's `id`
    is a position on every partition; reconnecting with `Last-Event-ID` resumes exactly after
    it (from memory, or re-read from Kafka when older). A viewer that cannot keep up gets
    `event: overflow` and is disconnected; it resumes by `Last-Event-ID` and loses nothing."""
    resume = None
    if last_event_id:
        resume = decode_vector(last_event_id)
        if resume is None:
            raise InvalidLastEventId("Last-Event-ID is not an id this stream sent")
    settings: Settings = request.app.state.settings
    hub: ChangeHub = request.app.state.hub
    try:
        await hub.wait_ready(settings.stream.start_timeout_s)
    except StreamUnavailable as exc:
        raise ChangeStreamUnavailable(
            f"the change stream is not connected to Kafka: {exc}",
            headers={"Retry-After": str(settings.api.retry_after_s)},
        ) from None
    change_filter = ChangeFilter(_names(from_), _names(to), _names(cause))
    subscription = hub.subscribe(change_filter, resume)
    return StreamingResponse(
        _events(hub, settings, subscription),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(hub: ChangeHub, settings: Settings, sub: Subscription) -> AsyncIterator[bytes]:
    viewer = sub.viewer
    try:
        yield b"retry: 2000\n: connected\n\n"
        if not sub.floor:
            # An id-only message: a viewer that sees no change still resumes from here.
            yield b"id: %s\n\n" % sub.start_id.encode()
        delivered = list(sub.floor)
        if sub.gaps:
            async for facts, data in read_range(settings, sub.gaps):
                delivered[facts.partition] = facts.offset + 1
                if viewer.filter.matches(facts.from_segment, facts.to_segment, facts.cause):
                    yield sse_frame(encode_vector(delivered), data)
        for entry in sub.backlog:
            delivered = [max(d, v) for d, v in zip(delivered, entry.vector, strict=False)]
            yield sse_frame(encode_vector(delivered), entry.data)
        heartbeat = settings.stream.heartbeat_s
        while True:
            frames = await viewer.frames(heartbeat)
            if viewer.overflowed:
                body = orjson.dumps(
                    {"reason": "viewer_too_slow", "queue": settings.stream.viewer_queue}
                )
                yield b"event: overflow\ndata: %s\n\n" % body
                return
            if frames:
                yield b"".join(frames)
            elif viewer.closed:
                return
            else:
                yield b": heartbeat\n\n"
    finally:
        hub.unsubscribe(viewer)
