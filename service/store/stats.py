"""Operator figures in Redis: segment changes per minute and hour, consumer batches per minute.

Written cheaply as counters, read by the dashboard endpoints:

- **Segment changes** are counted by the API's change reader (:mod:`service.api.changes_hub`)
  from the changes topic, one script call per fetched batch. Every API worker reads every
  change; a per-partition watermark in the script counts each record once, whichever worker
  gets there first. Counting covers every cause (events, time, rules) because it reads the
  topic every producer writes to; changes produced while no API worker runs are not counted.
- **Consumer batches** are counted by the consumer itself (:mod:`service.pipeline_stats`).

Minute buckets live 2 hours, hour buckets 2 days (a 24-hour window plus slack).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from service.store.keys import Keys
from service.store.redis_client import AnyRedis

MINUTE_TTL_S = 2 * 60 * 60
HOUR_TTL_S = 2 * 24 * 60 * 60

NO_SEGMENT = "none"
"""The ``from`` of a customer's first segmentation (no previous one)."""


@dataclass(frozen=True, slots=True)
class ChangeFacts:
    """What the figures need of one segment-change record."""

    partition: int
    offset: int
    timestamp_ms: int
    """The record's timestamp (when the change was produced)."""
    cause: str
    from_segment: str
    to_segment: str
    from_lifecycle: str | None
    to_lifecycle: str


def _hour_fields(c: ChangeFacts) -> list[str]:
    """The minute bucket takes the first (the cause); the hour bucket all of them."""
    fields = [f"c:{c.cause}", f"m:{c.from_segment}>{c.to_segment}"]
    if c.to_lifecycle == "churned" and c.from_lifecycle != "churned":
        fields.append(f"lost:{c.from_segment}")
    if c.to_lifecycle == "reactivated" and c.from_lifecycle != "reactivated":
        fields.append(f"won:{c.to_segment}")
    return fields


class ChangeCounter:
    """Counts change records into minute and hour buckets, once across all API workers."""

    def __init__(self, redis: AnyRedis, keys: Keys, topic: str) -> None:
        source = resources.files("service.store").joinpath("lua/count_changes.lua").read_text()
        self._script = redis.register_script(source)
        self._keys = keys
        self._topic = topic

    async def record(self, changes: Sequence[ChangeFacts]) -> int:
        """Counts what no worker counted yet; returns how many records that was."""
        if not changes:
            return 0
        args: list[Any] = [f"{self._keys.stats_tag()}:chg:", MINUTE_TTL_S, HOUR_TTL_S]
        for c in changes:
            fields = _hour_fields(c)
            minute = c.timestamp_ms // 60_000
            args += [c.partition, c.offset, minute, minute // 60, len(fields), *fields]
        counted = await self._script(keys=[self._keys.changes_watermark(self._topic)], args=args)
        return int(counted)


@dataclass(frozen=True, slots=True)
class ChangeWindow:
    """Segment changes over the last ``hours`` whole hours (the current one included)."""

    hours: int
    total: int
    by_cause: dict[str, int]
    migrations: dict[tuple[str, str], int]
    """(from, to) → changes; ``from`` is ``none`` for a first segmentation."""
    lost: dict[str, int]
    """Segment a customer was in → customers who became churned."""
    won_back: dict[str, int]
    """Segment a customer moved to → customers who became reactivated."""


def _decode_hash(raw: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in (raw or {}).items():
        k = key.decode() if isinstance(key, bytes) else str(key)
        out[k] = int(value)
    return out


class StatsReader:
    """Reads the counters back (one pipelined round trip per call)."""

    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def _hashes(self, keys: Iterable[str]) -> list[dict[str, int]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [_decode_hash(raw) for raw in await pipe.execute()]

    async def change_window(self, now_ms: int, hours: int) -> ChangeWindow:
        hour = now_ms // 3_600_000
        buckets = await self._hashes(
            self._keys.changes_hour(h) for h in range(hour - hours + 1, hour + 1)
        )
        total = 0
        by_cause: dict[str, int] = {}
        migrations: dict[tuple[str, str], int] = {}
        lost: dict[str, int] = {}
        won: dict[str, int] = {}
        for bucket in buckets:
            for field, count in bucket.items():
                kind, _, name = field.partition(":")
                if field == "n":
                    total += count
                elif kind == "c":
                    by_cause[name] = by_cause.get(name, 0) + count
                elif kind == "m":
                    source, _, target = name.partition(">")
                    migrations[(source, target)] = migrations.get((source, target), 0) + count
                elif kind == "lost":
                    lost[name] = lost.get(name, 0) + count
                elif kind == "won":
                    won[name] = won.get(name, 0) + count
        return ChangeWindow(hours, total, by_cause, migrations, lost, won)

    async def changes_per_minute(self, now_ms: int, minutes: int) -> list[tuple[int, int]]:
        """(epoch minute, changes) for the last ``minutes`` minutes, oldest first."""
        minute = now_ms // 60_000
        span = range(minute - minutes + 1, minute + 1)
        buckets = await self._hashes(self._keys.changes_minute(m) for m in span)
        return [(m, b.get("n", 0)) for m, b in zip(span, buckets, strict=True)]

    async def pipeline_minutes(self, now_ms: int, minutes: int) -> list[tuple[int, dict[str, int]]]:
        """(epoch minute, consumer counters) for the last ``minutes`` minutes, oldest first."""
        minute = now_ms // 60_000
        span = range(minute - minutes + 1, minute + 1)
        buckets = await self._hashes(self._keys.pipeline_minute(m) for m in span)
        return list(zip(span, buckets, strict=True))
