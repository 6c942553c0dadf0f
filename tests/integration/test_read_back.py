"""apply.lua reads each customer back in the call that applied its events: the state the store
hands to the classifier must be exactly what decoding the customer's hash gives, on both
clients, for every shape a customer takes (buckets past the longest window, totals with
trailing zeros, engagement only, refunds, a stored segmentation, an erased customer), and a
hash the read-back cannot parse falls back to reading the hash as it is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.codec import DecodedEvent, EventCodec
from service.settings import ValidationSettings
from service.store.keys import Keys
from service.store.multiplex import MultiplexedRedis
from service.store.packing import CustomerState, decode_customer
from service.store.profiles import ApplyRequest, RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from tests.conftest import redis_settings
from tests.support.events import encode, engagement, purchase, refund

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MIN_DAY = (NOW - datetime(1970, 1, 1, tzinfo=UTC)).days - 364


def _events() -> list[dict[str, Any]]:
    at = NOW - timedelta(hours=3)
    return [
        purchase("c-a", "e-1", at, "10.50"),
        purchase("c-a", "e-2", at - timedelta(days=40), "99.99"),
        refund("c-a", "e-3", at - timedelta(days=1), "5.00"),
        engagement("c-b", "e-4", at),  # engagement only: no purchase timestamps
        purchase("c-c", "e-5", at - timedelta(days=300), "1.00"),
        purchase("c-c", "e-6", at - timedelta(days=2), "7.25"),
    ]


def _requests(events: list[dict[str, Any]], first_offset: int = 0) -> list[ApplyRequest]:
    codec = EventCodec(ValidationSettings())
    out = []
    for offset, e in enumerate(events, start=first_offset):
        decoded = codec.decode(e["customer_id"].encode(), encode(e), now=NOW)
        assert isinstance(decoded, DecodedEvent), decoded
        out.append(ApplyRequest(e["customer_id"], 0, offset, decoded.event_hash, decoded.delta))
    return out


async def _hashes(redis: AnyRedis, keys: Keys, ids: list[str], min_day: int) -> dict[str, Any]:
    out: dict[str, CustomerState] = {}
    for cid in ids:
        fields = await redis.hgetall(keys.customer(cid))  # type: ignore[misc]
        flat = [x for pair in fields.items() for x in pair]
        out[cid] = decode_customer(cid, flat, min_day=min_day)
    return out


@pytest.mark.parametrize("client", ["resp", "redis-py"])
async def test_read_back_is_the_hash_decoded(
    client: str, redis_url: str, single_redis_url: str
) -> None:
    url = single_redis_url if client == "resp" else redis_url
    settings = redis_settings(url)
    redis = create_redis(
        settings.model_copy(update={"cluster": False}) if client == "resp" else settings
    )
    fast = MultiplexedRedis(url, timeout_s=5) if client == "resp" else None
    keys = Keys(f"rb{uuid.uuid4().hex[:8]}:")
    store = RedisProfileStore(redis, keys, ring_size=8, fast=fast)
    ids = ["c-a", "c-b", "c-c"]
    try:
        _, states = await store.apply(_requests(_events()), min_day=MIN_DAY)
        assert states == await _hashes(redis, keys, ids, MIN_DAY)
        assert states["c-b"].profile.first_purchase_ms is None
        assert states["c-a"].profile.lifetime.refunds == 1

        # A later day: c-c's oldest bucket has left the longest window (named stale), and a
        # stored segmentation comes back with the customer; nothing new is applied (replay).
        await redis.hset(keys.customer("c-a"), mapping={"g": "loyal|x|t", "m": "v|1|2|r"})
        later = MIN_DAY + 100
        _, again = await store.apply(_requests(_events()), min_day=later)
        assert again == await _hashes(redis, keys, ids, later)
        assert again["c-c"].stale and again["c-c"].profile.days
        assert again["c-a"].packed == "loyal|x|t" and again["c-a"].meta == "v|1|2|r"

        # An erased customer (a tombstone only) reads back as unknown, as its hash decodes.
        await redis.delete(keys.customer("c-b"))
        await redis.hset(keys.customer("c-b"), "x", "1")
        _, erased = await store.apply(
            _requests([engagement("c-b", "e-9", NOW)], first_offset=10), min_day=MIN_DAY
        )
        assert erased == await _hashes(redis, keys, ["c-b"], MIN_DAY)
        assert not erased["c-b"].profile.known

        # A bucket field the read-back does not parse (a leading zero is not JSON): read as is.
        day = NOW.toordinal() - datetime(1970, 1, 1).toordinal()
        await redis.hset(keys.customer("c-c"), f"d:0{day - 1}", "1,100")
        _, odd = await store.apply(
            _requests([purchase("c-c", "e-10", NOW, "2.00")], first_offset=11), min_day=MIN_DAY
        )
        assert odd == await _hashes(redis, keys, ["c-c"], MIN_DAY)
        assert day - 1 in odd["c-c"].profile.days
    finally:
        if fast is not None:
            await fast.aclose()
        await redis.aclose()
