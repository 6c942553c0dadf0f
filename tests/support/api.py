"""Helpers for the API tests: state written through the real consumer path, keys, clients."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI

from consumers.codec import EventCodec
from consumers.handler import BatchHandler
from consumers.segmenter import Segmenter
from service.api.app import create_app
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.segmentation.rules import Rules, load_rules
from service.settings import ApiKey, ApiSettings, KafkaSettings, Settings
from service.store.keys import Keys
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.conftest import redis_settings
from tests.support.events import Rec, encode

RULES = load_rules(None)
NOW_UTC = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""A fixed instant for tests that do not care which."""


def api_key(name: str, *scopes: str) -> tuple[str, ApiKey]:
    """A fresh secret key and its configured (hashed) form."""
    secret = secrets.token_urlsafe(24)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return secret, ApiKey(name=name, sha256=digest, scopes=scopes)  # type: ignore[arg-type]


def api_settings(redis_url: str, kafka_bootstrap: str = "127.0.0.1:9", **api: Any) -> Settings:
    """Settings with a Redis key prefix and Kafka topics of their own."""
    run = uuid.uuid4().hex[:10]
    redis = redis_settings(redis_url, key_prefix=f"t{run}:")
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap,
        events_topic=f"t{run}.events",
        changes_topic=f"t{run}.segment-changes",
        dlq_topic=f"t{run}.events.dlq",
        group_id=f"t{run}-consumer",
    )
    return Settings(redis=redis, kafka=kafka, api=ApiSettings(**api), _env_file=None)  # type: ignore[call-arg]


async def load_events(
    settings: Settings, events: Sequence[dict[str, Any]], *, now: datetime, rules: Rules = RULES
) -> None:
    """Applies events with the real handler (codec → Lua apply → classify → change events to
    the real broker → segment writes)."""
    await ensure_topics(settings.kafka, partitions=1)
    producer = create_producer(settings.kafka)
    await producer.start()
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    sink = ProducerSink(producer)
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
        await producer.stop()
    assert stats.dead_lettered == 0, stats.dead_letter_reasons


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
