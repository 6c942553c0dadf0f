# ruff: noqa: T201 - a command line prints its answers
"""``segments replay``: rebuild the whole state from the events topic, then verify it.

The operator's way back from a lost Redis (docs/OPERATIONS.md, *Backup and restore*). The
rebuild goes through the consumer's own path (:class:`consumers.handler.BatchHandler`: the same
codec, ``apply.lua``, classifier and segment writes) into a fresh key prefix or another Redis,
with its own consumer, and never touches the live state:

1. the target must be empty (``--force`` deletes what is under its prefix first); a target that
   could hold live keys (same Redis, a prefix of the live prefix) is refused;
2. the rules: ``--rules FILE``, else the live registry's active version (the registry's
   versions, active pointer and history are copied to the target), else the rules file of the
   settings; erase tombstones of the live state are copied too (with their remaining time to
   live), so an erased customer is not re-created;
3. where to stop, per partition: the larger of the end offset at start and the live consumer
   group's committed offset. The group's offsets are there because an end offset can be short
   (Tansu reports high watermarks a produce batch late): whatever the live consumer committed
   certainly exists. Records past that end are left alone, so the rebuild is the state "as of"
   those offsets, and a consumer started on the rebuilt state (same group) continues from its
   committed offsets: the watermarks skip what the rebuild already applied;
4. every partition is read from its earliest offset up to its end with no consumer group, in
   batches through the handler. Change events go nowhere (``--changes-topic`` to publish them)
   and dead letters are counted, not produced again (they are on the DLQ topic already). The
   validation's clock for a record is its timestamp (when it arrived), not now: an event
   refused as "in the future" when it arrived is refused again;
5. verification against the live state (:mod:`service.store.verify`); the exit status is 1
   when anything differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumers.codec import DeadLetter, DecodedEvent, EventCodec
from consumers.handler import BatchHandler, BatchStats, Record
from consumers.segmenter import Segmenter, min_day_for
from service.kafka import ProducerSink, client_options, create_producer
from service.rules_store import RulesRegistry
from service.segmentation.rules import Rules, load_rules
from service.settings import Settings
from service.store.keys import Keys
from service.store.packing import epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import AnyRedis, create_redis
from service.store.resp import RespPipeline
from service.store.state_diff import Context, DiffReport, Positions
from service.store.verify import (
    Side,
    customer_pattern,
    glob_escape,
    parse_customer_key,
    scan_keys,
    verify,
)

log = logging.getLogger(__name__)

IDLE_POLLS = 50
"""Empty polls in a row below the end before the rebuild gives up (a partition that cannot
be read to its end: records deleted meanwhile, a broker problem)."""
DELETE_CHUNK = 1_000


class ReplayRefused(Exception):
    """The target is not a safe place to rebuild into."""


class ReplayStalled(Exception):
    """A partition stopped yielding records before its end offset."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What ``segments replay`` was asked to do (the command line's flags)."""

    prefix: str | None = None
    """Key prefix of the rebuilt state (default: the live prefix, with another ``redis_url``)."""
    redis_url: str | None = None
    """Redis of the rebuilt state (default: the live one)."""
    force: bool = False
    changes_topic: str | None = None
    verify: bool = True
    verify_only: bool = False
    live_lost: bool = False
    """The live Redis is gone: nothing is read from it (rules, tombstones) or verified."""
    rules_file: Path | None = None
    examples: int = 20


@dataclass(slots=True)
class RebuildResult:
    read_from: dict[int, int] = field(default_factory=dict)
    read_to: dict[int, int] = field(default_factory=dict)
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    changes: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        ends = ", ".join(
            f"{p}:{self.read_from.get(p, 0)}..{end}" for p, end in sorted(self.read_to.items())
        )
        return [
            f"read partitions (offsets from..to): {ends}",
            f"records {self.records}: applied {self.applied}, duplicates {self.duplicates}, "
            f"dead letters {self.dead_lettered}; change events {self.changes}; "
            f"{self.seconds:.1f} s",
        ]


