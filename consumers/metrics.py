"""Prometheus metrics of the pipeline roles (``segments consume``, ``segments sweep``).

The hot path pays per batch, not per event: the runner calls :meth:`ConsumerMetrics.observe_batch`
once after each commit with the handler's :class:`~consumers.handler.BatchStats`; the
segmenter reports the change events it published (:meth:`~ConsumerMetrics.observe_changes`,
one call per settle, a loop over changes only); the sweeper reports each pass
(:meth:`~ConsumerMetrics.observe_sweep`). The end-to-end latency is one sample per record, so
it is kept by :class:`BulkHistogram` (a bisect per value, no lock, no per-sample call into
prometheus_client; about a tenth of ``Histogram.observe``).

Every label set is bounded: dead-letter reasons are the codec's :class:`~consumers.codec.Reason`
codes, segment names come from the rules (at most :data:`MAX_SEGMENT_LABELS`, then ``other``),
causes are ``event``/``time``/``rules``, operations are names in the code, partitions are the
events topic's. Names follow Prometheus conventions: ``segments_`` prefix, ``_total``
counters, base units (``_seconds``, ``_records``).
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumers.codec import Reason

if TYPE_CHECKING:
    from consumers.handler import BatchStats
    from service.segmentation.rules import Rules

OTHER = "other"
"""Label value of anything outside a bounded set."""
NONE_SEGMENT = "none"
"""``from_segment`` of a customer's first segmentation."""
MAX_SEGMENT_LABELS = 48
"""Distinct segment names ever used as label values; later new names count as ``other``."""
MAX_OPERATION_LABELS = 16
"""Distinct operation names per error counter; more (a bug) count as ``other``."""
CAUSES = ("event", "time", "rules")

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000)
"""Records per handled batch (a lane's ``getmany``; ``kafka.max_batch`` caps it)."""
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds per batch stage; a batch of thousands takes tens of milliseconds."""
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds from record timestamp to commit; minutes mean a backlog."""
SWEEPER_LAG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3_600.0)
"""Seconds a customer's ``next_review_at`` lay in the past when the sweeper re-classified it."""

STAGES = ("decode", "apply", "settle", "commit")


class TopicPartitionLike(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...


class TimestampedRecord(Protocol):
    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch (producer create time or broker append time)."""


class BulkHistogram(Collector):
    """A label-less histogram fed many samples at once (:meth:`observe_many`).

    Exposed exactly like a ``prometheus_client.Histogram`` (``_bucket{le}``, ``_count``,
    ``_sum``). Not thread-safe: one event loop feeds it.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self._documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = self._counts
        total = 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1
            total += v
        self._sum += total

    @property
    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> Iterator[Metric]:
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self._bounds, self._counts, strict=False):
            running += n
            cumulative.append((_le(bound), running))
        cumulative.append(("+Inf", running + self._counts[-1]))
        family = HistogramMetricFamily(self.name, self._documentation, labels=())
        family.add_metric([], cumulative, self._sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self._documentation, labels=())


def _le(bound: float) -> str:
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _Bounded:
    """Maps free label values onto a capped set; anything beyond the cap is ``other``."""

    def __init__(self, known: Iterable[str], cap: int) -> None:
        self._known: set[str] = set()
        self._cap = cap
        for value in known:
            self.admit(value)

    def admit(self, value: str) -> None:
        if len(self._known) < self._cap:
            self._known.add(value)

    def __call__(self, value: str) -> str:
        return value if value in self._known else OTHER

    def admit_and_map(self, value: str) -> str:
        self.admit(value)
        return self(value)


