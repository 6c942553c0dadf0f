"""Shard leases: expiring locks in Redis that let several workers share the 1,024 shards.

A lease names a *job* (``sweep``, ``reclassify:<version>``, ...) and a shard; at most one owner
holds it at a time. It lives in the shard's hash tag (``{s0042}:lease:<job>``) as
``"<token> <owner>"`` with a time to live:

- :meth:`ShardLeases.acquire` takes a free (or expired) lease and a new *fencing token* from a
  per-shard counter that only grows, or keeps the caller's own lease;
- :meth:`ShardLeases.renew` and :meth:`ShardLeases.release` act only on the exact lease the
  caller holds (same token and owner), never on a successor's;
- a holder that dies simply stops renewing: its leases expire after the time to live and any
  other worker takes them over, with a higher token.

Expiry alone cannot stop a holder that stalled (GC pause, network partition) from acting on a
shard it lost. Two guards cover that: every :class:`Lease` carries a conservative local
deadline (``valid_until``, on the monotonic clock, a margin before Redis can expire it), and a
writer that must never act on a lost shard checks the token atomically with its write (the key
is in the same hash tag, see :mod:`consumers.sweeper`).

:class:`ShardLeaseKeeper` keeps a fair share of the shards for one worker in the background:
workers announce themselves in ``lease-members:<job>``, each aims at ``ceil(SHARDS / live
workers)`` shards, releases the excess when a worker joins and takes free shards when one
leaves or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.store.keys import SHARDS, Keys
from service.store.redis_client import AnyRedis
from service.store.scripts import LuaScript, ScriptBatch

_JOB = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_OWNER = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")

SAFETY = 0.2
"""Share of the time to live a holder gives up early: clock drift between this host and Redis,
plus the time a last batch may take after its final check."""

ACQUIRE_CHUNK = 64
"""Shards tried per round trip while looking for free ones."""


def default_owner() -> str:
    """A name unique to this process: host, pid and a random suffix (a restarted process with
    the same pid must not inherit the leases of its predecessor)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Lease:
    """One shard held for one job."""

    job: str
    shard: int
    owner: str
    token: int
    """Fencing token: grows with every new lease of this shard and job."""
    valid_until: float
    """Monotonic-clock instant after which the holder must not act on the shard any more
    (unless renewed); a margin before Redis may expire the lease."""

    @property
    def value(self) -> str:
        """What the lease key holds while this lease is current."""
        return f"{self.token} {self.owner}"

    def valid(self, at: float | None = None) -> bool:
        return (time.monotonic() if at is None else at) < self.valid_until


