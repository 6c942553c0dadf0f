"""The sweeper: customers whose segment changes with time alone are re-classified on time.

Every segment write puts the customer's ``next_review_at`` into its shard's due index
(``{sNNNN}:due``, a sorted set, atomically with the segment; see write_segment.lua). Sweepers
share the 1,024 shards through leases (:mod:`service.store.leases`, job ``sweep``) and, every
``sweep.interval_s``, make one *pass* over the shards they hold:

1. read the due entries (``score <= now``) of the held shards, a bounded batch at a time, an
   equal share from each shard that still has some (a shard with a million due customers
   does not starve the others);
2. read those customers and settle them like the consumer does (:mod:`consumers.segmenter`,
   ``cause="time"``, ``Trigger(review_at=<due time>)``): classify, produce the change events
   and await their acknowledgements, *then* write the segments;
3. the write itself moves the due entry to the new ``next_review_at`` (or removes it). Nothing
   else removes an entry, so a sweeper that dies anywhere leaves its batch due for whoever
   takes the shard over; the repeat produces the same changes with the same ``change_id``.

The segment write is fenced: it only lands while the lease token it was made under is still
the shard's current one (checked in the same Lua call as the compare-and-set), so a sweeper
that stalled past its lease cannot write over its successor. Entries a review does not move
(the customer was erased, or nothing was due after all) are dropped or skipped until the next
pass, so a pass always ends. Between batches the loop yields; it never holds anything but its
own batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources

from aiokafka.errors import KafkaError

from consumers.metrics import ConsumerMetrics
from consumers.retention import Retention, run_retention
from consumers.segmenter import RecordSink, Segmenter, Trigger, min_day_for
from service.errors import SegmentsError, WriteConflict
from service.kafka import ProducerSink, create_producer, ensure_topics
from service.probes import kafka_producer_check, redis_check, serve_probes
from service.reclassify import Reclassifier, run_reclassification
from service.retry import TRANSIENT_REDIS_ERRORS
from service.rules_runtime import RulesWatcher
from service.segmentation.rules import Rules, load_rules
from service.settings import Settings
from service.store.keys import Keys, shard_of
from service.store.leases import Lease, ShardLeaseKeeper, ShardLeases
from service.store.packing import CustomerState, epoch_ms, from_epoch_ms
from service.store.profiles import ApplyRequest, RedisProfileStore, SegmentWrite
from service.store.redis_client import AnyRedis, create_redis
from service.store.scripts import LuaScript, ScriptBatch

log = logging.getLogger(__name__)

JOB = "sweep"
"""Lease job name of the sweepers (in the consumer or not: they share the same leases)."""

LAG_SAMPLES = 100_000


class LeaseLost(SegmentsError):
    """A fenced write found another sweeper's lease on the shard."""

    code = "lease_lost"
    retriable = True

    def __init__(self, shards: set[int]) -> None:
        super().__init__(f"lease lost on shards {sorted(shards)}")
        self.shards = shards


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SweepStats:
    """Running counters since start (for logs, tests and, later, the metrics endpoint)."""

    passes: int = 0
    batches: int = 0
    reviewed: int = 0
    """Due customers read and re-classified."""
    changes: int = 0
    """Change events produced (``cause: time``)."""
    dropped: int = 0
    """Due entries removed because their customer has nothing to review (erased)."""
    skipped: int = 0
    """Due entries a review did not move (tried again next pass)."""
    fenced: int = 0
    """Batches cut short because a shard's lease was lost."""
    failures: int = 0
    """Passes ended early by a Redis or Kafka failure (retried next pass)."""
    lag_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LAG_SAMPLES)
    )
    """Per change event: ``now - next_review_at`` when it was produced, seconds (recent ones)."""

    def lag_summary(self) -> dict[str, float]:
        """Quantiles of the recent lags, seconds (histogram-ready: ``lag_s`` holds the samples)."""
        if not self.lag_s:
            return {}
        ordered = sorted(self.lag_s)

        def pick(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "lag_samples": len(ordered),
            "lag_p50_s": pick(0.5),
            "lag_p99_s": pick(0.99),
            "lag_max_s": round(ordered[-1], 3),
        }


