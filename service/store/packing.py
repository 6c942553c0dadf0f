"""Compact encodings of what lives inside a customer hash.

Memory is a feature (DESIGN.md: a typical customer well under 1 KB), so a customer is one
small hash of short fields:

``L``        lifetime totals, CSV of integers (Totals order; trailing zeros dropped)
``d:<day>``  one daily bucket, same CSV
``f`` ``l``  first / last purchase, epoch ms       ``e``  last engagement, epoch ms
``w``        idempotency watermark ``partition:offset``
``r``        ring of recent event-id hashes, 8 bytes each
``v``        revision, +1 per applied event (compare-and-set for segment writes)
``g``        current segmentation, packed by :func:`pack_segmentation`
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.segmentation.profile import Profile, Totals
from service.segmentation.types import Axes, Rfm

_N_TOTALS = 9


def encode_totals(totals: Totals) -> str:
    values = list(totals.as_tuple())
    while len(values) > 1 and values[-1] == 0:
        values.pop()
    return ",".join(map(str, values))


def decode_totals(raw: bytes | str) -> Totals:
    text = raw.decode() if isinstance(raw, bytes) else raw
    values = [int(v) for v in text.split(",")]
    values.extend([0] * (_N_TOTALS - len(values)))
    return Totals(*values)


@dataclass(frozen=True, slots=True)
class StoredSegmentation:
    """The part of a segmentation kept in Redis (reasons and treatment details are derived)."""

    segment: str
    axes: Axes
    treatment_id: str
    rules_version: str
    as_of_ms: int
    next_review_ms: int | None

    def fingerprint(self) -> tuple[object, ...]:
        return (self.segment, self.axes, self.treatment_id)


def pack_segmentation(s: StoredSegmentation) -> str:
    a = s.axes
    return "|".join(
        (
            s.segment,
            a.lifecycle,
            a.value_tier,
            a.loyalty,
            a.needs,
            f"{a.rfm.r}{a.rfm.f}{a.rfm.m}",
            a.rfm_segment,
            "1" if a.key_account else "0",
            a.frequency,
            a.aov,
            a.profit,
            s.treatment_id,
            s.rules_version,
            str(s.as_of_ms),
            "" if s.next_review_ms is None else str(s.next_review_ms),
        )
    )


def unpack_segmentation(raw: bytes | str) -> StoredSegmentation:
    text = raw.decode() if isinstance(raw, bytes) else raw
    (
        segment,
        lifecycle,
        value_tier,
        loyalty,
        needs,
        rfm,
        rfm_segment,
        key_account,
        frequency,
        aov,
        profit,
        treatment_id,
        rules_version,
        as_of_ms,
        next_review_ms,
    ) = text.split("|")
    axes = Axes(
        lifecycle=lifecycle,  # type: ignore[arg-type]
        value_tier=value_tier,  # type: ignore[arg-type]
        loyalty=loyalty,  # type: ignore[arg-type]
        needs=needs,  # type: ignore[arg-type]
        rfm=Rfm(int(rfm[0]), int(rfm[1]), int(rfm[2])),
        rfm_segment=rfm_segment,
        key_account=key_account == "1",
        frequency=frequency,  # type: ignore[arg-type]
        aov=aov,  # type: ignore[arg-type]
        profit=profit,  # type: ignore[arg-type]
    )
    return StoredSegmentation(
        segment=segment,
        axes=axes,
        treatment_id=treatment_id,
        rules_version=rules_version,
        as_of_ms=int(as_of_ms),
        next_review_ms=int(next_review_ms) if next_review_ms else None,
    )


@dataclass(frozen=True, slots=True)
class CustomerState:
    """A customer as read from Redis: the profile plus what the store keeps beside it."""

    profile: Profile
    revision: str
    """Raw ``v`` field ('' for a customer that does not exist)."""
    packed: str
    """Raw ``g`` field ('' before the first segmentation)."""

    @property
    def stored(self) -> StoredSegmentation | None:
        return unpack_segmentation(self.packed) if self.packed else None


def decode_customer(customer_id: str, fields: dict[bytes, bytes], *, min_day: int) -> CustomerState:
    """Builds the profile from a raw HGETALL; buckets older than ``min_day`` are ignored."""
    days: dict[int, Totals] = {}
    lifetime = Totals()
    first = last = engaged = None
    revision = packed = ""
    for name, value in fields.items():
        if name.startswith(b"d:"):
            day = int(name[2:])
            if day >= min_day:
                days[day] = decode_totals(value)
        elif name == b"L":
            lifetime = decode_totals(value)
        elif name == b"f":
            first = int(value)
        elif name == b"l":
            last = int(value)
        elif name == b"e":
            engaged = int(value)
        elif name == b"v":
            revision = value.decode()
        elif name == b"g":
            packed = value.decode()
    profile = Profile(
        customer_id=customer_id,
        first_purchase_ms=first,
        last_purchase_ms=last,
        last_engagement_ms=engaged,
        lifetime=lifetime,
        days=days,
    )
    return CustomerState(profile=profile, revision=revision, packed=packed)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
