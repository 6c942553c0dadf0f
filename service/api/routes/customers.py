"""``/v1/customers/{id}/...``: one customer's segment (classified now) and profile; erasing a
customer (``DELETE /v1/customers/{id}``, admin)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from consumers.segmenter import min_day_for
from schemas.api import ID_PATTERN, EraseResponse, ProfileResponse, SegmentResponse
from service.api.auth import ADMIN, SECURED, Principal, require
from service.api.bodies import profile_body, segment_body, unknown_body
from service.api.deps import ReadContext, ReadCtx, read_context
from service.api.errors import CustomerNotFound
from service.api.lean import LeanRoute, lean
from service.api.routes._common import PROTECTED, CustomerId, errors, json_response
from service.settings import Settings
from service.store.erase import CustomerEraser
from service.store.packing import decode_customer, epoch_ms

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=LeanRoute)

DefaultFlag = Annotated[
    bool,
    Query(
        description="Unknown customer: answer 200 with `known: false` and the default "
        "treatment (the rules' catch-all segment's) instead of 404.",
    ),
]

_ID = re.compile(ID_PATTERN)
_DEFAULT_QUERY = {b"": False, b"default=false": False, b"default=true": True}
"""The query strings the lean path knows; any other goes through FastAPI's validation."""


async def _segment(customer_id: str, ctx: ReadContext, *, default: bool) -> Response:
    rules, now = ctx.rules, ctx.now
    fields = await ctx.reader.customer(customer_id)
    if fields:
        state = decode_customer(customer_id, fields, min_day=min_day_for(now, rules))
        if state.profile.known:
            return json_response(segment_body(state.profile, rules, now))
    if not default:
        raise CustomerNotFound(f"no customer {customer_id!r}")
    return json_response(unknown_body(customer_id, rules, now, with_default=True))


async def _segment_lean(request: Request) -> Response | None:
    customer_id: str = request.path_params["customer_id"]
    default = _DEFAULT_QUERY.get(request.scope["query_string"])
    if default is None or not _ID.match(customer_id):
        return None
    return await _segment(customer_id, await read_context(request), default=default)


@router.get(
    "/{customer_id}/segment",
    response_model=SegmentResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 404),
    summary="Segment, axes and treatment of a customer, classified now",
)
@lean(_segment_lean)
async def get_segment(
    customer_id: CustomerId, ctx: ReadCtx, default: DefaultFlag = False
) -> Response:
    """Classified afresh from the stored profile at the moment of the request, so a customer
    whose `next_review_at` has passed already gets the new segment. Unknown customer: 404
    `customer_not_found`, or with `default=true` 200 `known: false` and the default treatment."""
    return await _segment(customer_id, ctx, default=default)


async def _profile(customer_id: str, ctx: ReadContext) -> Response:
    rules, now = ctx.rules, ctx.now
    fields = await ctx.reader.customer(customer_id)
    if fields:
        state = decode_customer(customer_id, fields, min_day=min_day_for(now, rules))
        if state.profile.known:
            return json_response(profile_body(state.profile, rules, now))
    raise CustomerNotFound(f"no customer {customer_id!r}")


async def _profile_lean(request: Request) -> Response | None:
    customer_id: str = request.path_params["customer_id"]
    if request.scope["query_string"] or not _ID.match(customer_id):
        return None
    return await _profile(customer_id, await read_context(request))


@router.get(
    "/{customer_id}/profile",
    response_model=ProfileResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 404),
    summary="The aggregates behind the segment: lifetime and each window",
)
@lean(_profile_lean)
async def get_profile(customer_id: CustomerId, ctx: ReadCtx) -> Response:
    """Money as strings with exactly two decimals; `windows` keyed by the rules' windows."""
    return await _profile(customer_id, ctx)


Admin = Annotated[Principal, Depends(require(ADMIN))]


@router.delete(
    "/{customer_id}",
    response_model=EraseResponse,
    openapi_extra=SECURED,
    responses=errors(401, 403, 422, 503),
    summary="Erase everything about a customer (GDPR); admin",
)
async def erase_customer(customer_id: CustomerId, principal: Admin, request: Request) -> Response:
    """Removes the profile, the segment, the segment index entry, the shard's count and the due
    entry in one atomic step, and leaves a tombstone (`state.erase_tombstone_days`): while it
    lives, a late or replayed event of the customer is skipped instead of re-creating it.
    No change event is published. Idempotent: erasing again answers 200 with `erased: false`
    and renews the tombstone."""
    state = request.app.state
    settings: Settings = state.settings
    eraser: CustomerEraser = state.eraser
    now: datetime = state.clock()
    keep = timedelta(days=settings.state.erase_tombstone_days)
    keep_ms = max(1, round(keep.total_seconds() * 1000))
    erased = await eraser.erase(customer_id, now_ms=epoch_ms(now), tombstone_ms=keep_ms)
    # The caller's key name, never the customer id: logs carry no customer data.
    log.info("customer erased", extra={"by": principal.name, "existed": erased})
    return json_response(
        {
            "customer_id": customer_id,
            "erased": erased,
            "erased_at": _iso(now),
            "tombstone_expires_at": _iso(now + keep),
        }
    )


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
