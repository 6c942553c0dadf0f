"""A large sweeper backlog on a real broker and Redis (issue: "a backlog of a million due
customers drains without blocking anything else"), scaled down to ``BACKLOG`` customers so it
fits in the suite: every due customer is reviewed exactly once, in batches of at most
``sweep.batch_size``, while the consumer the sweeper runs inside keeps handling live events
promptly and its event loop never stalls."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from consumers.runner import ConsumerApp
from service.kafka import ensure_topics
from service.segmentation.rules import load_rules
from service.settings import SweepSettings
from service.store.keys import SHARDS, Keys
from service.store.packing import epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from tests.conftest import REDIS_CLUSTER
from tests.support.events import encode, purchase
from tests.support.kafka import produce, wait_for

pytestmark = pytest.mark.integration

RULES = load_rules(None)
BACKLOG = 20_000 if REDIS_CLUSTER else 100_000
"""Due customers at the start (redis-py's cluster client is several times slower per command)."""
BATCH = 500  # the default sweep.batch_size
LIVE = 300
"""Fresh customers whose events arrive while the backlog drains."""
MAX_LIVE_LATENCY_MS = 10_000
MAX_LOOP_STALL_S = 1.0


async def _due_now(redis: AnyRedis, keys: Keys) -> int:
    pipe = redis.pipeline(transaction=False)
    now_ms = epoch_ms(datetime.now(UTC))
    for shard in range(SHARDS):
        pipe.zcount(keys.due(shard), "-inf", now_ms)
    return int(sum(await pipe.execute()))


async def _loop_probe(stop: asyncio.Event, stalls: list[float], every_s: float = 0.01) -> None:
    """How late the event loop wakes a 10 ms sleeper: a long synchronous stretch shows here."""
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(every_s)
        stalls.append(time.monotonic() - t0 - every_s)


async def test_a_large_backlog_drains_in_bounded_batches_while_live_traffic_flows(  # type: ignore[no-untyped-def]
    make_settings, caplog
) -> None:
    settings = make_settings(
        max_batch=5_000,
        sweep=SweepSettings(batch_size=BATCH, in_consumer=True),
    )
    assert settings.sweep.interval_s == 1.0  # the default interval
    k = settings.kafka
    keys = Keys(settings.redis.key_prefix)
    await ensure_topics(k, partitions=4)

    # The backlog: customers who bought once 200 days ago, segmented back then (a consumer with
    # its clock in the past, no sweeper); all their reviews are due now, and each turns churned.
    then = datetime.now(UTC) - timedelta(days=200)
    ids = [f"b-{i}" for i in range(BACKLOG)]
    await produce(
        k,
        k.events_topic,
        [(cid.encode(), encode(purchase(cid, f"e-{cid}", then, "30.00"))) for cid in ids],
    )
    loader = ConsumerApp(
        settings.model_copy(update={"sweep": SweepSettings(in_consumer=False)}),
        rules=RULES,
        clock=lambda: then,
    )
    loading = asyncio.create_task(loader.run())
    try:
        await wait_for(
            lambda: loader.totals.records >= BACKLOG, timeout_s=300, what="backlog segmented"
        )
    finally:
        loader.request_stop()
        await asyncio.wait_for(loading, 60)
    redis = create_redis(settings.redis)
    assert await _due_now(redis, keys) == BACKLOG, loader.totals

    # A consumer with the sweeper inside (one event loop for both), on the real clock.
    caplog.set_level(logging.DEBUG, logger="consumers.sweeper")  # its "sweep batch" records
    app = ConsumerApp(settings, rules=RULES)
    stalls: list[float] = []
    probing = asyncio.Event()
    probe = asyncio.create_task(_loop_probe(probing, stalls))
    running = asyncio.create_task(app.run())
    try:

        async def sweeping() -> bool:
            return app.sweep_stats.reviewed > 0

        await wait_for(sweeping, timeout_s=60, what="the sweeper at work")
        # Live traffic while the backlog drains: fresh customers, each must be segmented.
        live_ids = [f"live-{i}" for i in range(LIVE)]
        live = [
            (cid.encode(), encode(purchase(cid, f"e-{cid}", datetime.now(UTC), "12.50")))
            for cid in live_ids
        ]
        sent_at = time.monotonic()
        await produce(k, k.events_topic, live)
        await wait_for(lambda: app.totals.records >= LIVE, timeout_s=60, what="live events handled")
        live_took_s = time.monotonic() - sent_at
        due_when_live_done = await _due_now(redis, keys)
        reviewed_when_live_done = app.sweep_stats.reviewed

        async def drained() -> bool:
            return await _due_now(redis, keys) == 0

        drain_started = time.monotonic()
        await wait_for(drained, timeout_s=600, what="the backlog drained")
        drain_s = time.monotonic() - drain_started
    finally:
        app.request_stop()
        await asyncio.wait_for(running, 60)
        probing.set()
        await probe

    # Live traffic was served during the drain, not after it, and promptly.
    assert due_when_live_done > 0, "the backlog drained before live traffic was checked"
    assert reviewed_when_live_done < BACKLOG
    assert live_took_s * 1000 <= MAX_LIVE_LATENCY_MS, live_took_s
    live_latencies = list(app.latency_ms)[-LIVE:]
    assert len(live_latencies) == LIVE
    assert max(live_latencies) <= MAX_LIVE_LATENCY_MS, max(live_latencies)
    # The event loop the consumer and the sweeper share never stalled for long.
    assert stalls and max(stalls) <= MAX_LOOP_STALL_S, max(stalls)

    # Bounded batches: every batch the sweeper logged holds at most batch_size customers,
    # and together they are the whole backlog, each due customer reviewed exactly once.
    batches = [
        r.customers
        for r in caplog.records
        if r.name == "consumers.sweeper" and r.getMessage() == "sweep batch"
    ]
    assert batches and max(batches) <= BATCH, max(batches, default=0)
    assert len(batches) >= BACKLOG // BATCH
    assert sum(batches) == BACKLOG == app.sweep_stats.reviewed
    assert app.sweep_stats.changes == BACKLOG
    assert app.sweep_stats.fenced == app.sweep_stats.failures == 0
    # The lag metric saw every change (a backlog is late by design: no bound on it here).
    assert app.metrics.sweeper_lag.count == BACKLOG

    # Every backlog customer is churned now, and the live ones are segmented too.
    store = RedisProfileStore(redis, keys, ring_size=settings.state.event_id_ring)
    lifecycles: dict[str, str] = {}
    try:
        for i in range(0, len(ids), 5_000):
            states = await store.read(ids[i : i + 5_000], min_day=0)
            lifecycles.update(
                {cid: s.stored.axes.lifecycle for cid, s in states.items() if s.stored}
            )
        live_states = await store.read(live_ids, min_day=0)
    finally:
        await redis.aclose()
    assert lifecycles == dict.fromkeys(ids, "churned")
    assert all(live_states[cid].stored is not None for cid in live_ids)
    print(  # the figures (pytest -s)
        f"backlog {BACKLOG}: drained {drain_s:.1f}s after live traffic, {len(batches)} batches "
        f"(max {max(batches)}), loop stall max {max(stalls):.3f}s, live events handled in "
        f"{live_took_s:.2f}s (max e2e {max(live_latencies):.0f} ms), due when live done "
        f"{due_when_live_done}"
    )
