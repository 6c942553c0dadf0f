"""The consumer under rebalances and a Redis that stops answering: nothing lost, nothing
counted twice, no offset committed past an event that is not applied."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest

from consumers.runner import ConsumerApp
from consumers.segmenter import min_day_for
from service.kafka import ensure_topics
from service.segmentation.rules import load_rules
from service.settings import RedisSettings
from service.store.keys import Keys
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.conftest import load_services
from tests.support.events import encode, ground_truth
from tests.support.faults import random_events
from tests.support.kafka import committed, produce, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)


async def _assert_exact(settings, events) -> None:  # type: ignore[no-untyped-def]
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    min_day = min_day_for(NOW, RULES)
    truth = ground_truth(events, min_day=min_day)
    states = await store.read(list(truth), min_day=min_day)
    await redis.aclose()
    assert {cid: s.profile for cid, s in states.items()} == truth


async def test_rebalance_join_and_leave_mid_stream(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_batch=100)
    k = settings.kafka
    await ensure_topics(k, partitions=6)
    pool = random_events(60_000, 400, seed=1, now=NOW)
    chunks = [pool[i : i + 300] for i in range(0, len(pool), 300)]
    ends: dict[int, int] = {}
    events: list[dict] = []  # type: ignore[type-arg]
    enough = asyncio.Event()

    async def traffic() -> None:
        # Events keep arriving while consumers join and leave (brokers differ in how long a
        # rebalance takes, so it runs until told, within a bound).
        for chunk in chunks:
            if enough.is_set():
                break
            events.extend(chunk)
            got = await produce(
                k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in chunk]
            )
            for p, end in got.items():
                ends[p] = max(ends.get(p, 0), end)
            await asyncio.sleep(0.15)

    producer = asyncio.create_task(traffic())
    a = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    b = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: a.totals.records > 500, timeout_s=60, what="consumer A progressing")
    task_b = asyncio.create_task(b.run())  # joins: partitions move while A works
    await wait_for(lambda: b.totals.records > 0, timeout_s=60, what="consumer B receiving")
    assert not producer.done(), "traffic ended before the rebalance: make it longer"
    a.request_stop()  # leaves: B takes over A's partitions
    await asyncio.wait_for(task_a, 60)
    await asyncio.sleep(1.0)
    enough.set()
    await producer

    async def all_committed() -> bool:
        return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

    await wait_for(all_committed, timeout_s=90, what="every offset committed")
    b.request_stop()
    await asyncio.wait_for(task_b, 60)
    assert a.totals.records > 0 and b.totals.records > 0
    assert a.totals.applied + b.totals.applied == len(events)  # replays at hand-over skipped
    await _assert_exact(settings, events)


async def test_redis_unavailable_stops_commits_then_recovers(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    services = load_services()
    info = services.start("redis", tmp_path / "own-redis")
    try:
        settings = make_settings(max_batch=100)
        settings.redis = RedisSettings(
            url=f"redis://{info['host']}:{info['port']}/0",
            key_prefix=settings.redis.key_prefix,
            socket_timeout_s=0.5,
            retry_initial_s=0.05,
            retry_max_s=0.3,
        )
        k = settings.kafka
        await ensure_topics(k, partitions=2)
        events = random_events(3000, 100, seed=3, now=NOW)
        ends = await produce(
            k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events]
        )

        app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
        task = asyncio.create_task(app.run())
        await wait_for(
            lambda: app.totals.records > 300, timeout_s=60, what="progress before the outage"
        )
        os.kill(info["pid"], signal.SIGSTOP)  # Redis stops answering (connections hang)
        try:
            await asyncio.sleep(1.0)
            frozen = await committed(k, k.group_id, k.events_topic, list(ends))
            handled = app.totals.records
            await asyncio.sleep(3.0)
            assert await committed(k, k.group_id, k.events_topic, list(ends)) == frozen
            assert app.totals.records == handled
            assert frozen != ends
        finally:
            os.kill(info["pid"], signal.SIGCONT)

        async def all_committed() -> bool:
            return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

        await wait_for(all_committed, timeout_s=90, what="recovery after Redis came back")
        app.request_stop()
        await asyncio.wait_for(task, 60)
        await _assert_exact(settings, events)
    finally:
        services.stop("redis", tmp_path / "own-redis")
