"""Listing a 50,000-member segment page by page returns each member exactly once, also while
the segment changes under the listing.

An index test: the member sets and counts are written directly (one SADD and HINCRBY per
shard), the way the segment-write script leaves them.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable

import httpx
import pytest

from service.api.app import create_app
from service.store.keys import Keys, shard_of
from service.store.redis_client import create_redis
from tests.support.api import NOW_UTC, api_settings, running

pytestmark = pytest.mark.integration

MEMBERS = 50_000


async def _add(settings, segment: str, members: Iterable[str]) -> None:  # type: ignore[no-untyped-def]
    keys = Keys(settings.redis.key_prefix)
    by_shard: dict[int, list[str]] = defaultdict(list)
    for m in members:
        by_shard[shard_of(m)].append(m)
    redis = create_redis(settings.redis)
    pipe = redis.pipeline(transaction=False)
    for shard, ids in by_shard.items():
        pipe.sadd(keys.segment_members(shard, segment), *ids)
        pipe.hincrby(keys.counts(shard), segment, len(ids))
    await pipe.execute()
    await redis.aclose()


async def _remove(settings, segment: str, members: Iterable[str]) -> None:  # type: ignore[no-untyped-def]
    keys = Keys(settings.redis.key_prefix)
    redis = create_redis(settings.redis)
    pipe = redis.pipeline(transaction=False)
    for m in members:
        pipe.srem(keys.segment_members(shard_of(m), segment), m)
        pipe.hincrby(keys.counts(shard_of(m)), segment, -1)
    await pipe.execute()
    await redis.aclose()


async def _list_all(
    client: httpx.AsyncClient,
    segment: str,
    limit: int,
    between_pages=None,  # type: ignore[no-untyped-def]
) -> tuple[list[str], int]:
    listed: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get(f"/v1/segments/{segment}/customers", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["customers"]) <= limit
        listed.extend(body["customers"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return listed, pages
        if between_pages is not None:
            await between_pages(pages)


@pytest.fixture
def settings(redis_url: str):  # type: ignore[no-untyped-def]
    return api_settings(redis_url, auth_disabled=True)


async def test_50k_members_each_exactly_once(settings) -> None:  # type: ignore[no-untyped-def]
    members = [f"cust-{i:06d}" for i in range(MEMBERS)]
    await _add(settings, "loyal", members)
    async with running(create_app(settings, clock=lambda: NOW_UTC)) as client:
        listed, pages = await _list_all(client, "loyal", 1_000)
        assert len(listed) == MEMBERS
        assert set(listed) == set(members)
        assert pages in (50, 51)  # a last empty page is allowed when the end falls on a page
        # an odd page size crosses shard boundaries mid-shard
        listed, _ = await _list_all(client, "loyal", 777)
        assert Counter(listed) == Counter(members)

        counts = {
            s["name"]: s["members"] for s in (await client.get("/v1/segments")).json()["segments"]
        }
        assert counts["loyal"] == MEMBERS
        # a segment with no member at all: one empty page
        r = await client.get("/v1/segments/churned/customers")
        assert r.json() == {"segment": "churned", "customers": [], "next_cursor": None}


async def test_exactly_once_while_the_segment_changes(settings) -> None:  # type: ignore[no-untyped-def]
    stable = [f"s-{i:05d}" for i in range(5_000)]
    churn = [f"x-{i:05d}" for i in range(2_000)]
    await _add(settings, "loyal", stable + churn)
    ever = set(stable) | set(churn)
    rng = random.Random(7)
    joined: list[str] = []

    async def mutate(page: int) -> None:
        # members leave and join between pages (the consumer keeps writing)
        leaving = [churn.pop(rng.randrange(len(churn))) for _ in range(min(20, len(churn)))]
        await _remove(settings, "loyal", leaving)
        new = [f"n-{page:03d}-{i}" for i in range(20)]
        joined.extend(new)
        await _add(settings, "loyal", new)

    async with running(create_app(settings, clock=lambda: NOW_UTC)) as client:
        listed, _ = await _list_all(client, "loyal", 250, between_pages=mutate)
    seen = Counter(listed)
    assert max(seen.values()) == 1  # nothing twice
    assert set(stable) <= set(listed)  # everything that stayed, once
    assert set(listed) <= ever | set(joined)  # nothing invented