class ShardLeases:
    """Acquire, renew and release shard leases for one job and one owner."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: Keys,
        *,
        job: str,
        ttl_s: float,
        owner: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _JOB.match(job):
            raise ValueError(f"job name {job!r}: 1-64 of A-Z a-z 0-9 . _ : -")
        owner = default_owner() if owner is None else owner
        if not _OWNER.match(owner):
            raise ValueError(f"owner {owner!r}: 1-128 of A-Z a-z 0-9 . _ : @ / -")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self._keys = keys
        self.job = job
        self.owner = owner
        self.ttl_s = ttl_s
        self._ttl_ms = str(max(1, round(ttl_s * 1000)))
        self._monotonic = monotonic
        self._acquire = LuaScript.named("lease_acquire")
        self._renew = LuaScript.named("lease_renew")
        self._release = LuaScript.named("lease_release")
        self._members = LuaScript.named("lease_members")

    def _deadline(self, sent_at: float) -> float:
        # Redis starts the time to live when it runs the script, after we sent it.
        return sent_at + self.ttl_s * (1 - SAFETY)

    async def acquire(self, shards: Iterable[int]) -> list[Lease]:
        """Tries every shard once; returns the leases now held (new ones and the caller's own,
        extended). Shards held by someone else are left alone."""
        wanted = list(dict.fromkeys(shards))
        for shard in wanted:
            if not 0 <= shard < SHARDS:
                raise ValueError(f"shard {shard} out of 0..{SHARDS - 1}")
        if not wanted:
            return []
        sent_at = self._monotonic()
        tokens = await self._pipelined(
            [
                (
                    self._acquire,
                    [self._keys.lease(s, self.job), self._keys.lease_fence(s, self.job)],
                    [self.owner, self._ttl_ms],
                )
                for s in wanted
            ]
        )
        deadline = self._deadline(sent_at)
        return [
            Lease(self.job, shard, self.owner, int(token), deadline)
            for shard, token in zip(wanted, tokens, strict=True)
            if int(token) > 0
        ]

    async def renew(self, leases: Sequence[Lease]) -> tuple[list[Lease], list[Lease]]:
        """Extends each lease still held exactly as given. Returns (renewed, lost)."""
        if not leases:
            return [], []
        sent_at = self._monotonic()
        results = await self._pipelined(
            [
                (self._renew, [self._keys.lease(x.shard, x.job)], [x.value, self._ttl_ms])
                for x in leases
            ]
        )
        deadline = self._deadline(sent_at)
        renewed, lost = [], []
        for lease, ok in zip(leases, results, strict=True):
            if int(ok) == 1:
                renewed.append(replace(lease, valid_until=deadline))
            else:
                lost.append(lease)
        return renewed, lost

    async def release(self, leases: Sequence[Lease]) -> int:
        """Gives the leases up (only those still the caller's); returns how many were."""
        if not leases:
            return 0
        results = await self._pipelined(
            [(self._release, [self._keys.lease(x.shard, x.job)], [x.value]) for x in leases]
        )
        return sum(int(r) for r in results)

    async def holder(self, shard: int) -> tuple[int, str] | None:
        """(token, owner) of the current lease of ``shard``, None when free."""
        raw = await self._redis.get(self._keys.lease(shard, self.job))
        if raw is None:
            return None
        token, _, owner = _text(raw).partition(" ")
        return int(token), owner

    async def is_current(self, lease: Lease) -> bool:
        """Whether ``lease`` is still the one in Redis (not expired, not taken over)."""
        raw = await self._redis.get(self._keys.lease(lease.shard, lease.job))
        return raw is not None and _text(raw) == lease.value

    async def announce(self) -> int:
        """Marks this owner live for one time to live; returns the number of live owners."""
        n = await self._members(
            self._redis, [self._keys.lease_members(self.job)], [self.owner, self._ttl_ms]
        )
        return int(n)

    async def leave(self) -> None:
        """Removes this owner from the live ones (on a clean stop)."""
        await self._members(self._redis, [self._keys.lease_members(self.job)], [self.owner, "0"])

    async def _pipelined(self, calls: list[tuple[LuaScript, list[str], list[str]]]) -> list[Any]:
        batch = ScriptBatch(self._redis)
        for script, keys, args in calls:
            batch.script(script, keys, args)
        return await batch.execute()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class ShardLeaseKeeper:
    """Holds a fair share of the shards for one worker, renewing in the background.

    :meth:`tick` (run every ``renew_every_s`` by :meth:`run`): announce this worker, renew what
    it holds (dropping what it lost), release the excess over ``ceil(SHARDS / live workers)``,
    then take free shards up to that share. A dead worker's shards are free once its leases
    expire, so they are taken over within the time to live plus one tick.
    """

    def __init__(
        self,
        leases: ShardLeases,
        *,
        renew_every_s: float | None = None,
        shards: Sequence[int] = range(SHARDS),
        rng: random.Random | None = None,
    ) -> None:
        self.leases = leases
        self.renew_every_s = leases.ttl_s / 3 if renew_every_s is None else renew_every_s
        if self.renew_every_s >= leases.ttl_s * (1 - SAFETY):
            raise ValueError("renew_every_s must be well below the lease time to live")
        self._all = list(shards)
        self._rng = rng or random.Random()  # noqa: S311 - spreading shards, not secrecy
        self._held: dict[int, Lease] = {}
        self.busy: set[int] = set()
        """Shards the worker is using right now: a rebalance gives other shards up first and
        these only once they are no longer busy (a later tick)."""
        self.live_workers = 0
        self.taken = 0
        """Leases acquired since start (a takeover counts too)."""
        self.lost = 0
        """Leases found lost at renewal, or reported lost by :meth:`forget`."""

    def held(self) -> list[Lease]:
        """Leases this worker may act on now (valid locally), in shard order."""
        now = time.monotonic()
        return [x for _, x in sorted(self._held.items()) if x.valid(now)]

    def lease_of(self, shard: int) -> Lease | None:
        lease = self._held.get(shard)
        return lease if lease is not None and lease.valid() else None

    def forget(self, shard: int) -> None:
        """Stop acting on ``shard`` (a fenced write found the lease taken over)."""
        if self._held.pop(shard, None) is not None:
            self.lost += 1

    async def tick(self) -> None:
        self.live_workers = max(1, await self.leases.announce())
        renewed, lost = await self.leases.renew(list(self._held.values()))
        self.lost += len(lost)
        self._held = {x.shard: x for x in renewed}
        target = math.ceil(len(self._all) / self.live_workers)
        if len(self._held) > target:
            idle = sorted(set(self._held) - self.busy)
            excess = self._rng.sample(idle, min(len(idle), len(self._held) - target))
            await self.leases.release([self._held.pop(s) for s in excess])
            return
        free = [s for s in self._all if s not in self._held]
        self._rng.shuffle(free)
        while len(self._held) < target and free:
            need = target - len(self._held)
            chunk, free = free[: max(need, ACQUIRE_CHUNK)], free[max(need, ACQUIRE_CHUNK) :]
            got = await self.leases.acquire(chunk)
            for lease in got[:need]:
                self._held[lease.shard] = lease
            self.taken += min(len(got), need)
            if len(got) > need:  # more than the share came free at once: give the rest back
                await self.leases.release(got[need:])

    async def run(self, stopping: asyncio.Event, *, on_error: Callable[[Exception], None]) -> None:
        """Ticks until ``stopping`` is set; a failed tick (Redis away) is reported and retried
        next time; leases not renewed meanwhile simply run out locally."""
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - reported; the next tick retries
                on_error(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.renew_every_s)

    async def release_all(self) -> None:
        """Releases every lease and leaves the live workers (clean stop: others take over at
        once instead of after the time to live)."""
        held, self._held = list(self._held.values()), {}
        await self.leases.release(held)
        await self.leases.leave()
