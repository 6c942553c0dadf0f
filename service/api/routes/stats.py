"""``/v1/stats/*``: the operator figures the dashboard draws (read scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from schemas.stats import ChangeStats, PipelineHealth, SegmentKpis, StatsWindow
from service.api.auth import SECURED
from service.api.changes_hub import ChangeHub
from service.api.deps import ReadCtx
from service.api.figures import Figures
from service.api.routes._common import PROTECTED, errors, json_response

router = APIRouter(prefix="/v1/stats", tags=["operations"])


def _figures(request: Request) -> Figures:
    figures: Figures = request.app.state.figures
    return figures


@router.get(
    "/changes",
    response_model=ChangeStats,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Segment changes: migration matrix, causes, churn and win-back, per minute",
)
async def change_stats(
    request: Request,
    ctx: ReadCtx,
    window: Annotated[StatsWindow, Query(description="Last hour or last 24 hours.")] = "1h",
) -> Response:
    """Counted from the changes topic by the API workers, once per change."""
    return json_response(await _figures(request).changes(window, ctx.now))


@router.get(
    "/segments",
    response_model=SegmentKpis,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Per-segment KPIs: members, net spend of the last 30 days, lost and won back",
)
async def segment_kpis(request: Request, ctx: ReadCtx) -> Response:
    """Net spend is summed over the members (extrapolated past `stream.kpi_sample`
    customers: `exact` says which)."""
    return json_response(await _figures(request).segment_kpis(ctx.rules, ctx.now))


@router.get(
    "/pipeline",
    response_model=PipelineHealth,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Pipeline health: consumer lag, events/s, dead letters/min, sweeper lag",
)
async def pipeline_health(request: Request, ctx: ReadCtx) -> Response:
    """Consumer lag from the group's committed offsets against end offsets (null with an
    `error` when Kafka does not answer); the rest from counters in Redis."""
    hub: ChangeHub = request.app.state.hub
    return json_response(await _figures(request).pipeline_health(ctx.now, hub.viewers))
