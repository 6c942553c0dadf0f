"""``/v1/customers/{id}/...``: one customer's segment (classified now) and profile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from consumers.segmenter import min_day_for
from schemas.api import ProfileResponse, SegmentResponse
from service.api.auth import SECURED
from service.api.bodies import profile_body, segment_body, unknown_body
from service.api.deps import ReadCtx
from service.api.errors import CustomerNotFound
from service.api.routes._common import PROTECTED, CustomerId, errors, json_response
from service.store.packing import decode_customer

router = APIRouter(prefix="/v1/customers", tags=["customers"])

DefaultFlag = Annotated[
    bool,
    Query(
        description="Unknown customer: answer 200 with `known: false` and the default "
        "treatment (the rules' catch-all segment's) instead of 404.",
    ),
]


@router.get(
    "/{customer_id}/segment",
    response_model=SegmentResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 404),
    summary="Segment, axes and treatment of a customer, classified now",
)
async def get_segment(
    customer_id: CustomerId, ctx: ReadCtx, default: DefaultFlag = False
) -> Response:
    """Classified afresh from the stored profile at the moment of the request, so a customer
    whose `next_review_at` has passed already gets the new segment. Unknown customer: 404
    `customer_not_found`, or with `default=true` 200 `known: false` and the default treatment."""
    rules, now = ctx.rules, ctx.now
    fields = await ctx.reader.customer(customer_id)
    if fields:
        state = decode_customer(customer_id, fields, min_day=min_day_for(now, rules))
        if state.profile.known:
            return json_response(segment_body(state.profile, rules, now))
    if not default:
        raise CustomerNotFound(f"no customer {customer_id!r}")
    return json_response(unknown_body(customer_id, rules, now, with_default=True))


@router.get(
    "/{customer_id}/profile",
    response_model=ProfileResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 404),
    summary="The aggregates behind the segment: lifetime and each window",
)
async def get_profile(customer_id: CustomerId, ctx: ReadCtx) -> Response:
    """Money as strings with exactly two decimals; `windows` keyed by the rules' windows."""
    rules, now = ctx.rules, ctx.now
    fields = await ctx.reader.customer(customer_id)
    if fields:
        state = decode_customer(customer_id, fields, min_day=min_day_for(now, rules))
        if state.profile.known:
            return json_response(profile_body(state.profile, rules, now))
    raise CustomerNotFound(f"no customer {customer_id!r}")
