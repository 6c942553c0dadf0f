"""Erase (GDPR): ``DELETE /v1/customers/{id}`` against real Redis, events through the real
handler (codec → Lua apply → classify → change events to the real broker → segment writes),
with the consumer's customer cache on, as in production."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from consumers.codec import DecodedEvent, EventCodec
from consumers.handler import BatchHandler, BatchStats
from consumers.segmenter import Segmenter, min_day_for
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.settings import Settings, StateSettings
from service.store.keys import Keys, shard_of
from service.store.profiles import ERASED, ApplyRequest, RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from tests.support.api import NOW_UTC, RULES, MovableClock, api_key, api_settings, app_for, running
from tests.support.events import Rec, encode, engagement, purchase

pytestmark = pytest.mark.integration

NOW = NOW_UTC
ADMIN_SECRET, ADMIN_KEY = api_key("ops", "admin")
READ_SECRET, READ_KEY = api_key("checkout", "segments:read")


@dataclass
class Pipeline:
    """The consumer's batch path on one partition, offsets counted by the test."""

    settings: Settings
    handler: BatchHandler
    store: RedisProfileStore
    redis: AnyRedis
    keys: Keys

    def records(self, events: Sequence[dict[str, Any]], first_offset: int) -> list[Rec]:
        topic = self.settings.kafka.events_topic
        return [
            Rec(topic, 0, first_offset + i, e["customer_id"].encode(), encode(e))
            for i, e in enumerate(events)
        ]

    async def handle(self, records: Sequence[Rec]) -> BatchStats:
        return await self.handler.handle(records)


