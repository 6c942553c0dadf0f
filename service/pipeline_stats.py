"""Per-minute consumer counters for the dashboard's pipeline health (events/s, dead letters).

The consumer calls :func:`record_batch` once per handled batch, after its offsets are
committed. One pipelined round trip (a handful of ``HINCRBY`` and one ``EXPIRE``); a Redis
failure here is logged and ignored: figures for operators must never hold up the pipeline.
The counters are read back by :class:`service.store.stats.StatsReader`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from redis.exceptions import RedisError

from service.store.keys import Keys
from service.store.redis_client import AnyRedis
from service.store.stats import MINUTE_TTL_S

log = logging.getLogger(__name__)

COUNTERS = ("records", "applied", "duplicates", "dead_lettered", "changes")
"""The batch figures kept per minute (``consumers.handler.BatchStats`` has them all)."""


class BatchFigures(Protocol):
    """What a handled batch reports (``consumers.handler.BatchStats`` fits)."""

    records: int
    applied: int
    duplicates: int
    dead_lettered: int
    changes: int
    dead_letter_reasons: dict[str, int]


async def record_batch(redis: AnyRedis, keys: Keys, batch: BatchFigures, *, at: datetime) -> None:
    """Adds one batch's figures to the minute of ``at``; never raises on a Redis failure."""
    key = keys.pipeline_minute(int(at.timestamp()) // 60)
    increments: Mapping[str, int] = {
        **{name: getattr(batch, name) for name in COUNTERS},
        **{f"dl:{reason}": n for reason, n in batch.dead_letter_reasons.items()},
    }
    pipe = redis.pipeline(transaction=False)
    for field, amount in increments.items():
        if amount:
            pipe.hincrby(key, field, amount)
    pipe.expire(key, MINUTE_TTL_S)
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("pipeline figures not recorded", extra={"error": repr(exc)})
