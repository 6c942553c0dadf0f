"""Real-broker helpers for tests: produce records, read a topic to a count, run a consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from service.kafka import client_options
from service.settings import KafkaSettings


async def produce(
    kafka: KafkaSettings, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
) -> dict[int, int]:
    """Produces in order and returns, per partition, the offset after the last record."""
    producer = AIOKafkaProducer(
        **client_options(kafka), acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: dict[int, int] = {}
    for md in metadata:
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    return ends


async def committed(
    kafka: KafkaSettings, group_id: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """The group's committed offsets (0 where none)."""
    consumer = AIOKafkaConsumer(
        **client_options(kafka), group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in partitions:
            out[p] = await consumer.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await consumer.stop()


async def read_topic(
    kafka: KafkaSettings, topic: str, *, at_least: int, timeout_s: float = 60.0
) -> list[ConsumerRecord]:  # type: ignore[type-arg]
    """Reads from the beginning until ``at_least`` records arrived (never trusts end offsets)."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(kafka),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < at_least and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
        # Linger briefly: more than expected would be a bug the caller wants to see.
        for _ in range(3):
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                out.extend(recs)
    finally:
        await consumer.stop()
    return out


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
