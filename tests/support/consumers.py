"""Running ``segments consume`` as real processes, and checking what they left behind.

Used by the tests that kill, add and restart consumer processes (scale-out): the state in Redis
is compared with a ground truth recomputed from the events, and the change topic with the
stored segmentations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer

from consumers.segmenter import axes_json, min_day_for
from service.kafka import client_options
from service.segmentation.classifier import classify
from service.segmentation.rules import Rules
from service.settings import KafkaSettings, Settings
from service.store.keys import Keys
from service.store.packing import CustomerState, StoredSegmentation, from_epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.events import ground_truth

ROOT = Path(__file__).resolve().parents[2]


def consumer_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``segments consume`` process working on ``settings``' topics, group
    and key prefix; nothing else of the caller's ``SEGMENTS_*`` leaks in."""
    k, r = settings.kafka, settings.redis
    env = {name: v for name, v in os.environ.items() if not name.startswith("SEGMENTS_")}
    env.update(
        SEGMENTS_KAFKA__BOOTSTRAP=k.bootstrap,
        SEGMENTS_KAFKA__EVENTS_TOPIC=k.events_topic,
        SEGMENTS_KAFKA__CHANGES_TOPIC=k.changes_topic,
        SEGMENTS_KAFKA__DLQ_TOPIC=k.dlq_topic,
        SEGMENTS_KAFKA__GROUP_ID=k.group_id,
        SEGMENTS_KAFKA__SESSION_TIMEOUT_MS=str(k.session_timeout_ms),
        SEGMENTS_REDIS__URL=r.url,
        SEGMENTS_REDIS__KEY_PREFIX=r.key_prefix,
        SEGMENTS_REDIS__CLUSTER=str(r.cluster).lower(),
    )
    env.update(extra)
    return env


def spawn_consumer(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "consume"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def log_lines(path: Path, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of a consumer whose message is ``message``."""
    out = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{") and f'"{message}"'.encode() in line:
            entry = orjson.loads(line)
            if entry.get("msg") == message:
                out.append(entry)
    return out


async def read_states(
    settings: Settings, customer_ids: Sequence[str], *, min_day: int
) -> dict[str, CustomerState]:
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    states: dict[str, CustomerState] = {}
    try:
        for i in range(0, len(customer_ids), 2000):
            states.update(await store.read(customer_ids[i : i + 2000], min_day=min_day))
    finally:
        await redis.aclose()
    return states


async def assert_state_exact(
    settings: Settings, events: list[dict[str, Any]], rules: Rules
) -> dict[str, StoredSegmentation]:
    """Every profile equals the ground truth recomputed from ``events`` (nothing lost, nothing
    counted twice) and every stored segmentation is what the classifier gives for that truth at
    its ``as_of``. Returns the stored segmentations by customer."""
    min_day = min_day_for(datetime.now(UTC), rules)
    truth = ground_truth(events, min_day=min_day)
    states = await read_states(settings, list(truth), min_day=min_day)
    assert len(states) == len(truth), f"{len(truth) - len(states)} customers missing in Redis"
    mismatched = [cid for cid in truth if states[cid].profile != truth[cid]]
    assert not mismatched, f"{len(mismatched)} profiles differ, e.g. {mismatched[:3]}"
    final = {}
    for cid, state in states.items():
        stored = state.stored
        assert stored is not None, f"{cid} has no segmentation"
        want = classify(truth[cid], rules, now=from_epoch_ms(stored.as_of_ms))
        assert stored.fingerprint() == (want.segment, want.axes, want.treatment.id), cid
        final[cid] = stored
    return final


def fingerprint_json(seg: dict[str, Any]) -> tuple[object, ...]:
    """What makes a published segmentation a different one: the segment, every axis and the
    treatment (reasons, as_of and next_review_at change without a change event)."""
    return (
        seg["segment"],
        orjson.dumps(seg["axes"], option=orjson.OPT_SORT_KEYS),
        seg["treatment"]["id"],
    )


def stored_fingerprint(stored: StoredSegmentation) -> tuple[object, ...]:
    axes = orjson.dumps(axes_json(stored.axes), option=orjson.OPT_SORT_KEYS)
    return (stored.segment, axes, stored.treatment_id)


async def read_changes(
    kafka: KafkaSettings,
    final: dict[str, StoredSegmentation],
    *,
    timeout_s: float = 120.0,
    idle_s: float = 3.0,
) -> list[dict[str, Any]]:
    """The whole change topic in partition order (a customer's changes are on one partition).

    Reads until every customer's final segmentation appeared as a ``current`` and then nothing
    more arrived for ``idle_s`` (nothing writes to the topic any more): never from end offsets.
    """
    want = {cid: stored_fingerprint(s) for cid, s in final.items()}
    unseen = set(want)
    consumer = AIOKafkaConsumer(
        kafka.changes_topic,
        **client_options(kafka),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    changes: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    last_record = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if not unseen and time.monotonic() - last_record > idle_s:
                break
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for recs in batch.values():
                last_record = time.monotonic()
                for r in recs:
                    change = orjson.loads(r.value)
                    change["_partition"], change["_offset"] = r.partition, r.offset
                    changes.append(change)
                    cid = change["customer_id"]
                    if cid in unseen and fingerprint_json(change["current"]) == want[cid]:
                        unseen.discard(cid)
    finally:
        await consumer.stop()
    assert not unseen, (
        f"{len(unseen)} customers' final segmentation never published, e.g. {sorted(unseen)[:3]}"
    )
    return changes


def change_sequence_problems(changes: list[dict[str, Any]]) -> list[str]:
    """Checks each customer's changes, in topic order, form one history.

    A change is produced (and acknowledged) before its segmentation is written, so a crash can
    leave a published change that was never written, and a replay publishes the same change
    again (same ``change_id``). What must hold whatever crashed: a customer's changes are all
    on one partition; a repeated ``change_id`` repeats the same transition; each change really
    changes something; and its ``previous`` is null or the ``current`` of an earlier change of
    that customer (a stored segmentation was always published first)."""
    problems: list[str] = []
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for c in sorted(changes, key=lambda c: (c["_partition"], c["_offset"])):
        by_customer.setdefault(c["customer_id"], []).append(c)
    for cid, seq in by_customer.items():
        partitions = {c["_partition"] for c in seq}
        if len(partitions) != 1:
            problems.append(f"{cid}: changes on partitions {sorted(partitions)}")
        published: set[tuple[object, ...]] = set()
        by_id: dict[str, tuple[object, ...]] = {}
        for c in seq:
            cur = fingerprint_json(c["current"])
            prev = None if c["previous"] is None else fingerprint_json(c["previous"])
            transition = (prev, cur)
            if by_id.setdefault(c["change_id"], transition) != transition:
                problems.append(f"{cid}: change_id {c['change_id']} names two transitions")
            if prev == cur:
                problems.append(f"{cid}: change at offset {c['_offset']} changes nothing")
            if prev is not None and prev not in published:
                problems.append(
                    f"{cid}: change at offset {c['_offset']} starts from a segmentation "
                    "never published before"
                )
            published.add(cur)
    return problems
