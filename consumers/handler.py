"""One batch of event records, from bytes to committed-ready state.

The runner calls :meth:`BatchHandler.handle` and commits the batch's offsets only after it
returns. The order inside is the whole exactly-once argument:

1. decode and validate every record; invalid ones are produced to the dead-letter topic
   (original bytes, source position and reason in headers), acknowledged before step 6;
2. apply the valid events to Redis, one atomic Lua call each, in one pipeline; the script
   skips events at or below the customer's (partition, offset) watermark and recent event ids,
   so a replayed batch changes nothing; each reply names the customer's revision, which keeps
   the store's cache of decoded customers honest (see RedisProfileStore.apply);
3–5. classify, produce changes and await acks, write segments (:mod:`consumers.segmenter`);
6. (runner) commit offsets.

Transient Redis failures are retried with backoff, forever, steps 2–5 as one unit (a Redis
that lost acknowledged applies in a restart gets them again): an offset is never committed
past an event that is not applied.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from consumers.codec import DeadLetter, DecodedEvent, EventCodec, dead_letter_headers
from consumers.segmenter import Segmenter, SettleResult, Trigger, min_day_for
from service.logs import position
from service.retry import with_backoff
from service.segmentation.rules import Rules
from service.settings import Settings
from service.store.packing import CustomerState
from service.store.profiles import (
    APPLIED,
    ERASED,
    SKIPPED_DUPLICATE,
    ApplyRequest,
    ProfileStore,
)

if TYPE_CHECKING:
    from consumers.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


class Record(Protocol):
    """The fields of a Kafka consumer record the handler uses."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class DeadLetterSink(Protocol):
    async def send_dead_letters(
        self, topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> None:
        """Sends every (key, value, headers) and returns once all are acknowledged."""


@dataclass(slots=True)
class BatchStats:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    erased: int = 0
    """Events skipped because their customer was erased (the tombstone is still alive)."""
    dead_lettered: int = 0
    changes: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    decode_s: float = 0.0
    apply_s: float = 0.0
    settle_s: float = 0.0


class BatchHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: EventCodec,
        store: ProfileStore,
        segmenter: Segmenter,
        dead_letters: DeadLetterSink,
        rules: Callable[[], Rules],
        clock: Callable[[], datetime],
        stopping: asyncio.Event | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._settings = settings
        self._codec = codec
        self._store = store
        self._segmenter = segmenter
        self._dead_letters = dead_letters
        self._rules = rules
        self._clock = clock
        self._stopping = stopping

    async def handle(self, records: Sequence[Record]) -> BatchStats:
        """Steps 1–5 for one batch; safe to call again with the same records after a failure."""
        stats = BatchStats(records=len(records))
        now = self._clock()
        requests: list[ApplyRequest] = []
        sources: dict[str, tuple[str, Record]] = {}
        dead: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

        t0 = time.perf_counter()
        # 1. decode; dead letters keep their original bytes and say where they came from
        for rec in records:
            decoded = self._codec.decode(rec.key, rec.value, now=now)
            if isinstance(decoded, DeadLetter):
                headers = dead_letter_headers(
                    decoded, topic=rec.topic, partition=rec.partition, offset=rec.offset
                )
                dead.append((rec.key, rec.value, headers))
                log.warning(
                    "dead letter",
                    extra={
                        "at": position(rec.topic, rec.partition, rec.offset),
                        "reason": decoded.reason,
                    },
                )
                stats.dead_letter_reasons[decoded.reason] = (
                    stats.dead_letter_reasons.get(decoded.reason, 0) + 1
                )
                continue
            requests.append(_request(decoded, rec))
            sources[decoded.customer_id] = (decoded.event_id, rec)
        stats.dead_lettered = len(dead)
        dead_sent = (
            asyncio.ensure_future(
                self._dead_letters.send_dead_letters(self._settings.kafka.dlq_topic, dead)
            )
            if dead
            else None
        )

        try:
            if requests:
                rules = self._rules()
                min_day = min_day_for(now, rules)
                t1 = time.perf_counter()
                stats.decode_s = t1 - t0

                # 3–5: a change names the customer's last event of the batch as its trigger,
                # built only when needed
                def trigger_for(customer_id: str) -> Trigger | None:
                    source = sources.get(customer_id)
                    if source is None:
                        return None
                    event_id, rec = source
                    return Trigger(
                        event_id=event_id,
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                    )

                applied_at: set[int] = set()
                duplicate_at: set[int] = set()
                erased_at: set[int] = set()

                async def apply_and_settle() -> SettleResult:
                    # 2. apply (one pipelined round trip), then 3–5. classify, produce changes
                    # (acked), write segments. Retried as one unit: a Redis that restarted
                    # without persistence after acknowledging the applies has lost them, and
                    # only applying again (idempotent) puts them back before the commit.
                    t_apply = time.perf_counter()
                    outcomes, states = await self._store.apply(requests, min_day=min_day)
                    for i, outcome in enumerate(outcomes):
                        if outcome == APPLIED:
                            applied_at.add(i)  # counted once, whichever attempt applied it
                        elif outcome == SKIPPED_DUPLICATE:
                            duplicate_at.add(i)
                        elif outcome == ERASED:
                            erased_at.add(i)
                    t_settle = time.perf_counter()
                    stats.apply_s += t_settle - t_apply
                    result = await self._segmenter.settle(
                        states, now=now, cause="event", trigger_for=trigger_for
                    )
                    stats.settle_s += time.perf_counter() - t_settle
                    touched.extend(states.values())
                    return result

                touched: list[CustomerState] = []
                result = await self._retry(apply_and_settle, "apply")
                stats.applied = len(applied_at)
                stats.duplicates = len(duplicate_at - applied_at)
                stats.erased = len(erased_at - applied_at)
                stats.changes = len(result.changes)
                states = {s.profile.customer_id: s for s in touched}  # the last attempt's
                await self._retry(lambda: self._store.trim(list(states.values())), "trim")
        finally:
            if dead_sent is not None:
                await dead_sent  # the dead letters must be durable before the runner commits
        return stats

    async def _retry(self, op, what: str):  # type: ignore[no-untyped-def]
        redis = self._settings.redis
        return await with_backoff(
            op,
            what=what,
            initial_s=redis.retry_initial_s,
            max_s=redis.retry_max_s,
            stopping=self._stopping,
            on_retry=None
            if self._metrics is None
            else functools.partial(self._metrics.redis_error, what),
        )


def _request(decoded: DecodedEvent, rec: Record) -> ApplyRequest:
    return ApplyRequest(
        customer_id=decoded.customer_id,
        partition=rec.partition,
        offset=rec.offset,
        event_hash=decoded.event_hash,
        delta=decoded.delta,
    )
