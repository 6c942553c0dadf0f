"""The profile store: Redis adapter behind a small Protocol the consumer depends on."""

from __future__ import annotations

import itertools
import logging
import struct
from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import hiredis
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.segmentation.profile import Buckets, EventDelta, Profile, Totals
from service.store.keys import Keys, shard_of
from service.store.packing import (
    CustomerState,
    StoredSegmentation,
    decode_customer,
    decode_read_back,
    pack_segmentation,
)
from service.store.redis_client import AnyRedis
from service.store.resp import Command, PackedPipeline, pack, raise_for_errors
from service.store.scripts import LuaScript, ScriptBatch

log = logging.getLogger(__name__)

_KIND_CODE = {"purchase": b"p", "refund": b"r", "engagement": b"e"}
_EVENT = struct.Struct("<iqciq9q8s")
"""One event's argument to apply.lua: partition, offset, kind code, day, occurred_ms, the nine
totals and the 8-byte event id hash, little-endian (the script unpacks the same layout)."""
_EVENT_HEADER = b"$%d\r\n" % _EVENT.size
_EVENT_BULK = struct.Struct(f"<{len(_EVENT_HEADER)}s{_EVENT.format[1:]}2s")
""":data:`_EVENT` framed as a RESP bulk string (:data:`_EVENT_HEADER` before it, CRLF after)."""

APPLIED, SKIPPED_OFFSET, SKIPPED_DUPLICATE, ERASED = 1, 0, 2, 3
"""Outcomes of apply.lua. ``ERASED``: skipped, the customer was erased and its tombstone still
lives (:mod:`service.store.erase`); the event must not re-create it."""
_NOT_RUN = -2
"""A call Redis refused (NOSCRIPT): sent again with the whole pipeline."""
_APPLY_ROUNDS = 3
"""Sends of one apply pipeline before giving up to the caller's retry (one resend repairs a
partial run; a third means scripts keep vanishing, a Redis in trouble)."""


class PartialApplyError(RedisTimeoutError):
    """An apply pipeline kept running only in part; transient, the caller retries it."""


class ApplyRequest(NamedTuple):
    """One decoded event with its source position (a named tuple: one is made per event)."""

    customer_id: str
    partition: int
    offset: int
    event_hash: bytes
    delta: EventDelta


@dataclass(frozen=True, slots=True)
class SegmentWrite:
    """Compare-and-set of one customer's segmentation."""

    customer_id: str
    expected_revision: str
    expected_packed: str
    old_segment: str | None
    new: StoredSegmentation
    new_packed: tuple[str, str] | None = None
    """``pack_segmentation(new)`` when the caller has it already (the segmenter does)."""

    def packed(self) -> tuple[str, str]:
        return pack_segmentation(self.new) if self.new_packed is None else self.new_packed


class ProfileStore(Protocol):
    async def apply(
        self, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]: ...

    async def read(
        self, customer_ids: Sequence[str], *, min_day: int
    ) -> dict[str, CustomerState]: ...

    async def write_segments(self, writes: Sequence[SegmentWrite]) -> list[bool]: ...

    async def trim(self, states: Sequence[CustomerState]) -> None: ...


