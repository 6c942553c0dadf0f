"""``GET /v1/rules``: the active rules document and its version."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from schemas.api import RulesResponse
from service.api.auth import SECURED
from service.api.deps import ReadCtx
from service.api.routes._common import PROTECTED, errors, json_response

router = APIRouter(prefix="/v1/rules", tags=["rules"])


@router.get(
    "",
    response_model=RulesResponse,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="The active rules and their version",
)
async def get_rules(ctx: ReadCtx) -> Response:
    rules = ctx.rules
    return json_response({"version": rules.version, "rules": rules.document()})
