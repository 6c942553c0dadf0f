"""Helpers for the API tests: state written through the real consumer path, keys, clients."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI

from consumers.codec import EventCodec
from consumers.handler import BatchHandler
from consumers.segmenter import Segmenter
from service.api.app import create_app
from service.segmentation.rules import Rules, load_rules
from service.settings import ApiKey, ApiSettings, RedisSettings, Settings
from service.store.keys import Keys
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.events import Rec, encode

RULES = load_rules(None)
NOW_UTC = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""A fixed instant for tests that do not care which."""


@dataclass
class MemorySink:
    """Stands in for Kafka: the API tests need the state, not the change topic."""

    changes: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        self.changes.extend(records)

    async def send_dead_letters(self, topic: str, records: list[Any]) -> None:
        self.dead.extend(records)


def api_key(name: str, *scopes: str) -> tuple[str, ApiKey]:
    """A fresh secret key and its configured (hashed) form."""
    secret = secrets.token_urlsafe(24)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return secret, ApiKey(name=name, sha256=digest, scopes=scopes)  # type: ignore[arg-type]


def api_settings(redis_url: str, **api: Any) -> Settings:
    """Settings with a Redis key prefix of their own."""
    redis = RedisSettings(url=redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}:")
    return Settings(redis=redis, api=ApiSettings(**api), _env_file=None)  # type: ignore[call-arg]


async def load_events(
    settings: Settings, events: Sequence[dict[str, Any]], *, now: datetime, rules: Rules = RULES
) -> MemorySink:
    """Applies events with the real handler (codec → Lua apply → classify → segment writes)."""
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    sink = MemorySink()
    handler = BatchHandler(
        settings,
        codec=EventCodec(settings.validation),
        store=store,
        segmenter=Segmenter(
            store, sink, changes_topic=settings.kafka.changes_topic, rules=lambda: rules
        ),
        dead_letters=sink,
        rules=lambda: rules,
        clock=lambda: now,
    )
    records = [
        Rec(settings.kafka.events_topic, 0, offset, e["customer_id"].encode(), encode(e))
        for offset, e in enumerate(events)
    ]
    try:
        stats = await handler.handle(records)
    finally:
        await redis.aclose()
    assert stats.dead_lettered == 0, stats.dead_letter_reasons
    return sink


class MovableClock:
    """A clock tests set by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def running(app: FastAPI, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and an in-process client (optionally authenticated)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            yield client


def app_for(settings: Settings, clock: Callable[[], datetime]) -> FastAPI:
    return create_app(settings, clock=clock)
