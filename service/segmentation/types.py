"""Value objects the classifier returns. Immutable, pure data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Lifecycle = Literal["prospect", "new", "regular", "occasional", "at_risk", "churned", "reactivated"]
ValueTier = Literal["high", "medium", "low", "negative"]
Loyalty = Literal["high", "medium", "low", "none"]
Needs = Literal[
    "price_sensitive", "quality_seeking", "function_seeking", "service_sensitive", "unknown"
]
Level = Literal["high", "medium", "low"]
Cause = Literal["event", "time", "rules"]


@dataclass(frozen=True, slots=True)
class Rfm:
    r: int
    """Recency score 1-5 (0 when the customer never bought)."""
    f: int
    """Frequency score 1-5 (0 when the customer never bought)."""
    m: int
    """Monetary score 1-5 (0 when the customer never bought)."""


@dataclass(frozen=True, slots=True)
class Axes:
    """One class per axis of shared/DOMAIN.md."""

    lifecycle: Lifecycle
    value_tier: ValueTier
    loyalty: Loyalty
    needs: Needs
    rfm: Rfm
    rfm_segment: str
    """Classic named RFM segment (champions, loyal, ..., lost; ``none`` for prospects)."""
    key_account: bool
    frequency: Level
    aov: Level
    profit: Level


@dataclass(frozen=True, slots=True)
class Treatment:
    """What checkout and marketing act on."""

    id: str
    discount_pct: int = 0
    free_shipping: bool = False
    support_queue: str = "standard"
    campaign: str | None = None
    channel: str = "email"
    offer: str | None = None


@dataclass(frozen=True, slots=True)
class Segmentation:
    """The classifier's answer for one customer at one instant."""

    segment: str
    axes: Axes
    treatment: Treatment
    reasons: tuple[str, ...]
    """Human-readable: which rule matched, with the numbers."""
    rules_version: str
    as_of: datetime
    next_review_at: datetime | None
    """Earliest instant at which the result may change with no new event; None if never."""

    def fingerprint(self) -> tuple[object, ...]:
        """What a change event is about: segment, axes and treatment (not reasons or times)."""
        return (self.segment, self.axes, self.treatment.id)
