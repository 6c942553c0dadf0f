"""The profile store: Redis adapter behind a small Protocol the consumer depends on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from service.segmentation.profile import EventDelta
from service.store.keys import Keys, shard_of
from service.store.packing import (
    CustomerState,
    StoredSegmentation,
    decode_customer,
    encode_totals,
    pack_segmentation,
)
from service.store.redis_client import AnyRedis
from service.store.resp import Command, RespPipeline, raise_for_errors

_KIND_CODE = {"purchase": "p", "refund": "r", "engagement": "e"}

APPLIED, SKIPPED_OFFSET, SKIPPED_DUPLICATE = 1, 0, 2


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """One decoded event with its source position."""

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


class ProfileStore(Protocol):
    async def apply(
        self, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]: ...

    async def read(
        self, customer_ids: Sequence[str], *, min_day: int
    ) -> dict[str, CustomerState]: ...

    async def write_segments(self, writes: Sequence[SegmentWrite]) -> list[bool]: ...

    async def trim(self, states: Sequence[CustomerState]) -> None: ...


class _Script:
    """A Lua script called by SHA, loaded on demand (a restarted Redis forgets scripts)."""

    def __init__(self, name: str) -> None:
        self.source = resources.files("service.store").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    async def load(self, redis: AnyRedis) -> None:
        if isinstance(redis, Redis):
            await redis.script_load(self.source)
        else:  # cluster: every primary needs it
            await redis.script_load(self.source, target_nodes=redis.PRIMARIES)  # type: ignore[call-arg]


class RedisProfileStore:
    """Customers as hashes, applied and segmented by Lua scripts (see packing.py for fields)."""

    def __init__(
        self, redis: AnyRedis, keys: Keys, *, ring_size: int, fast: RespPipeline | None = None
    ) -> None:
        self._redis = redis
        self._fast = fast
        """Hot-path client for a single Redis node (None: use redis-py, e.g. on a cluster)."""
        self._keys = keys
        self._ring_size = str(ring_size)
        self._apply = _Script("apply")
        self._write = _Script("write_segment")
        self._apply_prefix = f"*7\r\n$7\r\nEVALSHA\r\n$40\r\n{self._apply.sha}\r\n$1\r\n1\r\n"
        self._write_prefix = f"*15\r\n$7\r\nEVALSHA\r\n$40\r\n{self._write.sha}\r\n$1\r\n5\r\n"

    @property
    def keys(self) -> Keys:
        return self._keys

    async def apply(
        self, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]:
        """Applies events in order (one Lua call each) and reads back every touched customer.

        One pipelined round trip. Safe to repeat after any failure: the apply is idempotent.
        """
        touched: dict[str, str] = {}
        tail = f"{min_day} {self._ring_size}"
        n = len(requests)
        if self._fast is not None:
            # RESP written directly, one string per command: the generic packer's per-argument
            # type dispatch costs more than the script takes to run. Every argument but the
            # event hash is ASCII (ids are of a safe alphabet), so characters count bytes.
            prefix = self._apply_prefix
            chunks: list[bytes] = []
            add_chunk = chunks.append
            for r in requests:
                arg = touched.get(r.customer_id)
                if arg is None:
                    key = self._keys.customer(r.customer_id)
                    arg = touched[r.customer_id] = f"{prefix}${len(key)}\r\n{key}\r\n"
                head = _apply_head(r, tail)
                totals = encode_totals(r.delta.totals)
                h = r.event_hash
                add_chunk(
                    f"{arg}${len(head)}\r\n{head}\r\n${len(totals)}\r\n{totals}\r\n"
                    f"${len(h)}\r\n".encode()
                )
                add_chunk(h)
                add_chunk(b"\r\n")
            for arg in touched.values():
                add_chunk(b"*2\r\n$7\r\nHGETALL\r\n" + arg[len(prefix) :].encode())
            results = await self._run_packed(b"".join(chunks), n + len(touched), self._apply)
        else:
            sha = self._apply.sha
            commands: list[Command] = []
            add = commands.append
            for r in requests:
                known = touched.get(r.customer_id)
                key = known or self._keys.customer(r.customer_id)
                if known is None:
                    touched[r.customer_id] = key
                head = _apply_head(r, tail)
                add(("EVALSHA", sha, 1, key, head, encode_totals(r.delta.totals), r.event_hash))
            for key in touched.values():
                add(("HGETALL", key))
            results = await self._run(commands, self._apply)

        outcomes = [int(x) for x in results[:n]]
        states = {
            cid: decode_customer(cid, _as_flat(fields), min_day=min_day)
            for cid, fields in zip(touched, results[n:], strict=True)
        }
        return outcomes, states

    async def read(self, customer_ids: Sequence[str], *, min_day: int) -> dict[str, CustomerState]:
        ids = list(dict.fromkeys(customer_ids))
        results = await self._run([("HGETALL", self._keys.customer(cid)) for cid in ids], None)
        return {
            cid: decode_customer(cid, _as_flat(fields), min_day=min_day)
            for cid, fields in zip(ids, results, strict=True)
            if fields
        }

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
                g, m = pack_segmentation(w.new)
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
            return [x == 1 for x in results]

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
                    "\n".join(pack_segmentation(w.new)),
                    old_segment,
                    new_segment,
                    "" if w.new.next_review_ms is None else str(w.new.next_review_ms),
                    w.customer_id,
                )
            )
        results = await self._run(commands, self._write)
        return [int(x) == 1 for x in results]

    async def _run(self, commands: list[Command], script: _Script | None) -> list[Any]:
        """One pipelined round trip; a script Redis forgot (restart, failover) is loaded and the
        whole pipeline sent again, which the idempotent scripts make safe."""
        for attempt in (1, 2):
            try:
                return await self._execute(commands)
            except NoScriptError:
                if attempt == 2 or script is None:
                    raise
                await script.load(self._redis)
        raise AssertionError("unreachable")

    async def _run_packed(self, payload: bytes, count: int, script: _Script) -> list[Any]:
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
        if self._fast is not None:
            replies = await self._fast.execute(commands)
            raise_for_errors(replies)
            return replies
        pipe = self._redis.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def aclose(self) -> None:
        if self._fast is not None:
            await self._fast.aclose()


def _apply_head(r: ApplyRequest, tail: str) -> str:
    """The apply script's ARGV[1] (see apply.lua)."""
    d = r.delta
    return f"{r.partition} {r.offset} {_KIND_CODE[d.kind]} {d.day} {d.occurred_ms} {tail}"


def _bulks(*args: str) -> str:
    """ASCII arguments as RESP bulk strings (characters count bytes)."""
    return "".join([f"${len(a)}\r\n{a}\r\n" for a in args])


def _as_flat(fields: Any) -> list[bytes]:
    """HGETALL as RESP2's flat list, whether the client gave that or a dict (redis-py)."""
    if isinstance(fields, dict):
        return [x for pair in fields.items() for x in pair]
    return list(fields)
