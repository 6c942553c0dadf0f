"""A failed sweep pass is counted where operators look: ``segments_kafka_errors_total`` or
``segments_redis_errors_total`` with ``operation="sweep"`` (and logged); the sweeper goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from consumers.metrics import ConsumerMetrics
from consumers.sweeper import Sweeper
from service.segmentation.rules import load_rules
from service.settings import SweepSettings
from service.store.redis_client import create_redis
from tests.support.kafka import wait_for

pytestmark = pytest.mark.integration


class _NoSink:
    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        raise AssertionError("nothing is due in this test")


def _count(metric: Any, operation: str) -> float:
    return sum(
        s.value
        for m in metric.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("operation") == operation
    )


async def test_failed_sweep_passes_are_counted(make_settings: Any) -> None:
    settings = make_settings(sweep=SweepSettings(interval_s=0.05, lease_ttl_s=2.0))
    redis = create_redis(settings.redis)
    metrics = ConsumerMetrics()
    rules = load_rules(None)
    sweeper = Sweeper(settings, redis=redis, sink=_NoSink(), rules=lambda: rules, metrics=metrics)
    failures = [KafkaConnectionError("broker away"), RedisConnectionError("redis away")]
    real_pass = sweeper.sweep_pass

    async def failing_pass() -> None:
        if failures:
            raise failures.pop(0)
        await real_pass()

    sweeper.sweep_pass = failing_pass  # type: ignore[method-assign]
    task = asyncio.create_task(sweeper.run())
    try:
        await wait_for(
            lambda: sweeper.stats.failures >= 2 and sweeper.stats.passes >= 1,
            timeout_s=30,
            what="two failed passes and a good one",
        )
    finally:
        sweeper.stopping.set()
        await asyncio.wait_for(task, 30)
        await redis.aclose()
    assert _count(metrics.kafka_errors, "sweep") == 1
    assert _count(metrics.redis_errors, "sweep") == 1
