"""An apply pipeline that runs only in part loses nothing.

A Redis that lost its scripts (restart, failover, ``SCRIPT FLUSH``) answers NOSCRIPT. If
another client loads the script while one of our pipelines is running (another lane, another
consumer), the pipeline's first calls are refused and its later calls run. Had a customer's
later event run before an earlier refused one, the watermark would have moved past the earlier
one and the resend would have skipped it for good: found by ``test_consumer_faults`` after a
frozen Redis, where the lanes raced to load the script. The store sends each customer's events
of a pipeline in one call, so a customer is applied whole or not at all, and sends the whole
pipeline again (the read-backs must follow the applies). Here that partial run is made to
happen deterministically, on the consumer's RESP client and on redis-py (single node or
cluster), and every profile equals the ground truth.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from consumers.codec import DecodedEvent, EventCodec
from consumers.segmenter import min_day_for
from service.segmentation.profile import Totals
from service.segmentation.rules import load_rules
from service.settings import ValidationSettings
from service.store.keys import Keys
from service.store.profiles import (
    APPLIED,
    ERASED,
    SKIPPED_DUPLICATE,
    SKIPPED_OFFSET,
    ApplyRequest,
    RedisProfileStore,
    _event_arg,
)
from service.store.redis_client import create_redis
from service.store.resp import RespPipeline, pack
from service.store.scripts import LuaScript, ScriptBatch
from tests.conftest import load_services, redis_settings
from tests.support.events import encode, ground_truth, purchase, refund

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = load_rules(None)
MIN_DAY = min_day_for(NOW, RULES)
APPLY = LuaScript.named("apply")


def _history() -> list[dict[str, Any]]:
    """Customers' events interleaved in one partition, in no time order; c-3's come only after
    the first 15."""
    events = []
    for i in range(30):
        cid = f"c-{i % 3}" if i < 15 else f"c-{i % 4}"
        at = NOW - timedelta(days=(i * 37) % 200, hours=i)
        if i % 7 == 6:
            events.append(refund(cid, f"e-{i}", at, "3.00"))
        else:
            events.append(purchase(cid, f"e-{i}", at, f"{10 + i}.50"))
    return events


def _requests(events: list[dict[str, Any]], partition: int = 0) -> list[ApplyRequest]:
    codec = EventCodec(ValidationSettings())
    out = []
    for offset, e in enumerate(events):
        decoded = codec.decode(e["customer_id"].encode(), encode(e), now=NOW)
        assert isinstance(decoded, DecodedEvent), decoded
        out.append(
            ApplyRequest(
                customer_id=e["customer_id"],
                partition=partition,
                offset=offset,
                event_hash=decoded.event_hash,
                delta=decoded.delta,
            )
        )
    return out


def _split(payload: bytes) -> list[bytes]:
    """The commands of a RESP request buffer, each as its own bytes."""
    commands = []
    i = 0
    while i < len(payload):
        assert payload[i : i + 1] == b"*"
        end = payload.index(b"\r\n", i)
        k = end + 2
        for _ in range(int(payload[i + 1 : end])):
            assert payload[k : k + 1] == b"$"
            size_end = payload.index(b"\r\n", k)
            k = size_end + 2 + int(payload[k + 1 : size_end]) + 2
        commands.append(payload[i:k])
        i = k
    return commands


class ReloadedMidway(RespPipeline):
    """Runs its first pipeline the way Redis does when its script cache is empty at the start
    and another client loads the script after the first ``refused`` calls."""

    def __init__(self, url: str, *, refused: int) -> None:
        super().__init__(url, timeout_s=5.0)
        self.refused = refused
        self.staged = False

    async def execute_packed(self, payload: bytes, count: int) -> list[Any]:
        if self.staged:
            return await super().execute_packed(payload, count)
        self.staged = True
        commands = _split(payload)
        assert len(commands) == count
        head, tail = commands[: self.refused], commands[self.refused :]
        staged = (
            pack([("SCRIPT", "FLUSH")])
            + b"".join(head)
            + pack([("SCRIPT", "LOAD", APPLY.source)])
            + b"".join(tail)
        )
        replies = await super().execute_packed(staged, count + 2)
        return replies[1 : 1 + len(head)] + replies[2 + len(head) :]


async def _assert_exact(store: RedisProfileStore, events: list[dict[str, Any]]) -> None:
    truth = ground_truth(events, min_day=MIN_DAY)
    states = await store.read(list(truth), min_day=MIN_DAY)
    assert {cid: s.profile for cid, s in states.items()} == truth


async def test_resp_pipeline_refused_in_part_is_sent_again_whole(tmp_path: Path) -> None:
    # A Redis of its own: the fault flushes the script cache.
    services = load_services()
    info = services.start("redis", tmp_path / "redis")
    try:
        url = f"redis://{info['host']}:{info['port']}/0"
        redis = create_redis(redis_settings(url).model_copy(update={"cluster": False}))
        fast = ReloadedMidway(url, refused=2)  # c-0's and c-1's calls
        store = RedisProfileStore(redis, Keys("pp:"), ring_size=8, fast=fast)
        events = _history()
        outcomes, states = await store.apply(_requests(events), min_day=MIN_DAY)

        assert fast.staged
        assert store.partial_applies == 1
        assert outcomes == [APPLIED] * len(events)  # each counted applied once
        assert {cid: s.profile.lifetime.orders for cid, s in states.items()} == {
            cid: p.lifetime.orders for cid, p in ground_truth(events, min_day=MIN_DAY).items()
        }  # the read-back is the last send's
        await _assert_exact(store, events)
        await store.aclose()
        await redis.aclose()
    finally:
        services.stop("redis", tmp_path / "redis")


async def test_script_batch_refused_in_part_is_sent_again_whole(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's path (the one a cluster takes): the first send runs its first calls with no
    # script, then the script is loaded, then the rest runs.
    redis = create_redis(redis_settings(redis_url))
    send = ScriptBatch._send
    staged: list[int] = []

    async def partial_once(self: ScriptBatch, commands: list[tuple[Any, ...]]) -> list[Any]:
        if staged:
            return await send(self, commands)
        staged.append(len(commands))
        await redis.script_flush()
        head = await send(self, commands[:2])  # c-0's and c-1's calls
        await APPLY.load(redis)
        return head + await send(self, commands[2:])

    monkeypatch.setattr(ScriptBatch, "_send", partial_once)
    store = RedisProfileStore(redis, Keys(f"pp{uuid.uuid4().hex[:8]}:"), ring_size=8)
    events = _history()
    outcomes, _ = await store.apply(_requests(events), min_day=MIN_DAY)

    assert staged
    assert store.partial_applies == 1
    assert outcomes == [APPLIED] * len(events)
    await _assert_exact(store, events)
    await redis.aclose()


async def test_one_call_applies_a_customers_events_in_order(redis_url: str) -> None:
    """apply.lua's reply per event: the revision it found and the outcome, event by event,
    within one call (a duplicate of an event earlier in the same call is caught; a replay of
    the call changes nothing; an erased customer's events are all skipped)."""
    redis = create_redis(redis_settings(redis_url))
    key = Keys(f"pp{uuid.uuid4().hex[:8]}:").customer("c-1")
    (request,) = _requests([purchase("c-1", "e-1", NOW, "5.00")])
    d = request.delta._replace(totals=Totals(orders=1, spend=50_000))

    def event(offset: int, hash_: bytes) -> bytes:
        return _event_arg(ApplyRequest("c-1", 3, offset, hash_, d))

    a, b = request.event_hash, request.event_hash[:7] + b"\xff"
    calls = [event(13, a), event(14, a), event(15, b), event(12, b)]
    tail = f"{MIN_DAY} 8"
    assert await APPLY(redis, [key], [tail, *calls]) == [
        4 * 0 + APPLIED,
        4 * 1 + SKIPPED_DUPLICATE,  # same event id at a new offset
        4 * 1 + APPLIED,
        4 * 2 + SKIPPED_OFFSET,  # below the watermark
    ]
    assert await redis.hget(key, "w") == b"3:15"
    assert await redis.hget(key, "L") == b"2,100000"
    assert await APPLY(redis, [key], [tail, *calls]) == [4 * 2 + SKIPPED_OFFSET] * 4
    await redis.delete(key)
    await redis.hset(key, "x", "1")  # an erase tombstone
    assert await APPLY(redis, [key], [tail, event(20, a), event(21, b)]) == [ERASED] * 2
    assert await redis.hgetall(key) == {b"x": b"1"}
    await redis.aclose()


async def test_a_customer_on_two_partitions_in_one_pipeline_still_applies(
    redis_url: str,
) -> None:
    # A producer keying by something other than the customer: the watermark moves between
    # partitions, so the order check is left out for such a customer (or it could never pass).
    redis = create_redis(redis_settings(redis_url))
    store = RedisProfileStore(redis, Keys(f"pp{uuid.uuid4().hex[:8]}:"), ring_size=8)
    events = [purchase("c-x", f"e-{i}", NOW - timedelta(days=i), f"{i + 1}.00") for i in range(6)]
    requests = _requests(events)
    mixed = [
        ApplyRequest(r.customer_id, i % 2, 100 + i, r.event_hash, r.delta)
        for i, r in enumerate(requests)
    ]
    outcomes, _ = await store.apply(mixed, min_day=MIN_DAY)
    assert outcomes == [APPLIED] * len(events)
    assert store.partial_applies == 0
    await _assert_exact(store, events)
    await redis.aclose()


async def test_read_back_follows_applies_refused_with_noscript(redis_url: str) -> None:
    """redis-py's path (a cluster's) after Redis lost its scripts (restart, failover, a new
    node): every apply is refused at first, and the read-backs sent in the same pipeline must
    be taken again after the applies ran. Resending only the refused calls returned the
    customers as before their events: the segmenter then saw them as unknown and made no
    segmentation and no change event for them, while their offsets were committed (found by
    the scale-out test on a fresh cluster)."""
    redis = create_redis(redis_settings(redis_url))
    flush = {"target_nodes": RedisCluster.PRIMARIES} if isinstance(redis, RedisCluster) else {}
    await redis.execute_command("SCRIPT FLUSH", **flush)
    store = RedisProfileStore(redis, Keys(f"nb{uuid.uuid4().hex[:8]}:"), ring_size=8)
    events = _history()
    outcomes, states = await store.apply(_requests(events), min_day=MIN_DAY)

    assert outcomes == [APPLIED] * len(events)
    truth = ground_truth(events, min_day=MIN_DAY)
    assert {cid: s.profile for cid, s in states.items()} == truth
    await _assert_exact(store, events)
    await redis.aclose()
