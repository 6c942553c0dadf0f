"""Redis killed and restarted mid-stream (with and without persistence), and a slow Redis.

Each test runs its own redis-server (tests/support/faults.py), a real consumer and the real
API in-process, against the test broker. What is asserted:

- while Redis is away the consumer commits nothing, retries with backoff and resumes by
  itself; the API answers 503 ``store_unavailable`` with ``Retry-After`` and recovers by
  itself (same app, no restart);
- with AOF (``appendfsync always``) the final state equals the ground truth exactly;
- without persistence Redis comes back empty: the consumer resumes from its committed offsets,
  so the state holds exactly the events from those offsets on (the older ones are lost with
  Redis); a replay of the topic into a fresh key prefix rebuilds the exact state
  (docs/OPERATIONS.md "Backup and restore (replay)");
- behind a proxy adding latency, throughput drops, nothing is lost, and an API call whose
  Redis reply takes longer than ``redis.socket_timeout_s`` answers 503 within that bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.runner import ConsumerApp
from consumers.segmenter import min_day_for
from service.api.app import create_app
from service.kafka import ensure_topics
from service.settings import ApiSettings, RedisSettings, Settings
from tests.support.api import api_key, running
from tests.support.events import encode, ground_truth
from tests.support.faults import (
    NOW,
    RULES,
    RedisServer,
    assert_state_exact,
    offsets_of,
    random_events,
    read_profiles,
)
from tests.support.kafka import committed, produce, wait_for
from tests.support.proxy import LatencyProxy

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _with_redis(settings: Settings, url: str, *, timeout_s: float) -> tuple[Settings, str]:
    """The test's settings pointed at ``url``, with one read key; returns the key too."""
    secret, key = api_key("checkout", "segments:read")
    settings.redis = RedisSettings(
        url=url,
        key_prefix=settings.redis.key_prefix,
        socket_timeout_s=timeout_s,
        retry_initial_s=0.05,
        retry_max_s=0.3,
    )
    settings.api = ApiSettings(keys=(key,))
    return settings, secret


@asynccontextmanager
async def _consumer(settings: Settings) -> AsyncIterator[ConsumerApp]:
    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    try:
        yield app
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)


async def _produce(settings: Settings, events: list[dict[str, Any]]) -> dict[int, int]:
    k = settings.kafka
    await ensure_topics(k, partitions=PARTITIONS)
    return await produce(
        k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events]
    )


async def _timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = await client.get(path)
    return r, time.monotonic() - t0


def _assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "store_unavailable"


async def _outage(
    settings: Settings,
    app: ConsumerApp,
    client: httpx.AsyncClient,
    ends: dict[int, int],
    customer: str,
) -> dict[int, int]:
    """Checks the consumer and the API while Redis is away; returns the frozen commits."""
    k = settings.kafka
    r, took = await _timed_get(client, f"/v1/customers/{customer}/segment")
    _assert_unavailable(r)
    assert took < settings.redis.socket_timeout_s + 1.5, took
    await asyncio.sleep(1.0)  # a batch in flight when Redis died cannot commit any more
    frozen = await committed(k, k.group_id, k.events_topic, list(ends))
    handled = app.totals.records
    retries_before = _redis_retries(app)
    await asyncio.sleep(2.0)
    assert await committed(k, k.group_id, k.events_topic, list(ends)) == frozen
    assert app.totals.records == handled, "a batch was counted done while Redis was away"
    assert _redis_retries(app) > retries_before, "the consumer is not retrying"
    assert frozen != ends, "the consumer was done before the outage: make the stream longer"
    _assert_unavailable(await client.get(f"/v1/customers/{customer}/profile"))
    _assert_unavailable(await client.get("/readyz"))
    return frozen


