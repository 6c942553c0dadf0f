"""Who is in a shard: the members of its segment sets (every classified customer is in one).

A shard holds about ``customers / 1024`` ids (10,000 for ten million customers), so one
shard's member list is small enough to hold; scanning the population shard by shard keeps
memory bounded whatever its size.
"""

from __future__ import annotations

from service.store.keys import Keys
from service.store.redis_client import AnyRedis

SSCAN_COUNT = 1_000


async def shard_members(redis: AnyRedis, keys: Keys, shard: int) -> list[str]:
    """Every customer indexed under a segment in ``shard``, sorted (deterministic order).

    The shard's ``counts`` hash names every segment the shard ever had (a count that fell to
    zero stays), so each set is read with SSCAN. A customer that moves between sets during
    the scan may be missed or seen twice; callers that must see everyone run after the moves
    that matter (re-classification waits until every instance uses the new rules).
    """
    names = sorted(
        n.decode() if isinstance(n, bytes) else str(n)
        for n in await redis.hkeys(keys.counts(shard))
    )
    members: set[str] = set()
    for name in names:
        key = keys.segment_members(shard, name)
        cursor: int = 0
        while True:
            cursor, batch = await redis.sscan(key, cursor, count=SSCAN_COUNT)
            members.update(m.decode() if isinstance(m, bytes) else str(m) for m in batch)
            if int(cursor) == 0:
                break
    return sorted(members)
