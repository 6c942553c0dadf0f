"""Pipeline metrics and the probes server against a real broker and real Redis.

The consumer here is the real one (:class:`ConsumerApp`, as ``segments consume`` runs it);
after a known workload every counter of its registry (what its probes port serves as
/metrics) must equal what was processed, and the change counters must equal the change
events on the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from consumers.metrics import NONE_SEGMENT, ConsumerMetrics
from consumers.runner import ConsumerApp
from consumers.sweeper import run_sweeper
from service.kafka import client_options, ensure_topics
from service.probes import (
    ProbesServer,
    kafka_consumer_checks,
    redis_check,
    serve_probes,
)
from service.segmentation.rules import load_rules
from service.settings import ProbesSettings, Settings
from service.store.redis_client import create_redis
from tests.support.events import encode, engagement, purchase, refund
from tests.support.kafka import committed, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings, ends: dict[int, int], *, timeout_s: float = 60
) -> AsyncIterator[ConsumerApp]:
    """The real consumer (:class:`ConsumerApp`, as ``segments consume`` runs it) until the
    group has committed every produced offset; stopped when the block ends. Its metrics
    registry is what the probes port serves as /metrics."""
    settings = settings.model_copy(update={"probes": ProbesSettings(port=0)})
    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    k = settings.kafka

    async def caught_up() -> bool:
        if task.done():
            task.result()  # a crashed consumer fails the test here
        got = await committed(k, k.group_id, k.events_topic, list(ends))
        return all(got[p] >= end for p, end in ends.items())

    try:
        await wait_for(caught_up, timeout_s=timeout_s, what="every record committed")
        yield app
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_counters_match_the_workload(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_batch=97)  # several batches
    k = settings.kafka
    await ensure_topics(k, partitions=3)
    good: list[dict[str, Any]] = []
    for i in range(240):
        cid = f"c-{i % 40}"
        at = NOW - timedelta(days=(i * 7) % 400, minutes=i)
        if i % 10 == 9:
            good.append(refund(cid, f"e-{i}", at, "1.50"))
        elif i % 10 == 8:
            good.append(engagement(cid, f"e-{i}", at))
        else:
            good.append(purchase(cid, f"e-{i}", at, f"{10 + i % 90}.00", margin="2.00"))
    records: list[tuple[bytes | None, bytes | None]] = []
    duplicates = 0
    for i, e in enumerate(good):
        records.append((e["customer_id"].encode(), encode(e)))
        if i % 12 == 0:  # a producer retry at a new offset: skipped by the event-id ring
            records.append((e["customer_id"].encode(), encode(e)))
            duplicates += 1
    bad = {
        "invalid_json": [(b"c-1", b"{")] * 3,
        "key_mismatch": [(b"c-2", encode(good[1] | {"customer_id": "c-1"}))] * 2,
        "negative_amount": [(b"c-1", encode(good[1] | {"customer_id": "c-1", "amount": "-1"}))],
    }
    mixed = records[:100] + [r for rs in bad.values() for r in rs] + records[100:]
    ends = await produce(k, k.events_topic, mixed)

    async with running_consumer(settings, ends) as app:
        await check_counters(app.metrics.registry, settings, mixed, good, bad, duplicates, ends)


async def check_counters(  # type: ignore[no-untyped-def]
    r: CollectorRegistry, settings, mixed, good, bad, duplicates, ends
) -> None:
    k = settings.kafka

    assert sample(r, "segments_events_consumed_total") == len(mixed)
    assert sample(r, "segments_events_applied_total") == len(good)
    assert sample(r, "segments_events_duplicates_total") == duplicates
    dead = samples(r, "segments_events_dead_lettered_total")
    assert {labels[0][1]: v for labels, v in dead.items() if v} == {
        reason: len(rs) for reason, rs in bad.items()
    }
    assert sum(dead.values()) == sum(len(rs) for rs in bad.values())
    assert sample(r, "segments_batch_size_records_sum") == len(mixed)
    assert sample(r, "segments_batch_size_records_count") >= len(mixed) / 97
    assert sample(r, "segments_end_to_end_latency_seconds_count") == len(mixed)
    assert sample(r, "segments_batch_stage_duration_seconds_count", stage="commit") == sample(
        r, "segments_batch_size_records_count"
    )
    assert sample(r, "segments_rules_info", version=RULES.version) == 1
    assert sample(r, "segments_consumer_assigned_partitions") == 3
    for partition in ends:
        lag = r.get_sample_value(
            "segments_consumer_lag_records", {"topic": k.events_topic, "partition": str(partition)}
        )
        assert lag is not None and lag >= 0

    # Changes: the counters equal the change events on the topic, by from/to/cause.
    changes_counted = samples(r, "segments_segment_changes_total")
    total_changes = int(sum(changes_counted.values()))
    assert total_changes >= 40  # every customer got a first segment at least
    published = await read_topic(k, k.changes_topic, at_least=total_changes)
    by_move: Counter[tuple[str, str, str]] = Counter()
    for rec in published:
        change = orjson.loads(rec.value)
        before = change["previous"]["segment"] if change["previous"] else NONE_SEGMENT
        by_move[(before, change["current"]["segment"], change["cause"])] += 1
    assert {
        (dict(labels)["from_segment"], dict(labels)["to_segment"], dict(labels)["cause"]): int(v)
        for labels, v in changes_counted.items()
    } == dict(by_move)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_probes_server_health_readiness_metrics(redis_url: str) -> None:
    redis = create_redis(Settings(_env_file=None, redis_url=redis_url).redis)  # type: ignore[call-arg]
    down = create_redis(
        Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0").redis  # type: ignore[call-arg]
    )
    metrics = ConsumerMetrics()
    metrics.observe_sweep([2.0, 3.0])
    port = free_port()
    probes = ProbesSettings(port=port, host="127.0.0.1", check_timeout_s=1)
    try:
        async with (
            serve_probes(
                probes, checks={"redis": redis_check(redis.ping)}, registry=metrics.registry
            ) as server,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            assert server is not None and server.port == port
            r = await client.get("/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            r = await client.get("/readyz")
            assert (r.status_code, r.json()) == (
                200,
                {"status": "ready", "checks": {"redis": True}},
            )
            r = await client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            assert "segments_sweeper_customers_total 2.0" in r.text
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/healthz")).status_code == 405
            r = await client.head("/metrics")
            assert r.status_code == 200 and r.content == b""

        # Redis unreachable: not ready, and says which check failed; alive regardless.
        failing = ProbesServer(
            checks={"redis": redis_check(down.ping), "ok": redis_check(redis.ping)},
            registry=None,
            check_timeout_s=1,
        )
        await failing.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{failing.port}") as client:
                r = await client.get("/readyz")
                assert r.status_code == 503
                assert r.json() == {"status": "not_ready", "checks": {"redis": False, "ok": True}}
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/metrics")).status_code == 404  # none given
        finally:
            await failing.close()
    finally:
        await redis.aclose()
        await down.aclose()

    # Port 0 in the settings: no server at all.
    async with serve_probes(ProbesSettings(port=0), checks={}, registry=None) as nothing:
        assert nothing is None


async def test_consumer_and_sweeper_serve_their_probes(make_settings) -> None:  # type: ignore[no-untyped-def]
    """The real consumer (as ``segments consume`` runs it) and a standalone sweeper (as
    ``segments sweep`` runs it), each on its own probes port: alive, ready with the role's
    checks, their registry as /metrics; the port is closed once the role stops."""
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=2)
    events = [purchase(f"p-{i}", f"e-{i}", NOW - timedelta(days=i), "20.00") for i in range(10)]
    ends = await produce(
        k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events]
    )
    consumer_port, sweeper_port = free_port(), free_port()

    def on_port(port: int) -> Settings:
        probes = ProbesSettings(port=port, host="127.0.0.1", check_timeout_s=2)
        updated: Settings = settings.model_copy(update={"probes": probes})
        return updated

    app = ConsumerApp(on_port(consumer_port), rules=RULES, clock=lambda: NOW)
    consumer = asyncio.create_task(app.run())
    sweeping = asyncio.Event()
    sweeper = asyncio.create_task(
        run_sweeper(on_port(sweeper_port), stopping=sweeping, clock=lambda: NOW)
    )
    consumer_checks = {"redis": True, "kafka": True, "assigned": True}
    sweeper_checks = {"redis": True, "kafka": True}
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def ready(port: int, checks: dict[str, bool]) -> bool:
                for task in (consumer, sweeper):
                    if task.done():
                        task.result()  # a crashed role fails the test here
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.TransportError:
                    return False
                return r.status_code == 200 and r.json() == {"status": "ready", "checks": checks}

            await wait_for(
                lambda: ready(consumer_port, consumer_checks), timeout_s=60, what="consumer ready"
            )
            await wait_for(
                lambda: ready(sweeper_port, sweeper_checks), timeout_s=60, what="sweeper ready"
            )

            async def consumed_all() -> bool:
                got = await committed(k, k.group_id, k.events_topic, list(ends))
                return all(got[p] >= end for p, end in ends.items())

            await wait_for(consumed_all, timeout_s=60, what="every record committed")
            for port in (consumer_port, sweeper_port):
                r = await client.get(f"http://127.0.0.1:{port}/healthz")
                assert (r.status_code, r.json()) == (200, {"status": "ok"})
            r = await client.get(f"http://127.0.0.1:{consumer_port}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert "segments_events_consumed_total 10.0" in r.text
            assert "segments_events_applied_total 10.0" in r.text
            assert "segments_consumer_assigned_partitions 2.0" in r.text
            assert f'segments_rules_info{{version="{RULES.version}"}} 1.0' in r.text
            r = await client.get(f"http://127.0.0.1:{sweeper_port}/metrics")
            assert r.status_code == 200
            assert "# TYPE segments_sweeper_lag_seconds histogram" in r.text
            assert 'segments_rules_info{version="' in r.text
            assert "segments_events_consumed_total 0.0" in r.text  # its own registry
    finally:
        app.request_stop()
        sweeping.set()
        await asyncio.wait_for(asyncio.gather(consumer, sweeper), 30)
    async with httpx.AsyncClient(timeout=2) as client:
        for port in (consumer_port, sweeper_port):
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/healthz")


async def test_probe_check_that_hangs_is_bounded() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    server = ProbesServer(checks={"slow": hangs}, registry=None, check_timeout_s=0.2)
    started = time.monotonic()
    assert await server.readiness() == {"slow": False}
    assert time.monotonic() - started < 2


async def test_consumer_readiness_follows_assignment(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=2)
    consumer = AIOKafkaConsumer(
        **client_options(k),
        group_id=k.group_id,
        enable_auto_commit=False,
        session_timeout_ms=k.session_timeout_ms,
    )
    await consumer.start()
    server = ProbesServer(checks=kafka_consumer_checks(consumer), registry=None)
    try:
        before = await server.readiness()
        assert before == {"kafka": True, "assigned": False}
        consumer.subscribe([k.events_topic])
        await wait_for(
            lambda: bool(consumer.assignment()),
            timeout_s=30,
            what="partitions assigned",
        )
        assert await server.readiness() == {"kafka": True, "assigned": True}
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
