"""Shard leases on a real Redis: exclusive, expiring, renewable, fenced, shared fairly."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from service.store.keys import SHARDS, Keys
from service.store.leases import SAFETY, ShardLeaseKeeper, ShardLeases
from service.store.redis_client import AnyRedis, create_redis
from tests.conftest import redis_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[AnyRedis]:
    client = create_redis(redis_settings(redis_url))
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys(f"lease{uuid.uuid4().hex[:8]}:")


def leases(redis: AnyRedis, keys: Keys, owner: str, ttl_s: float = 5.0) -> ShardLeases:
    return ShardLeases(redis, keys, job="sweep", ttl_s=ttl_s, owner=owner)


async def test_a_lease_is_exclusive_until_released(redis: AnyRedis, keys: Keys) -> None:
    a, b = leases(redis, keys, "a"), leases(redis, keys, "b")
    [held] = await a.acquire([7])
    assert (held.shard, held.owner, held.token) == (7, "a", 1)
    assert [x.shard for x in await b.acquire([7, 8])] == [8]  # 7 is a's
    assert await a.holder(7) == (1, "a")
    # Acquiring again keeps one's own lease (same token) and extends it.
    [again] = await a.acquire([7])
    assert again.token == 1
    # A lease value that is not the current one releases nothing.
    forged = replace(held, owner="b")
    assert await b.release([forged]) == 0
    assert await a.holder(7) == (1, "a")
    assert await a.release([held]) == 1
    assert await a.holder(7) is None
    [taken] = await b.acquire([7])
    assert (taken.owner, taken.token) == ("b", 2)


async def test_a_dead_holders_lease_expires_and_is_taken_over_with_a_higher_token(
    redis: AnyRedis, keys: Keys
) -> None:
    a, b = leases(redis, keys, "a", ttl_s=0.4), leases(redis, keys, "b", ttl_s=0.4)
    [old] = await a.acquire([3])
    assert old.valid()
    assert old.valid_until <= time.monotonic() + 0.4 * (1 - SAFETY)
    assert await b.acquire([3]) == []
    await asyncio.sleep(0.55)
    assert not old.valid()  # the holder knows locally that it must stop
    [new] = await b.acquire([3])
    assert new.token > old.token
    # The old holder is fenced: it can neither renew, nor release, nor pass the token check.
    assert await a.renew([old]) == ([], [old])
    assert await a.release([old]) == 0
    assert not await a.is_current(old)
    assert await b.is_current(new)
    assert await b.holder(3) == (new.token, "b")


async def test_renewal_keeps_a_lease_past_its_time_to_live(redis: AnyRedis, keys: Keys) -> None:
    a, b = leases(redis, keys, "a", ttl_s=0.4), leases(redis, keys, "b", ttl_s=0.4)
    [lease] = await a.acquire([5])
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        renewed, lost = await a.renew([lease])
        assert lost == []
        [lease] = renewed
        assert await b.acquire([5]) == []
    assert lease.valid()
    assert await a.holder(5) == (1, "a")


async def test_tokens_only_grow_across_many_takeovers(redis: AnyRedis, keys: Keys) -> None:
    owners = [leases(redis, keys, f"w{i}", ttl_s=0.2) for i in range(4)]
    tokens = []
    for i in range(8):
        w = owners[i % 4]
        got = await w.acquire([9])
        if i % 2:
            await asyncio.sleep(0.25)  # let it expire
        else:
            await w.release(got)
        tokens.append(got[0].token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_bad_names_are_refused(redis: AnyRedis, keys: Keys) -> None:
    with pytest.raises(ValueError, match="job name"):
        ShardLeases(redis, keys, job="sweep now", ttl_s=1)
    with pytest.raises(ValueError, match="owner"):
        ShardLeases(redis, keys, job="sweep", ttl_s=1, owner="a b")
    with pytest.raises(ValueError, match="out of"):
        await leases(redis, keys, "a").acquire([SHARDS])


async def test_keepers_share_the_shards_and_take_over_a_dead_one(
    redis: AnyRedis, keys: Keys
) -> None:
    ttl = 0.9
    keepers = [
        ShardLeaseKeeper(
            leases(redis, keys, f"k{i}", ttl_s=ttl), renew_every_s=0.2, rng=random.Random(i)
        )
        for i in range(3)
    ]

    async def settle(active: list[ShardLeaseKeeper], rounds: int = 4) -> None:
        for _ in range(rounds):
            for k in active:
                await k.tick()

    def assert_disjoint_cover(active: list[ShardLeaseKeeper], per: int) -> None:
        held = [{x.shard for x in k.held()} for k in active]
        assert sum(map(len, held)) == SHARDS
        assert set().union(*held) == set(range(SHARDS))
        assert all(len(h) <= per for h in held), [len(h) for h in held]

    await settle(keepers[:2])
    assert_disjoint_cover(keepers[:2], SHARDS // 2)

    await settle(keepers)  # a third joins: the others give shards up
    assert_disjoint_cover(keepers, 342)
    # Every held lease is really the holder's in Redis.
    for k in keepers:
        for lease in k.held()[:20]:
            assert await k.leases.holder(lease.shard) == (lease.token, k.leases.owner)
            assert await k.leases.is_current(lease)

    # keepers[2] dies (stops renewing, releases nothing); the others take its shards over
    # only once its leases have expired.
    dead = {x.shard for x in keepers[2].held()}
    died_at = time.monotonic()
    for _ in range(3):
        await settle(keepers[:2], rounds=1)
        # while its leases live, nobody else holds its shards
        if time.monotonic() - died_at < ttl * 0.8:
            assert not dead & {x.shard for k in keepers[:2] for x in k.held()}
        await asyncio.sleep(0.05)
    await asyncio.sleep(ttl)
    await settle(keepers[:2])
    assert time.monotonic() - died_at < ttl + 2
    assert_disjoint_cover(keepers[:2], SHARDS // 2)
    assert keepers[2].held() == []  # and the dead one knows locally it holds nothing


async def test_release_all_hands_over_at_once(redis: AnyRedis, keys: Keys) -> None:
    a = ShardLeaseKeeper(leases(redis, keys, "a", ttl_s=30), renew_every_s=5)
    b = ShardLeaseKeeper(leases(redis, keys, "b", ttl_s=30), renew_every_s=5)
    await a.tick()
    assert len(a.held()) == SHARDS
    await b.tick()
    assert b.held() == []
    await a.release_all()
    await b.tick()
    assert len(b.held()) == SHARDS  # no waiting for a's 30 s leases to run out


async def test_keeper_runs_in_the_background_until_stopped(redis: AnyRedis, keys: Keys) -> None:
    keeper = ShardLeaseKeeper(leases(redis, keys, "a", ttl_s=0.6), renew_every_s=0.15)
    stopping = asyncio.Event()
    errors: list[Exception] = []
    task = asyncio.create_task(keeper.run(stopping, on_error=errors.append))
    await asyncio.sleep(1.5)  # well past the time to live: renewed meanwhile
    assert len(keeper.held()) == SHARDS
    stopping.set()
    await asyncio.wait_for(task, 2)
    assert errors == []
