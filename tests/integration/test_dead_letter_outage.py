"""The dead-letter topic is unavailable (deleted; the test brokers do not auto-create topics):
the consumer never commits past a record it could not dead-letter; it retries the batch and
counts each failed produce (``segments_kafka_errors_total{operation="produce"}``, plus a
warning log); once the topic is back, every bad record is on it with its reason and source,
and every good event is applied exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

import consumers.runner
from consumers.runner import ConsumerApp
from service.kafka import client_options, ensure_topics
from service.settings import KafkaSettings
from tests.support.events import encode
from tests.support.faults import NOW, RULES, assert_state_exact, offsets_of, random_events
from tests.support.kafka import committed, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
PRODUCE_TIMEOUT_MS = 2_000
"""The consumer's producer gives up on a send after this (30 s in production), so a failed
dead letter shows within the test."""


def _quick_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=PRODUCE_TIMEOUT_MS,
    )


def _produce_failures(app: ConsumerApp) -> float:
    return sum(
        s.value
        for metric in app.metrics.kafka_errors.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("operation") == "produce"
    )


async def test_dead_letter_topic_unavailable(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers.runner, "create_producer", _quick_producer)
    settings = make_settings(max_batch=200)
    k = settings.kafka
    await ensure_topics(k, partitions=PARTITIONS)
    events = random_events(3_000, 200, seed=51, now=NOW)
    first, second = events[:1_000], events[1_000:]
    records = [(e["customer_id"].encode(), encode(e)) for e in events]
    bad_at = {1_200, 1_500, 2_100, 2_700, 2_999}  # indexes in the whole stream
    bad_values = {i: f"not json #{i}".encode() for i in bad_at}
    stream = []
    for i, (key, value) in enumerate(records):
        if i in bad_at:
            stream.append((key, bad_values[i]))  # same key: lands amid that customer's events
        stream.append((key, value))

    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        head = stream[: len(first)]
        ends = await produce(k, k.events_topic, head)

        async def caught_up() -> bool:
            return await committed(k, k.group_id, k.events_topic, list(range(PARTITIONS))) == {
                p: ends.get(p, 0) for p in range(PARTITIONS)
            }

        await wait_for(caught_up, timeout_s=60, what="the first events committed")

        await admin.delete_topics([k.dlq_topic])

        async def dlq_gone() -> bool:
            return k.dlq_topic not in set(await admin.list_topics())

        await wait_for(dlq_gone, timeout_s=30, what="the dead-letter topic deleted")

        ends = await produce(k, k.events_topic, stream[len(first) :])
        # The first bad record's position: nothing at or past it may be committed.
        keyed = [{"customer_id": key.decode()} for key, _ in stream]
        positions = offsets_of(keyed, PARTITIONS)
        first_bad = min(i for i, (_, v) in enumerate(stream) if v in bad_values.values())
        bad_partition, bad_offset = positions[first_bad]

        await wait_for(lambda: _produce_failures(app) >= 2, timeout_s=60, what="failed produces")
        now_committed = await committed(k, k.group_id, k.events_topic, [bad_partition])
        assert now_committed[bad_partition] <= bad_offset, "committed past an unsent dead letter"
        assert app.totals.dead_lettered == 0

        await ensure_topics(k, partitions=PARTITIONS)  # the topic is back

        async def all_committed() -> bool:
            return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

        await wait_for(all_committed, timeout_s=90, what="every offset committed")
    finally:
        await admin.close()
        app.request_stop()
        await asyncio.wait_for(task, 60)

    dead = await read_topic(k, k.dlq_topic, at_least=len(bad_at), timeout_s=30)
    assert sorted(r.value for r in dead) == sorted(bad_values.values())
    for r in dead:
        headers = dict(r.headers)
        assert headers["dlq.reason"] and headers["dlq.source.topic"] == k.events_topic.encode()
    await assert_state_exact(settings, first + second, now=NOW, rules=RULES)
