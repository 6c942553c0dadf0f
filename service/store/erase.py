"""Deleting customers: the erase request (GDPR) and data retention.

Both run ``lua/erase.lua`` on the customer's shard: the customer hash, its entry in its
segment's member set, the shard's count of that segment and its due entry go in one atomic
step (every key shares the shard's hash tag, so this holds on Redis Cluster too).

- :meth:`CustomerEraser.erase` leaves a *tombstone* in place of the hash (one field ``x``, the
  erased-at instant, expiring after ``state.erase_tombstone_days``): ``apply.lua`` skips every
  event of a customer that has one, so a late event or a replay of the topic cannot re-create
  the customer while it lives.
- :meth:`CustomerEraser.expire` deletes without a tombstone and only if the customer did not
  change since it was read (revision and segmentation compared in the script), so an event
  applied meanwhile keeps the customer.
"""

from __future__ import annotations

from importlib import resources

from redis.commands.core import AsyncScript

from service.store.keys import Keys, shard_of
from service.store.redis_client import AnyRedis

MAX_ERASE_ROUNDS = 5
"""Compare-and-set rounds of an erase racing segment writes before giving up."""

_ERASED, _CONFLICT, _ABSENT = 1, 0, 2


class EraseConflict(Exception):
    """The customer's segmentation kept changing while it was being erased."""


class CustomerEraser:
    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        source = resources.files("service.store").joinpath("lua/erase.lua").read_text()
        self._script: AsyncScript = redis.register_script(source)

    async def erase(self, customer_id: str, *, now_ms: int, tombstone_ms: int) -> bool:
        """Erases a customer and leaves a tombstone for ``tombstone_ms``; True if there was a
        customer to erase (the tombstone is written either way: an event still in flight must
        not create the customer afterwards)."""
        key = self._keys.customer(customer_id)
        for _ in range(MAX_ERASE_ROUNDS):
            packed = await self._redis.hget(key, "g")
            outcome = await self._run(
                customer_id, packed, revision="", tombstone=(str(now_ms), str(tombstone_ms))
            )
            if outcome != _CONFLICT:
                return outcome == _ERASED
        raise EraseConflict(f"segmentation kept changing during {MAX_ERASE_ROUNDS} rounds")

    async def expire(self, customer_id: str, *, revision: str, packed: str) -> bool:
        """Deletes a customer without a tombstone if its revision and packed segmentation are
        still the ones read; False if it changed (or is gone)."""
        outcome = await self._run(customer_id, packed, revision=revision or "-", tombstone=None)
        return outcome == _ERASED

    async def _run(
        self,
        customer_id: str,
        packed: bytes | str | None,
        *,
        revision: str,
        tombstone: tuple[str, str] | None,
    ) -> int:
        k = self._keys
        shard = shard_of(customer_id)
        g = (packed.decode() if isinstance(packed, bytes) else packed) or ""
        segment = g.split("|", 1)[0] if g else ""
        at, ttl = tombstone if tombstone is not None else ("", "")
        reply = await self._script(
            keys=[
                k.customer(customer_id, shard),
                k.segment_members(shard, segment) if segment else k.counts(shard),
                k.counts(shard),
                k.due(shard),
            ],
            args=[g, segment, customer_id, revision, at, ttl],
        )
        return int(reply)
