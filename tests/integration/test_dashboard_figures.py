"""The dashboard's figures from real Redis: consumer counters, KPIs, sweeper lag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from schemas.stats import PipelineHealth, SegmentKpis
from service.api.app import create_app
from service.pipeline_stats import PipelineFigures
from service.store.keys import Keys
from service.store.redis_client import create_redis
from tests.support.api import NOW_UTC, MovableClock, api_key, api_settings, load_events, running
from tests.support.events import purchase, refund

pytestmark = pytest.mark.integration


@dataclass
class Batch:
    records: int
    applied: int
    duplicates: int = 0
    dead_lettered: int = 0
    changes: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


async def test_pipeline_health_from_consumer_counters(redis_url: str) -> None:
    key, cfg = api_key("ops", "segments:read")
    settings = api_settings(redis_url, keys=[cfg])  # Kafka unreachable: lag unknown, said so
    redis = create_redis(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    last_minute = NOW_UTC - timedelta(seconds=60)
    unreachable = create_redis(settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"}))
    try:
        figures = PipelineFigures(unreachable, keys)
        figures.add(Batch(600, 590, 4, 6, 30, {"invalid_json": 6}), at=last_minute)
        await figures.flush()  # Redis down: logged, and the figures wait for the next write
        assert figures.pending_minutes == 1
        figures._redis = redis  # Redis is back
        figures.add(Batch(600, 600, changes=12), at=last_minute)
        figures.add(Batch(1, 1), at=NOW_UTC)  # the current minute: not shown
        assert figures.pending_minutes == 2
        await figures.flush()
        assert figures.pending_minutes == 0
        await figures.flush()  # nothing added since: nothing counted twice
    finally:
        await unreachable.aclose()
        await redis.aclose()
    app = create_app(settings, clock=MovableClock(NOW_UTC))
    async with running(app, key) as client:
        r = await client.get("/v1/stats/pipeline")
        assert r.status_code == 200, r.text
        health = PipelineHealth.model_validate(r.json())
    assert health.events_per_s == 20.0  # 1,200 records in the last full minute
    assert health.applied_per_s == round(1190 / 60, 2)
    assert health.dead_letters_per_min == 6
    assert health.dead_letter_reasons == {"invalid_json": 6}
    assert health.changes_per_min == 42
    assert health.consumer_lag.total is None and health.consumer_lag.error
    assert health.sweeper_lag.overdue_customers == 0


async def test_segment_kpis_sum_net_spend_of_the_last_30_days(
    redis_url: str, kafka_bootstrap: str
) -> None:
    key, cfg = api_key("ops", "segments:read")
    settings = api_settings(redis_url, kafka_bootstrap, keys=[cfg])
    await load_events(
        settings,
        [
            purchase("k-1", "e1", NOW_UTC - timedelta(days=3), "100.00"),
            refund("k-1", "e2", NOW_UTC - timedelta(days=2), "30.00"),
            purchase("k-1", "e3", NOW_UTC - timedelta(days=40), "500.00"),  # outside 30 days
            purchase("k-2", "e4", NOW_UTC - timedelta(days=1), "12.50"),
        ],
        now=NOW_UTC,
    )
    app = create_app(settings, clock=MovableClock(NOW_UTC + timedelta(hours=1)))
    async with running(app, key) as client:
        r = await client.get("/v1/stats/segments")
        assert r.status_code == 200, r.text
        kpis = SegmentKpis.model_validate(r.json())
        segment_of = {
            cid: (await client.get(f"/v1/customers/{cid}/segment")).json()["segment"]
            for cid in ("k-1", "k-2")
        }
    assert kpis.exact and kpis.customers_read == 2
    rows = {row.segment: row for row in kpis.segments}
    expected: dict[str, float] = {}
    for cid, spend in (("k-1", 70.0), ("k-2", 12.5)):
        expected[segment_of[cid]] = expected.get(segment_of[cid], 0) + spend
    for segment, spend in expected.items():
        assert float(rows[segment].net_spend_30d) == spend
        assert rows[segment].members >= 1
    assert sum(r.members for r in kpis.segments) == 2


async def test_figures_writer_flushes_on_its_interval_and_ends_on_its_event(
    redis_url: str,
) -> None:
    # The consumer ends the writer with an event, not a cancellation (a cancelled writer was
    # once found still waiting in its sleep, and the consumer never exited after SIGTERM).
    settings = api_settings(redis_url, keys=[])
    redis = create_redis(settings.redis)
    try:
        figures = PipelineFigures(redis, Keys(f"fw{NOW_UTC.microsecond}:"))
        stop = asyncio.Event()
        writer = asyncio.create_task(figures.run(stop, interval_s=0.05))
        figures.add(Batch(10, 10), at=NOW_UTC)
        for _ in range(100):
            if not figures.pending_minutes:
                break
            await asyncio.sleep(0.02)
        assert figures.pending_minutes == 0  # written by the writer, on its own
        figures.add(Batch(5, 5), at=NOW_UTC)
        stop.set()
        await asyncio.wait_for(writer, timeout=1)  # ends by itself, within its interval
        assert not writer.cancelled()
        await figures.flush()  # the owner's final flush
        assert figures.pending_minutes == 0
    finally:
        await redis.aclose()
