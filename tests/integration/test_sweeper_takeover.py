"""Several sweepers on a real broker and Redis, one of them a real process killed with SIGKILL
mid-work: every due customer is re-classified once for its due time (one distinct change per
customer, none missed), and no shard is ever swept by two sweepers at once."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from consumers.runner import ConsumerApp
from consumers.sweeper import JOB, Sweeper
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.segmentation.rules import load_rules
from service.settings import Settings, SweepSettings
from service.store.keys import SHARDS, Keys
from service.store.packing import epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from tests.support.events import encode, purchase
from tests.support.kafka import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(None)
CUSTOMERS = 3_000
TTL_S = 3.0
BATCH = 10
VICTIM_BATCH = 2


def _env(settings: Settings) -> dict[str, str]:
    k, r, s = settings.kafka, settings.redis, settings.sweep
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEGMENTS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SEGMENTS_KAFKA__BOOTSTRAP=k.bootstrap,
        SEGMENTS_KAFKA__EVENTS_TOPIC=k.events_topic,
        SEGMENTS_KAFKA__CHANGES_TOPIC=k.changes_topic,
        SEGMENTS_KAFKA__DLQ_TOPIC=k.dlq_topic,
        SEGMENTS_REDIS__URL=r.url,
        SEGMENTS_REDIS__KEY_PREFIX=r.key_prefix,
        SEGMENTS_REDIS__CLUSTER=str(r.cluster).lower(),
        SEGMENTS_SWEEP__LEASE_TTL_S=str(s.lease_ttl_s),
        SEGMENTS_SWEEP__BATCH_SIZE=str(s.batch_size),
        SEGMENTS_SWEEP__INTERVAL_S=str(s.interval_s),
        SEGMENTS_LOG_LEVEL="DEBUG",
    )
    return env


async def _due_now(redis: AnyRedis, keys: Keys) -> int:
    pipe = redis.pipeline(transaction=False)
    now_ms = epoch_ms(datetime.now(UTC))
    for shard in range(SHARDS):
        pipe.zcount(keys.due(shard), "-inf", now_ms)
    return sum(await pipe.execute())


async def _leases_of(redis: AnyRedis, keys: Keys, pid: int) -> dict[int, float]:
    """Shards leased by the process ``pid`` → wall-clock instant their lease expires."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.get(keys.lease(shard, JOB))
        pipe.pttl(keys.lease(shard, JOB))
    replies = await pipe.execute()
    now = time.time()
    out = {}
    for shard in range(SHARDS):
        value, pttl = replies[2 * shard], replies[2 * shard + 1]
        if value is not None and f":{pid}:" in value.decode():
            out[shard] = now + pttl / 1000
    return out


