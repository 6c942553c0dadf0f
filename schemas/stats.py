"""HTTP bodies of the operator figures (``/v1/stats/*``) the dashboard draws."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.api import Money

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    use_attribute_docstrings=True,
    json_schema_serialization_defaults_required=True,
)

StatsWindow = Literal["1h", "24h"]


class Migration(BaseModel):
    model_config = _CONFIG

    from_segment: str
    """Segment before the change; ``none`` for a customer's first segmentation."""
    to_segment: str
    changes: int


class PerMinute(BaseModel):
    model_config = _CONFIG

    minute: AwareDatetime
    """Start of the minute (UTC)."""
    changes: int


class ChangeStats(BaseModel):
    """Segment changes over the window (whole hours, the current one included), counted from
    the changes topic by the API workers."""

    model_config = _CONFIG

    window: StatsWindow
    total: int
    by_cause: dict[str, int]
    """``event``, ``time``, ``rules`` → changes."""
    migrations: list[Migration]
    """The migration matrix as (from, to, count) cells, largest first."""
    lost_to_churn: dict[str, int]
    """Segment a customer was in → customers whose lifecycle became ``churned``."""
    won_back: dict[str, int]
    """Segment a customer moved to → customers whose lifecycle became ``reactivated``."""
    per_minute: list[PerMinute]
    """Changes in each of the last 60 minutes, oldest first."""


class SegmentKpi(BaseModel):
    model_config = _CONFIG

    segment: str
    members: int
    """Live member count (the shard counters)."""
    net_spend_30d: Money
    """Net spend (spend minus refunds) of the segment's members in the last 30 days."""
    lost_to_churn_24h: int
    won_back_24h: int


class SegmentKpis(BaseModel):
    """Per-segment figures the business steers by."""

    model_config = _CONFIG

    as_of: AwareDatetime
    rules_version: str
    customers_read: int
    """Customers read to sum net spend; fewer than all members means extrapolated."""
    exact: bool
    """True when every customer was read (``net_spend_30d`` is exact)."""
    segments: list[SegmentKpi]


class PartitionLag(BaseModel):
    model_config = _CONFIG

    partition: int
    committed: int | None
    """Committed offset of the consumer group; null when it never committed."""
    end: int
    lag: int | None


class ConsumerLag(BaseModel):
    model_config = _CONFIG

    group: str
    topic: str
    total: int | None
    """Sum over partitions; null when unknown (Kafka unreachable, nothing committed)."""
    partitions: list[PartitionLag]
    error: str | None
    """Why the lag is unknown, if it is."""


class SweeperLag(BaseModel):
    model_config = _CONFIG

    overdue_customers: int
    """Customers whose ``next_review_at`` has passed and who were not re-classified yet."""
    oldest_overdue_s: float
    """How long the most overdue customer has waited, seconds (0 when none)."""


class PipelineHealth(BaseModel):
    """The pipeline at a glance: lag, throughput, dead letters, sweeper, live stream."""

    model_config = _CONFIG

    as_of: AwareDatetime
    consumer_lag: ConsumerLag
    events_per_s: float
    """Records the consumers handled per second over the last full minute."""
    applied_per_s: float
    dead_letters_per_min: int
    """Dead-lettered records in the last full minute."""
    dead_letter_reasons: dict[str, int]
    """Reason → dead letters over the last 60 minutes."""
    changes_per_min: int
    """Segment changes produced by the consumers in the last full minute."""
    sweeper_lag: SweeperLag
    stream_viewers: int
    """Live-stream viewers connected to the worker that answered."""
