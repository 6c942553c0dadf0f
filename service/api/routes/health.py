"""Open endpoints: liveness, readiness (Redis answers) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from schemas.api import Health
from service.api.deps import ReaderDep
from service.api.metrics import CONTENT_TYPE, ApiMetrics
from service.api.routes._common import errors, json_response
from service.errors import StoreUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    responses=errors(503),
    summary="Readiness: Redis answers PING",
)
async def readyz(reader: ReaderDep) -> Response:
    if not await reader.ping():
        raise StoreUnavailable("redis did not answer PING")
    return json_response({"status": "ready"})


metrics_router = APIRouter(tags=["operations"])


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
    summary="Prometheus metrics (requests and latency by route)",
)
async def metrics(request: Request) -> Response:
    registry: ApiMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
