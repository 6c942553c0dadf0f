"""Background re-classification of every customer after a rules activation.

An activation (:mod:`service.rules_store`) creates a job: the new version, the instant it may
start (``rules.reclassify_grace_s`` later, when every instance classifies with the new version,
so live traffic no longer writes the old one) and an empty set of shards done. Workers — every
``segments sweep`` process, or ``segments rules reclassify`` standalone — share it shard by shard:

1. wait until the job may start and this process's rules watcher uses the job's version;
2. take a lease on a shard not yet done (``reclassify:<version>`` in :mod:`service.store.leases`:
   one worker per shard at a time; a dead worker's shard is free again after the lease time);
3. read the shard's customers (its segment sets) and settle them in batches with the shared
   :class:`consumers.segmenter.Segmenter`: classify with the new rules, produce change events
   with ``cause: rules`` and ``trigger.rules_version`` (acknowledged), then write the segments
   (compare-and-set: a customer live traffic changed meanwhile is read again, never overwritten);
4. record the shard done for that version (atomically ignored if a newer activation replaced
   the job) and release the lease.

A crash loses at most the shard in flight; it is redone from the start, and customers already on
the new version with the same segment are skipped without a change event (the change id is
deterministic anyway). Progress: ``GET /v1/rules/reclassification``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from consumers.segmenter import Segmenter, Trigger, min_day_for
from service.rules_store import RulesRegistry
from service.segmentation.rules import Rules
from service.settings import Settings
from service.store.keys import SHARDS, Keys
from service.store.leases import Lease, ShardLeases, default_owner
from service.store.profiles import ProfileStore
from service.store.redis_client import AnyRedis
from service.store.shards import shard_members

log = logging.getLogger(__name__)

LEASE_CHUNK = 16
"""Shards tried per lease round trip."""


@dataclass(slots=True)
class ReclassTotals:
    """What one worker did (the job's totals are in the registry)."""

    version: str | None = None
    shards: int = 0
    customers: int = 0
    changes: int = 0


class Reclassifier:
    """One worker of the re-classification job; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        redis: AnyRedis,
        store: ProfileStore,
        segmenter: Segmenter,
        *,
        rules: Callable[[], Rules],
        clock: Callable[[], datetime],
        owner: str | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._segmenter = segmenter
        self._rules = rules
        self._clock = clock
        self._keys = Keys(settings.redis.key_prefix)
        self.registry = RulesRegistry(redis, self._keys, history_limit=settings.rules.history_limit)
        self.owner = owner or default_owner()
        self._rng = random.Random(self.owner)  # noqa: S311 - spreading shards, not secrecy
        self.totals = ReclassTotals()

    async def step(self) -> bool:
        """One pass over the shards not done yet. Returns True when the job is done (or there
        is none), False when it could not start yet or shards remain (held by others, or the
        rules changed meanwhile)."""
        progress = await self.registry.progress()
        version = progress.version
        if version is None or progress.state == "done":
            return True
        if time.time() * 1000 < progress.not_before_ms or self._rules().version != version:
            return False  # other instances may still write the old version; wait
        await self.registry.mark_started(version, self._clock())
        leases = ShardLeases(
            self._redis,
            self._keys,
            job=f"reclassify:{version}",
            ttl_s=self._settings.rules.reclassify_lease_s,
            owner=self.owner,
        )
        done = await self.registry.shards_done()
        todo = [s for s in range(SHARDS) if s not in done]
        self._rng.shuffle(todo)  # workers start at different shards
        for i in range(0, len(todo), LEASE_CHUNK):
            if self._rules().version != version:
                return False
            held = await leases.acquire(todo[i : i + LEASE_CHUNK])
            try:
                done = await self.registry.shards_done()
                for lease in held:
                    if lease.shard in done:
                        continue
                    if not await self._shard(version, lease):
                        return False
            finally:
                await leases.release(held)
        return (await self.registry.progress()).state in ("done", "none")

    async def _shard(self, version: str, lease: Lease) -> bool:
        """Re-classifies one shard; False if the lease or the rules were lost meanwhile."""
        rules = self._rules()
        batch = self._settings.rules.reclassify_batch
        trigger = Trigger(rules_version=version)
        members = await shard_members(self._redis, self._keys, lease.shard)
        customers = changes = 0
        for i in range(0, len(members), batch):
            if not lease.valid() or rules.version != version:
                return False
            now = self._clock()
            states = await self._store.read(members[i : i + batch], min_day=min_day_for(now, rules))
            result = await self._segmenter.settle(
                states, now=now, cause="rules", trigger_for=lambda _cid: trigger
            )
            customers += len(states)
            changes += len(result.changes)
        recorded = await self.registry.mark_shard_done(
            version, lease.shard, customers=customers, changes=changes, at=self._clock()
        )
        if recorded:
            self.totals.version = version
            self.totals.shards += 1
            self.totals.customers += customers
            self.totals.changes += changes
        return True


async def run_reclassification(
    reclassifier: Reclassifier,
    stopping: asyncio.Event,
    *,
    until_done: bool = False,
    idle_s: float = 1.0,
) -> ReclassTotals:
    """Works on the re-classification job until ``stopping`` is set (the sweeper runs this
    beside its sweep loop), or with ``until_done`` until the current job is done (the
    ``segments rules reclassify`` command). Redis failures are logged and retried."""
    while not stopping.is_set():
        try:
            finished = await reclassifier.step()
        except Exception as exc:  # noqa: BLE001 - retried; a shard in flight is redone
            log.warning("re-classification failed; retrying", extra={"error": repr(exc)})
            finished = False
        if finished and until_done:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=idle_s)
    return reclassifier.totals
