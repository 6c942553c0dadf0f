"""Property: any history, delivered at least once in any batching, gives exactly the profile and
segmentation a straightforward recomputation from the full history gives.

Runs the real consumer path below the poll loop (codec → Lua apply in real Redis → classifier →
change events to the real broker → segment writes) with hypothesis choosing the history, the
batch boundaries, redeliveries of whole batches (consumer replays) and producer duplicates at
new offsets.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.codec import EventCodec
from consumers.handler import BatchHandler
from consumers.segmenter import Segmenter, min_day_for
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.segmentation.classifier import classify
from service.segmentation.rules import load_rules
from service.store.keys import Keys, shard_of
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from service.store.resp import RespPipeline
from tests.support.events import Rec, encode, engagement, ground_truth, purchase, refund

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """Events in partition order (with producer duplicates) and how they are delivered."""
    customers = [f"c-{i}" for i in range(draw(st.integers(1, 3)))]
    n = draw(st.integers(1, 25))
    events: list[dict[str, Any]] = []
    for i in range(n):
        cid = draw(st.sampled_from(customers))
        # Anywhere in the last 400 days: out of order, late, older than every window.
        at = NOW - timedelta(minutes=draw(st.integers(0, 400 * 24 * 60)))
        at = at.astimezone(timezone(timedelta(hours=draw(st.integers(-12, 14)))))
        kind = draw(st.sampled_from(["purchase", "purchase", "purchase", "refund", "engagement"]))
        cents = draw(st.integers(0, 500_000))
        amount = f"{cents // 100}.{cents % 100:02d}"
        eid = f"e-{i}"
        if kind == "purchase":
            e = purchase(
                cid,
                eid,
                at,
                amount,
                margin=draw(st.sampled_from([None, "5.25", "-3.00"])),
                discount=draw(st.sampled_from([None, "1.00"])),
                premium=draw(st.sampled_from([None, "2.50", amount])),
            )
        elif kind == "refund":
            e = refund(
                cid,
                eid,
                at,
                amount if cents else "0.01",
                margin=draw(st.sampled_from([None, "1.00"])),
            )
        else:
            e = engagement(cid, eid, at, draw(st.sampled_from(["viewed", "support_contact"])))
        events.append(e)
        if draw(st.integers(0, 9)) == 0:
            # Producer retry: the same event again at a new offset, soon after.
            events.append(e)
    # Delivery: consecutive batches; some redelivered (the consumer crashed before committing).
    order: list[list[int]] = []
    start = 0
    while start < len(events):
        size = draw(st.integers(1, 6))
        batch = list(range(start, min(start + size, len(events))))
        order.append(batch)
        if draw(st.integers(0, 3)) == 0:
            order.append(batch)  # replay
        start += size
    return events, order


@pytest.fixture
async def pipeline(make_settings):  # type: ignore[no-untyped-def]
    settings = make_settings()
    await ensure_topics(settings.kafka, partitions=1)
    redis = create_redis(settings.redis)
    producer = create_producer(settings.kafka)
    await producer.start()
    yield settings, redis, producer
    await producer.stop()
    await redis.aclose()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    history=histories(),
    ring_size=st.sampled_from([1, 8]),
    cache_size=st.sampled_from([0, 1, 1000]),
    cache_min_buckets=st.sampled_from([0, 3]),
    owners=st.lists(st.integers(0, 1), min_size=1, max_size=40),
)
async def test_incremental_equals_recomputed(  # type: ignore[no-untyped-def]
    pipeline, history, ring_size, cache_size, cache_min_buckets, owners
) -> None:
    """Two consumers take turns (``owners``: which one handles each delivery), as after
    rebalances: each keeps its own customer cache (``cache_size`` 0 = none, 1 = evicting all
    the time; ``cache_min_buckets`` 3 leaves customers with fewer buckets out of it, read back
    every time), so each must notice what the other applied meanwhile."""
    settings, redis, producer = pipeline
    events, deliveries = history
    prefix = f"{settings.redis.key_prefix}{uuid.uuid4().hex[:8]}:"
    sink = ProducerSink(producer)
    rules = lambda: RULES  # noqa: E731
    clients: list[RespPipeline] = []
    handlers = []
    for _ in range(2):
        # ring_size 1 leaves replays to the offset watermark alone; 8 is the default.
        # The consumer's own choice: its RESP pipeline on a single node, redis-py's cluster
        # pipeline on a Redis Cluster (so the property holds for that path too).
        fast = None if settings.redis.cluster else RespPipeline(settings.redis.url, timeout_s=5)
        if fast is not None:
            clients.append(fast)
        store = RedisProfileStore(
            redis,
            Keys(prefix),
            ring_size=ring_size,
            fast=fast,
            cache_size=cache_size,
            cache_min_buckets=cache_min_buckets,
        )
        segmenter = Segmenter(store, sink, changes_topic=settings.kafka.changes_topic, rules=rules)
        handlers.append(
            BatchHandler(
                settings,
                codec=EventCodec(settings.validation),
                store=store,
                segmenter=segmenter,
                dead_letters=sink,
                rules=rules,
                clock=lambda: NOW,
            )
        )
    records = [
        Rec(settings.kafka.events_topic, 0, offset, e["customer_id"].encode(), encode(e))
        for offset, e in enumerate(events)
    ]
    for n, batch in enumerate(deliveries):
        handler = handlers[owners[n % len(owners)]]
        stats = await handler.handle([records[i] for i in batch])
        assert stats.dead_lettered == 0

    for fast in clients:
        await fast.aclose()
    store = RedisProfileStore(redis, Keys(prefix), ring_size=ring_size)
    min_day = min_day_for(NOW, RULES)
    truth = ground_truth(events, min_day=min_day)
    states = await store.read(list(truth), min_day=min_day)
    assert set(states) == set(truth)
    for cid, expected in truth.items():
        got = states[cid]
        assert got.profile == expected, cid
        stored = got.stored
        assert stored is not None
        want = classify(expected, RULES, now=NOW)
        assert stored.fingerprint() == (want.segment, want.axes, want.treatment.id)
        due = await redis.zscore(store.keys.due(shard_of(cid)), cid)
        expected_due = (
            None if want.next_review_at is None else int(want.next_review_at.timestamp() * 1000)
        )
        assert (None if due is None else int(due)) == expected_due