class ConsumerMetrics:
    """Every pipeline metric, in its own registry (served by :mod:`service.probes`)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        segments: Iterable[str] = (),
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self._clock_ms = clock_ms
        self.consumed = Counter(
            "segments_events_consumed",
            "Records read from the events topic and handled (valid or not).",
            registry=r,
        )
        self.applied = Counter(
            "segments_events_applied",
            "Events applied to a customer profile (counted once, replays excluded).",
            registry=r,
        )
        self.duplicates = Counter(
            "segments_events_duplicates",
            "Events skipped as already applied (replayed offset or repeated event_id).",
            registry=r,
        )
        self.skipped_erased = Counter(
            "segments_events_skipped_erased",
            "Events skipped because their customer was erased (erase tombstone alive).",
            registry=r,
        )
        self.customers_expired = Counter(
            "segments_customers_expired",
            "Customers deleted by data retention: no activity for state.retention_days.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "segments_events_dead_lettered",
            "Invalid records sent to the dead-letter topic, by reason code.",
            ("reason",),
            registry=r,
        )
        self._reasons = {reason.value: self.dead_lettered.labels(reason.value) for reason in Reason}
        self._reasons[OTHER] = self.dead_lettered.labels(OTHER)
        self.batch_size = Histogram(
            "segments_batch_size_records",
            "Records per handled batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "segments_batch_stage_duration_seconds",
            "Time per batch in each stage: decode, apply (Redis), settle (classify, produce "
            "changes, write segments), commit (Kafka offsets).",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._stages = {stage: self.stage_duration.labels(stage) for stage in STAGES}
        self.end_to_end = BulkHistogram(
            "segments_end_to_end_latency_seconds",
            "Per record: from its Kafka timestamp to its batch's offsets committed.",
            LATENCY_BUCKETS,
            r,
        )
        self.lag = Gauge(
            "segments_consumer_lag_records",
            "Records behind the partition's high watermark after the last commit.",
            ("topic", "partition"),
            registry=r,
        )
        self.assigned = Gauge(
            "segments_consumer_assigned_partitions",
            "Partitions of the events topic this consumer owns.",
            registry=r,
        )
        self.changes = Counter(
            "segments_segment_changes",
            "Segment-change events published, by previous and new segment and cause.",
            ("from_segment", "to_segment", "cause"),
            registry=r,
        )
        self._segments = _Bounded(segments, MAX_SEGMENT_LABELS)
        self._change_children: dict[tuple[str, str, str], Counter] = {}
        self.sweeper_lag = BulkHistogram(
            "segments_sweeper_lag_seconds",
            "Per change event the sweeper produced (cause time): from the customer's "
            "next_review_at to the change acknowledged by Kafka.",
            SWEEPER_LAG_BUCKETS,
            r,
        )
        self.swept = Counter(
            "segments_sweeper_customers",
            "Customers whose segmentation the sweeper changed because their next_review_at "
            "passed (one change event each).",
            registry=r,
        )
        self.rules_info = Gauge(
            "segments_rules_info",
            "The active rules version (value 1, version as a label).",
            ("version",),
            registry=r,
        )
        self._rules_version: str | None = None
        self.redis_errors = Counter(
            "segments_redis_errors",
            "Failed Redis calls (each is retried), by operation.",
            ("operation",),
            registry=r,
        )
        self.kafka_errors = Counter(
            "segments_kafka_errors",
            "Failed Kafka calls (produce retried, commit refused, ...), by operation.",
            ("operation",),
            registry=r,
        )
        self._redis_ops = _Bounded((), MAX_OPERATION_LABELS)
        self._kafka_ops = _Bounded((), MAX_OPERATION_LABELS)

    # --- per batch (runner) -------------------------------------------------------------

    def observe_batch(
        self,
        stats: BatchStats,
        records: Iterable[TimestampedRecord] = (),
        *,
        committed: Mapping[TopicPartitionLike, int] | None = None,
        highwater: Callable[[TopicPartitionLike], int | None] | None = None,
        commit_s: float | None = None,
    ) -> None:
        """Everything one handled and committed batch tells: counts, sizes, stage times,
        end-to-end latency of each record, and the lag of each partition in the batch.

        ``committed`` is the offsets just committed (omit it when the commit was refused);
        ``highwater`` is ``AIOKafkaConsumer.highwater`` (known from the last fetch, no I/O).
        """
        self.consumed.inc(stats.records)
        if stats.applied:
            self.applied.inc(stats.applied)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
        if stats.erased:
            self.skipped_erased.inc(stats.erased)
        for reason, n in stats.dead_letter_reasons.items():
            (self._reasons.get(reason) or self._reasons[OTHER]).inc(n)
        self.batch_size.observe(stats.records)
        stages = self._stages
        stages["decode"].observe(stats.decode_s)
        if stats.apply_s:
            stages["apply"].observe(stats.apply_s)
            stages["settle"].observe(stats.settle_s)
        if commit_s is not None:
            stages["commit"].observe(commit_s)
        done_ms = self._clock_ms()
        self.end_to_end.observe_many(
            (done_ms - r.timestamp) / 1000 for r in records if r.timestamp > 0
        )
        if committed and highwater is not None:
            for tp, offset in committed.items():
                end = highwater(tp)
                if end is not None:
                    self.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - offset))

    def set_assignment(
        self,
        assigned: Iterable[TopicPartitionLike],
        revoked: Iterable[TopicPartitionLike] = (),
    ) -> None:
        """After a rebalance: the partitions owned now; lag series of revoked ones go away."""
        for tp in revoked:
            with contextlib.suppress(KeyError):  # never had a committed batch here
                self.lag.remove(tp.topic, str(tp.partition))
        self.assigned.set(len(list(assigned)))

    # --- per settle (segmenter) ---------------------------------------------------------

    def observe_changes(self, changes: Iterable[Mapping[str, object]]) -> None:
        """The change events one settle published (their JSON objects, as produced)."""
        segments = self._segments
        children = self._change_children
        for change in changes:
            previous = change.get("previous")
            current = change.get("current")
            before = (
                previous.get("segment", NONE_SEGMENT)
                if isinstance(previous, Mapping)
                else NONE_SEGMENT
            )
            after = current.get("segment", OTHER) if isinstance(current, Mapping) else OTHER
            cause = change.get("cause")
            key = (
                before if before == NONE_SEGMENT else segments(str(before)),
                segments(str(after)),
                cause if isinstance(cause, str) and cause in CAUSES else OTHER,
            )
            child = children.get(key)
            if child is None:
                child = children[key] = self.changes.labels(*key)
            child.inc()

    # --- sweeper ------------------------------------------------------------------------

    def observe_sweep(self, lag_s: Sequence[float]) -> None:
        """One sweeper batch: for each change it produced, ``acknowledged - next_review_at``."""
        self.sweeper_lag.observe_many(lag_s)
        if lag_s:
            self.swept.inc(len(lag_s))

    # --- data retention -----------------------------------------------------------------

    def observe_expired(self, customers: int) -> None:
        """Customers the retention job deleted (no activity past ``state.retention_days``)."""
        if customers:
            self.customers_expired.inc(customers)

    # --- rules and errors ---------------------------------------------------------------

    def set_rules(self, rules: Rules) -> None:
        """The active rules: their version (info gauge) and segment names (label values).
        Call at start and whenever the rules are swapped."""
        for segment in rules.segments:
            self._segments.admit(segment.name)
        version = rules.version
        if version == self._rules_version:
            return
        if self._rules_version is not None:
            self.rules_info.remove(self._rules_version)
        self.rules_info.labels(version).set(1)
        self._rules_version = version

    def redis_error(self, operation: str, _exc: BaseException | None = None) -> None:
        """A failed Redis call; fits ``with_backoff(on_retry=...)`` via a lambda or partial."""
        self.redis_errors.labels(self._redis_ops.admit_and_map(operation)).inc()

    def kafka_error(self, operation: str, _exc: BaseException | None = None) -> None:
        self.kafka_errors.labels(self._kafka_ops.admit_and_map(operation)).inc()