class _Discard:
    """Change events and dead letters of a rebuild: counted, sent nowhere."""

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        return None

    async def send_dead_letters(
        self, topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> None:
        return None


class _ArrivalCodec(EventCodec):
    """The codec, judging each record's "not in the future" bound at the record's timestamp
    (when it arrived) rather than at the rebuild's now. The handler decodes a batch's records
    once each, in order; :meth:`expect` is given their arrival times just before."""

    def __init__(self, codec_settings: Settings) -> None:
        super().__init__(codec_settings.validation)
        self._arrivals: list[datetime | None] = []
        self._next = 0

    def expect(self, records: Sequence[Record], instants: dict[int, datetime]) -> None:
        arrivals: list[datetime | None] = []
        for rec in records:
            ts = getattr(rec, "timestamp", -1)
            if isinstance(ts, int) and ts > 0:
                at = instants.get(ts)
                if at is None:
                    at = instants[ts] = datetime.fromtimestamp(ts / 1000, tz=UTC)
                arrivals.append(at)
            else:
                arrivals.append(None)
        self._arrivals = arrivals
        self._next = 0

    def decode(
        self, key: bytes | None, value: bytes | None, *, now: datetime
    ) -> DecodedEvent | DeadLetter:
        arrival = self._arrivals[self._next] if self._next < len(self._arrivals) else None
        self._next += 1
        return super().decode(key, value, now=now if arrival is None or arrival > now else arrival)


def target_settings(settings: Settings, options: ReplayOptions) -> Settings:
    """The settings of the rebuilt state: the live ones with its Redis URL and key prefix."""
    redis = settings.redis.model_copy(
        update={
            "url": options.redis_url or settings.redis.url,
            "key_prefix": settings.redis.key_prefix if options.prefix is None else options.prefix,
        }
    )
    return settings.model_copy(update={"redis": redis})


def check_target(settings: Settings, target: Settings) -> None:
    """Refuses a target whose keys could be live keys."""
    if target.redis.url != settings.redis.url:
        return
    live, rebuilt = settings.redis.key_prefix, target.redis.key_prefix
    if live.startswith(rebuilt):
        raise ReplayRefused(
            f"target prefix {rebuilt!r} on the live Redis covers the live prefix {live!r}: "
            "choose another --prefix (e.g. 'r1:') or another --redis-url"
        )


async def prepare_target(redis: AnyRedis, keys: Keys, *, force: bool) -> int:
    """Checks that nothing is stored under the target prefix; with ``force``, deletes it all
    (key by key: cluster-safe). Returns the number of keys deleted."""
    pattern = glob_escape(keys.prefix) + "*"
    deleted = 0
    chunk: list[bytes] = []
    async for key in scan_keys(redis, pattern):
        if not force:
            raise ReplayRefused(
                f"the target prefix {keys.prefix!r} is not empty (e.g. {key.decode()!r}); "
                "--force deletes everything under it first"
            )
        chunk.append(key)
        if len(chunk) >= DELETE_CHUNK:
            deleted += await _unlink(redis, chunk)
            chunk = []
    if chunk:
        deleted += await _unlink(redis, chunk)
    return deleted


async def _unlink(redis: AnyRedis, keys: list[bytes]) -> int:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(x) for x in await pipe.execute())


async def copy_registry(live: Side, target: Side) -> int:
    """Copies the rules registry (stored versions, active pointer, history); returns the
    number of versions. The re-classification job is not copied: the rebuild classified
    everyone with the active version."""
    lk, tk = live.keys, target.keys
    versions = 0
    prefix = lk.rules_version("")
    async for key in scan_keys(live.redis, glob_escape(prefix) + "*"):
        doc = await live.redis.get(key)
        if doc is None:
            continue
        version = key.decode()[len(prefix) :]
        await target.redis.set(tk.rules_version(version), doc)
        versions += 1
    active = await live.redis.hgetall(lk.rules_active())
    if active:
        await target.redis.hset(tk.rules_active(), mapping=dict(active.items()))
    history = await live.redis.lrange(lk.rules_history(), 0, -1)
    if history:
        await target.redis.delete(tk.rules_history())
        await target.redis.rpush(tk.rules_history(), *history)
    return versions


