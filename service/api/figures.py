"""The dashboard's figures, gathered from Redis and Kafka by the API worker.

- Segment KPIs: live member counts (shard counters), net spend of the last 30 days summed over
  the members (read shard by shard up to ``stream.kpi_sample`` customers, extrapolated per
  segment beyond that), customers lost to churn and won back (change counters).
- Pipeline health: consumer lag (the consumer group's committed offsets against the events
  topic's end offsets, through aiokafka's admin client and a group-less consumer), events/s and
  dead letters/min (consumer counters, :mod:`service.pipeline_stats`), sweeper lag (the due
  index: customers whose ``next_review_at`` has passed).

Each figure is cached for a couple of seconds per worker: many dashboards cost one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from service.api.bodies import money
from service.kafka import client_options
from service.segmentation.rules import Rules
from service.segmentation.windows import utc_day, window_totals
from service.settings import Settings
from service.store.keys import SHARDS
from service.store.packing import decode_customer, epoch_ms
from service.store.reads import StateReader
from service.store.redis_client import AnyRedis
from service.store.stats import StatsReader

log = logging.getLogger(__name__)

T = TypeVar("T")

_SHARD_BATCH = 64
"""Shards whose members are read per round trip while summing net spend."""
KPI_WINDOW_DAYS = 30


class _Cached:
    """The last value of each figure, for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._values: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, name: str, compute: Callable[[], Awaitable[T]]) -> T:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:  # one computation at a time; the others take its result
            hit = self._values.get(name)
            if hit is not None and time.monotonic() - hit[0] < self._ttl:
                return hit[1]  # type: ignore[no-any-return]
            value = await compute()
            self._values[name] = (time.monotonic(), value)
            return value


