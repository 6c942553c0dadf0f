"""One reader of the changes topic per API worker, fanned out to every live-stream viewer.

The hub (:class:`ChangeHub`) owns one aiokafka consumer without a group: it assigns every
partition of ``customer.segment-changes``, starts at the end and never commits. Each fetched
batch is

1. turned into :class:`Change` entries, each with a ready-made SSE frame;
2. appended to a bounded in-memory ring of recent changes;
3. offered to every viewer's bounded queue (a viewer too far behind is marked overflowed and
   disconnected; it never slows the hub or the other viewers);
4. counted for the dashboard (:class:`service.store.stats.ChangeCounter`).

**Event ids are position vectors.** The id of a change is the hub's read position on every
partition right after it, ``"<next offset of p0>-<next offset of p1>-…"``. Any worker can
resume a viewer from such an id: everything at or after those offsets was not delivered.
A resume (``Last-Event-ID``) is served from the ring when the ring still covers every
partition from the id's offsets; for a partition where it does not, a dedicated consumer
re-reads Kafka from the id's offset up to where the ring begins (:func:`read_range`), then the
ring, then the live feed. The ring snapshot and the viewer's registration happen in one step
of the event loop, so nothing falls between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from service.kafka import client_options
from service.settings import Settings
from service.store.stats import NO_SEGMENT, ChangeCounter, ChangeFacts

log = logging.getLogger(__name__)

FAN_OUT_SLICE = 250
"""Change records the hub handles between two turns of the worker's event loop."""

Vector = tuple[int, ...]
"""Next offset to deliver, per partition (index = partition number)."""


def encode_vector(vector: Sequence[int]) -> str:
    return "-".join(map(str, vector))


def decode_vector(text: str) -> Vector | None:
    """The vector of a ``Last-Event-ID``; None when it is not one of ours."""
    parts = text.strip().split("-")
    if not parts or len(parts) > 10_000 or not all(p.isdigit() and len(p) < 20 for p in parts):
        return None
    return tuple(int(p) for p in parts)


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    """Which changes a viewer wants; an empty set accepts everything."""

    from_segments: frozenset[str] = frozenset()
    to_segments: frozenset[str] = frozenset()
    causes: frozenset[str] = frozenset()

    def accepts(self, change: Change) -> bool:
        return self.matches(change.from_segment, change.to_segment, change.cause)

    def matches(self, from_segment: str, to_segment: str, cause: str) -> bool:
        return (
            (not self.from_segments or from_segment in self.from_segments)
            and (not self.to_segments or to_segment in self.to_segments)
            and (not self.causes or cause in self.causes)
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One change record as the hub keeps it."""

    partition: int
    offset: int
    vector: Vector
    """The hub's positions right after this record: the record's event id."""
    from_segment: str
    to_segment: str
    cause: str
    data: bytes
    """The record's JSON, one line."""
    frame: bytes
    """``id``, ``event: change`` and ``data`` lines, ready to send."""


def sse_frame(event_id: str, data: bytes, event: str = "change") -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.encode(), data)


def parse_change(
    partition: int, offset: int, timestamp_ms: int, value: bytes | None
) -> tuple[ChangeFacts, bytes] | None:
    """The figures and the one-line JSON of a change record; None if it is not one."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
        current = doc["current"]
        previous = doc.get("previous")
        facts = ChangeFacts(
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms,
            cause=str(doc["cause"]),
            from_segment=str(previous["segment"]) if previous else NO_SEGMENT,
            to_segment=str(current["segment"]),
            from_lifecycle=str(previous["axes"]["lifecycle"]) if previous else None,
            to_lifecycle=str(current["axes"]["lifecycle"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    data = value if b"\n" not in value and b"\r" not in value else orjson.dumps(doc)
    return facts, data


class Viewer:
    """One viewer's bounded queue of frames, filled by the hub, drained by its response."""

    def __init__(self, change_filter: ChangeFilter, max_pending: int, floor: Vector | None) -> None:
        self.filter = change_filter
        self._max = max_pending
        self._frames: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self._floor: list[int] | None = list(floor) if floor is not None else None
        """While set, the positions this viewer already has beyond the hub's (it resumed from
        an id of a worker further ahead, or from its own re-read): older records are skipped
        and ids carry the larger position."""

    def offer(self, changes: Sequence[Change]) -> None:
        if self.closed or self.overflowed:
            return
        accepts = self.filter.accepts
        frames = self._frames
        for change in changes:
            if not accepts(change):
                continue
            if self._floor is None:
                frames.append(change.frame)
            else:
                frame = self._frame_above_floor(change)
                if frame is not None:
                    frames.append(frame)
        if len(frames) > self._max:
            self.overflowed = True
            frames.clear()
        if frames or self.overflowed:
            self._wake.set()

    def _frame_above_floor(self, change: Change) -> bytes | None:
        floor = self._floor
        assert floor is not None
        if change.partition < len(floor) and change.offset < floor[change.partition]:
            return None  # delivered already
        vector = change.vector
        if len(floor) == len(vector) and all(f <= v for f, v in zip(floor, vector, strict=True)):
            self._floor = None  # the hub is past everything this viewer has: shared frames
            return change.frame
        merged = [max(f, v) for f, v in zip(floor, vector, strict=False)]
        merged += vector[len(floor) :] if len(vector) > len(floor) else floor[len(vector) :]
        self._floor = merged
        return sse_frame(encode_vector(merged), change.data)

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def frames(self, timeout_s: float) -> list[bytes]:
        """What is queued, waiting up to ``timeout_s``; empty on timeout."""
        if not self._frames and not self.overflowed and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()
        out = list(self._frames)
        self._frames.clear()
        return out