def _lua(name: str) -> str:
    return resources.files("service.store").joinpath(f"lua/{name}.lua").read_text()


_FENCE = (
    "-- Fenced: only while the caller's lease (KEYS[6], ARGV[8]) is the shard's current one.\n"
    "if redis.call('GET', KEYS[6]) ~= ARGV[8] then return -1 end\n"
)


def _fenced_write_source() -> str:
    """write_segment.lua behind the lease check (the script moves the revision on itself)."""
    source = _lua("write_segment").rstrip()
    body, last = source.rsplit("\n", 1)
    if last != "return 1":
        raise AssertionError("write_segment.lua no longer ends with 'return 1'")
    return f"{_FENCE}{body}\nreturn 1\n"


class FencedStore:
    """The profile store with segment writes fenced by the shard leases.

    Reads go to the inner store; each write runs write_segment.lua behind a check that the
    lease it was made under is still current, in the same atomic call (the lease key shares the
    customer's hash tag); like every segment write it moves the customer's revision on, so a
    consumer's cached copy is seen to be stale. A write under a lost lease raises
    :class:`LeaseLost` (the writes of other shards in the same call still land).
    """

    def __init__(
        self,
        inner: RedisProfileStore,
        redis: AnyRedis,
        keys: Keys,
        *,
        lease_of: Callable[[int], Lease | None],
    ) -> None:
        self._inner = inner
        self._redis = redis
        self._keys = keys
        self._lease_of = lease_of
        self._write = LuaScript(_fenced_write_source())

    async def apply(
        self, requests: Sequence[ApplyRequest], *, min_day: int
    ) -> tuple[list[int], dict[str, CustomerState]]:
        raise NotImplementedError("the sweeper applies no events")

    async def read(self, customer_ids: Sequence[str], *, min_day: int) -> dict[str, CustomerState]:
        return await self._inner.read(customer_ids, min_day=min_day)

    async def trim(self, states: Sequence[CustomerState]) -> None:
        await self._inner.trim(states)

    async def write_segments(self, writes: Sequence[SegmentWrite]) -> list[bool]:
        k = self._keys
        lost: set[int] = set()
        batch = ScriptBatch(self._redis)
        queued: list[int] = []
        for i, w in enumerate(writes):
            shard = shard_of(w.customer_id)
            lease = self._lease_of(shard)
            if lease is None:
                lost.add(shard)
                continue
            old_segment = w.old_segment or ""
            new_segment = w.new.segment
            batch.script(
                self._write,
                [
                    k.customer(w.customer_id, shard),
                    k.segment_members(shard, old_segment or new_segment),
                    k.segment_members(shard, new_segment),
                    k.counts(shard),
                    k.due(shard),
                    k.lease(shard, lease.job),
                ],
                [
                    w.expected_revision,
                    w.expected_packed,
                    "\n".join(w.packed()),
                    old_segment,
                    new_segment,
                    "" if w.new.next_review_ms is None else str(w.new.next_review_ms),
                    w.customer_id,
                    lease.value,
                ],
            )
            queued.append(i)
        results = await batch.execute()
        ok = [False] * len(writes)
        for i, result in zip(queued, results, strict=True):
            if int(result) == -1:
                lost.add(shard_of(writes[i].customer_id))
            ok[i] = int(result) == 1
        if lost:
            raise LeaseLost(lost)
        return ok


@dataclass(frozen=True, slots=True)
class _Due:
    customer_id: str
    shard: int
    due_ms: int