async def test_two_sweepers_and_a_killed_one_review_everyone_once(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        sweep=SweepSettings(lease_ttl_s=TTL_S, batch_size=BATCH, interval_s=0.2)
    )
    k = settings.kafka
    keys = Keys(settings.redis.key_prefix)
    await ensure_topics(k, partitions=4)

    # Customers who bought once, 200 days before now: segmented back then, their reviews are
    # long due, and the one review they get now turns them churned (a change for each).
    then = datetime.now(UTC) - timedelta(days=200)
    ids = [f"c-{i}" for i in range(CUSTOMERS)]
    events = [purchase(cid, f"e-{cid}", then - timedelta(hours=2), "30.00") for cid in ids]
    await produce(k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events])
    app = ConsumerApp(settings, rules=RULES, clock=lambda: then)
    consumer = asyncio.create_task(app.run())
    try:
        await wait_for(
            lambda: app.totals.records >= CUSTOMERS, timeout_s=90, what="customers segmented"
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(consumer, 30)
    redis = create_redis(settings.redis)
    assert await _due_now(redis, keys) == CUSTOMERS

    log_path = tmp_path / "sweeper.log"
    with log_path.open("wb") as log_file:
        victim = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [sys.executable, "-m", "service.cli", "sweep"],
            cwd=tmp_path,  # no stray .env
            # small batches: slow enough to be killed with work left on a fast machine
            env=_env(settings) | {"SEGMENTS_SWEEP__BATCH_SIZE": str(VICTIM_BATCH)},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    producer = create_producer(k)
    await producer.start()
    batches: list[tuple[str, frozenset[int], float, float]] = []
    stopping = asyncio.Event()
    sweepers = [
        Sweeper(
            settings,
            redis=redis,
            sink=ProducerSink(producer),
            rules=lambda: RULES,
            stopping=stopping,
            owner=f"inproc-{n}",
            on_batch=lambda shards, t0, t1, n=n: batches.append((f"inproc-{n}", shards, t0, t1)),  # type: ignore[misc]
        )
        for n in range(2)
    ]
    tasks: list[asyncio.Task[None]] = []
    try:
        # The process starts alone and takes every shard; once it is working, two more join.
        async def victim_working() -> bool:
            return await _due_now(redis, keys) < CUSTOMERS - 3 * VICTIM_BATCH

        await wait_for(victim_working, timeout_s=60, what="the first sweeper at work")
        tasks = [asyncio.create_task(s.run()) for s in sweepers]

        async def victim_gives_up_shards() -> bool:
            return len(await _leases_of(redis, keys, victim.pid)) < SHARDS

        await wait_for(victim_gives_up_shards, timeout_s=10, what="the three sharing shards")
        held = await _leases_of(redis, keys, victim.pid)
        left = await _due_now(redis, keys)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(10)
        assert held, "the killed sweeper held no shard: nothing to take over"
        assert left > 0, "everything was swept before the kill: the test proves nothing"

        async def drained() -> bool:
            return await _due_now(redis, keys) == 0

        await wait_for(drained, timeout_s=TTL_S + 60, what="every due customer reviewed")
        # The two survivors hold every shard between them.
        await asyncio.sleep(sweepers[0].keeper.renew_every_s * 2)
        mine = [{x.shard for x in s.keeper.held()} for s in sweepers]
        assert not mine[0] & mine[1]
        assert len(mine[0] | mine[1]) == SHARDS
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        stopping.set()
        await asyncio.gather(*tasks)
        await producer.stop()

    # Every customer churned now, with exactly one distinct time change (repeats of the same
    # change_id are allowed only for the batch the killed process had in flight).
    store = RedisProfileStore(redis, keys, ring_size=8)
    states = await store.read(ids, min_day=0)
    await redis.aclose()
    assert {cid: s.stored.axes.lifecycle for cid, s in states.items() if s.stored} == dict.fromkeys(
        ids, "churned"
    )
    records = await read_topic(k, k.changes_topic, at_least=2 * CUSTOMERS)
    changes = [orjson.loads(r.value) for r in records]
    time_changes = [c for c in changes if c["cause"] == "time"]
    distinct: dict[str, set[str]] = defaultdict(set)
    for c in time_changes:
        distinct[c["customer_id"]].add(c["change_id"])
        assert c["current"]["axes"]["lifecycle"] == "churned"
    assert set(distinct) == set(ids)
    assert all(len(v) == 1 for v in distinct.values())
    stats = [(s.stats.fenced, s.stats.reviewed, s.stats.changes) for s in sweepers]
    assert len(time_changes) - CUSTOMERS <= BATCH, stats

    # No shard swept by two at once: the killed process's batches (from its log) and the
    # survivors' never overlap on a shard; its leased shards wait for their lease to expire.
    for line in log_path.read_text().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("msg") == "sweep batch":
            assert entry["customers"] <= VICTIM_BATCH  # batches stay bounded
            batches.append(("victim", frozenset(entry["shards"]), entry["started"], entry["ended"]))
    assert any(owner == "victim" for owner, *_ in batches)
    by_shard: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for owner, shards, t0, t1 in batches:
        for shard in shards:
            by_shard[shard].append((t0, t1, owner))
    for shard, spans in by_shard.items():
        spans.sort()
        for (_a0, a1, a_owner), (b0, _b1, b_owner) in itertools.pairwise(spans):
            if a_owner != b_owner:
                assert b0 >= a1, f"shard {shard}: {a_owner} and {b_owner} overlapped"
    for owner, shards, t0, _ in batches:
        if owner != "victim" and t0 >= killed_at - 0.05:
            for shard in shards & held.keys():
                assert t0 >= held[shard] - 0.05, f"shard {shard} taken before its lease expired"