async def copy_tombstones(live: Side, target: Side) -> int:
    """Copies every erase tombstone (a customer hash holding the field ``x``) with its
    remaining time to live; returns how many."""
    copied = 0
    chunk: list[bytes] = []

    async def flush() -> int:
        pipe = live.redis.pipeline(transaction=False)
        for key in chunk:
            pipe.hget(key, "x")
            pipe.pttl(key)
        replies = await pipe.execute()
        out = target.redis.pipeline(transaction=False)
        n = 0
        for i, key in enumerate(chunk):
            erased_at, ttl = replies[2 * i], int(replies[2 * i + 1])
            if erased_at is None or ttl == -2:
                continue
            shard, cid = parse_customer_key(live.keys, key)
            tk = target.keys.customer(cid, shard)
            out.hset(tk, "x", erased_at)
            if ttl > 0:
                out.pexpire(tk, ttl)
            n += 1
        if n:
            await out.execute()
        return n

    async for key in scan_keys(live.redis, customer_pattern(live.keys)):
        chunk.append(key)
        if len(chunk) >= DELETE_CHUNK:
            copied += await flush()
            chunk = []
    if chunk:
        copied += await flush()
    return copied


async def live_rules(settings: Settings, live: Side | None, rules_file: Path | None) -> Rules:
    """The rules to rebuild with (see step 2 of the module docstring)."""
    if rules_file is not None:
        return load_rules(rules_file)
    fallback = load_rules(settings.rules_file)
    if live is None:
        return fallback
    registry = RulesRegistry(live.redis, live.keys)
    version = await registry.active_version()
    return fallback if version is None else await registry.load(version)


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partition numbers (empty: no such topic)."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t["partitions"]
    )


