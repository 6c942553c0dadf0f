"""Crash test: a consumer process SIGKILLed at random moments while it works through 100,000
events, restarted each time, ends with exactly the ground-truth profiles (nothing lost, nothing
counted twice), and every customer's final segment is on the change topic."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from bench.generate import iter_events
from consumers.segmenter import min_day_for
from service.kafka import client_options, ensure_topics
from service.segmentation.classifier import classify
from service.segmentation.rules import load_rules
from service.store.keys import Keys
from service.store.packing import from_epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.conftest import ROOT
from tests.support.events import ground_truth
from tests.support.kafka import committed, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = int(os.environ.get("SEGMENTS_CRASH_EVENTS", "100000"))
KILLS = 3
PARTITIONS = 8


def _spawn(env: dict[str, str], log: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "consume"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def test_sigkill_three_times_state_exact(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=PARTITIONS)
    now = datetime.now(UTC)
    records = list(iter_events(EVENTS, customers=EVENTS // 5, seed=11, now=now))
    ends = await produce(k, k.events_topic, records)
    assert sum(ends.values()) == EVENTS

    env = {
        **os.environ,
        "SEGMENTS_KAFKA__BOOTSTRAP": k.bootstrap,
        "SEGMENTS_KAFKA__EVENTS_TOPIC": k.events_topic,
        "SEGMENTS_KAFKA__CHANGES_TOPIC": k.changes_topic,
        "SEGMENTS_KAFKA__DLQ_TOPIC": k.dlq_topic,
        "SEGMENTS_KAFKA__GROUP_ID": k.group_id,
        "SEGMENTS_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "SEGMENTS_KAFKA__MAX_BATCH": "2000",
        "SEGMENTS_REDIS__URL": settings.redis.url,
        "SEGMENTS_REDIS__KEY_PREFIX": settings.redis.key_prefix,
    }
    env.pop("SEGMENTS_KAFKA_BOOTSTRAP", None)
    env.pop("SEGMENTS_REDIS_URL", None)
    rng = random.Random(5)
    log = (tmp_path / "consumer.log").open("ab")
    progress = []

    async def done() -> dict[int, int]:
        return await committed(k, k.group_id, k.events_topic, list(ends))

    for _ in range(KILLS):
        proc = _spawn(env, log)
        # Kill at a random moment after it made some progress (so the kill lands mid-stream).
        before = sum((await done()).values())
        deadline = time.monotonic() + 90
        while sum((await done()).values()) <= before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        progress.append(sum((await done()).values()))
    assert progress[-1] < EVENTS, f"the kills all landed after the end: {progress}"

    proc = _spawn(env, log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if await done() == ends:
            break
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
        await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0  # graceful: finishes the batch, commits, leaves the group
    assert await done() == ends, progress

    # Profiles exactly equal the ground truth.
    rules = load_rules(None)
    events = [orjson.loads(v) for _, v in records]
    min_day = min_day_for(datetime.now(UTC), rules)
    truth = ground_truth(events, min_day=min_day)
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    ids = list(truth)
    states = {}
    for i in range(0, len(ids), 2000):
        states.update(await store.read(ids[i : i + 2000], min_day=min_day))
    await redis.aclose()
    assert len(states) == len(truth)
    mismatched = [cid for cid in truth if states[cid].profile != truth[cid]]
    assert not mismatched, f"{len(mismatched)} profiles differ, e.g. {mismatched[:3]}"

    # Each stored segmentation is what the classifier gives for the truth at that instant, and
    # each customer's final segmentation was published on the change topic.
    final = {}
    for cid, state in states.items():
        stored = state.stored
        assert stored is not None
        want = classify(truth[cid], rules, now=from_epoch_ms(stored.as_of_ms))
        assert stored.fingerprint() == (want.segment, want.axes, want.treatment.id), cid
        final[cid] = stored

    unseen = set(final)
    consumer = AIOKafkaConsumer(
        k.changes_topic, **client_options(k), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    deadline = time.monotonic() + 120
    try:
        while unseen and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in recs:
                    change = orjson.loads(r.value)
                    cid = change["customer_id"]
                    cur = change["current"]
                    if (
                        cid in unseen
                        and cur["segment"] == final[cid].segment
                        and cur["treatment"]["id"] == final[cid].treatment_id
                    ):
                        unseen.discard(cid)
    finally:
        await consumer.stop()
    assert not unseen, (
        f"{len(unseen)} customers' final segment never published, e.g. {sorted(unseen)[:3]}"
    )
