"""The consumer end to end on a real broker and real Redis: every valid event applied exactly
once, every bad record dead-lettered with its bytes, position and reason, changes published."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from consumers.runner import ConsumerApp
from consumers.segmenter import min_day_for
from service.kafka import ensure_topics
from service.segmentation.classifier import classify
from service.segmentation.rules import load_rules
from service.store.keys import Keys
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.events import encode, engagement, ground_truth, purchase, refund
from tests.support.kafka import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)

GOOD = purchase("c-good", "e-good", NOW - timedelta(days=1), "10.00")
BAD: list[tuple[str, bytes | None, bytes]] = [
    ("invalid_json", b"c-1", b'{"type": "purchase", '),
    ("invalid_utf8", b"c-1", b'{"type": "purchase", "x": "\xff\xfe"}'),
    (
        "missing_field",
        b"c-1",
        encode({k: v for k, v in GOOD.items() if k != "amount"} | {"customer_id": "c-1"}),
    ),
    ("wrong_type", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": ["1"]})),
    ("unknown_event_type", b"c-1", encode(GOOD | {"customer_id": "c-1", "type": "teleport"})),
    ("negative_amount", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": "-5.00"})),
    ("non_finite_amount", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": "NaN"})),
    ("non_finite_amount", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": "Infinity"})),
    ("too_many_decimals", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": "1.00001"})),
    ("amount_too_large", b"c-1", encode(GOOD | {"customer_id": "c-1", "amount": "99999999999"})),
    ("invalid_id", b"c-{1}", encode(GOOD | {"customer_id": "c-{1}"})),
    ("key_mismatch", b"c-2", encode(GOOD | {"customer_id": "c-1"})),
    (
        "timestamp_without_offset",
        b"c-1",
        encode(GOOD | {"customer_id": "c-1", "occurred_at": "2026-11-24T10:00:00"}),
    ),
    (
        "timestamp_in_future",
        b"c-1",
        encode(GOOD | {"customer_id": "c-1", "occurred_at": (NOW + timedelta(days=2)).isoformat()}),
    ),
    ("record_too_large", b"c-1", encode(GOOD | {"customer_id": "c-1", "channel": "x" * 70_000})),
]


async def test_valid_applied_bad_dead_lettered_changes_published(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=4)

    rng = random.Random(7)
    good: list[dict] = []
    for i in range(400):
        cid = f"c-{rng.randrange(60)}"
        at = NOW - timedelta(days=rng.randrange(0, 400), minutes=rng.randrange(0, 1440))
        kind = rng.random()
        if kind < 0.8:
            good.append(
                purchase(cid, f"e-{i}", at, f"{rng.randrange(1, 50000) / 100:.2f}", margin="2.00")
            )
        elif kind < 0.9:
            good.append(refund(cid, f"e-{i}", at, "3.50"))
        else:
            good.append(engagement(cid, f"e-{i}", at))
    good.append(engagement("c-browser", "e-browse", NOW - timedelta(days=3)))
    records = []
    for i, e in enumerate(good):
        records.append((e["customer_id"].encode(), encode(e)))
        if i % 8 == 0:  # a producer retry: the same event again right after, at a new offset
            records.append((e["customer_id"].encode(), encode(e)))
    duplicates = len(records) - len(good)
    # Bad records in the middle of a customer's stream: the valid ones around them still apply.
    mixed = records[:200] + [(key, value) for _, key, value in BAD] + records[200:]
    await produce(k, k.events_topic, mixed)

    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    try:
        await wait_for(
            lambda: app.totals.records >= len(mixed), timeout_s=60, what="all records handled"
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)

    assert app.totals.dead_lettered == len(BAD)
    assert app.totals.applied == len(good)
    assert app.totals.duplicates == duplicates

    # Profiles and segments: exactly the recomputation from the full history.
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    min_day = min_day_for(NOW, RULES)
    truth = ground_truth(good, min_day=min_day)
    states = await store.read(list(truth), min_day=min_day)
    await redis.aclose()
    assert {cid: s.profile for cid, s in states.items()} == truth
    assert states["c-browser"].stored is not None
    assert states["c-browser"].stored.axes.lifecycle == "prospect"

    # Dead letters: original bytes, source position and a distinct reason each.
    dlq = await read_topic(k, k.dlq_topic, at_least=len(BAD))
    assert len(dlq) == len(BAD)
    by_value = {r.value: dict(r.headers) for r in dlq}
    for reason, _key, value in BAD:
        headers = by_value[value]
        assert headers["dlq.reason"].decode() == reason, (reason, headers)
        assert headers["dlq.source.topic"].decode() == k.events_topic
        assert int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.detail"]

    # Changes: each customer's last change lands on its stored segmentation; first has no previous.
    changes = await read_topic(k, k.changes_topic, at_least=len(truth))
    per_customer: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(changes, key=lambda r: (r.partition, r.offset)):
        change = orjson.loads(r.value)
        assert r.key == change["customer_id"].encode()
        per_customer[change["customer_id"]].append(change)
    assert set(per_customer) == set(truth)
    for cid, seq in per_customer.items():
        assert seq[0]["previous"] is None
        assert all(c["cause"] == "event" for c in seq)
        want = classify(truth[cid], RULES, now=NOW)
        assert seq[-1]["current"]["segment"] == want.segment
        for before, after in itertools.pairwise(seq):
            assert after["previous"]["segment"] == before["current"]["segment"]
