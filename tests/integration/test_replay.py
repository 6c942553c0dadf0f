"""``segments replay`` on a populated system (real broker, real Redis): the rebuilt state equals
the live one, verification finds exactly what was corrupted, and the command's exit codes."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from consumers.replay import (
    ReplayOptions,
    committed_offsets,
    rebuild,
    run_replay,
    verify_states,
)
from consumers.runner import ConsumerApp
from consumers.segmenter import min_day_for
from service.kafka import ensure_topics
from service.rules_store import RulesRegistry
from service.segmentation.rules import load_rules
from service.settings import Settings
from service.store.keys import Keys, shard_of
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from service.store.state_diff import Positions
from service.store.verify import Side, customer_pattern, parse_customer_key, scan_keys
from tests.support.events import encode, engagement, purchase, refund
from tests.support.kafka import produce, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
"""Live consumer and replay classify at the same instant (records arrive around it)."""
RULES = load_rules(None)


def _events(rng: random.Random) -> tuple[list[tuple[bytes | None, bytes | None]], int, int]:
    """Purchases, refunds and engagement of 80 customers, producer duplicates and dead
    letters; returns the records, how many are valid and how many are dead letters."""
    records: list[tuple[bytes | None, bytes | None]] = []
    valid = 0
    for i in range(600):
        cid = f"c-{rng.randrange(80)}"
        at = NOW - timedelta(days=rng.randrange(0, 500), minutes=rng.randrange(1440))
        roll = rng.random()
        if roll < 0.7:
            e = purchase(cid, f"e-{i}", at, f"{rng.randrange(100, 40000) / 100:.2f}", margin="1.50")
        elif roll < 0.85:
            e = refund(cid, f"e-{i}", at, f"{rng.randrange(100, 3000) / 100:.2f}")
        else:
            e = engagement(cid, f"e-{i}", at, rng.choice(["viewed", "support_contact"]))
        records.append((cid.encode(), encode(e)))
        valid += 1
        if i % 10 == 0:  # a producer retry: the same event again at a new offset
            records.append((cid.encode(), encode(e)))
    records.append((b"p-only", encode(engagement("p-only", "e-p", NOW - timedelta(days=2)))))
    valid += 1
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"c-1", b'{"type": "purchase", '),
        (
            b"c-2",
            encode(purchase("c-2", "e-future", NOW + timedelta(days=2), "10.00")),
        ),
        (b"c-3", encode(purchase("c-3", "e-neg", NOW, "-4.00"))),
    ]
    mixed = records[:300] + bad + records[300:]
    return mixed, valid, len(bad)


async def _populate(settings: Settings) -> None:
    await ensure_topics(settings.kafka, partitions=4)
    records, _valid, dead = _events(random.Random(11))
    await produce(settings.kafka, settings.kafka.events_topic, records)
    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    try:
        await wait_for(
            lambda: app.totals.records >= len(records), timeout_s=90, what="records handled"
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)
    assert app.totals.dead_lettered == dead
    assert app.totals.duplicates > 0


async def _all_states(settings: Settings, prefix: str) -> dict[str, tuple[object, ...]]:
    """Every customer of a prefix: profile, marks and stored segmentation (found through the
    shard sets and a SCAN of customer keys)."""
    redis = create_redis(settings.redis)
    keys = Keys(prefix)
    store = RedisProfileStore(redis, keys, ring_size=settings.state.event_id_ring)
    try:
        ids = [
            parse_customer_key(keys, k)[1] async for k in scan_keys(redis, customer_pattern(keys))
        ]
        states = await store.read(ids, min_day=min_day_for(NOW, RULES))
        out: dict[str, tuple[object, ...]] = {}
        for cid, s in states.items():
            stored = s.stored
            marks = await redis.hmget(keys.customer(cid), ["w", "r"])
            out[cid] = (
                s.profile,
                tuple(marks),
                None
                if stored is None
                else (stored.fingerprint(), stored.rules_version, stored.next_review_ms),
            )
        return out
    finally:
        await redis.aclose()


def _sides(settings: Settings, rebuilt_prefix: str) -> tuple[Side, Side]:
    return (
        Side(create_redis(settings.redis), Keys(settings.redis.key_prefix)),
        Side(create_redis(settings.redis), Keys(rebuilt_prefix)),
    )


async def test_replay_reproduces_the_live_state_and_finds_corruption(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    await _populate(settings)
    live_prefix = settings.redis.key_prefix
    target = f"r{uuid.uuid4().hex[:8]}:"

    rc = await run_replay(settings, ReplayOptions(prefix=target), clock=lambda: NOW)
    assert rc == 0

    # The states are equal, customer by customer (independently of the verifier).
    live = await _all_states(settings, live_prefix)
    rebuilt = await _all_states(settings, target)
    assert len(live) == 81
    assert rebuilt == live

    # A second replay into the same target is refused, then accepted with --force.
    assert await run_replay(settings, ReplayOptions(prefix=target), clock=lambda: NOW) == 2
    forced = ReplayOptions(prefix=target, force=True)
    assert await run_replay(settings, forced, clock=lambda: NOW) == 0
    # The live state's own prefix (or one covering it) is never a target.
    assert await run_replay(settings, ReplayOptions(prefix=""), clock=lambda: NOW) == 2

    # Corrupt one live customer's profile: verification names exactly that customer.
    a, b = _sides(settings, target)
    victim = "c-7"
    try:
        lifetime = await a.redis.hget(a.keys.customer(victim), "L")
        assert isinstance(lifetime, bytes)
        orders, rest = lifetime.split(b",", 1)
        await a.redis.hset(
            a.keys.customer(victim), "L", str(int(orders) + 1).encode() + b"," + rest
        )
        report = await verify_states(
            settings, a, b, rules=RULES, now=NOW, positions=None, examples=50
        )
        assert not report.equal
        assert {d.customer_id for d in report.examples} == {victim}
        assert report.by_kind == {"profile": 1}
        assert report.live_customers == report.rebuilt_customers == 81
        rc = await run_replay(
            settings, ReplayOptions(prefix=target, verify_only=True), clock=lambda: NOW
        )
        assert rc == 1

        # Drop another customer from its segment's member set in the rebuilt state: the
        # member-set entry and that shard's set size are reported.
        other = "c-8"
        g = await b.redis.hget(b.keys.customer(other), "g")
        assert isinstance(g, bytes)
        segment = g.split(b"|", 1)[0].decode()
        shard = shard_of(other)
        assert await b.redis.srem(b.keys.segment_members(shard, segment), other) == 1
        report = await verify_states(
            settings, a, b, rules=RULES, now=NOW, positions=None, examples=50
        )
        assert report.by_kind == {"profile": 1, "member_set": 1, "set_size": 1}
        assert {d.customer_id for d in report.examples} == {victim, other, None}
        assert all(d.shard == shard for d in report.examples if d.customer_id != victim)
    finally:
        await a.redis.aclose()
        await b.redis.aclose()


async def test_newer_live_events_are_excused_not_reported(make_settings) -> None:  # type: ignore[no-untyped-def]
    """The live consumer keeps going after the rebuild's end: those customers are excused as
    newer in live, and only those; an event the live group committed but the rebuild lacks
    is reported."""
    settings = make_settings()
    await _populate(settings)
    target = f"r{uuid.uuid4().hex[:8]}:"
    target_settings = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"key_prefix": target})}
    )
    result = await rebuild(settings, target_settings, rules=RULES, clock=lambda: NOW)
    assert result.records > 600

    more = [(b"c-5", encode(purchase("c-5", "e-late", NOW - timedelta(hours=1), "5.00")))]
    await produce(settings.kafka, settings.kafka.events_topic, more)
    app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    task = asyncio.create_task(app.run())
    try:
        await wait_for(lambda: app.totals.records >= 1, timeout_s=60, what="late event")
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)

    a, b = _sides(settings, target)
    try:
        tps = [TopicPartition(settings.kafka.events_topic, p) for p in result.read_to]
        committed = await committed_offsets(settings, tps)
        positions = Positions(read_to=result.read_to, live_committed=committed)
        report = await verify_states(
            settings, a, b, rules=RULES, now=NOW, positions=positions, examples=50
        )
        assert report.equal, report.lines()
        assert report.excused["newer_in_live"] == 1

        # Without the positions (two quiet states), the same customer is a difference.
        report = await verify_states(
            settings, a, b, rules=RULES, now=NOW, positions=None, examples=50
        )
        assert {d.customer_id for d in report.examples if d.customer_id} == {"c-5"}
    finally:
        await a.redis.aclose()
        await b.redis.aclose()


async def test_tombstones_and_rules_registry_are_copied(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    await _populate(settings)
    live = create_redis(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    target = f"r{uuid.uuid4().hex[:8]}:"
    try:
        # An erased customer with no events left in the topic: its tombstone only.
        erased = keys.customer("gone-1")
        await live.hset(erased, "x", "1700000000000")
        await live.pexpire(erased, 3_600_000)
        registry = RulesRegistry(live, keys)
        await registry.activate(RULES, by="test", at=NOW, fallback=RULES)
        rc = await run_replay(
            settings, ReplayOptions(prefix=target, verify=False), clock=lambda: NOW
        )
        assert rc == 0
        copied = Keys(target).customer("gone-1")
        assert await live.hgetall(copied) == {b"x": b"1700000000000"}
        assert 0 < await live.pttl(copied) <= 3_600_000
        target_registry = RulesRegistry(live, Keys(target))
        assert await target_registry.active_version() == RULES.version
        assert [h.version for h in await target_registry.history()] == [RULES.version]

        # With the live Redis taken as lost nothing is copied or verified: the rebuilt state
        # lacks exactly the erased customer's tombstone, which verification then reports.
        lost = f"r{uuid.uuid4().hex[:8]}:"
        options = ReplayOptions(prefix=lost, live_lost=True)
        assert await run_replay(settings, options, clock=lambda: NOW) == 0
        assert not await live.exists(Keys(lost).customer("gone-1"))
        assert await RulesRegistry(live, Keys(lost)).active_version() is None
        a, b = _sides(settings, lost)
        try:
            report = await verify_states(
                settings, a, b, rules=RULES, now=NOW, positions=None, examples=10
            )
        finally:
            await a.redis.aclose()
            await b.redis.aclose()
        assert report.by_kind == {"missing_in_rebuilt": 1}
        assert [d.customer_id for d in report.examples] == ["gone-1"]
    finally:
        await live.aclose()


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    k, r = settings.kafka, settings.redis
    env = {name: v for name, v in os.environ.items() if not name.startswith("SEGMENTS_")}
    env.update(
        SEGMENTS_KAFKA__BOOTSTRAP=k.bootstrap,
        SEGMENTS_KAFKA__EVENTS_TOPIC=k.events_topic,
        SEGMENTS_KAFKA__CHANGES_TOPIC=k.changes_topic,
        SEGMENTS_KAFKA__DLQ_TOPIC=k.dlq_topic,
        SEGMENTS_KAFKA__GROUP_ID=k.group_id,
        SEGMENTS_REDIS__URL=r.url,
        SEGMENTS_REDIS__KEY_PREFIX=r.key_prefix,
        SEGMENTS_REDIS__CLUSTER=str(r.cluster).lower(),
    )
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "replay", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_cli_exit_codes(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    await _populate(settings)
    target = f"r{uuid.uuid4().hex[:8]}:"

    done = await asyncio.to_thread(_cli, settings, "--prefix", target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "differences: 0" in done.stdout
    assert "states are equal" in done.stdout

    refused = await asyncio.to_thread(_cli, settings, "--prefix", target)
    assert refused.returncode == 2
    assert "not empty" in refused.stdout

    assert (await asyncio.to_thread(_cli, settings)).returncode == 2  # where to?

    live = create_redis(settings.redis)
    try:
        await live.hset(Keys(settings.redis.key_prefix).customer("c-9"), "l", "1")
    finally:
        await live.aclose()
    differs = await asyncio.to_thread(_cli, settings, "--prefix", target, "--verify-only")
    assert differs.returncode == 1, differs.stdout + differs.stderr
    assert "profile: customer 'c-9'" in differs.stdout
    assert "differences: 1 (profile 1)" in differs.stdout
