"""Verifying one state against another (``segments replay`` and ``--verify-only``).

Cluster-safe and bounded in memory: customers are found with SCAN (on Redis Cluster, on every
primary), read in chunks with single-key commands in pipelines (redis-py groups them by node),
compared and forgotten; only per-shard tallies are kept. The comparison itself is
:mod:`service.store.state_diff`.

1. every customer of the live state is read on both sides (hash, member-set entry, due score)
   and compared;
2. every customer of the rebuilt state that the live state lacks is read and compared;
3. each shard's indexes (counts, member-set sizes, due-index size) are checked against the
   customers tallied in 1–2, on both sides, and the two sides' counts against each other.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from service.store.keys import SHARDS, Keys
from service.store.redis_client import AnyRedis
from service.store.state_diff import (
    Context,
    DiffReport,
    ShardSide,
    Snapshot,
    compare_customer,
    compare_shard,
    excused_delta,
    snapshot,
)

CHUNK = 500
"""Customers read per pipelined round trip."""
SCAN_COUNT = 1_000


@dataclass(frozen=True, slots=True)
class Side:
    """One state: a Redis and the key prefix of its keys."""

    redis: AnyRedis
    keys: Keys


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def customer_pattern(keys: Keys) -> str:
    return glob_escape(keys.prefix) + "{s[0-9][0-9][0-9][0-9]}:c:*"


def parse_customer_key(keys: Keys, key: bytes | str) -> tuple[int, str]:
    """(shard, customer id) of a key matched by :func:`customer_pattern`."""
    text = key.decode() if isinstance(key, bytes) else key
    rest = text[len(keys.prefix) :]  # "{s0042}:c:<customer id>"
    return int(rest[2:6]), rest[10:]


async def scan_keys(redis: AnyRedis, pattern: str) -> AsyncIterator[bytes]:
    """Every key matching ``pattern``; on a cluster, from every primary (SCAN is per node)."""
    if isinstance(redis, RedisCluster):
        it = redis.scan_iter(match=pattern, count=SCAN_COUNT, target_nodes=RedisCluster.PRIMARIES)
    else:
        it = redis.scan_iter(match=pattern, count=SCAN_COUNT)
    async for key in it:
        yield key if isinstance(key, bytes) else str(key).encode()


async def _chunks(redis: AnyRedis, pattern: str) -> AsyncIterator[list[bytes]]:
    chunk: list[bytes] = []
    async for key in scan_keys(redis, pattern):
        chunk.append(key)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def read_snapshots(
    side: Side, customers: Sequence[tuple[int, str]], *, min_day: int
) -> list[Snapshot | None]:
    """Each customer's hash with its member-set and due-index entries (None: no hash)."""
    k = side.keys
    pipe = side.redis.pipeline(transaction=False)
    for shard, cid in customers:
        pipe.hgetall(k.customer(cid, shard))
    hashes: list[Any] = await pipe.execute()
    pipe = side.redis.pipeline(transaction=False)
    segments: list[str | None] = []
    for (shard, cid), fields in zip(customers, hashes, strict=True):
        g = fields.get(b"g") if fields else None
        segment = g.split(b"|", 1)[0].decode() if g else None
        segments.append(segment)
        if segment is not None:
            pipe.sismember(k.segment_members(shard, segment), cid)
        pipe.zscore(k.due(shard), cid)
    replies: list[Any] = list(await pipe.execute())
    out: list[Snapshot | None] = []
    for (_, cid), fields, segment in zip(customers, hashes, segments, strict=True):
        member = bool(replies.pop(0)) if segment is not None else False
        score = replies.pop(0)
        if not fields:
            out.append(None)
            continue
        out.append(
            snapshot(
                cid,
                fields,
                min_day=min_day,
                in_member_set=member,
                due_ms=None if score is None else int(score),
            )
        )
    return out


async def _exists(side: Side, customers: Sequence[tuple[int, str]]) -> list[bool]:
    pipe = side.redis.pipeline(transaction=False)
    for shard, cid in customers:
        pipe.exists(side.keys.customer(cid, shard))
    return [bool(x) for x in await pipe.execute()]


async def _shard_indexes(side: Side, shard: int, tallied: ShardSide) -> None:
    """Fills ``tallied`` with the shard's counts, member-set sizes and due-index size."""
    k = side.keys
    raw = await side.redis.hgetall(k.counts(shard))
    tallied.counts = {
        (name.decode() if isinstance(name, bytes) else str(name)): int(n)
        for name, n in raw.items()
        if int(n) != 0
    }
    names = sorted(set(raw_name(n) for n in raw) | set(tallied.segments))
    pipe = side.redis.pipeline(transaction=False)
    for name in names:
        pipe.scard(k.segment_members(shard, name))
    pipe.zcard(k.due(shard))
    replies = await pipe.execute()
    tallied.set_sizes = {n: int(x) for n, x in zip(names, replies[:-1], strict=True) if int(x)}
    tallied.due_size = int(replies[-1])


def raw_name(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


async def verify(
    live: Side, rebuilt: Side, *, min_day: int, ctx: Context, examples: int = 20
) -> DiffReport:
    """Compares ``rebuilt`` against ``live`` (see the module docstring)."""
    report = DiffReport(examples_wanted=examples)
    live_shards: dict[int, ShardSide] = defaultdict(ShardSide)
    rebuilt_shards: dict[int, ShardSide] = defaultdict(ShardSide)
    excused: dict[int, Counter[str]] = defaultdict(Counter)

    def judge(shard: int, cid: str, a: Snapshot | None, b: Snapshot | None) -> None:
        if a is not None:
            live_shards[shard].tally(a)
        if b is not None:
            rebuilt_shards[shard].tally(b)
        diffs, why = compare_customer(cid, shard, a, b, ctx)
        report.add(diffs)
        if why is not None:
            report.excused[why] += 1
            for segment, n in excused_delta(a, b):
                excused[shard][segment] += n

    # 1. every live customer, on both sides
    async for chunk in _chunks(live.redis, customer_pattern(live.keys)):
        customers = [parse_customer_key(live.keys, key) for key in chunk]
        a_side = await read_snapshots(live, customers, min_day=min_day)
        b_side = await read_snapshots(rebuilt, customers, min_day=min_day)
        for (shard, cid), a, b in zip(customers, a_side, b_side, strict=True):
            report.live_customers += a is not None
            report.rebuilt_customers += b is not None
            judge(shard, cid, a, b)

    # 2. rebuilt customers the live state does not have
    async for chunk in _chunks(rebuilt.redis, customer_pattern(rebuilt.keys)):
        customers = [parse_customer_key(rebuilt.keys, key) for key in chunk]
        in_live = await _exists(live, customers)
        only = [c for c, present in zip(customers, in_live, strict=True) if not present]
        if not only:
            continue
        b_side = await read_snapshots(rebuilt, only, min_day=min_day)
        for (shard, cid), b in zip(only, b_side, strict=True):
            report.rebuilt_customers += b is not None
            judge(shard, cid, None, b)

    # 3. per-shard indexes
    for shard in range(SHARDS):
        a_shard, b_shard = live_shards[shard], rebuilt_shards[shard]
        await _shard_indexes(live, shard, a_shard)
        await _shard_indexes(rebuilt, shard, b_shard)
        report.add(compare_shard(shard, a_shard, b_shard, excused[shard]))
    return report
