"""Outgoing segment-change events (topic ``customer.segment-changes``), version 1.

Produced, keyed by ``customer_id``, whenever a customer's segment, axes or treatment change.
``change_id`` is deterministic (same transition for the same reason, same id), so a
downstream consumer can drop the repeats that a replay after a crash produces.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, model_validator

from service.segmentation.types import (
    Cause,
    Level,
    Lifecycle,
    Loyalty,
    Needs,
    Segmentation,
    ValueTier,
)

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    use_attribute_docstrings=True,
    # every field is always written, defaults included: say so in the published schema
    json_schema_serialization_defaults_required=True,
)


class RfmOut(BaseModel):
    model_config = _CONFIG

    r: int
    """Recency score 1-5 (0 when the customer never bought)."""
    f: int
    """Frequency score 1-5 (0 when the customer never bought)."""
    m: int
    """Monetary score 1-5 (0 when the customer never bought)."""


class AxesOut(BaseModel):
    """One value per axis of the domain model."""

    model_config = _CONFIG

    lifecycle: Lifecycle
    value_tier: ValueTier
    loyalty: Loyalty
    needs: Needs
    rfm: RfmOut
    rfm_segment: str
    """Classic named RFM segment (champions, loyal, ..., lost; ``none`` for prospects)."""
    key_account: bool
    frequency: Level
    aov: Level
    profit: Level


class TreatmentOut(BaseModel):
    """What checkout and marketing act on."""

    model_config = _CONFIG

    id: str
    discount_pct: int
    free_shipping: bool
    support_queue: str
    campaign: str | None
    channel: str
    offer: str | None


class SegmentationOut(BaseModel):
    """A customer's segmentation as it appears on the wire."""

    model_config = _CONFIG

    segment: str
    axes: AxesOut
    treatment: TreatmentOut
    reasons: tuple[str, ...]
    """Human-readable: which rule matched, with the numbers."""
    rules_version: str
    as_of: AwareDatetime
    next_review_at: AwareDatetime | None
    """Earliest instant at which the result may change with no new event; null if never."""

    @classmethod
    def from_domain(cls, seg: Segmentation) -> SegmentationOut:
        axes, rfm, treatment = seg.axes, seg.axes.rfm, seg.treatment
        return cls(
            segment=seg.segment,
            axes=AxesOut(
                lifecycle=axes.lifecycle,
                value_tier=axes.value_tier,
                loyalty=axes.loyalty,
                needs=axes.needs,
                rfm=RfmOut(r=rfm.r, f=rfm.f, m=rfm.m),
                rfm_segment=axes.rfm_segment,
                key_account=axes.key_account,
                frequency=axes.frequency,
                aov=axes.aov,
                profit=axes.profit,
            ),
            treatment=TreatmentOut(
                id=treatment.id,
                discount_pct=treatment.discount_pct,
                free_shipping=treatment.free_shipping,
                support_queue=treatment.support_queue,
                campaign=treatment.campaign,
                channel=treatment.channel,
                offer=treatment.offer,
            ),
            reasons=seg.reasons,
            rules_version=seg.rules_version,
            as_of=seg.as_of,
            next_review_at=seg.next_review_at,
        )


class Trigger(BaseModel):
    """What caused a change: the source record (``event``), the review instant that came due
    (``time``) or the rules version that was activated (``rules``).

    One model with optional fields; the event fields come all together or not at all.
    """

    model_config = _CONFIG

    event_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    review_at: AwareDatetime | None = None
    """The ``next_review_at`` that came due (``cause: time``)."""
    rules_version: str | None = None
    """The rules version being applied (``cause: rules``)."""

    @model_validator(mode="after")
    def _event_fields_together(self) -> Trigger:
        source = (self.event_id, self.topic, self.partition, self.offset)
        if any(v is not None for v in source) and any(v is None for v in source):
            raise ValueError("event_id, topic, partition and offset come together")
        return self

    def identity(self) -> str:
        """A stable string naming this trigger, an input of the deterministic ``change_id``."""
        return trigger_identity(
            self.event_id,
            self.topic,
            self.partition,
            self.offset,
            self.review_at,
            self.rules_version,
        )


def trigger_identity(
    event_id: str | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    review_at: datetime | None,
    rules_version: str | None,
) -> str:
    """Names a trigger stably (part of the ``change_id`` contract): the source record for an
    event, else the review instant and/or the rules version."""
    if event_id is not None:
        return f"event:{topic}:{partition}:{offset}:{event_id}"
    parts: list[str] = []
    if review_at is not None:
        parts.append(f"time:{review_at.astimezone(UTC).isoformat()}")
    if rules_version is not None:
        parts.append(f"rules:{rules_version}")
    return "|".join(parts)


class SegmentChange(BaseModel):
    """One customer's segmentation changed (``previous`` is null the first time)."""

    model_config = _CONFIG

    schema_version: Literal[1] = 1
    change_id: str
    """Deterministic: a replay of the same transition carries the same id."""
    customer_id: str
    cause: Cause
    as_of: AwareDatetime
    """The instant the new segmentation was computed for."""
    rules_version: str
    previous: SegmentationOut | None
    current: SegmentationOut
    trigger: Trigger | None = None