def _redis_retries(app: ConsumerApp) -> float:
    return sum(
        sample.value
        for metric in app.metrics.redis_errors.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def _recovered(client: httpx.AsyncClient, customer: str) -> None:
    async def answers() -> bool:
        return (await client.get(f"/v1/customers/{customer}/segment")).status_code == 200

    await wait_for(answers, timeout_s=30, what="the API answering again by itself")
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
async def test_redis_killed_and_restarted_mid_stream(
    make_settings: Any, tmp_path: Path, aof: bool
) -> None:
    server = RedisServer(tmp_path / "redis", aof=aof)
    server.start()
    try:
        settings, secret = _with_redis(make_settings(max_batch=200), server.url, timeout_s=0.5)
        k = settings.kafka
        events = random_events(20_000, 500, seed=21, now=NOW)
        ends = await _produce(settings, events)
        customer = events[0]["customer_id"]

        async with (
            _consumer(settings) as app,
            running(create_app(settings, clock=lambda: NOW), secret) as client,
        ):
            await wait_for(lambda: app.totals.records > 2_000, timeout_s=60, what="progress")
            assert (await client.get(f"/v1/customers/{customer}/segment")).status_code == 200
            server.kill()
            frozen = await _outage(settings, app, client, ends, customer)
            server.start()  # same port, same data dir
            await _recovered(client, customer)

            async def all_committed() -> bool:
                return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

            await wait_for(all_committed, timeout_s=120, what="every offset committed")

        if aof:
            await assert_state_exact(settings, events, now=NOW, rules=RULES)
            return

        # No persistence: everything before the frozen commits was lost with Redis, and the
        # consumer resumed from there. The batches in flight at the kill (one per lane, at
        # most max_batch records from each frozen offset) may also have lost their applies:
        # Redis acknowledged them, died, and only the later step was retried. So customers
        # without an event in that window hold exactly the events from the frozen offsets on;
        # the others hold no more than that and no less than the events after the window.
        positions = offsets_of(events, PARTITIONS)
        window = settings.kafka.max_batch
        kept, after = [], []
        touched_in_window: set[str] = set()
        for e, (p, o) in zip(events, positions, strict=True):
            start = frozen.get(p, 0)
            if o >= start:
                kept.append(e)
            if o >= start + window:
                after.append(e)
            elif o >= start:
                touched_in_window.add(e["customer_id"])
        assert 0 < len(kept) < len(events)
        min_day = min_day_for(NOW, RULES)
        want, floor = ground_truth(kept, min_day=min_day), ground_truth(after, min_day=min_day)
        everyone = {e["customer_id"] for e in events}
        states = await read_profiles(settings, list(everyone), now=NOW, rules=RULES)
        assert set(states) == set(want), "a customer of the lost range only was re-created"
        for cid, state in states.items():
            got = state.profile.lifetime
            if cid not in touched_in_window:
                assert state.profile == want[cid], cid
            else:
                low = floor[cid].lifetime if cid in floor else None
                assert (low.orders if low else 0) <= got.orders <= want[cid].lifetime.orders
                assert (low.refunds if low else 0) <= got.refunds <= want[cid].lifetime.refunds

        # Rebuild by replay: a fresh consumer group into a fresh key prefix, from the start.
        replay = settings.model_copy(deep=True)
        replay.kafka.group_id += "-replay"
        replay.redis.key_prefix = replay.redis.key_prefix.rstrip(":") + "r:"
        async with _consumer(replay):

            async def replayed() -> bool:
                return await committed(k, replay.kafka.group_id, k.events_topic, list(ends)) == ends

            await wait_for(replayed, timeout_s=120, what="the replay committed to the end")
        await assert_state_exact(replay, events, now=NOW, rules=RULES)
    finally:
        server.stop()


async def test_slow_redis_degrades_loses_nothing_and_api_answers_within_bound(
    make_settings: Any, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    proxy = LatencyProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        settings, secret = _with_redis(make_settings(max_batch=100), proxy.url, timeout_s=0.5)
        k = settings.kafka
        events = random_events(30_000, 500, seed=22, now=NOW)
        ends = await _produce(settings, events)
        customer = events[0]["customer_id"]

        async def rate(seconds: float) -> float:
            before, t0 = app.totals.records, time.monotonic()
            await asyncio.sleep(seconds)
            return (app.totals.records - before) / (time.monotonic() - t0)

        async with (
            _consumer(settings) as app,
            running(create_app(settings, clock=lambda: NOW), secret) as client,
        ):
            await wait_for(lambda: app.totals.records > 1_000, timeout_s=60, what="progress")
            fast = await rate(2.0)
            proxy.latency_s = 0.05  # +100 ms per round trip, below every timeout
            slow = await rate(2.0)
            assert slow < fast / 2, (fast, slow)
            r, took = await _timed_get(client, f"/v1/customers/{customer}/segment")
            assert r.status_code == 200 and took >= 0.1, (r.status_code, took)

            # Slower than the socket timeout: bounded, clear answers, nothing hangs.
            proxy.latency_s = 1.0
            for path in (
                f"/v1/customers/{customer}/segment",
                f"/v1/customers/{customer}/profile",
                "/readyz",
            ):
                r, took = await _timed_get(client, path)
                _assert_unavailable(r)
                assert took < 0.5 + 0.5, (path, took)  # socket timeout plus scheduling slack

            proxy.latency_s = 0.0
            await _recovered(client, customer)

            async def all_committed() -> bool:
                return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

            await wait_for(all_committed, timeout_s=120, what="every offset committed")
            print(f"\nslow redis: {fast:.0f} records/s -> {slow:.0f} records/s at +100 ms RTT")
        await assert_state_exact(settings, events, now=NOW, rules=RULES)
    finally:
        await proxy.aclose()
        server.stop()