class Sweeper:
    """One sweeper: leases a fair share of the shards and reviews their due customers."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: AnyRedis,
        sink: RecordSink,
        rules: Callable[[], Rules],
        clock: Callable[[], datetime] = utc_now,
        stopping: asyncio.Event | None = None,
        owner: str | None = None,
        stats: SweepStats | None = None,
        on_batch: Callable[[frozenset[int], float, float], None] | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        s = settings.sweep
        self._metrics = metrics
        self.settings = settings
        self.stats = stats if stats is not None else SweepStats()
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self._redis = redis
        self._keys = Keys(settings.redis.key_prefix)
        self._rules = rules
        self._clock = clock
        self._on_batch = on_batch
        """Test hook: the shards of each batch with its wall-clock start and end."""
        self.keeper = ShardLeaseKeeper(
            ShardLeases(redis, self._keys, job=JOB, ttl_s=s.lease_ttl_s, owner=owner),
            renew_every_s=s.renew_every_s,
        )
        inner = RedisProfileStore(redis, self._keys, ring_size=settings.state.event_id_ring)
        self._store = FencedStore(inner, redis, self._keys, lease_of=self.keeper.lease_of)
        self._segmenter = Segmenter(
            self._store,
            sink,
            changes_topic=settings.kafka.changes_topic,
            rules=rules,
            metrics=metrics,
        )
        self._drop = LuaScript.named("due_drop")
        self._cursor = 0
        """Where the next batch starts when more shards have due entries than fit in one."""

    @property
    def owner(self) -> str:
        return self.keeper.leases.owner

    async def run(self) -> None:
        """Passes every ``interval_s`` until ``stopping``; then releases the leases so the
        other sweepers take the shards over at once."""
        interval = self.settings.sweep.interval_s
        keeper = asyncio.create_task(self.keeper.run(self.stopping, on_error=self._lease_error))
        log.info("sweeper started", extra={"owner": self.owner})
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    await self.sweep_pass()
                except (KafkaError, WriteConflict, *TRANSIENT_REDIS_ERRORS) as exc:
                    # Nothing was removed that was not written: the next pass redoes the rest.
                    self.stats.failures += 1
                    if self._metrics is not None:
                        if isinstance(exc, KafkaError):
                            self._metrics.kafka_error("sweep")
                        elif not isinstance(exc, WriteConflict):
                            self._metrics.redis_error("sweep")
                    log.warning("sweep pass failed, retrying", extra={"error": repr(exc)})
                pause = max(0.0, interval - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=pause)
        finally:
            self.stopping.set()
            await keeper
            with contextlib.suppress(Exception):  # Redis away: the leases run out by themselves
                await self.keeper.release_all()
            log.info(
                "sweeper stopped",
                extra={
                    "owner": self.owner,
                    "reviewed": self.stats.reviewed,
                    "changes": self.stats.changes,
                    **self.stats.lag_summary(),
                },
            )

    def _lease_error(self, exc: Exception) -> None:
        log.warning("lease renewal failed", extra={"error": repr(exc)})

    async def sweep_pass(self) -> int:
        """Reviews every customer due in the held shards, batch by batch; returns how many."""
        batch_size = self.settings.sweep.batch_size
        # shard -> entries to skip at its head (reviewed this pass but not moved)
        active = {lease.shard: 0 for lease in self.keeper.held()}
        seen: set[tuple[str, int]] = set()
        reviewed = 0
        try:
            while active and not self.stopping.is_set():
                now = self._clock()
                batch, active = await self._due_batch(active, epoch_ms(now), batch_size, seen)
                if not batch:
                    if active:
                        continue  # shards not asked yet this time round
                    break
                self.keeper.busy = {d.shard for d in batch}
                reviewed += await self._review(batch, now)
                not_moved = await self._not_moved(batch)
                # Only entries still at the time they were read can come back in this pass
                # (a review moves an entry past now): remembering just those keeps the set
                # small however large the backlog (every entry was ~180 B a million).
                seen.update((d.customer_id, d.due_ms) for d in not_moved)
                for d in not_moved:
                    if d.shard in active:
                        active[d.shard] += 1
                self.stats.skipped += len(not_moved)
                self.keeper.busy = set()
                await asyncio.sleep(0)  # let everything else in this process run in between
        finally:
            self.keeper.busy = set()
        self.stats.passes += 1
        return reviewed

    async def _due_batch(
        self, active: dict[int, int], now_ms: int, batch_size: int, seen: set[tuple[str, int]]
    ) -> tuple[list[_Due], dict[int, int]]:
        """At most ``batch_size`` due entries, an equal share from each active shard (with more
        active shards than that, one each from the next ``batch_size`` shards in turn).
        Returns them and the shards that may still have due entries."""
        held = [s for s in active if self.keeper.lease_of(s) is not None]
        shards = held
        if len(held) > batch_size:
            start = self._cursor % len(held)
            shards = (held[start:] + held[:start])[:batch_size]
            self._cursor += batch_size
        per_shard = max(1, batch_size // len(shards)) if shards else 0
        self.keeper.busy = set(shards)  # kept until the batch is reviewed (not given up meanwhile)
        pipe = self._redis.pipeline(transaction=False)
        for shard in shards:
            pipe.zrangebyscore(
                self._keys.due(shard),
                "-inf",
                now_ms,
                start=active[shard],
                num=per_shard,
                withscores=True,
            )
        replies = await pipe.execute() if shards else []
        asked = set(shards)
        still = {s: active[s] for s in held if s not in asked}  # not asked this time
        batch: list[_Due] = []
        for shard, entries in zip(shards, replies, strict=True):
            fresh = [
                _Due(_text(member), shard, int(score))
                for member, score in entries
                if (_text(member), int(score)) not in seen
            ]
            batch.extend(fresh)
            if len(entries) == per_shard and fresh:
                still[shard] = active[shard]
        return batch, still

    async def _review(self, batch: list[_Due], now: datetime) -> int:
        """Step 2 for one batch: read, settle with ``cause="time"``, trim; returns how many
        customers were reviewed."""
        rules = self._rules()
        started = time.time()
        by_customer = {d.customer_id: d for d in batch}
        states = await self._store.read(list(by_customer), min_day=min_day_for(now, rules))
        triggers = {
            cid: Trigger(review_at=from_epoch_ms(d.due_ms)) for cid, d in by_customer.items()
        }
        try:
            result = await self._segmenter.settle(
                states, now=now, cause="time", trigger_for=triggers.get
            )
        except LeaseLost as lost:
            for shard in lost.shards:
                self.keeper.forget(shard)
            self.stats.fenced += 1
            log.warning("lease lost mid-batch", extra={"shards": sorted(lost.shards)})
            return 0
        finally:
            shards = frozenset(d.shard for d in batch)
            ended = time.time()
            if self._on_batch is not None:
                self._on_batch(shards, started, ended)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "sweep batch",
                    extra={
                        "owner": self.owner,
                        "shards": sorted(shards),
                        "customers": len(batch),
                        "started": started,
                        "ended": ended,
                    },
                )
        # Lag: the clock once the change events are acknowledged, against the due time.
        produced_ms = epoch_ms(self._clock())
        lags = [
            (produced_ms - by_customer[str(change["customer_id"])].due_ms) / 1000
            for change in result.changes
        ]
        self.stats.lag_s.extend(lags)
        if self._metrics is not None:
            self._metrics.observe_sweep(lags)
        await self._store.trim(list(states.values()))
        self.stats.batches += 1
        self.stats.reviewed += len(states)
        self.stats.changes += len(result.changes)
        return len(states)

    async def _not_moved(self, batch: list[_Due]) -> list[_Due]:
        """Entries still at the due time the batch read: customers with nothing to review are
        dropped from the index, the rest are skipped for the rest of the pass."""
        pipe = self._redis.pipeline(transaction=False)
        for d in batch:
            pipe.zscore(self._keys.due(d.shard), d.customer_id)
        scores = await pipe.execute()
        stuck = [
            d
            for d, score in zip(batch, scores, strict=True)
            if score is not None and int(score) == d.due_ms
        ]
        if not stuck:
            return []
        drops = ScriptBatch(self._redis)
        for d in stuck:
            drops.script(
                self._drop,
                [self._keys.due(d.shard), self._keys.customer(d.customer_id, d.shard)],
                [d.customer_id, str(d.due_ms)],
            )
        dropped = await drops.execute()
        self.stats.dropped += sum(int(x) for x in dropped)
        return [d for d, gone in zip(stuck, dropped, strict=True) if not int(gone)]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def run_sweeper(
    settings: Settings,
    *,
    stopping: asyncio.Event,
    rules: Callable[[], Rules] | None = None,
    clock: Callable[[], datetime] = utc_now,
    stats: SweepStats | None = None,
    owner: str | None = None,
    metrics: ConsumerMetrics | None = None,
) -> None:
    """A sweeper with its own Redis client and producer, until ``stopping`` is set; beside it,
    a worker of the re-classification that follows a rules activation, and the retention job
    (off unless ``state.retention_days`` is set) on the same shard leases.

    Standalone (``segments sweep``: it follows the active rules through its own watcher and
    serves the probes) or inside the consumer, which passes its own ``stopping``, rules getter
    (so both follow rule changes alike), clock and metrics, and serves the probes itself.
    """
    await ensure_topics(settings.kafka)
    redis = create_redis(settings.redis)
    standalone = metrics is None
    metrics = metrics if metrics is not None else ConsumerMetrics()
    watcher = None
    if rules is None:
        fallback = load_rules(settings.rules_file)
        watcher = RulesWatcher.from_settings(
            settings, redis, fallback=fallback, on_change=metrics.set_rules
        )
        await watcher.start()
        rules = watcher.current
        metrics.set_rules(fallback)
    producer = create_producer(settings.kafka)
    await producer.start()
    try:
        sink = ProducerSink(producer)
        sweeper = Sweeper(
            settings,
            redis=redis,
            sink=sink,
            rules=rules,
            clock=clock,
            stopping=stopping,
            owner=owner,
            stats=stats,
            metrics=metrics,
        )
        keys = Keys(settings.redis.key_prefix)
        store = RedisProfileStore(redis, keys, ring_size=settings.state.event_id_ring)
        reclassifier = Reclassifier(
            settings,
            redis,
            store,
            Segmenter(
                store,
                sink,
                changes_topic=settings.kafka.changes_topic,
                rules=rules,
                metrics=metrics,
            ),
            rules=rules,
            clock=clock,
            owner=sweeper.owner,
        )
        async with contextlib.AsyncExitStack() as stack:
            if standalone:
                await stack.enter_async_context(
                    serve_probes(
                        settings.probes,
                        checks={
                            "redis": redis_check(redis.ping),
                            "kafka": kafka_producer_check(producer),
                        },
                        registry=metrics.registry,
                    )
                )
            reclassifying = asyncio.create_task(run_reclassification(reclassifier, stopping))
            retaining = asyncio.create_task(
                run_retention(
                    Retention(settings, redis, clock=clock, on_expired=metrics.observe_expired),
                    sweeper.keeper.held,
                    stopping,
                )
            )
            try:
                await sweeper.run()
            finally:
                stopping.set()
                await asyncio.gather(reclassifying, retaining, return_exceptions=True)
    finally:
        await producer.stop()
        if watcher is not None:
            await watcher.aclose()
        await redis.aclose()


async def main(settings: Settings) -> None:
    """``segments sweep``: runs until SIGTERM/SIGINT, then finishes its batch and releases
    its leases."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await run_sweeper(settings, stopping=stopping)
