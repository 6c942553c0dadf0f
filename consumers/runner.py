"""The consumer loop: poll a batch → handle it → commit its offsets.

Offsets are committed only after :meth:`BatchHandler.handle` returned, i.e. after the events
are applied, the change events acknowledged and the segments written. A rebalance waits for the
batch in flight (the listener takes the same lock), so a partition is handed over with its
offsets committed; a consumer that lost its partitions anyway (stalled past the poll interval)
is fenced by the per-customer watermark in Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)

from consumers.codec import EventCodec
from consumers.handler import BatchHandler, BatchStats
from consumers.metrics import ConsumerMetrics
from consumers.segmenter import Segmenter
from consumers.sweeper import SweepStats, run_sweeper
from service.errors import StopRequested
from service.kafka import ProducerSink, client_options, create_producer, ensure_topics
from service.pipeline_stats import PipelineFigures
from service.probes import kafka_consumer_checks, redis_check, serve_probes
from service.rules_runtime import RulesWatcher
from service.segmentation.rules import Rules, load_rules
from service.settings import Settings
from service.store.keys import Keys
from service.store.multiplex import MultiplexedRedis
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ConsumerTotals:
    """Running counters since start (the metrics endpoint reads these)."""

    batches: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    changes: int = 0
    commit_failures: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, s: BatchStats) -> None:
        self.batches += 1
        self.records += s.records
        self.applied += s.applied
        self.duplicates += s.duplicates
        self.dead_lettered += s.dead_lettered
        self.changes += s.changes
        for reason, n in s.dead_letter_reasons.items():
            self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + n


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a rebalance until every batch in flight is handled and committed."""

    def __init__(
        self,
        locks: list[asyncio.Lock],
        metrics: ConsumerMetrics,
        consumer: Callable[[], AIOKafkaConsumer],
    ) -> None:
        self._locks = locks
        self._metrics = metrics
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for lock in self._locks:
                await stack.enter_async_context(lock)
            self._metrics.set_assignment(self._consumer().assignment() - revoked, revoked)
            log.info(
                "partitions revoked",
                extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked)},
            )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._metrics.set_assignment(self._consumer().assignment())
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)},
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConsumerApp:
    def __init__(
        self,
        settings: Settings,
        *,
        rules: Rules | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.rules = rules if rules is not None else load_rules(settings.rules_file)
        self.clock = clock
        self.stopping = asyncio.Event()
        self.totals = ConsumerTotals()
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=200_000)
        self._locks = [asyncio.Lock() for _ in range(settings.kafka.lanes)]
        self._stats_keys = Keys(settings.redis.key_prefix)
        self.metrics = ConsumerMetrics()
        self.metrics.set_rules(self.rules)
        self.sweep_stats = SweepStats()

    def _rules_changed(self, rules: Rules) -> None:
        """The rules watcher saw a new active version: every lane classifies with it from its
        next batch on."""
        self.rules = rules
        self.metrics.set_rules(rules)
        log.info("rules changed", extra={"rules_version": rules.version})

    def latency_summary(self) -> dict[str, float]:
        """Quantiles of the recent end-to-end latencies, milliseconds."""
        if not self.latency_ms:
            return {}
        ordered = sorted(self.latency_ms)

        def pick(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

        return {
            "latency_samples": len(ordered),
            "latency_p50_ms": pick(0.5),
            "latency_p99_ms": pick(0.99),
        }

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        s = self.settings
        await ensure_topics(s.kafka)
        redis = create_redis(s.redis)
        watcher = RulesWatcher.from_settings(
            s, redis, fallback=self.rules, on_change=self._rules_changed
        )
        await watcher.start()
        producer = create_producer(s.kafka)
        consumer = AIOKafkaConsumer(
            **client_options(s.kafka),
            group_id=s.kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=s.kafka.max_poll_interval_ms,
            session_timeout_ms=s.kafka.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.kafka.session_timeout_ms // 4),
            fetch_max_bytes=s.kafka.fetch_max_bytes,
            max_partition_fetch_bytes=s.kafka.max_partition_fetch_bytes,
        )
        consumer.subscribe(
            [s.kafka.events_topic],
            listener=_HandOver(self._locks, self.metrics, lambda: consumer),
        )
        await producer.start()
        await consumer.start()
        sink = ProducerSink(producer)
        rules = lambda: self.rules  # noqa: E731 - swapped at run time by the rules watcher
        stores = []
        handlers = []
        # The lanes' hot-path round trips share one connection (single node; a cluster keeps
        # redis-py's cluster client): Redis then runs the lanes' pipelines one after the other
        # in the order sent, where with a connection per lane it interleaved them and every
        # lane got its replies at about the same time, the last; the consumer sat idle
        # meanwhile. Measured on the 1M benchmark: ~22,100 -> ~23,300 events/s (docs/
        # PERFORMANCE.md).
        fast = (
            None
            if s.redis.cluster
            else MultiplexedRedis(s.redis.url, timeout_s=s.redis.socket_timeout_s)
        )
        for _ in self._locks:
            store = RedisProfileStore(
                redis,
                Keys(s.redis.key_prefix),
                ring_size=s.state.event_id_ring,
                fast=fast,
                cache_size=s.state.customer_cache // len(self._locks),  # lanes share no customer
                cache_min_buckets=s.state.customer_cache_min_buckets,
            )
            stores.append(store)
            handlers.append(
                BatchHandler(
                    s,
                    codec=EventCodec(s.validation),
                    store=store,
                    segmenter=Segmenter(
                        store,
                        sink,
                        changes_topic=s.kafka.changes_topic,
                        rules=rules,
                        metrics=self.metrics,
                    ),
                    dead_letters=sink,
                    rules=rules,
                    clock=self.clock,
                    stopping=self.stopping,
                    metrics=self.metrics,
                )
            )
        log.info(
            "consumer started",
            extra={
                "topic": s.kafka.events_topic,
                "group": s.kafka.group_id,
                "lanes": len(handlers),
            },
        )
        probes = contextlib.AsyncExitStack()
        await probes.enter_async_context(
            serve_probes(
                s.probes,
                checks={"redis": redis_check(redis.ping), **kafka_consumer_checks(consumer)},
                registry=self.metrics.registry,
            )
        )
        sweep_stopping = asyncio.Event()
        sweeper = (
            asyncio.create_task(
                run_sweeper(
                    s,
                    stopping=sweep_stopping,
                    rules=rules,
                    clock=self.clock,
                    stats=self.sweep_stats,
                    metrics=self.metrics,
                )
            )
            if s.sweep.in_consumer
            else None
        )
        figures = PipelineFigures(redis, self._stats_keys)
        figures_stop = asyncio.Event()
        figures_writer = asyncio.create_task(figures.run(figures_stop))
        lanes = [
            asyncio.create_task(self._lane(i, consumer, h, figures)) for i, h in enumerate(handlers)
        ]
        # run_consumer turned automatic collection off for this (see collect_garbage_every)
        collector = (
            asyncio.create_task(collect_garbage_every(s.gc_interval_s))
            if s.gc_interval_s > 0 and not gc.isenabled()
            else None
        )
        try:
            await asyncio.gather(*lanes)
        except StopRequested:
            log.info("stopping before the batch was applied; it will be replayed")
        finally:
            if collector is not None:
                collector.cancel()
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            figures_stop.set()
            await asyncio.wait([figures_writer], timeout=10)  # a flush in progress finishes
            await figures.flush()
            sweep_stopping.set()
            if sweeper is not None:
                await asyncio.gather(sweeper, return_exceptions=True)
            await probes.aclose()
            await watcher.aclose()
            await consumer.stop()  # leaves the group
            await producer.stop()
            for store in stores:
                await store.aclose()  # the shared connection: closed by the first
            await redis.aclose()
            summary = {"records": self.totals.records, **self.latency_summary()}
            log.info("consumer stopped", extra=summary)

    async def _lane(
        self,
        lane: int,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        figures: PipelineFigures,
    ) -> None:
        """One of ``kafka.lanes`` loops, each over its own share of the assigned partitions
        (partition % lanes). Customers never span partitions, so lanes never touch the same
        customer; while one lane waits on Redis or Kafka, another computes."""
        s = self.settings.kafka
        lanes = len(self._locks)
        lock = self._locks[lane]
        while not self.stopping.is_set():
            mine = [tp for tp in consumer.assignment() if tp.partition % lanes == lane]
            if not mine:
                await asyncio.sleep(s.poll_timeout_ms / 1000)
                continue
            try:
                batches = await consumer.getmany(
                    *mine, timeout_ms=s.poll_timeout_ms, max_records=s.max_batch
                )
            except IllegalStateError:
                continue  # reassigned meanwhile
            if not batches:
                continue
            async with lock:
                records = [r for recs in batches.values() for r in recs]
                stats = await self._handle(handler, records)
                offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items()}
                t_commit = time.perf_counter()
                committed = True
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
                    # Partitions moved on; the new owner replays, the watermark fences us.
                    committed = False
                    self.totals.commit_failures += 1
                    self.metrics.kafka_error("commit")
                    log.warning("commit refused", extra={"error": type(exc).__name__})
                commit_s = time.perf_counter() - t_commit
                # End-to-end latency: record creation (producer clock) to segments written and
                # offsets committed; one sample per record, most recent kept.
                done_ms = time.time() * 1000
                self.latency_ms.extend(done_ms - r.timestamp for r in records if r.timestamp > 0)
                self.totals.add(stats)
                self.metrics.observe_batch(
                    stats,
                    records,
                    committed=offsets if committed else None,
                    highwater=consumer.highwater,
                    commit_s=commit_s,
                )
                # the dashboard's figures (events/s, dead letters/min), written once a second
                figures.add(stats, at=self.clock())
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "batch",
                        extra={
                            "lane": lane,
                            "records": stats.records,
                            "applied": stats.applied,
                            "changes": stats.changes,
                            "decode_ms": round(stats.decode_s * 1000, 1),
                            "apply_ms": round(stats.apply_s * 1000, 1),
                            "settle_ms": round(stats.settle_s * 1000, 1),
                            "commit_ms": round(commit_s * 1000, 1),
                        },
                    )

    async def _handle(self, handler: BatchHandler, records: list) -> BatchStats:  # type: ignore[type-arg]
        """Handles a batch until done; a failed produce retries the whole (idempotent) batch."""
        delay = 0.2
        while True:
            try:
                return await handler.handle(records)
            except KafkaError as exc:
                self.metrics.kafka_error("produce")
                if self.stopping.is_set():
                    raise StopRequested("produce") from exc
                log.warning("producing failed, retrying the batch", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def collect_garbage_every(interval_s: float) -> None:
    """Python's cyclic garbage collector on a clock instead of on allocation counts.

    A batch makes millions of objects that live until the batch is done, almost none in
    reference cycles (a 1,000,000-event run: ~1,400 objects found in cycles). Collecting on
    allocation counts walked the batches in flight over and over: ~11% of the consumer's CPU
    (5.3 s of 46.8 s). Reference counting frees everything else at once; the few cycles
    (exceptions with tracebacks, futures) wait at most ``interval_s``.
    """
    while True:
        await asyncio.sleep(interval_s)
        t0 = time.perf_counter()
        found = gc.collect()
        log.debug(
            "garbage collected",
            extra={"objects": found, "ms": round((time.perf_counter() - t0) * 1000, 1)},
        )


async def run_consumer(settings: Settings) -> None:
    # What start-up made lives as long as the process: frozen, never walked again.
    gc.collect()
    gc.freeze()
    if settings.gc_interval_s > 0:
        gc.disable()  # see collect_garbage_every, started by ConsumerApp.run
    else:
        gc.set_threshold(50_000, 20, 100)
    app = ConsumerApp(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    await app.run()
