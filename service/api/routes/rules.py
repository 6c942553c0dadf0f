"""``/v1/rules``: the active rules; changing them (admin), history, rollback, re-classification.

Changing the rules:

- ``PUT /v1/rules`` with a YAML (``application/yaml``) or JSON (``application/json``) body.
  Invalid rules answer 422 ``invalid_rules`` with one detail per problem, its ``field`` the path
  in the document (``segments[3].treatment``); nothing changes.
- ``?dry_run=true`` changes nothing either and answers the rule-level diff against the active
  rules and, on a sample of customers (``rules.dry_run_sample``), who would move where.
- Otherwise the version is stored and activated (who: the API key's name; when: now), a history
  entry is written, every instance switches within seconds, and the background
  re-classification starts (``GET /v1/rules/reclassification``).

Rolling back: ``POST /v1/rules/rollback`` with ``{"version": ...}`` makes a stored version active
again (history action ``rollback``). A PUT of an old document gives the same version (the
version is the content hash) and works as well, recorded as ``activate``.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from schemas.api import RulesResponse
from schemas.rules import (
    ReclassificationProgress,
    RollbackRequest,
    RulesChangeResponse,
    RulesHistory,
)
from service.api.auth import ADMIN, SECURED, Principal, require
from service.api.deps import Clock, ReadCtx, RulesProvider
from service.api.errors import ApiError
from service.api.routes._common import PROTECTED, errors, json_response
from service.rules_admin import sample_moves
from service.rules_store import ActivationResult, RulesRegistry, UnknownVersion
from service.segmentation.rules import Rules, RulesError, parse_rules, rules_from_data
from service.segmentation.rules_diff import diff_rules
from service.settings import Settings

router = APIRouter(prefix="/v1/rules", tags=["rules"])

Admin = Annotated[Principal, Depends(require(ADMIN))]

_JSON_TYPES = ("application/json",)
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class InvalidRules(ApiError):
    status = 422
    code = "invalid_rules"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class RulesVersionNotFound(ApiError):
    status = 404
    code = "rules_version_not_found"


_ADMIN_ERRORS = errors(401, 403, 503)
_ADMIN_ERRORS[422] = {
    **errors(422)[422],
    "description": "Invalid rules (`invalid_rules`: one detail per problem, `field` is the "
    "path in the rules document) or an invalid request (`validation_failed`).",
}


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


def _parse_body(body: bytes, content_type: str) -> Rules:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRules(
                "the rules are not valid JSON", details=[{"field": None, "message": str(exc)}]
            ) from None
        return rules_from_data(data)
    if media in _YAML_TYPES:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRules(
                "the rules are not UTF-8", details=[{"field": None, "message": "not UTF-8"}]
            ) from None
        return parse_rules(text)
    raise UnsupportedMediaType(
        f"send the rules as {_JSON_TYPES[0]} or {_YAML_TYPES[0]}, not {media or 'no type'!r}"
    )


_PUT_BODY = {
    "requestBody": {
        "required": True,
        "description": "A rules document (see `GET /v1/rules` and `default_rules.yaml`).",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    },
    **SECURED,
}


@router.put(
    "",
    response_model=RulesChangeResponse,
    openapi_extra=_PUT_BODY,
    responses={
        **_ADMIN_ERRORS,
        **errors(413),
        415: {**errors(422)[422], "description": "Body neither JSON nor YAML."},
    },
    summary="Validate, dry-run or activate a rules document (admin)",
)
async def put_rules(
    request: Request,
    principal: Admin,
    dry_run: Annotated[
        bool, Query(description="Change nothing; answer the diff and who would move.")
    ] = False,
) -> Response:
    """YAML or JSON by `Content-Type`. Invalid rules: 422 `invalid_rules`, every problem with
    its path; nothing changes. A dry run answers the rule-level diff and, on a sample of
    customers, how many would move from which segment to which. Otherwise the version (content
    hash) is stored and activated with who and when, and every customer is re-classified in the
    background. Sending the active version again changes nothing (`changed: false`)."""
    state = request.app.state
    try:
        proposed = _parse_body(await request.body(), request.headers.get("content-type", ""))
    except RulesError as exc:
        raise InvalidRules(
            f"the rules are not valid: {len(exc.errors)} problem(s)",
            details=[{"field": e["path"] or None, "message": e["message"]} for e in exc.errors],
        ) from None
    current = _current(request)
    changes = [c.as_json() for c in diff_rules(current, proposed)]
    if dry_run:
        settings: Settings = state.settings
        clock: Clock = state.clock
        sample = await sample_moves(
            state.redis,
            state.reader.keys,
            current=current,
            proposed=proposed,
            now=clock(),
            size=settings.rules.dry_run_sample,
        )
        return json_response(
            {
                "dry_run": True,
                "version": proposed.version,
                "active_version": current.version,
                "changed": False,
                "changes": changes,
                "sample": sample.as_json(),
                "activation": None,
            }
        )
    result = await _registry(request).activate(
        proposed,
        by=principal.name,
        at=state.clock(),
        fallback=state.rules_fallback,
        grace_s=state.settings.rules.reclassify_grace_s,
    )
    await _follow(request)
    return json_response(_change_body(proposed.version, changes, result))


@router.post(
    "/rollback",
    response_model=RulesChangeResponse,
    openapi_extra=SECURED,
    responses={**_ADMIN_ERRORS, **errors(404)},
    summary="Make an earlier rules version active again (admin)",
)
async def rollback(request: Request, body: RollbackRequest, principal: Admin) -> Response:
    """Any version ever stored (see `GET /v1/rules/history`); 404 `rules_version_not_found`
    otherwise. Recorded in the history as `rollback`; customers are re-classified in the
    background as after any activation."""
    state = request.app.state
    registry = _registry(request)
    current = _current(request)
    try:
        target = await registry.load(body.version)
        result = await registry.rollback(
            body.version,
            by=principal.name,
            at=state.clock(),
            fallback=state.rules_fallback,
            grace_s=state.settings.rules.reclassify_grace_s,
        )
    except UnknownVersion:
        raise RulesVersionNotFound(f"no stored rules version {body.version!r}") from None
    await _follow(request)
    changes = [c.as_json() for c in diff_rules(current, target)]
    return json_response(_change_body(target.version, changes, result))


@router.get(
    "/history",
    response_model=RulesHistory,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Activations of rules versions, newest first",
)
async def history(
    request: Request,
    ctx: ReadCtx,
    limit: Annotated[int, Query(ge=1, le=1_000, description="Most entries returned.")] = 100,
) -> Response:
    entries = await _registry(request).history(limit)
    return json_response(
        {"active_version": ctx.rules.version, "entries": [e.as_json() for e in entries]}
    )


@router.get(
    "/reclassification",
    response_model=ReclassificationProgress,
    openapi_extra=SECURED,
    responses=errors(*PROTECTED),
    summary="Progress of the background re-classification after the latest activation",
)
async def reclassification(request: Request, ctx: ReadCtx) -> Response:
    """Shards done of 1,024, customers re-classified and change events produced so far. The
    work is done by `segments sweep` processes (or `segments rules reclassify`)."""
    progress = await _registry(request).progress()
    return json_response(progress.as_json())


def _registry(request: Request) -> RulesRegistry:
    registry: RulesRegistry = request.app.state.registry
    return registry


def _current(request: Request) -> Rules:
    provider: RulesProvider = request.app.state.rules
    return provider.current()


async def _follow(request: Request) -> None:
    """This instance uses the new version at once (others follow via pub/sub or polling)."""
    refresh = getattr(request.app.state.rules, "refresh", None)
    if refresh is not None:
        await refresh()


def _change_body(
    version: str, changes: list[dict[str, object]], result: ActivationResult
) -> dict[str, object]:
    return {
        "dry_run": False,
        "version": version,
        "active_version": version,
        "changed": result.changed,
        "changes": changes,
        "sample": None,
        "activation": None if result.activation is None else result.activation.as_json(),
    }
