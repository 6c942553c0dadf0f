"""Customer hashes written before buckets were kept nine fields wide still read and apply right.

Earlier versions stored every CSV of totals without its trailing zeros (``1,500`` for one
order of 0.05); the store now writes all nine fields so a read-back parses every bucket in one
go (``packing.decode_customer``). A hash of the old form is read field by field, and
``apply.lua`` widens a bucket on its next event: both must give exactly the ground truth,
through the apply path the consumer uses (the RESP client on a single node, redis-py on a
cluster).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.codec import DecodedEvent, EventCodec
from consumers.segmenter import min_day_for
from service.segmentation.profile import Profile, Totals
from service.segmentation.rules import load_rules
from service.settings import ValidationSettings
from service.store.keys import Keys
from service.store.packing import _bucket_columns
from service.store.profiles import APPLIED, ApplyRequest, RedisProfileStore
from service.store.redis_client import create_redis
from service.store.resp import RespPipeline
from tests.conftest import REDIS_CLUSTER, redis_settings
from tests.support.events import encode, engagement, ground_truth, purchase, refund

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
MIN_DAY = min_day_for(NOW, load_rules(None))


def _legacy(t: Totals) -> str:
    n = len(t)
    while n > 1 and not t[n - 1]:
        n -= 1
    return ",".join(map(str, t[:n]))


def _history(cid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(24):
        at = NOW - timedelta(days=(i * 41) % 300, hours=i)
        if i % 6 == 5:
            events.append(refund(cid, f"{cid}-e{i}", at, "2.50"))
        elif i % 4 == 3:
            events.append(engagement(cid, f"{cid}-e{i}", at, action="support_contact"))
        else:
            events.append(purchase(cid, f"{cid}-e{i}", at, f"{12 + i}.25"))
    return events


def _legacy_hash(profile: Profile, last_offset: int) -> dict[str, str]:
    fields = {f"d:{day}": _legacy(t) for day, t in profile.days.items()}
    fields |= {"L": _legacy(profile.lifetime), "w": f"0:{last_offset}", "v": "12", "r": ""}
    for name, value in (
        ("f", profile.first_purchase_ms),
        ("l", profile.last_purchase_ms),
        ("e", profile.last_engagement_ms),
    ):
        if value is not None:
            fields[name] = str(value)
    return fields


async def test_a_hash_of_the_old_form_reads_and_applies_exactly(redis_url: str) -> None:
    redis = create_redis(redis_settings(redis_url))
    fast = None if REDIS_CLUSTER else RespPipeline(redis_url, timeout_s=5.0)
    keys = Keys(f"bf{uuid.uuid4().hex[:8]}:")
    store = RedisProfileStore(redis, keys, ring_size=8, fast=fast)
    codec = EventCodec(ValidationSettings())
    try:
        customers = ["c-old-1", "c-old-2"]
        histories = {cid: _history(cid) for cid in customers}
        before = {cid: h[:14] for cid, h in histories.items()}
        after = [e for cid in customers for e in histories[cid][14:]]
        stored_before = ground_truth([e for h in before.values() for e in h], min_day=MIN_DAY)
        for cid in customers:
            await redis.hset(keys.customer(cid), mapping=_legacy_hash(stored_before[cid], 13))

        # Read as it is: field by field (the one-parse path refuses it), same profile.
        raw = await redis.hgetall(keys.customer(customers[0]))
        assert _bucket_columns({k: v for k, v in raw.items() if k[:2] == b"d:"}) is None
        read = await store.read(customers, min_day=MIN_DAY)
        assert {cid: s.profile for cid, s in read.items()} == stored_before

        requests = []
        for i, e in enumerate(after):
            decoded = codec.decode(e["customer_id"].encode(), encode(e), now=NOW)
            assert isinstance(decoded, DecodedEvent), decoded
            requests.append(
                ApplyRequest(e["customer_id"], 0, 14 + i, decoded.event_hash, decoded.delta)
            )
        outcomes, states = await store.apply(requests, min_day=MIN_DAY)

        assert outcomes == [APPLIED] * len(after)
        truth = ground_truth([e for h in histories.values() for e in h], min_day=MIN_DAY)
        assert {cid: s.profile for cid, s in states.items()} == truth  # the read-back
        read = await store.read(customers, min_day=MIN_DAY)
        assert {cid: s.profile for cid, s in read.items()} == truth
        # The buckets and lifetime the new events touched are nine wide now; the rest kept
        # their old form and still read right (above).
        touched_days = {r.delta.day for r in requests if r.delta.day >= MIN_DAY}
        untouched_widths = []
        for cid in customers:
            raw = await redis.hgetall(keys.customer(cid))
            assert raw[b"L"].count(b",") == 8
            widths = {int(k[2:]): v.count(b",") + 1 for k, v in raw.items() if k[:2] == b"d:"}
            assert all(widths[day] == 9 for day in touched_days if day in widths)
            untouched_widths += [w for day, w in widths.items() if day not in touched_days]
        assert min(untouched_widths) < 9
    finally:
        await store.aclose()
        await redis.aclose()


async def test_new_customers_are_written_nine_wide_and_read_in_one_parse(redis_url: str) -> None:
    redis = create_redis(redis_settings(redis_url))
    fast = None if REDIS_CLUSTER else RespPipeline(redis_url, timeout_s=5.0)
    keys = Keys(f"bf{uuid.uuid4().hex[:8]}:")
    store = RedisProfileStore(redis, keys, ring_size=8, fast=fast)
    codec = EventCodec(ValidationSettings())
    try:
        events = _history("c-new")
        requests = []
        for i, e in enumerate(events):
            decoded = codec.decode(e["customer_id"].encode(), encode(e), now=NOW)
            assert isinstance(decoded, DecodedEvent), decoded
            requests.append(ApplyRequest("c-new", 0, i, decoded.event_hash, decoded.delta))
        await store.apply(requests, min_day=MIN_DAY)

        raw = await redis.hgetall(keys.customer("c-new"))
        buckets = {k: v for k, v in raw.items() if k[:2] == b"d:"}
        assert len(buckets) > 10
        assert all(v.count(b",") == 8 for v in [*buckets.values(), raw[b"L"]])
        columns = _bucket_columns(buckets)
        assert columns is not None
        truth = ground_truth(events, min_day=MIN_DAY)["c-new"]
        assert columns.tail(columns.start(MIN_DAY)) == truth.days
    finally:
        await store.aclose()
        await redis.aclose()