class RedisProfileStore:
    """Customers as hashes, applied and segmented by Lua scripts (see packing.py for fields)."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: Keys,
        *,
        ring_size: int,
        fast: PackedPipeline | None = None,
        cache_size: int = 0,
        cache_min_buckets: int = 0,
    ) -> None:
        self._redis = redis
        self._fast = fast
        """Hot-path client for a single Redis node (None: use redis-py, e.g. on a cluster)."""
        self._keys = keys
        self._cache = _CustomerCache(cache_size, cache_min_buckets) if cache_size > 0 else None
        """Decoded customers this process applied to last (see :class:`_CustomerCache`)."""
        self._ring_size = str(ring_size)
        self.partial_applies = 0
        """Apply pipelines that ran in part and were sent again (see :meth:`_apply_read`)."""
        self._apply = LuaScript.named("apply")
        self._write = LuaScript.named("write_segment")
        self._apply_prefix = f"\r\n$7\r\nEVALSHA\r\n$40\r\n{self._apply.sha}\r\n$1\r\n1\r\n"
        """An apply call after its ``*<count>`` (the count depends on the customer's events)."""
        self._write_prefix = f"*15\r\n$7\r\nEVALSHA\r\n$40\r\n{self._write.sha}\r\n$1\r\n5\r\n"

    @property
    def keys(self) -> Keys:
        return self._keys

    async def apply(
        self, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]:
        """Applies events in order (one Lua call each) and reads back every touched customer.

        One pipelined round trip. Safe to repeat after any failure: the apply is idempotent.
        Outcomes per request: :data:`APPLIED`, :data:`SKIPPED_OFFSET`, :data:`SKIPPED_DUPLICATE`
        or :data:`ERASED`; an erased customer reads back as unknown (its tombstone holds no
        profile), so nothing classifies or indexes it.
        """
        cache = self._cache
        if cache is not None:
            return await self._apply_cached(cache, requests, min_day=min_day)
        outcomes, states = await self._apply_read(requests, set(), min_day=min_day)
        return [x & 3 for x in outcomes], states

    async def _apply_cached(
        self, cache: _CustomerCache, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]:
        """:meth:`apply`, reading back only the customers the cache does not hold.

        The script's reply carries the revision it found; a cached customer is folded forward
        locally (:meth:`_CustomerCache.fold`, the twin of the script) as long as every revision
        is the one it expects. A customer not in the cache is read back in the same pipeline,
        as without a cache (one round trip). Another writer in between (another consumer after
        a rebalance, an erase) shows as an unexpected revision: that customer is read back in a
        second round trip.
        """
        hits = cache.entries_for(requests)
        tagged, states = await self._apply_read(requests, hits.keys(), min_day=min_day)
        outcomes = [x & 3 for x in tagged]
        lost = cache.fold(hits, requests, tagged, min_day=min_day)
        if lost:
            states.update(await self.read(lost, min_day=min_day))
        for cid, entry in hits.items():  # ``fold`` took the lost ones out
            states[cid] = entry.state(cid, entry.prune(min_day))
        cache.keep(states, min_day)
        return outcomes, states

    async def _apply_read(
        self, requests: Sequence[ApplyRequest], skip_read: Collection[str], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]:
        """One pipeline: one apply call per customer with all its events (replies per event, as
        the script gives them), each call also reading its customer back after the apply
        unless the customer is in ``skip_read``.

        A pipeline can run in part: a Redis that lost its scripts answers NOSCRIPT to the first
        calls, and if another client loads the script meanwhile, the later calls run. A
        customer's events and its read-back are all in one call, so a customer is applied and
        read whole or not at all; the whole pipeline is sent again, idempotent. An event
        applied by any send counts as applied; the read-back is the last send's.
        """
        calls = _apply_calls(requests)
        tail = f"{min_day} {self._ring_size}"
        applied_before: set[int] = set()
        for _ in range(_APPLY_ROUNDS):
            tagged, states = await self._apply_send(
                requests, calls, tail, skip_read, min_day=min_day
            )
            if min(tagged, default=0) >= 0:
                for i in applied_before:
                    if tagged[i] & 3 == SKIPPED_OFFSET:
                        tagged[i] |= APPLIED  # applied by an earlier send (same revision)
                return tagged, states
            if max(tagged) >= 0:
                self.partial_applies += 1
                log.warning(
                    "apply pipeline ran in part; sending it again",
                    extra={"refused": sum(x < 0 for x in tagged), "events": len(tagged)},
                )
            applied_before.update(i for i, x in enumerate(tagged) if x >= 0 and x & 3 == APPLIED)
        raise PartialApplyError(f"apply pipeline ran in part {_APPLY_ROUNDS} times in a row")

    async def _apply_send(
        self,
        requests: Sequence[ApplyRequest],
        calls: dict[str, list[int]],
        tail: str,
        skip_read: Collection[str],
        *,
        min_day: int,
    ) -> tuple[list[int], dict[str, CustomerState]]:
        """One send of the apply pipeline; an event whose call did not run (NOSCRIPT) replies
        :data:`_NOT_RUN`. A customer not in ``skip_read`` is read back by its own apply call,
        after its events (the script's read-back, one more reply)."""
        keys = {cid: self._keys.customer(cid) for cid in calls}
        reads = {cid: cid not in skip_read for cid in calls}
        read_tail = f"{tail} 1"
        if self._fast is not None:
            # RESP written directly, one string per command: the generic packer's per-argument
            # type dispatch costs more than the script takes to run. The key and the first
            # argument are ASCII (ids are of a safe alphabet), so characters count bytes; each
            # event is one struct.pack, framing included.
            prefix = self._apply_prefix
            tail_bulks = {
                False: f"${len(tail)}\r\n{tail}\r\n",
                True: f"${len(read_tail)}\r\n{read_tail}\r\n",
            }
            chunks: list[bytes] = []
            add_chunk = chunks.append
            pack_event, header, kind_code = _EVENT_BULK.pack, _EVENT_HEADER, _KIND_CODE
            for cid, indexes in calls.items():
                key = keys[cid]
                add_chunk(
                    f"*{5 + len(indexes)}{prefix}${len(key)}\r\n{key}\r\n"
                    f"{tail_bulks[reads[cid]]}".encode()
                )
                for i in indexes:
                    r = requests[i]
                    d = r.delta
                    add_chunk(
                        pack_event(
                            header,
                            r.partition,
                            r.offset,
                            kind_code[d.kind],
                            d.day,
                            d.occurred_ms,
                            *d.totals,
                            r.event_hash,
                            b"\r\n",
                        )
                    )
            results = await self._fast.execute_packed(b"".join(chunks), len(calls))
            refused = False
            for i, reply in enumerate(results):
                if isinstance(reply, hiredis.ReplyError):
                    if str(reply).startswith("NOSCRIPT"):
                        results[i] = None  # sent again with the rest
                        refused = True
                    else:
                        raise_for_errors([reply])
            if refused:
                await self._apply.load(self._redis)
        else:
            sha = self._apply.sha
            batch = ScriptBatch(self._redis)
            for cid, indexes in calls.items():
                args: list[str | bytes | int] = [
                    "EVALSHA",
                    sha,
                    1,
                    keys[cid],
                    read_tail if reads[cid] else tail,
                ]
                args += [_event_arg(requests[i]) for i in indexes]
                batch.command(*args)
            # Sent once, like the RESP path above (not ScriptBatch.execute, which resends only
            # the refused calls): an apply refused with NOSCRIPT sends the whole pipeline again
            # (see _apply_read).
            batch.uses(self._apply)
            results = await batch.execute_once()
            for i, reply in enumerate(results):
                if isinstance(reply, NoScriptError):
                    results[i] = None  # sent again with the rest

        tagged = [_NOT_RUN] * len(requests)
        states: dict[str, CustomerState] = {}
        unread: list[str] = []
        for (cid, indexes), replies in zip(calls.items(), results, strict=True):
            if replies is None:
                continue
            for i, x in zip(indexes, replies, strict=False):  # then the read-back, if asked
                tagged[i] = x
            if reads[cid]:
                state = decode_read_back(cid, replies[len(indexes)], min_day=min_day)
                if state is None:
                    unread.append(cid)
                else:
                    states[cid] = state
        if unread:  # a hash the script's read-back does not parse: read as it is
            fields = await self._run([("HGETALL", keys[cid]) for cid in unread], None)
            for cid, raw in zip(unread, fields, strict=True):
                states[cid] = decode_customer(cid, _as_flat(raw), min_day=min_day)
        return tagged, states

    async def read(self, customer_ids: Sequence[str], *, min_day: int) -> dict[str, CustomerState]:
        ids = list(dict.fromkeys(customer_ids))
        results = await self._run([("HGETALL", self._keys.customer(cid)) for cid in ids], None)
        states = {
            cid: decode_customer(cid, _as_flat(fields), min_day=min_day)
            for cid, fields in zip(ids, results, strict=True)
            if fields
        }
        if self._cache is not None:
            self._cache.refresh(ids, states, min_day)
        return states

    async def trim(self, states: Sequence[CustomerState]) -> None:
        """Deletes the daily buckets that left the longest window (found while reading)."""
        commands: list[Command] = [
            ("HDEL", self._keys.customer(s.profile.customer_id), *s.stale)
            for s in states
            if s.stale
        ]
        if commands:
            await self._run(commands, None)

    async def write_segments(self, writes: Sequence[SegmentWrite]) -> list[bool]:
        """Writes segmentations with their indexes; False where a concurrent change won."""
        k = self._keys
        if self._fast is not None:
            prefix = self._write_prefix
            chunks: list[str] = []
            add_chunk = chunks.append
            for w in writes:
                cid = w.customer_id
                tag = k.tag(shard_of(cid))
                new_segment = w.new.segment
                old_segment = w.old_segment or ""
                g, m = w.packed()
                nxt = "" if w.new.next_review_ms is None else str(w.new.next_review_ms)
                add_chunk(
                    prefix
                    + _bulks(
                        f"{tag}:c:{cid}",
                        f"{tag}:seg:{old_segment or new_segment}",
                        f"{tag}:seg:{new_segment}",
                        f"{tag}:counts",
                        f"{tag}:due",
                        w.expected_revision,
                        w.expected_packed,
                        f"{g}\n{m}",
                        old_segment,
                        new_segment,
                        nxt,
                        cid,
                    )
                )
            results = await self._run_packed("".join(chunks).encode(), len(writes), self._write)
            return self._written(writes, [x == 1 for x in results])

        sha = self._write.sha
        commands: list[Command] = []
        for w in writes:
            shard = shard_of(w.customer_id)
            new_segment = w.new.segment
            old_segment = w.old_segment or ""
            commands.append(
                (
                    "EVALSHA",
                    sha,
                    5,
                    k.customer(w.customer_id, shard),
                    k.segment_members(shard, old_segment or new_segment),
                    k.segment_members(shard, new_segment),
                    k.counts(shard),
                    k.due(shard),
                    w.expected_revision,
                    w.expected_packed,
                    "\n".join(w.packed()),
                    old_segment,
                    new_segment,
                    "" if w.new.next_review_ms is None else str(w.new.next_review_ms),
                    w.customer_id,
                )
            )
        results = await self._run(commands, self._write)
        return self._written(writes, [int(x) == 1 for x in results])

    def _written(self, writes: Sequence[SegmentWrite], ok: list[bool]) -> list[bool]:
        """Tells the cache which segmentations are now stored (and forgets the losers)."""
        if self._cache is not None:
            self._cache.segments_written(writes, ok)
        return ok

    async def _run(self, commands: list[Command], script: LuaScript | None) -> list[Any]:
        """One pipelined round trip (one per node on a cluster). A script Redis forgot
        (restart, failover, a new node) is loaded and what it refused sent again, which the
        idempotent scripts make safe."""
        if self._fast is None:
            # redis-py: single node, or a cluster (the pipeline is split by node; every
            # command's keys share one hash tag, so one slot). The batch reloads scripts and
            # resends only the refused calls.
            batch = ScriptBatch(self._redis)
            for cmd in commands:
                batch.command(*cmd)
            if script is not None:
                batch.uses(script)
            return await batch.execute()
        for attempt in (1, 2):
            try:
                return await self._execute(commands)
            except NoScriptError:
                if attempt == 2 or script is None:
                    raise
                await script.load(self._redis)
        raise AssertionError("unreachable")

    async def _run_packed(self, payload: bytes, count: int, script: LuaScript) -> list[Any]:
        """:meth:`_run` for commands already in RESP (single node only)."""
        assert self._fast is not None
        for attempt in (1, 2):
            replies = await self._fast.execute_packed(payload, count)
            try:
                raise_for_errors(replies)
            except NoScriptError:
                if attempt == 2:
                    raise
                await script.load(self._redis)
                continue
            return replies
        raise AssertionError("unreachable")

    async def _execute(self, commands: list[Command]) -> list[Any]:
        assert self._fast is not None
        replies = await self._fast.execute_packed(pack(commands), len(commands))
        raise_for_errors(replies)
        return replies

    async def aclose(self) -> None:
        if self._fast is not None:
            await self._fast.aclose()


def _event_arg(r: ApplyRequest) -> bytes:
    """An event's argument to apply.lua (:data:`_EVENT`; the RESP path packs it framed)."""
    d = r.delta
    return _EVENT.pack(
        r.partition, r.offset, _KIND_CODE[d.kind], d.day, d.occurred_ms, *d.totals, r.event_hash
    )


def _apply_calls(requests: Sequence[ApplyRequest]) -> dict[str, list[int]]:
    """The indexes of each customer's events, in order: one apply call each (see apply.lua)."""
    calls: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        indexes = calls.get(r.customer_id)
        if indexes is None:
            calls[r.customer_id] = [i]
        else:
            indexes.append(i)
    return calls


def _bulks(*args: str) -> str:
    """ASCII arguments as RESP bulk strings (characters count bytes)."""
    return "".join([f"${len(a)}\r\n{a}\r\n" for a in args])


def _as_flat(fields: Any) -> list[bytes]:
    """HGETALL as RESP2's flat list, whether the client gave that or a dict (redis-py)."""
    if isinstance(fields, dict):
        return [x for pair in fields.items() for x in pair]
    return list(fields)


class _Entry:
    """A cached customer: what :func:`decode_customer` would read, kept mutable.

    The buckets are columns in day order, as in :class:`Buckets`: the read-back's own tuples
    until the first fold makes lists of them (most entries are never folded into: a customer
    seen once), then a fold is a bisect and a few list operations. The profile handed out
    shares them: it is valid until the customer's next apply, which is all a batch needs.
    """

    __slots__ = (
        "columns",
        "days",
        "engaged",
        "first",
        "last",
        "lifetime",
        "meta",
        "mutable",
        "packed",
        "pruned",
        "revision",
    )

    def __init__(self, state: CustomerState, min_day: int) -> None:
        p = state.profile
        self.first = p.first_purchase_ms
        self.last = p.last_purchase_ms
        self.engaged = p.last_engagement_ms
        self.lifetime = p.lifetime
        buckets = Buckets.of(p.days)
        self.days: Sequence[int] = buckets.days
        self.columns: Sequence[Sequence[int]] = buckets.columns
        self.mutable = False
        self.revision = int(state.revision or 0)
        self.packed = state.packed
        self.meta = state.meta
        self.pruned = min_day
        """Buckets before this day are gone (as :func:`decode_customer` leaves them out)."""

    def prune(self, min_day: int) -> tuple[bytes, ...]:
        """Drops buckets older than ``min_day``; returns their field names (to delete)."""
        if min_day <= self.pruned:
            return ()
        self.pruned = min_day
        end = bisect_left(self.days, min_day)
        if not end:
            return ()
        old = self.days[:end]
        self.days = self.days[end:]
        self.columns = [column[end:] for column in self.columns]
        return tuple(f"d:{day}".encode() for day in old)

    def fold(self, day: int, totals: Totals) -> None:
        """Adds ``totals`` to the bucket of ``day`` (made when there is none)."""
        if not self.mutable:
            self.days = list(self.days)
            self.columns = [list(column) for column in self.columns]
            self.mutable = True
        days = cast(list[int], self.days)
        columns = cast(list[list[int]], self.columns)
        i = bisect_left(days, day)
        if i < len(days) and days[i] == day:
            for column, value in zip(columns, totals, strict=True):
                column[i] += value
        else:
            days.insert(i, day)
            for column, value in zip(columns, totals, strict=True):
                column.insert(i, value)

    def state(self, customer_id: str, stale: tuple[bytes, ...] = ()) -> CustomerState:
        buckets = Buckets(self.days, self.columns)
        profile = Profile(customer_id, self.first, self.last, self.engaged, self.lifetime, buckets)
        return CustomerState(
            profile=profile,
            revision=str(self.revision),
            packed=self.packed,
            meta=self.meta,
            stale=stale,
        )


class _CustomerCache:
    """Decoded customers, so a customer applied to again needs no read-back and no decode.

    Only this process's applies change a cached customer's profile while it owns the
    customer's partition; each apply's reply says which revision the script found, so any
    other writer is noticed (:meth:`fold`). Segment fields changed by another writer (a
    sweeper) are not noticed here, but the segment write is a compare-and-set on them, and a
    lost compare-and-set reads the customer again. Bounded: least recently used goes first.
    """

    def __init__(self, capacity: int, min_buckets: int = 0) -> None:
        self._capacity = capacity
        self._min_buckets = min_buckets
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entries_for(self, requests: Sequence[ApplyRequest]) -> dict[str, _Entry]:
        """The cached entry of every customer in ``requests`` that has one."""
        entries = self._entries
        hits: dict[str, _Entry] = {}
        for r in requests:
            cid = r.customer_id
            if cid not in hits:
                entry = entries.get(cid)
                if entry is not None:
                    hits[cid] = entry
        return hits

    def fold(
        self,
        hits: dict[str, _Entry],
        requests: Sequence[ApplyRequest],
        tagged: list[int],
        *,
        min_day: int,
    ) -> list[str]:
        """Folds every applied event into its cached customer; returns the customers whose
        revisions were not the expected ones (now forgotten, to be read back)."""
        lost: list[str] = []
        for r, reply in zip(requests, tagged, strict=True):
            entry = hits.get(r.customer_id)
            if entry is None:
                continue
            if reply >> 2 != entry.revision:
                del hits[r.customer_id]
                self._entries.pop(r.customer_id, None)
                lost.append(r.customer_id)
                continue
            if reply & 3 == 1:
                _fold_event(entry, r.delta, min_day)
        return lost

    def keep(self, states: dict[str, CustomerState], min_day: int) -> None:
        """Remembers the customers of a batch worth it (most recently used last), then trims:
        one cached already, or one with at least ``min_buckets`` daily buckets (reading such a
        customer back costs the most, and a customer with many buckets is one with many
        events: a cache of them serves most events at a small share of the memory)."""
        entries = self._entries
        min_buckets = self._min_buckets
        for cid, state in states.items():
            entry = entries.pop(cid, None)
            if entry is not None:
                entries[cid] = entry
            elif len(state.profile.days) >= min_buckets:
                entries[cid] = _Entry(state, min_day)
        self._trim()

    def refresh(self, ids: Iterable[str], states: dict[str, CustomerState], min_day: int) -> None:
        """A fresh read replaces what was cached (a customer read as absent is forgotten)."""
        entries = self._entries
        for cid in ids:
            state = states.get(cid)
            if state is None:
                entries.pop(cid, None)
            elif cid in entries:
                entries[cid] = _Entry(state, min_day)

    def segments_written(self, writes: Sequence[SegmentWrite], ok: list[bool]) -> None:
        entries = self._entries
        for w, done in zip(writes, ok, strict=True):
            entry = entries.get(w.customer_id)
            if entry is None:
                continue
            if done and str(entry.revision) == w.expected_revision:
                entry.packed, entry.meta = w.packed()
                entry.revision += 1  # write_segment.lua moves it on
            else:
                del entries[w.customer_id]

    def clear(self) -> None:
        self._entries.clear()

    def _trim(self) -> None:
        entries = self._entries
        excess = len(entries) - self._capacity
        if excess > 0:
            for cid in list(itertools.islice(entries, excess)):
                del entries[cid]


def _fold_event(entry: _Entry, delta: EventDelta, min_day: int) -> None:
    """apply.lua on a cached customer (see :func:`service.segmentation.profile.apply_event`)."""
    ms = delta.occurred_ms
    if delta.kind == "purchase":
        if entry.first is None or ms < entry.first:
            entry.first = ms
        if entry.last is None or ms > entry.last:
            entry.last = ms
    elif delta.kind == "engagement" and (entry.engaged is None or ms > entry.engaged):
        entry.engaged = ms
    entry.lifetime = entry.lifetime + delta.totals
    entry.revision += 1
    if delta.day >= min_day:
        entry.fold(delta.day, delta.totals)
