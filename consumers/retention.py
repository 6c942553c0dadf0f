"""Data retention: customers with no activity for ``state.retention_days`` are deleted.

A periodic job of the sweepers, on the shards they hold (:mod:`service.store.leases`): every
``state.retention_interval_s`` a pass goes over each held shard,

1. lists the shard's customers (its segment sets, :func:`service.store.shards.shard_members`;
   every classified customer is in exactly one);
2. reads them ``state.retention_batch`` at a time (one pipelined round trip) and finds each
   one's last activity: last purchase, last engagement, or the end of the newest daily bucket
   (a refund leaves no other trace);
3. deletes the inactive ones with the erase script minus the tombstone
   (:meth:`service.store.erase.CustomerEraser.expire`): profile, segment set entry, shard
   count and due entry in one atomic step, and only if the customer's revision and
   segmentation are still the ones read, so an event applied meanwhile keeps the customer.

The lease only shares the work: a deletion is judged from the state in the same script that
deletes, so two workers on one shard (a stalled holder) cannot delete an active customer.
A later event of an expired customer starts a new profile. Deleted customers are counted
(``segments_customers_expired_total`` through ``on_expired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.settings import Settings
from service.store.erase import CustomerEraser
from service.store.keys import Keys
from service.store.leases import Lease
from service.store.packing import epoch_ms
from service.store.redis_client import AnyRedis
from service.store.shards import shard_members

log = logging.getLogger(__name__)

MS_PER_DAY = 86_400_000


@dataclass(slots=True)
class RetentionStats:
    passes: int = 0
    shards: int = 0
    customers: int = 0
    """Customers read and judged."""
    expired: int = 0
    """Customers deleted."""
    changed: int = 0
    """Inactive when read, but changed before the delete: kept."""


def last_activity_ms(fields: dict[bytes, bytes]) -> int | None:
    """The latest instant a customer hash shows activity at (None: no activity recorded)."""
    latest: int | None = None
    for name, value in fields.items():
        if name in (b"l", b"e"):
            at = int(value)
        elif name[:2] == b"d:":
            at = (int(name[2:]) + 1) * MS_PER_DAY - 1  # the bucket's day, to its last ms
        else:
            continue
        if latest is None or at > latest:
            latest = at
    return latest


class Retention:
    """Judges and deletes inactive customers shard by shard; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        redis: AnyRedis,
        *,
        clock: Callable[[], datetime],
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = Keys(settings.redis.key_prefix)
        self._eraser = CustomerEraser(redis, self._keys)
        self._clock = clock
        self._on_expired = on_expired
        self.stats = RetentionStats()

    @property
    def enabled(self) -> bool:
        return self._settings.state.retention_days is not None

    @property
    def interval_s(self) -> float:
        return self._settings.state.retention_interval_s

    async def shard(self, shard: int, *, valid: Callable[[], bool] = lambda: True) -> int:
        """One shard; stops between batches once ``valid()`` is false (lease lost). Returns
        the customers deleted."""
        days = self._settings.state.retention_days
        if days is None:
            return 0
        batch = self._settings.state.retention_batch
        members = await shard_members(self._redis, self._keys, shard)
        expired = 0
        for i in range(0, len(members), batch):
            if not valid():
                break
            cutoff_ms = epoch_ms(self._clock()) - days * MS_PER_DAY
            ids = members[i : i + batch]
            pipe = self._redis.pipeline(transaction=False)
            for cid in ids:
                pipe.hgetall(self._keys.customer(cid))
            hashes: list[Any] = await pipe.execute()
            self.stats.customers += len(ids)
            for cid, fields in zip(ids, hashes, strict=True):
                if not fields or b"x" in fields:
                    continue  # gone, or an erase tombstone
                latest = last_activity_ms(fields)
                if latest is not None and latest >= cutoff_ms:
                    continue
                if await self._eraser.expire(
                    cid,
                    revision=fields.get(b"v", b"").decode(),
                    packed=fields.get(b"g", b"").decode(),
                ):
                    expired += 1
                else:
                    self.stats.changed += 1
        self.stats.shards += 1
        self.stats.expired += expired
        if self._on_expired is not None:
            self._on_expired(expired)
        return expired

    async def pass_over(self, leases: Iterable[Lease]) -> int:
        """One pass over the held shards; a shard whose lease runs out is left for the next."""
        expired = 0
        for lease in leases:
            if lease.valid():
                expired += await self.shard(lease.shard, valid=lease.valid)
        self.stats.passes += 1
        return expired


async def run_retention(
    retention: Retention,
    held: Callable[[], Sequence[Lease]],
    stopping: asyncio.Event,
    *,
    interval_s: float | None = None,
) -> RetentionStats:
    """Passes every ``state.retention_interval_s`` over the shards ``held()`` names (a
    sweeper's: ``sweeper.keeper.held``) until ``stopping``; nothing when retention is off.
    Redis failures are logged and the pass is redone at the next interval."""
    pause = retention.interval_s if interval_s is None else interval_s
    while retention.enabled and not stopping.is_set():
        try:
            expired = await retention.pass_over(held())
            if expired:
                log.info("inactive customers expired", extra={"customers": expired})
        except Exception as exc:  # noqa: BLE001 - retried at the next pass
            log.warning("retention pass failed; retrying", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=pause)
    return retention.stats
