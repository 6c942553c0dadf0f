"""A rules change end to end on a real broker and real Redis: a stricter rule set is activated
while events flow through a real consumer (which follows the registry with a watcher), the
background re-classification runs with two workers, one of them killed mid-way; afterwards every
customer is on the new version, the segment counts match a recomputation from the events, the
re-classification produced ``cause: rules`` change events, and a rollback is re-applied too."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from consumers.runner import ConsumerApp
from consumers.segmenter import Segmenter, min_day_for
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.reclassify import Reclassifier, run_reclassification
from service.rules_runtime import RulesWatcher
from service.rules_store import RulesRegistry
from service.segmentation.classifier import classify
from service.segmentation.rules import Rules, load_rules, rules_from_data
from service.settings import RulesSettings
from service.store.keys import SHARDS, Keys
from service.store.packing import decode_customer
from service.store.profiles import RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from tests.support.events import encode, ground_truth, purchase
from tests.support.kafka import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEFAULT = load_rules(None)
CUSTOMERS = 300


def stricter() -> Rules:
    doc = DEFAULT.document()
    doc["lifecycle"]["at_risk_days"] = 20  # at risk sooner
    doc["lifecycle"]["regular_min_orders"] = 5  # regular is harder
    doc["value"]["high_min_net_spend"] = "600"  # high value is easier
    return rules_from_data(doc)


def history(rng: random.Random, n: int, start: int, customers: int) -> list[dict[str, Any]]:
    events = []
    for i in range(start, start + n):
        cid = f"c-{rng.randrange(customers)}"
        at = NOW - timedelta(days=rng.randrange(0, 200), minutes=rng.randrange(0, 1440))
        events.append(purchase(cid, f"e-{i}", at, f"{rng.randrange(500, 40000) / 100:.2f}"))
    return events


async def stored_state(redis: AnyRedis, keys: Keys, ids: list[str]) -> dict[str, tuple[str, str]]:
    """customer -> (segment, rules version) as stored (``g`` and ``m`` fields)."""
    out = {}
    for cid in ids:
        raw = await redis.hgetall(keys.customer(cid))
        flat = [x for pair in raw.items() for x in pair]
        state = decode_customer(cid, flat, min_day=0)
        assert state.stored is not None, cid
        out[cid] = (state.stored.segment, state.stored.rules_version)
    return out


async def shard_counts(redis: AnyRedis, keys: Keys) -> Counter[str]:
    total: Counter[str] = Counter()
    for shard in range(SHARDS):
        for name, n in (await redis.hgetall(keys.counts(shard))).items():
            if int(n):
                total[name.decode()] += int(n)
    return total


async def test_stricter_rules_under_load_then_rollback(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    settings.rules = RulesSettings(
        poll_interval_s=0.5, reclassify_grace_s=0.5, reclassify_batch=20, reclassify_lease_s=2
    )
    k = settings.kafka
    await ensure_topics(k, partitions=4)
    keys = Keys(settings.redis.key_prefix)
    redis = create_redis(settings.redis)
    registry = RulesRegistry(redis, keys)
    rng = random.Random(11)
    before = history(rng, 1_500, 0, CUSTOMERS)
    # live traffic during the change touches a third of the customers; the rest move only by
    # the re-classification
    during = history(rng, 500, 1_500, CUSTOMERS // 3)

    consumer = ConsumerApp(settings, rules=DEFAULT, clock=lambda: NOW)
    watcher_redis = create_redis(settings.redis)
    watcher = RulesWatcher.from_settings(
        settings,
        watcher_redis,
        fallback=DEFAULT,
        on_change=lambda r: setattr(consumer, "rules", r),
    )
    await watcher.start()
    consumer_task = asyncio.create_task(consumer.run())

    producer = create_producer(k)
    await producer.start()
    sink = ProducerSink(producer)
    workers: list[tuple[asyncio.Event, asyncio.Task[Any], AnyRedis, RulesWatcher]] = []

    async def start_worker(owner: str) -> tuple[asyncio.Event, asyncio.Task[Any]]:
        worker_redis = create_redis(settings.redis)
        w = RulesWatcher.from_settings(settings, worker_redis, fallback=DEFAULT)
        await w.start()
        store = RedisProfileStore(worker_redis, keys, ring_size=8)
        segmenter = Segmenter(store, sink, changes_topic=k.changes_topic, rules=w.current)
        reclassifier = Reclassifier(
            settings,
            worker_redis,
            store,
            segmenter,
            rules=w.current,
            clock=lambda: NOW,
            owner=owner,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_reclassification(reclassifier, stop, idle_s=0.2))
        workers.append((stop, task, worker_redis, w))
        return stop, task

    try:
        await produce(k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in before])
        ids = sorted({e["customer_id"] for e in before + during})

        async def applied(n: int) -> bool:
            return consumer.totals.applied >= n

        await wait_for(lambda: applied(len(before)), timeout_s=90, what="history applied")
        new = stricter()

        # Two workers; one is killed (its task cancelled, leases left to expire) mid-way.
        _, victim = await start_worker("w-victim")
        await start_worker("w-survivor")
        load = asyncio.create_task(
            produce(k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in during])
        )
        result = await registry.activate(new, by="ops", at=NOW, fallback=DEFAULT, grace_s=0.5)
        assert result.changed
        await wait_for(
            lambda: _progress_at_least(registry, 50), timeout_s=60, what="some shards done"
        )
        victim.cancel()
        await load
        await wait_for(
            lambda: applied(len(before) + len(during)), timeout_s=90, what="load applied"
        )
        await wait_for(lambda: _done(registry, new.version), timeout_s=120, what="re-classified")
        assert watcher.current().version == new.version and consumer.rules.version == new.version

        # Every customer on the new version, and the segments are what the events say.
        truth = ground_truth(before + during, min_day=min_day_for(NOW, new))
        expected = {cid: classify(p, new, now=NOW).segment for cid, p in truth.items()}
        stored = await stored_state(redis, keys, ids)
        assert {cid: v for cid, (_, v) in stored.items()} == {cid: new.version for cid in ids}
        assert {cid: s for cid, (s, _) in stored.items()} == expected
        assert await shard_counts(redis, keys) == Counter(expected.values())
        progress = await registry.progress()
        assert progress.state == "done" and progress.shards_done == SHARDS
        assert progress.customers >= len(ids)  # a shard redone after the kill counts twice

        # The changes the re-classification produced name the version and the cause.
        assert progress.changes > 0, "the stricter rules moved nobody?"
        records = await read_topic(
            k, k.changes_topic, at_least=consumer.totals.changes + progress.changes, timeout_s=30
        )
        by_rules = [orjson.loads(r.value) for r in records]
        by_rules = [c for c in by_rules if c["cause"] == "rules"]
        assert by_rules, "the stricter rules moved nobody?"
        assert all(c["rules_version"] == new.version for c in by_rules)
        assert all(c["trigger"]["rules_version"] == new.version for c in by_rules)
        assert all(c["current"]["rules_version"] == new.version for c in by_rules)
        moved_by_rules = {c["customer_id"] for c in by_rules}
        old_truth = {
            cid: classify(p, DEFAULT, now=NOW).segment
            for cid, p in ground_truth(before + during, min_day=min_day_for(NOW, DEFAULT)).items()
        }
        # every customer live traffic did not touch and whose segment differs under the new
        # rules was moved by the re-classification, with a change event
        untouched = set(ids) - {e["customer_id"] for e in during}
        must_move = {c for c in untouched if old_truth[c] != expected[c]}
        assert must_move and must_move <= moved_by_rules

        # Rollback: the old version is re-applied to everyone.
        back = await registry.rollback(DEFAULT.version, by="ops", at=NOW, fallback=DEFAULT)
        assert back.changed
        await wait_for(lambda: _done(registry, DEFAULT.version), timeout_s=120, what="rolled back")
        stored = await stored_state(redis, keys, ids)
        assert {cid: (s, v) for cid, (s, v) in stored.items()} == {
            cid: (old_truth[cid], DEFAULT.version) for cid in ids
        }
        assert await shard_counts(redis, keys) == Counter(old_truth[c] for c in ids)
        assert [e.action for e in await registry.history()] == ["rollback", "activate"]
    finally:
        for stop, task, worker_redis, w in workers:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await w.aclose()
            await worker_redis.aclose()
        consumer.request_stop()
        await asyncio.wait_for(consumer_task, timeout=30)
        await watcher.aclose()
        await watcher_redis.aclose()
        await producer.stop()
        await redis.aclose()


async def _progress_at_least(registry: RulesRegistry, shards: int) -> bool:
    return (await registry.progress()).shards_done >= shards


async def _done(registry: RulesRegistry, version: str) -> bool:
    progress = await registry.progress()
    return progress.version == version and progress.state == "done"
