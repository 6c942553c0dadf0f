"""A hostile stream through the real consumer (``ConsumerApp`` on a real broker and Redis):
valid events mixed with fuzzed records (tests/support/fuzz.py). Every record is either applied
or dead-lettered, nothing is lost or counted twice, the consumer keeps going, and the
dead-letter topic holds exactly the records the codec refuses."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from consumers.codec import DeadLetter, EventCodec
from consumers.runner import ConsumerApp
from service.kafka import ensure_topics
from service.segmentation.rules import load_rules
from tests.conftest import SettingsFactory
from tests.support.events import encode, engagement, purchase, refund
from tests.support.fuzz import mutate
from tests.support.kafka import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)


async def test_mixed_valid_and_fuzzed_records_are_applied_or_dead_lettered(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=3)
    rng = random.Random(20261125)
    records: list[tuple[bytes | None, bytes]] = []
    for i in range(600):
        # every event has its own id, so a fuzzed record that stays valid applies once too
        cid = f"c-{rng.randrange(80)}"
        at = NOW - timedelta(days=rng.randrange(0, 300), minutes=rng.randrange(1, 1440))
        event = rng.choice(
            [
                purchase(cid, f"e-{i}", at, f"{rng.randrange(1, 90000) / 100:.2f}"),
                refund(cid, f"e-{i}", at, "2.50"),
                engagement(cid, f"e-{i}", at),
            ]
        )
        if rng.random() < 0.5:
            records.append((cid.encode(), encode(event)))
        else:
            key, value = mutate(rng, event)
            if len(value) > 900_000:  # the broker's message cap, not the codec's business
                value = value[:900_000]
            records.append((key, value))
    codec = EventCodec(settings.validation)
    expected_dead = [
        (key, value)
        for key, value in records
        if isinstance(codec.decode(key, value, now=NOW), DeadLetter)
    ]
    assert 100 < len(expected_dead) < len(records) - 200, "a real mix"
    await produce(k, k.events_topic, records)

    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    try:
        await wait_for(
            lambda: app.totals.records >= len(records), timeout_s=90, what="all records handled"
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)

    totals = app.totals
    assert totals.records == len(records)
    assert totals.applied + totals.dead_lettered == len(records)
    assert totals.duplicates == 0
    assert totals.dead_lettered == len(expected_dead)

    dlq = await read_topic(k, k.dlq_topic, at_least=len(expected_dead))

    def order(record: tuple[bytes | None, bytes]) -> tuple[bool, bytes, bytes]:
        return (record[0] is None, record[0] or b"", record[1])

    assert sorted(((r.key, r.value) for r in dlq), key=order) == sorted(expected_dead, key=order)
    assert all(dict(r.headers)["dlq.reason"] for r in dlq)
