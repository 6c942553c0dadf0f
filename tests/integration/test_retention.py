"""Data retention against real Redis, the state written by the real handler, time injected."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client import generate_latest

from consumers.metrics import ConsumerMetrics
from consumers.retention import Retention, RetentionStats, run_retention
from service.settings import Settings, StateSettings
from service.store.erase import CustomerEraser
from service.store.keys import shard_of
from service.store.leases import Lease, ShardLeases
from tests.integration.test_erase import NOW, Pipeline, _index_entries, _settings, pipeline
from tests.support.api import MovableClock
from tests.support.events import engagement, purchase, refund

pytestmark = pytest.mark.integration

EVENTS = [
    purchase("old-buyer", "e1", NOW - timedelta(days=400), "10.00"),
    engagement("old-engaged", "e2", NOW - timedelta(days=200)),
    purchase("old-refund", "e3", NOW - timedelta(days=800), "30.00"),
    refund("old-refund", "e4", NOW - timedelta(days=10), "5.00"),
    engagement("recent", "e5", NOW - timedelta(days=5)),
    purchase("recent", "e6", NOW - timedelta(days=300), "12.00"),
]
CUSTOMERS = ("old-buyer", "old-engaged", "old-refund", "recent")


def _with_retention(settings: Settings, days: int | None) -> Settings:
    state = StateSettings(retention_days=days, retention_batch=2)
    return settings.model_copy(update={"state": state})


async def _held(p: Pipeline) -> list[Lease]:
    leases = ShardLeases(p.redis, p.keys, job="retention", ttl_s=30)
    held = await leases.acquire(sorted({shard_of(c) for c in CUSTOMERS}))
    assert len(held) == len({shard_of(c) for c in CUSTOMERS})
    return list(held)


async def test_inactive_customers_are_expired_with_their_indexes(
    redis_url: str, kafka_bootstrap: str
) -> None:
    async with pipeline(_settings(redis_url, kafka_bootstrap)) as p:
        assert (await p.handle(p.records(EVENTS, 0))).applied == len(EVENTS)
        before = {c: await _index_entries(p, c) for c in CUSTOMERS}
        assert all(len(b["sets"]) == 1 for b in before.values()), before
        clock = MovableClock(NOW)
        metrics = ConsumerMetrics()
        retention = Retention(
            _with_retention(p.settings, 180),
            p.redis,
            clock=clock,
            on_expired=metrics.observe_expired,
        )
        held = await _held(p)

        assert await retention.pass_over(held) == 2
        gone = {"old-buyer", "old-engaged"}
        for cid in CUSTOMERS:
            after = await _index_entries(p, cid)
            if cid in gone:
                assert after["fields"] == {}, "deleted, no tombstone"
                assert after["sets"] == [] and after["due"] is None
                (segment,) = before[cid]["sets"]
                assert after["counts"][segment] < before[cid]["counts"][segment]
            else:
                assert after["fields"] == before[cid]["fields"], cid
                assert after["sets"] == before[cid]["sets"]
        assert retention.stats.expired == 2 and retention.stats.customers == 4
        exposed = generate_latest(metrics.registry).decode()
        assert "segments_customers_expired_total 2.0" in exposed

        # 200 days on: the refund's bucket and the engagement are past the horizon too
        clock.now = NOW + timedelta(days=200)
        assert await retention.pass_over(held) == 2
        for cid in CUSTOMERS:
            assert await p.redis.exists(p.keys.customer(cid)) == 0, cid
        shards = {shard_of(c) for c in CUSTOMERS}
        for shard in shards:
            counts = await p.redis.hgetall(p.keys.counts(shard))
            assert all(int(v) == 0 for v in counts.values()), counts
            assert await p.redis.zcard(p.keys.due(shard)) == 0
        assert "segments_customers_expired_total 4.0" in generate_latest(metrics.registry).decode()

        # a later event starts a new profile (no tombstone)
        late = [purchase("old-buyer", "e7", NOW - timedelta(days=1), "3.00")]
        assert (await p.handle(p.records(late, len(EVENTS)))).applied == 1


async def test_a_customer_changed_since_it_was_read_is_kept(
    redis_url: str, kafka_bootstrap: str
) -> None:
    async with pipeline(_settings(redis_url, kafka_bootstrap)) as p:
        assert (await p.handle(p.records(EVENTS[:1], 0))).applied == 1
        key = p.keys.customer("old-buyer")
        fields: dict[bytes, bytes] = await p.redis.hgetall(key)  # type: ignore[assignment]
        eraser = CustomerEraser(p.redis, p.keys)
        # an event lands between the retention's read and its delete: revision moved on
        new = [purchase("old-buyer", "e8", NOW - timedelta(days=1), "1.00")]
        assert (await p.handle(p.records(new, 1))).applied == 1
        kept = await eraser.expire(
            "old-buyer", revision=fields[b"v"].decode(), packed=fields[b"g"].decode()
        )
        assert kept is False
        assert await p.redis.hget(key, "l") is not None
        assert len((await _index_entries(p, "old-buyer"))["sets"]) == 1


async def test_retention_off_keeps_everyone_and_the_loop_stops(
    redis_url: str, kafka_bootstrap: str
) -> None:
    async with pipeline(_settings(redis_url, kafka_bootstrap)) as p:
        assert (await p.handle(p.records(EVENTS, 0))).applied == len(EVENTS)
        held = await _held(p)
        off = Retention(_with_retention(p.settings, None), p.redis, clock=MovableClock(NOW))
        assert not off.enabled
        assert await off.pass_over(held) == 0
        stats = await asyncio.wait_for(
            run_retention(off, lambda: held, asyncio.Event()),
            timeout=5,
        )
        assert stats == RetentionStats(passes=1)  # the direct pass; the loop made none

        # on, in the loop: one pass at once, then it waits for the interval or ``stopping``
        on = Retention(_with_retention(p.settings, 180), p.redis, clock=MovableClock(NOW))
        stopping = asyncio.Event()
        task = asyncio.create_task(run_retention(on, lambda: held, stopping, interval_s=60))
        for _ in range(100):
            if on.stats.passes:
                break
            await asyncio.sleep(0.05)
        stopping.set()
        stats = await asyncio.wait_for(task, timeout=5)
        assert stats.passes == 1 and stats.expired == 2
        for cid in CUSTOMERS:
            assert await p.redis.exists(p.keys.customer(cid)) == (
                cid not in {"old-buyer", "old-engaged"}
            )
