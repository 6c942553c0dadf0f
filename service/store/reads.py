"""Read-only queries the API makes: customers, segment counts, segment members.

Redis only, like the rest of ``store/``; the API decides what the answers mean.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.store.keys import SHARDS, Keys
from service.store.multiplex import MultiplexedRedis
from service.store.redis_client import AnyRedis

_SHARD_BATCH = 64
"""Member sets fetched per round trip while filling a page."""


@dataclass(frozen=True, slots=True)
class MemberPosition:
    """Where a listing stopped: the shard, and the last member returned from it ('' = none)."""

    shard: int
    after: str = ""


@dataclass(frozen=True, slots=True)
class MembersPage:
    members: list[str]
    next: MemberPosition | None
    """Where the next page starts; None when the listing is complete."""


class StateReader:
    """Reads of the state the consumer writes; every method is one or a few round trips."""

    def __init__(
        self, redis: AnyRedis, keys: Keys, *, fast: MultiplexedRedis | None = None
    ) -> None:
        self._redis = redis
        self._fast = fast
        """Auto-pipelined connection for the per-customer reads (None: redis-py, e.g. on a
        cluster); counts and member listings always use redis-py."""
        self._keys = keys

    @property
    def keys(self) -> Keys:
        return self._keys

    async def ping(self) -> bool:
        if self._fast is not None:
            (reply,) = await self._fast.execute([("PING",)])
            return bool(reply)
        return bool(await self._redis.ping())

    async def customer(self, customer_id: str) -> list[bytes]:
        """One customer's raw hash as RESP2's flat list (empty when unknown)."""
        key = self._keys.customer(customer_id)
        if self._fast is not None:
            (fields,) = await self._fast.execute([("HGETALL", key)])
            return fields  # type: ignore[no-any-return]
        return _as_flat(await self._redis.hgetall(key))

    async def customers(self, customer_ids: Sequence[str]) -> list[list[bytes]]:
        """Raw hashes of distinct ids, in order, in one pipelined round trip."""
        if self._fast is not None:
            return await self._fast.execute(
                [("HGETALL", self._keys.customer(cid)) for cid in customer_ids]
            )
        pipe = self._redis.pipeline(transaction=False)
        for cid in customer_ids:
            pipe.hgetall(self._keys.customer(cid))
        return [_as_flat(fields) for fields in await pipe.execute()]

    async def segment_counts(self) -> dict[str, int]:
        """Members per segment, summed over every shard's counts hash (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.hgetall(self._keys.counts(shard))
        totals: dict[str, int] = {}
        for counts in await pipe.execute():
            for name, value in counts.items():
                segment = name.decode()
                totals[segment] = totals.get(segment, 0) + int(value)
        return totals

    async def members_page(self, segment: str, start: MemberPosition, limit: int) -> MembersPage:
        """Up to ``limit`` members from ``start`` on, shard by shard, each shard in sorted order.

        Exactly once: within a shard members are sorted and a page continues strictly after the
        last one returned, so a member that stays in the segment is listed once however the
        sets change meanwhile (SSCAN could repeat elements after a rehash; this cannot).
        """
        out: list[str] = []
        shard, after = start.shard, start.after
        while shard < SHARDS:
            # Sizes first (cheap), then only the sets this page needs: a page of a huge
            # segment transfers about one page of members, not a window of whole shards.
            window = range(shard, min(shard + _SHARD_BATCH, SHARDS))
            pipe = self._redis.pipeline(transaction=False)
            for s in window:
                pipe.scard(self._keys.segment_members(s, segment))
            needed: list[int] = []
            expected = len(out)
            last = window[-1]
            for s, size in zip(window, await pipe.execute(), strict=True):
                if size:
                    needed.append(s)
                    expected += int(size)
                    if expected >= limit:
                        last = s
                        break
            if needed:
                pipe = self._redis.pipeline(transaction=False)
                for s in needed:
                    pipe.smembers(self._keys.segment_members(s, segment))
                for s, raw in zip(needed, await pipe.execute(), strict=True):
                    members = sorted(m.decode() for m in raw)
                    if after and s == start.shard:
                        members = members[bisect_right(members, after) :]
                    room = limit - len(out)  # >= 1: a full page returns below
                    if len(members) > room:
                        out.extend(members[:room])
                        return MembersPage(out, MemberPosition(s, out[-1]))
                    out.extend(members)
                    if len(out) == limit:
                        return MembersPage(out, MemberPosition(s + 1) if s + 1 < SHARDS else None)
            shard = last + 1
        return MembersPage(out, None)


def _as_flat(fields: Any) -> list[bytes]:
    """HGETALL as RESP2's flat list, whether the client gave that or a dict (redis-py)."""
    if isinstance(fields, dict):
        return [x for pair in fields.items() for x in pair]
    return list(fields)