@dataclass(slots=True)
class Subscription:
    """What a viewer gets: frames to send first (re-read and ring), then its live queue."""

    viewer: Viewer
    start_id: str
    """The hub's position when the viewer joined (sent first, so even a viewer that saw no
    change resumes from there)."""
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Partition → [from, to) offsets to re-read from Kafka before ``backlog``."""
    floor: Vector = ()
    """The resume vector the re-read starts from."""
    backlog: list[Change] = field(default_factory=list)
    """Ring entries after the resume point, in hub order (the viewer's filter applied)."""


class StreamUnavailable(Exception):
    """The change reader is not connected to Kafka (yet)."""


STOP_TIMEOUT_S = 5.0
"""How long :meth:`ChangeHub.stop` waits for the reader to end."""


class ChangeHub:
    """The fan-out hub of one API worker; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        counter: ChangeCounter | None,
        *,
        on_kafka_error: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._counter = counter
        self._on_kafka_error = on_kafka_error
        """Called with ``"change_stream"`` each time the reader fails (it reconnects), e.g.
        :meth:`service.api.metrics.ApiMetrics.kafka_error`."""
        self._topic = settings.kafka.changes_topic
        self._ring: deque[Change] = deque()
        self._ring_size = settings.stream.ring_size
        self._viewers: set[Viewer] = set()
        self._positions: list[int] = []
        self._covered_from: list[int] = []
        """Per partition, the first offset the ring still holds (or would hold next)."""
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @property
    def partitions(self) -> int:
        return len(self._positions)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="change-hub")

    async def stop(self) -> None:
        """Cancels the reader and waits for it, at most ``STOP_TIMEOUT_S``: a client call
        that swallows the cancellation (seen with redis-py's cluster client while the hub
        counted changes) must not hold the API's shutdown forever."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning("change hub did not stop in time; left behind")
            elif not task.cancelled() and (exc := task.exception()) is not None:
                log.warning("change hub ended with an error", extra={"error": repr(exc)})
        for viewer in list(self._viewers):
            viewer.close()
        self._viewers.clear()

    async def wait_ready(self, timeout_s: float) -> None:
        self.start()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            raise StreamUnavailable(self.last_error or "change reader not connected") from None

    def subscribe(self, change_filter: ChangeFilter, resume: Vector | None) -> Subscription:
        """Registers a viewer (call after :meth:`wait_ready`). No ``await`` in here: the ring
        snapshot and the registration are one atomic step for the event loop."""
        positions = tuple(self._positions)
        start_id = encode_vector(positions)
        max_pending = self._settings.stream.viewer_queue
        if resume is None:
            viewer = Viewer(change_filter, max_pending, None)
            self._viewers.add(viewer)
            return Subscription(viewer, start_id)
        # Partitions the id does not name (added since) start where the ring begins.
        floor = tuple(
            resume[p] if p < len(resume) else self._covered_from[p] for p in range(len(positions))
        )
        gaps = {
            p: (floor[p], self._covered_from[p])
            for p in range(len(positions))
            if floor[p] < self._covered_from[p]
        }
        backlog = [
            c for c in self._ring if c.offset >= floor[c.partition] and change_filter.accepts(c)
        ]
        # Live records skip what the re-read and the backlog deliver: the viewer's floor is
        # the hub's position now (or the id's, where that is further on).
        live_floor = tuple(max(f, p) for f, p in zip(floor, positions, strict=True))
        viewer = Viewer(change_filter, max_pending, live_floor)
        self._viewers.add(viewer)
        return Subscription(viewer, start_id, gaps, floor, backlog)

    def unsubscribe(self, viewer: Viewer) -> None:
        viewer.close()
        self._viewers.discard(viewer)

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_options(self._settings.kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_bytes=16 * 1024 * 1024,
        )

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = self._consumer()
            try:
                await consumer.start()
                partitions = await self._assign(consumer)
                self._ready.set()
                self.last_error = None
                delay = 0.5
                log.info(
                    "change hub reading", extra={"topic": self._topic, "partitions": partitions}
                )
                await self._fan_out(consumer)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, RuntimeError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._on_kafka_error is not None:
                    self._on_kafka_error("change_stream")
                log.warning(
                    "change hub failed, retrying",
                    extra={"error": self.last_error, "retry_s": delay},
                )
            finally:
                self._ready.clear()
                with contextlib.suppress(Exception):
                    await consumer.stop()
                for viewer in list(self._viewers):
                    viewer.close()  # they reconnect and resume by id
                self._viewers.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _assign(self, consumer: AIOKafkaConsumer) -> int:
        found: set[int] | None = None
        deadline = time.monotonic() + 30
        while not found:
            await consumer._client.force_metadata_update()
            found = consumer.partitions_for_topic(self._topic)
            if not found:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {self._topic!r} not found")
                await asyncio.sleep(0.5)
        count = max(found) + 1
        tps = [TopicPartition(self._topic, p) for p in range(count)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        positions = [await consumer.position(tp) for tp in tps]
        if not self._positions:
            self._positions = positions
            self._covered_from = list(positions)
        else:
            # Reconnected: keep reading where the hub was, so the ring stays gap-free.
            while len(self._positions) < count:
                self._positions.append(positions[len(self._positions)])
                self._covered_from.append(self._positions[-1])
            for p, tp in enumerate(tps):
                consumer.seek(tp, self._positions[p])
        return count

    async def _fan_out(self, consumer: AIOKafkaConsumer) -> None:
        positions = self._positions
        while True:
            # Small slices, and the loop handed back after each: this runs in the API worker,
            # and a slice is handled without a pause (~70 µs a record). 5,000 at a time held
            # the worker's requests for a third of a second under a full-speed consumer.
            await asyncio.sleep(0)
            batches = await consumer.getmany(timeout_ms=1_000, max_records=FAN_OUT_SLICE)
            if not batches:
                continue
            changes: list[Change] = []
            facts: list[ChangeFacts] = []
            for tp, records in batches.items():
                for rec in records:
                    if rec.offset < positions[tp.partition]:
                        continue
                    positions[tp.partition] = rec.offset + 1
                    parsed = parse_change(tp.partition, rec.offset, rec.timestamp, rec.value)
                    if parsed is None:
                        continue
                    fact, data = parsed
                    vector = tuple(positions)
                    frame = sse_frame(encode_vector(vector), data)
                    changes.append(
                        Change(
                            tp.partition,
                            rec.offset,
                            vector,
                            fact.from_segment,
                            fact.to_segment,
                            fact.cause,
                            data,
                            frame,
                        )
                    )
                    facts.append(fact)
            self._remember(changes)
            for viewer in list(self._viewers):
                viewer.offer(changes)
            if self._counter is not None and facts:
                await self._count(facts)

    def _remember(self, changes: list[Change]) -> None:
        ring = self._ring
        ring.extend(changes)
        while len(ring) > self._ring_size:
            gone = ring.popleft()
            self._covered_from[gone.partition] = gone.offset + 1

    async def _count(self, facts: list[ChangeFacts]) -> None:
        assert self._counter is not None
        try:
            await self._counter.record(facts)
        except Exception as exc:  # noqa: BLE001 - figures must never stop the live feed
            log.warning("change figures not recorded", extra={"error": repr(exc)})


async def read_range(
    settings: Settings, gaps: dict[int, tuple[int, int]], timeout_s: float = 30.0
) -> AsyncIterator[tuple[ChangeFacts, bytes]]:
    """(figures, one-line JSON) of the records in ``[from, to)`` of each partition,
    re-read from Kafka for a viewer who resumes from before the ring. Partition by partition,
    so per partition in offset order; records deleted by retention are simply not there."""
    topic = settings.kafka.changes_topic
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        for partition, (start, stop) in sorted(gaps.items()):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = time.monotonic() + timeout_s
            while await consumer.position(tp) < stop:
                if time.monotonic() > deadline:
                    raise StreamUnavailable(f"re-reading partition {partition} timed out")
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=2_000)
                for rec in batch.get(tp, []):
                    if rec.offset >= stop:
                        break
                    parsed = parse_change(partition, rec.offset, rec.timestamp, rec.value)
                    if parsed is not None:
                        yield parsed
    finally:
        await consumer.stop()