class Figures:
    """Figures for one API worker; Kafka clients are started on first use."""

    def __init__(self, settings: Settings, redis: AnyRedis, reader: StateReader) -> None:
        self._settings = settings
        self._redis = redis
        self._reader = reader
        self.stats = StatsReader(redis, reader.keys)
        self._cache = _Cached(ttl_s=2.0)
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def aclose(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
        if self._offsets is not None:
            with contextlib.suppress(Exception):
                await self._offsets.stop()

    # --- KPIs per segment ---------------------------------------------------------------------

    async def net_spend(
        self, rules: Rules, now: datetime
    ) -> tuple[dict[str, int], dict[str, int], int]:
        """(segment → net spend 30d of the members read, segment → members read, total read),
        reading whole shards, starting at a random one, until ``kpi_sample`` customers."""
        keys = self._reader.keys
        names = [rule.name for rule in rules.segments]
        today = utc_day(now)
        min_day = today - KPI_WINDOW_DAYS + 1
        spend: dict[str, int] = dict.fromkeys(names, 0)
        read: dict[str, int] = dict.fromkeys(names, 0)
        total = 0
        first = random.randrange(SHARDS)  # noqa: S311 - sampling, not security
        order = [(first + i) % SHARDS for i in range(SHARDS)]
        for start in range(0, SHARDS, _SHARD_BATCH):
            if total >= self._settings.stream.kpi_sample:
                break
            shards = order[start : start + _SHARD_BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for shard in shards:
                for name in names:
                    pipe.smembers(keys.segment_members(shard, name))
            replies = await pipe.execute()
            members: list[tuple[str, str]] = []
            for i, raw in enumerate(replies):
                members.extend((names[i % len(names)], m.decode()) for m in raw)
            if not members:
                continue
            hashes = await self._reader.customers([cid for _, cid in members])
            for (segment, cid), fields in zip(members, hashes, strict=True):
                if not fields:
                    continue  # erased meanwhile
                profile = decode_customer(cid, fields, min_day=min_day).profile
                spend[segment] += window_totals(profile, KPI_WINDOW_DAYS, today).net_spend
                read[segment] += 1
                total += 1
        return spend, read, total

    async def segment_kpis(self, rules: Rules, now: datetime) -> dict[str, Any]:
        async def compute() -> dict[str, Any]:
            counts = await self._reader.segment_counts()
            spend, read, total = await self.net_spend(rules, now)
            day = await self.stats.change_window(epoch_ms(now), 24)
            rows = []
            exact = True
            for rule in rules.segments:
                name = rule.name
                members = max(0, counts.get(name, 0))
                sampled = read[name]
                if sampled and sampled < members:
                    exact = False
                    estimate = spend[name] * members // sampled
                else:
                    estimate = spend[name]
                rows.append(
                    {
                        "segment": name,
                        "members": members,
                        "net_spend_30d": money(estimate),
                        "lost_to_churn_24h": day.lost.get(name, 0),
                        "won_back_24h": day.won_back.get(name, 0),
                    }
                )
            return {
                "as_of": now.isoformat(),
                "rules_version": rules.version,
                "customers_read": total,
                "exact": exact,
                "segments": rows,
            }

        return await self._cache.get(f"kpis:{rules.version}", compute)

    # --- segment changes ----------------------------------------------------------------------

    async def changes(self, window: str, now: datetime) -> dict[str, Any]:
        async def compute() -> dict[str, Any]:
            hours = 1 if window == "1h" else 24
            now_ms = epoch_ms(now)
            w = await self.stats.change_window(now_ms, hours)
            per_minute = await self.stats.changes_per_minute(now_ms, 60)
            cells = sorted(w.migrations.items(), key=lambda kv: (-kv[1], kv[0]))
            return {
                "window": window,
                "total": w.total,
                "by_cause": w.by_cause,
                "migrations": [
                    {"from_segment": a, "to_segment": b, "changes": n} for (a, b), n in cells
                ],
                "lost_to_churn": w.lost,
                "won_back": w.won_back,
                "per_minute": [
                    {"minute": datetime.fromtimestamp(m * 60, tz=UTC).isoformat(), "changes": n}
                    for m, n in per_minute
                ],
            }

        return await self._cache.get(f"changes:{window}", compute)

    # --- pipeline health ----------------------------------------------------------------------

    async def consumer_lag(self) -> dict[str, Any]:
        kafka = self._settings.kafka
        out: dict[str, Any] = {
            "group": kafka.group_id,
            "topic": kafka.events_topic,
            "total": None,
            "partitions": [],
            "error": None,
        }
        try:
            async with asyncio.timeout(5):
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**client_options(kafka))
                    await admin.start()
                    self._admin = admin
                if self._offsets is None:
                    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None)
                    await consumer.start()
                    self._offsets = consumer
                committed = await self._admin.list_consumer_group_offsets(kafka.group_id)
                partitions = self._offsets.partitions_for_topic(kafka.events_topic)
                if not partitions:
                    await self._offsets._client.force_metadata_update()
                    partitions = self._offsets.partitions_for_topic(kafka.events_topic) or set()
                tps = [TopicPartition(kafka.events_topic, p) for p in sorted(partitions)]
                ends = await self._offsets.end_offsets(tps) if tps else {}
        except (KafkaError, OSError, TimeoutError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return out
        if not tps:
            out["error"] = f"no partitions known for {kafka.events_topic} (Kafka unreachable?)"
            return out
        total = 0
        known = False
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else None
            end = int(ends.get(tp, 0))
            lag = None if done is None else max(0, end - done)
            if lag is not None:
                total += lag
                known = True
            out["partitions"].append(
                {"partition": tp.partition, "committed": done, "end": end, "lag": lag}
            )
        out["total"] = total if known else None
        return out

    async def sweeper_lag(self, now: datetime) -> dict[str, Any]:
        """From the due index: customers whose review instant has passed, and the oldest."""
        keys = self._reader.keys
        now_ms = epoch_ms(now)
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zcount(keys.due(shard), "-inf", now_ms)
            pipe.zrange(keys.due(shard), 0, 0, withscores=True)
        replies = await pipe.execute()
        overdue = 0
        oldest: float | None = None
        for i in range(0, len(replies), 2):
            overdue += int(replies[i])
            head = replies[i + 1]
            if head:
                score = float(head[0][1])
                if score <= now_ms and (oldest is None or score < oldest):
                    oldest = score
        return {
            "overdue_customers": overdue,
            "oldest_overdue_s": 0.0 if oldest is None else round((now_ms - oldest) / 1000, 1),
        }

    async def pipeline_health(self, now: datetime, viewers: int) -> dict[str, Any]:
        async def compute() -> dict[str, Any]:
            lag, sweeper, minutes = await asyncio.gather(
                self.consumer_lag(),
                self.sweeper_lag(now),
                self.stats.pipeline_minutes(epoch_ms(now), 61),
            )
            last_full = minutes[-2][1]  # the current minute is still filling
            reasons: dict[str, int] = {}
            for _, bucket in minutes[1:]:
                for field, n in bucket.items():
                    if field.startswith("dl:"):
                        reasons[field[3:]] = reasons.get(field[3:], 0) + n
            return {
                "as_of": now.isoformat(),
                "consumer_lag": lag,
                "events_per_s": round(last_full.get("records", 0) / 60, 2),
                "applied_per_s": round(last_full.get("applied", 0) / 60, 2),
                "dead_letters_per_min": last_full.get("dead_lettered", 0),
                "dead_letter_reasons": reasons,
                "changes_per_min": last_full.get("changes", 0),
                "sweeper_lag": sweeper,
            }

        body = dict(await self._cache.get("pipeline", compute))
        body["stream_viewers"] = viewers
        return body