@asynccontextmanager
async def pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    await ensure_topics(settings.kafka, partitions=1)
    producer = create_producer(settings.kafka)
    await producer.start()
    redis = create_redis(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    store = RedisProfileStore(redis, keys, ring_size=8, cache_size=1_000)
    sink = ProducerSink(producer)
    handler = BatchHandler(
        settings,
        codec=EventCodec(settings.validation),
        store=store,
        segmenter=Segmenter(
            store, sink, changes_topic=settings.kafka.changes_topic, rules=lambda: RULES
        ),
        dead_letters=sink,
        rules=lambda: RULES,
        clock=lambda: NOW,
    )
    try:
        yield Pipeline(settings, handler, store, redis, keys)
    finally:
        await redis.aclose()
        await producer.stop()


def _settings(redis_url: str, kafka_bootstrap: str, *, tombstone_days: float = 30.0) -> Settings:
    base = api_settings(redis_url, kafka_bootstrap, keys=(ADMIN_KEY, READ_KEY))
    return base.model_copy(update={"state": StateSettings(erase_tombstone_days=tombstone_days)})


async def _index_entries(p: Pipeline, customer_id: str) -> dict[str, Any]:
    """Where a customer shows in Redis: its hash, its segment set, its shard's counts, due."""
    k, shard = p.keys, shard_of(customer_id)
    fields = await p.redis.hgetall(k.customer(customer_id))
    raw_counts = await p.redis.hgetall(k.counts(shard))
    counts = {n.decode() if isinstance(n, bytes) else n: int(v) for n, v in raw_counts.items()}
    sets = [
        name
        for name in counts
        if await p.redis.sismember(k.segment_members(shard, name), customer_id)
    ]
    due = await p.redis.zscore(k.due(shard), customer_id)
    return {"fields": fields, "sets": sets, "counts": counts, "due": due}


async def test_erase_removes_profile_segment_indexes_counts_and_due(
    redis_url: str, kafka_bootstrap: str
) -> None:
    settings = _settings(redis_url, kafka_bootstrap)
    # the neighbour shares c-a's shard: its set entry and count must survive the erase
    shard = shard_of("c-a")
    neighbour = next(f"n-{i}" for i in range(100_000) if shard_of(f"n-{i}") == shard)
    events = [
        purchase("c-a", "e1", NOW - timedelta(days=3), "59.90"),
        purchase("c-a", "e2", NOW - timedelta(days=1), "10.00"),
        purchase(neighbour, "e3", NOW - timedelta(days=2), "20.00"),
        engagement("c-b", "e4", NOW - timedelta(days=1)),
    ]
    async with pipeline(settings) as p:
        stats = await p.handle(p.records(events, 0))
        assert stats.applied == 4
        before = await _index_entries(p, "c-a")
        neighbour_before = await _index_entries(p, neighbour)
        assert before["fields"][b"v"] and len(before["sets"]) == 1, before
        assert before["due"] is not None, "a recent buyer is due for review later"
        (segment,) = before["sets"]
        app = app_for(settings, MovableClock(NOW))
        async with running(app, ADMIN_SECRET) as client:
            assert (await client.get("/v1/customers/c-a/segment")).status_code == 200
            response = await client.delete("/v1/customers/c-a")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["customer_id"] == "c-a"
            assert body["erased"] is True
            assert body["erased_at"] == "2026-11-25T12:00:00Z"
            assert body["tombstone_expires_at"] == "2026-12-25T12:00:00Z"

            after = await _index_entries(p, "c-a")
            assert set(after["fields"]) == {b"x"}, "only the tombstone is left"
            assert int(after["fields"][b"x"]) == int(NOW.timestamp() * 1000)
            ttl_ms = await p.redis.pttl(p.keys.customer("c-a"))
            assert 29 * 86_400_000 < ttl_ms <= 30 * 86_400_000
            assert after["sets"] == [] and after["due"] is None
            assert after["counts"][segment] == before["counts"][segment] - 1
            neighbour_after = await _index_entries(p, neighbour)
            assert neighbour_after["fields"] == neighbour_before["fields"]
            assert neighbour_after["sets"] == neighbour_before["sets"] != []
            assert neighbour_after["due"] == neighbour_before["due"]

            for path in ("/v1/customers/c-a/segment", "/v1/customers/c-a/profile"):
                gone = await client.get(path)
                assert gone.status_code == 404, path
                assert gone.json()["error"]["code"] == "customer_not_found"
            listing = await client.get(f"/v1/segments/{segment}/customers")
            assert "c-a" not in listing.json()["customers"]
            batch = await client.post("/v1/segments:batch-get", json={"customer_ids": ["c-a"]})
            assert batch.status_code == 200
            assert "c-a" in str(batch.json()) and '"known": true' not in batch.text

            assert (await client.get("/v1/customers/c-b/segment")).status_code == 200

            again = await client.delete("/v1/customers/c-a")
            assert again.status_code == 200 and again.json()["erased"] is False
            never = await client.delete("/v1/customers/never-seen")
            assert never.status_code == 200 and never.json()["erased"] is False
            assert await p.redis.hkeys(p.keys.customer("never-seen")) == [b"x"]


async def test_late_and_replayed_events_are_skipped_while_the_tombstone_lives(
    redis_url: str, kafka_bootstrap: str
) -> None:
    settings = _settings(redis_url, kafka_bootstrap)
    first = [
        purchase("c-late", "e1", NOW - timedelta(days=5), "30.00"),
        engagement("c-late", "e2", NOW - timedelta(days=4)),
        purchase("c-keep", "e3", NOW - timedelta(days=4), "15.00"),
    ]
    async with pipeline(settings) as p:
        batch = p.records(first, 0)
        assert (await p.handle(batch)).applied == 3  # c-late is now in the consumer's cache
        app = app_for(settings, MovableClock(NOW))
        async with running(app, ADMIN_SECRET) as client:
            assert (await client.delete("/v1/customers/c-late")).json()["erased"] is True

            # the whole batch again (a replay after a crash): nothing re-creates c-late
            replay = await p.handle(batch)
            assert replay.applied == 0
            # a late event of the erased customer at a new offset, and a new one of another
            late = [
                purchase("c-late", "e4", NOW - timedelta(hours=1), "99.00"),
                purchase("c-keep", "e5", NOW - timedelta(hours=1), "5.00"),
            ]
            stats = await p.handle(p.records(late, 3))
            assert stats.applied == 1  # c-keep's
            assert stats.duplicates == 0

            # the same late event straight through the store: outcome ERASED, counted apart
            decoded = EventCodec(settings.validation).decode(b"c-late", encode(late[0]), now=NOW)
            assert isinstance(decoded, DecodedEvent)
            req = ApplyRequest("c-late", 0, 99, decoded.event_hash, decoded.delta)
            outcomes, states = await p.store.apply([req], min_day=min_day_for(NOW, RULES))
            assert outcomes == [ERASED]
            assert not states["c-late"].profile.known

            entries = await _index_entries(p, "c-late")
            assert set(entries["fields"]) == {b"x"}
            assert entries["sets"] == [] and entries["due"] is None
            assert (await client.get("/v1/customers/c-late/segment")).status_code == 404
            assert (await client.get("/v1/customers/c-keep/segment")).status_code == 200


async def test_after_the_tombstone_expires_an_event_creates_the_customer_again(
    redis_url: str, kafka_bootstrap: str
) -> None:
    tombstone_s = 0.5
    settings = _settings(redis_url, kafka_bootstrap, tombstone_days=tombstone_s / 86_400)
    async with pipeline(settings) as p:
        first = [purchase("c-back", "e1", NOW - timedelta(days=2), "40.00")]
        assert (await p.handle(p.records(first, 0))).applied == 1
        app = app_for(settings, MovableClock(NOW))
        async with running(app, ADMIN_SECRET) as client:
            assert (await client.delete("/v1/customers/c-back")).json()["erased"] is True
            key = p.keys.customer("c-back")
            assert await p.redis.hkeys(key) == [b"x"]
            assert 0 < await p.redis.pttl(key) <= 500
            # still erased: skipped
            early = [purchase("c-back", "e2", NOW - timedelta(hours=2), "1.00")]
            assert (await p.handle(p.records(early, 1))).applied == 0

            deadline = time.monotonic() + 10
            while await p.redis.exists(key):
                assert time.monotonic() < deadline, "the tombstone did not expire"
                await asyncio.sleep(0.05)

            later = [purchase("c-back", "e3", NOW - timedelta(hours=1), "7.00")]
            stats = await p.handle(p.records(later, 2))
            assert stats.applied == 1
            profile = await client.get("/v1/customers/c-back/profile")
            assert profile.status_code == 200
            # a new customer: only the event after the tombstone counts
            assert profile.json()["lifetime"]["orders"] == 1
            assert profile.json()["lifetime"]["spend"] == "7.00"


async def test_erase_needs_the_admin_scope(redis_url: str, kafka_bootstrap: str) -> None:
    settings = _settings(redis_url, kafka_bootstrap)
    async with pipeline(settings) as p:
        events = [purchase("c-kept", "e1", NOW - timedelta(days=2), "40.00")]
        assert (await p.handle(p.records(events, 0))).applied == 1
        app = app_for(settings, MovableClock(NOW))
        async with running(app) as client:
            for headers, status in (
                ({}, 401),
                ({"Authorization": "Bearer not-a-key"}, 401),
                ({"Authorization": f"Bearer {READ_SECRET}"}, 403),
                ({"Authorization": f"Basic {ADMIN_SECRET}"}, 401),
            ):
                response = await client.delete("/v1/customers/c-kept", headers=headers)
                assert response.status_code == status, (headers, response.text)
                code = response.json()["error"]["code"]
                assert code == ("forbidden" if status == 403 else "unauthorized")
            fields = await p.redis.hgetall(p.keys.customer("c-kept"))
            assert b"v" in fields and b"x" not in fields, "refused erases changed nothing"
            ok = await client.get(
                "/v1/customers/c-kept/segment", headers={"Authorization": f"Bearer {READ_SECRET}"}
            )
            assert ok.status_code == 200
