"""``/v1/segments``: batch reads, definitions with live counts, member listings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from consumers.segmenter import min_day_for, treatment_json, treatment_of
from schemas.api import (
    CURSOR_PATTERN,
    DEFAULT_PAGE,
    MAX_PAGE,
    SEGMENT_NAME_PATTERN,
    BatchGetRequest,
    BatchGetResponse,
    SegmentList,
    SegmentMembers,
)
from service.api.auth import SECURED
from service.api.bodies import segment_body, unknown_body
from service.api.deps import ReadCtx
from service.api.errors import SegmentNotFound
from service.api.routes._common import PROTECTED, errors, json_response
from service.api.routes.customers import DefaultFlag
from service.store.packing import decode_customer
from service.store.reads import MemberPosition

router = APIRouter(prefix="/v1/segments", tags=["segments"])


@router.post(
    ":batch-get",
    response_model=BatchGetResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 413),  # 413: body over the byte cap
    summary="Segments of up to 1,000 customers in one call",
)
async def batch_get(
    request: BatchGetRequest, ctx: ReadCtx, default: DefaultFlag = False
) -> Response:
    """One Redis round trip. Results in request order, one per requested id (a duplicate id is
    answered at each of its positions); unknown ids have `known: false` (and the default
    treatment with `default=true`). More than 1,000 ids: 422 `batch_too_large`."""
    rules, now = ctx.rules, ctx.now
    ids = request.customer_ids
    distinct = list(dict.fromkeys(ids))
    min_day = min_day_for(now, rules)
    bodies: dict[str, dict[str, Any]] = {}
    for cid, fields in zip(distinct, await ctx.reader.customers(distinct), strict=True):
        profile = decode_customer(cid, fields, min_day=min_day).profile if fields else None
        if profile is not None and profile.known:
            bodies[cid] = segment_body(profile, rules, now)
        else:
            bodies[cid] = unknown_body(cid, rules, now, with_default=default)
    return json_response({"results": [bodies[cid] for cid in ids]})


@router.get(
    "",
    response_model=SegmentList,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Segment definitions of the active rules, with live member counts",
)
async def list_segments(ctx: ReadCtx) -> Response:
    """Counts are summed over every shard's counts (one pipelined round trip) and follow the
    stored segmentations, which the consumer and the sweeper keep current."""
    rules = ctx.rules
    counts = await ctx.reader.segment_counts()
    segments = []
    for rule in rules.segments:
        t = treatment_of(rules, rule.treatment)
        segments.append(
            {
                "name": rule.name,
                "description": rule.description,
                "treatment": treatment_json(t),
                "members": max(0, counts.pop(rule.name, 0)),
            }
        )
    other = sum(max(0, n) for n in counts.values())
    return json_response(
        {"rules_version": rules.version, "segments": segments, "other_members": other}
    )


def encode_cursor(position: MemberPosition) -> str:
    shard = f"{position.shard:04d}"
    return f"{shard}:{position.after}" if position.after else shard


def decode_cursor(cursor: str) -> MemberPosition:
    """A cursor already matched :data:`CURSOR_PATTERN`: four digits, then ``:member``."""
    return MemberPosition(int(cursor[:4]), cursor[5:])


@router.get(
    "/{name}/customers",
    response_model=SegmentMembers,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED, 404),
    summary="Members of a segment, cursor-paginated",
)
async def list_members(
    name: Annotated[
        str,
        Path(
            pattern=SEGMENT_NAME_PATTERN,
            description="A segment of the active rules.",
            examples=["loyal"],
        ),
    ],
    ctx: ReadCtx,
    cursor: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of the previous page; omit for the first page.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = DEFAULT_PAGE,
) -> Response:
    """Walks the shards in order and each shard's members in sorted order: every customer
    that stays in the segment while the listing runs is returned exactly once, so a
    million-member segment can be exported page by page. `next_cursor` null: done."""
    rules = ctx.rules
    if all(rule.name != name for rule in rules.segments):
        raise SegmentNotFound(f"no segment {name!r} in rules {rules.version}")
    start = MemberPosition(0) if cursor is None else decode_cursor(cursor)
    page = await ctx.reader.members_page(name, start, limit)
    return json_response(
        {
            "segment": name,
            "customers": page.members,
            "next_cursor": None if page.next is None else encode_cursor(page.next),
        }
    )
