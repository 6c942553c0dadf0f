"""What route handlers receive, as ``Annotated`` dependencies (fastapi's ``SessionDep`` style).

Everything lives on ``app.state``, built once by :func:`service.api.app.create_app` and its
lifespan: settings, the state reader, the rules provider and the clock. Tests swap the clock
and the rules through ``create_app``.

A read handler takes one :data:`ReadCtx`: the caller (authenticated, holding
``segments:read``), the reader, the active rules and the instant the request is answered for.
One dependency instead of four: FastAPI's dependency solving costs tens of microseconds per
dependency, a real share of a request that takes a few hundred.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol

from fastapi import Depends, Request

from service.api.auth import READ, KeyRing, Principal, bearer_token
from service.api.errors import Forbidden
from service.segmentation.rules import Rules
from service.store.reads import StateReader

Clock = Callable[[], datetime]
"""Returns the current instant, timezone-aware."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class RulesProvider(Protocol):
    """The active rules. Static for now (the rules file); a later provider follows the rules
    activated at run time in Redis."""

    def current(self) -> Rules: ...


@dataclass(frozen=True, slots=True)
class StaticRules:
    rules: Rules

    def current(self) -> Rules:
        return self.rules


@dataclass(frozen=True, slots=True)
class ReadContext:
    principal: Principal
    reader: StateReader
    rules: Rules
    now: datetime
    """The instant the request is answered for (one clock read per request)."""


async def read_context(request: Request) -> ReadContext:
    """Authenticates the caller (``segments:read``) and gathers what a read needs."""
    state = request.app.state
    keyring: KeyRing = state.keyring
    principal = keyring.authenticate(bearer_token(request))
    if not principal.allows(READ):
        raise Forbidden(f"API key {principal.name!r} lacks scope {READ!r}")
    rules: RulesProvider = state.rules
    clock: Clock = state.clock
    return ReadContext(principal, state.reader, rules.current(), clock())


async def _reader(request: Request) -> StateReader:
    reader: StateReader = request.app.state.reader
    return reader


ReadCtx = Annotated[ReadContext, Depends(read_context)]
"""Everything a read endpoint needs, the caller authenticated with ``segments:read``."""
ReaderDep = Annotated[StateReader, Depends(_reader)]
"""The state reader alone (open endpoints: readiness)."""