async def committed_offsets(
    settings: Settings, partitions: Sequence[TopicPartition]
) -> dict[int, int]:
    """The live consumer group's committed offsets (0 where it has none)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        group_id=settings.kafka.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def rebuild(
    settings: Settings,
    target: Settings,
    *,
    rules: Rules,
    clock: Callable[[], datetime],
    changes_topic: str | None = None,
) -> RebuildResult:
    """Steps 3–4 of the module docstring: reads the events topic into ``target``'s state."""
    k = settings.kafka
    result = RebuildResult()
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **client_options(k),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=k.fetch_max_bytes,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
    )
    await consumer.start()
    producer = create_producer(k) if changes_topic else None
    redis = create_redis(target.redis)
    fast = (
        None
        if target.redis.cluster
        else RespPipeline(target.redis.url, timeout_s=target.redis.socket_timeout_s)
    )
    store = RedisProfileStore(
        redis,
        Keys(target.redis.key_prefix),
        ring_size=settings.state.event_id_ring,
        fast=fast,
        cache_size=settings.state.customer_cache,
        cache_min_buckets=settings.state.customer_cache_min_buckets,
    )
    try:
        numbers = await topic_partitions(settings, k.events_topic)
        if not numbers:
            raise ReplayRefused(f"the events topic {k.events_topic!r} does not exist")
        tps = [TopicPartition(k.events_topic, p) for p in sorted(numbers)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        committed = await committed_offsets(settings, tps)
        for tp in tps:
            result.read_from[tp.partition] = begin[tp]
            result.read_to[tp.partition] = max(end[tp], committed[tp.partition])

        discard = _Discard()
        if producer is not None:
            await producer.start()
        sink = ProducerSink(producer) if producer is not None else discard
        codec = _ArrivalCodec(settings)
        handler = BatchHandler(
            settings,
            codec=codec,
            store=store,
            segmenter=Segmenter(
                store, sink, changes_topic=changes_topic or "", rules=lambda: rules
            ),
            dead_letters=discard,
            rules=lambda: rules,
            clock=clock,
        )
        instants: dict[int, datetime] = {}
        remaining = set(tps)
        idle = 0
        while True:
            for tp in list(remaining):
                if await consumer.position(tp) >= result.read_to[tp.partition]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if not remaining:
                break
            batches = await consumer.getmany(
                *remaining, timeout_ms=k.poll_timeout_ms, max_records=k.max_batch
            )
            records = [
                r
                for tp, recs in batches.items()
                for r in recs
                if r.offset < result.read_to[tp.partition]
            ]
            if not records:
                idle += 1
                if idle > IDLE_POLLS:
                    stuck = sorted(remaining, key=lambda t: t.partition)
                    where = ", ".join(
                        [
                            f"{tp.partition} at {await consumer.position(tp)} of "
                            f"{result.read_to[tp.partition]}"
                            for tp in stuck
                        ]
                    )
                    raise ReplayStalled(f"no records for {IDLE_POLLS} polls; partitions {where}")
                continue
            idle = 0
            if len(instants) > 100_000:
                instants.clear()
            stats = await _handle(handler, codec, records, instants)
            result.records += stats.records
            result.applied += stats.applied
            result.duplicates += stats.duplicates
            result.dead_lettered += stats.dead_lettered
            result.changes += stats.changes
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
        await store.aclose()
        await redis.aclose()
    result.seconds = time.monotonic() - started
    return result


async def _handle(
    handler: BatchHandler,
    codec: _ArrivalCodec,
    records: Sequence[Record],
    instants: dict[int, datetime],
) -> BatchStats:
    """One batch through the handler; a failed produce (``--changes-topic``) retries it."""
    delay = 0.2
    while True:
        codec.expect(records, instants)
        try:
            return await handler.handle(records)
        except KafkaError as exc:
            log.warning("producing failed, retrying the batch", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def verify_states(
    settings: Settings,
    live: Side,
    rebuilt: Side,
    *,
    rules: Rules,
    now: datetime,
    positions: Positions | None,
    examples: int,
) -> DiffReport:
    retention = settings.state.retention_days
    ctx = Context(
        now_ms=epoch_ms(now),
        positions=positions,
        retention_ms=None if retention is None else retention * 86_400_000,
    )
    return await verify(live, rebuilt, min_day=min_day_for(now, rules), ctx=ctx, examples=examples)


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def run_replay(
    settings: Settings,
    options: ReplayOptions,
    *,
    clock: Callable[[], datetime] = _utc_now,
) -> int:
    """The command: 0 when the states are equal (or not verified), 1 when they differ,
    2 when the target is refused."""
    target = target_settings(settings, options)
    live_keys, target_keys = Keys(settings.redis.key_prefix), Keys(target.redis.key_prefix)
    try:
        check_target(settings, target)
    except ReplayRefused as refused:
        print(f"segments replay: {refused}")
        return 2
    live_redis = None if options.live_lost else create_redis(settings.redis)
    target_redis = create_redis(target.redis)
    live = None if live_redis is None else Side(live_redis, live_keys)
    rebuilt = Side(target_redis, target_keys)
    try:
        if options.verify_only:
            if live is None:
                print("segments replay: --verify-only needs the live state")
                return 2
            rules = await live_rules(settings, live, options.rules_file)
            report = await verify_states(
                settings,
                live,
                rebuilt,
                rules=rules,
                now=clock(),
                positions=None,
                examples=options.examples,
            )
            return _print_report(report)

        try:
            deleted = await prepare_target(target_redis, target_keys, force=options.force)
        except ReplayRefused as refused:
            print(f"segments replay: {refused}")
            return 2
        if deleted:
            print(f"target {target_keys.prefix!r}: {deleted} keys deleted (--force)")
        rules = await live_rules(settings, live, options.rules_file)
        print(f"rules version {rules.version}")
        if live is not None:
            if options.rules_file is None:
                versions = await copy_registry(live, rebuilt)
                print(f"rules registry copied ({versions} versions)")
            tombstones = await copy_tombstones(live, rebuilt)
            print(f"erase tombstones copied: {tombstones}")
        if options.rules_file is not None:
            fallback = load_rules(target.rules_file)
            if rules.version != fallback.version:
                registry = RulesRegistry(target_redis, target_keys)
                await registry.activate(rules, by="segments replay", at=clock(), fallback=fallback)
                print("rules activated in the target's registry")

        result = await rebuild(
            settings, target, rules=rules, clock=clock, changes_topic=options.changes_topic
        )
        for line in result.lines():
            print(line)
        if live is None or not options.verify:
            print(
                f"not verified; to use the rebuilt state set SEGMENTS_REDIS__KEY_PREFIX="
                f"{target_keys.prefix!r}"
                + (f" and SEGMENTS_REDIS__URL={target.redis.url}" if options.redis_url else "")
            )
            return 0
        tps = [TopicPartition(settings.kafka.events_topic, p) for p in result.read_to]
        positions = Positions(
            read_to=result.read_to, live_committed=await committed_offsets(settings, tps)
        )
        report = await verify_states(
            settings,
            live,
            rebuilt,
            rules=rules,
            now=clock(),
            positions=positions,
            examples=options.examples,
        )
        return _print_report(report)
    finally:
        if live_redis is not None:
            await live_redis.aclose()
        await target_redis.aclose()


def _print_report(report: DiffReport) -> int:
    for line in report.lines():
        print(line)
    print("states are equal" if report.equal else "states differ")
    return 0 if report.equal else 1
