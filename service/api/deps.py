"""What route handlers receive, as ``Annotated`` dependencies (fastapi's ``SessionDep`` style).

Everything lives on ``app.state``, built once by the lifespan (:mod:`service.api.app`):
settings, the state reader, the rules provider and the clock. Tests swap the clock and the
rules through :func:`service.api.app.create_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol

from fastapi import Depends, Request

from service.api.auth import READ, Principal, require
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


def _reader(request: Request) -> StateReader:
    reader: StateReader = request.app.state.reader
    return reader


def _rules(request: Request) -> Rules:
    provider: RulesProvider = request.app.state.rules
    return provider.current()


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock()


ReaderDep = Annotated[StateReader, Depends(_reader)]
RulesDep = Annotated[Rules, Depends(_rules)]
NowDep = Annotated[datetime, Depends(_now)]
"""The instant a request is answered for (one clock read per request)."""
ReadKey = Annotated[Principal, Depends(require(READ))]
"""The caller, authenticated, holding ``segments:read`` (or ``admin``)."""
