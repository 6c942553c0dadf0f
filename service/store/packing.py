"""Compact encodings of what lives inside a customer hash.

Memory is a feature (DESIGN.md: a typical customer well under 1 KB), so a customer is one
small hash of short fields:

``L``        lifetime totals, CSV of integers (Totals order; trailing zeros dropped)
``d:<day>``  one daily bucket, same CSV
``f`` ``l``  first / last purchase, epoch ms       ``e``  last engagement, epoch ms
``w``        idempotency watermark ``partition:offset``
``r``        ring of recent event-id hashes, 8 bytes each
``v``        revision, +1 per applied event (compare-and-set for segment writes)
``g`` ``m``  current segmentation, packed by :func:`pack_segmentation`
``x``        erase tombstone: erased-at epoch ms. An erased customer's hash holds only this
             field until it expires (lua/erase.lua); it decodes as an unknown customer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.segmentation.profile import ZERO, Profile, Totals
from service.segmentation.types import Axes, Rfm

_N_TOTALS = 9


def encode_totals(totals: Totals) -> str:
    n = _N_TOTALS
    while not totals[n - 1]:  # trailing zeros dropped
        n -= 1
        if n == 1:
            break
    return ",".join(map(str, totals[:n]))


_PAD = {n: (0,) * n for n in range(_N_TOTALS + 1)}
"""Zeros to append to a CSV of ``_N_TOTALS - n`` fields (a longer one is a KeyError)."""
_new_totals = tuple.__new__
"""``_new_totals(Totals, nine_ints)``: a Totals without the named tuple's Python ``__new__``
(a third cheaper; every daily bucket of every customer read back is one)."""


def decode_totals(raw: bytes | str) -> Totals:
    values = raw.split(b",") if isinstance(raw, bytes) else raw.split(",")
    return _new_totals(Totals, (*map(int, values), *_PAD[_N_TOTALS - len(values)]))


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


# One character per class keeps ``g`` under Redis's listpack value limit (64 bytes), so a
# customer hash stays in the compact listpack encoding instead of a hashtable (~2.5x smaller).
_LIFECYCLE = {
    "prospect": "p",
    "new": "n",
    "regular": "g",
    "occasional": "o",
    "at_risk": "a",
    "churned": "c",
    "reactivated": "r",
}
_VALUE = {"high": "h", "medium": "m", "low": "l", "negative": "n"}
_LOYALTY = {"high": "h", "medium": "m", "low": "l", "none": "n"}
_NEEDS = {
    "price_sensitive": "p",
    "quality_seeking": "q",
    "function_seeking": "f",
    "service_sensitive": "s",
    "unknown": "u",
}
_LEVEL = {"high": "h", "medium": "m", "low": "l"}
_BACK = [
    {v: k for k, v in table.items()} for table in (_LIFECYCLE, _VALUE, _LOYALTY, _NEEDS, _LEVEL)
]


def pack_segmentation(s: StoredSegmentation) -> tuple[str, str]:
    """Two fields: ``g`` (what the segmentation is) and ``m`` (version and times)."""
    a = s.axes
    code = (
        _LIFECYCLE[a.lifecycle]
        + _VALUE[a.value_tier]
        + _LOYALTY[a.loyalty]
        + _NEEDS[a.needs]
        + f"{a.rfm.r}{a.rfm.f}{a.rfm.m}"
        + ("k" if a.key_account else "-")
        + _LEVEL[a.frequency]
        + _LEVEL[a.aov]
        + _LEVEL[a.profit]
    )
    g = f"{s.segment}|{code}|{s.treatment_id}"
    nxt = "" if s.next_review_ms is None else s.next_review_ms
    m = f"{s.rules_version}|{s.as_of_ms}|{nxt}|{a.rfm_segment}"
    return g, m


def unpack_segmentation(g: bytes | str, m: bytes | str) -> StoredSegmentation:
    g_text = g.decode() if isinstance(g, bytes) else g
    m_text = m.decode() if isinstance(m, bytes) else m
    segment, code, treatment_id = g_text.split("|")
    rules_version, as_of_ms, next_review_ms, rfm_segment = m_text.split("|")
    lifecycle, value, loyalty, needs, level = _BACK
    axes = Axes(
        lifecycle=lifecycle[code[0]],  # type: ignore[arg-type]
        value_tier=value[code[1]],  # type: ignore[arg-type]
        loyalty=loyalty[code[2]],  # type: ignore[arg-type]
        needs=needs[code[3]],  # type: ignore[arg-type]
        rfm=Rfm(int(code[4]), int(code[5]), int(code[6])),
        rfm_segment=rfm_segment,
        key_account=code[7] == "k",
        frequency=level[code[8]],  # type: ignore[arg-type]
        aov=level[code[9]],  # type: ignore[arg-type]
        profit=level[code[10]],  # type: ignore[arg-type]
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
    """Raw ``g`` field ('' before the first segmentation); compare-and-set token."""
    meta: str = ""
    """Raw ``m`` field."""
    stale: tuple[bytes, ...] = ()
    """Bucket fields older than the longest window: to be deleted."""

    @property
    def stored(self) -> StoredSegmentation | None:
        return unpack_segmentation(self.packed, self.meta) if self.packed else None


def decode_customer(customer_id: str, fields: Iterable[bytes], *, min_day: int) -> CustomerState:
    """Builds the profile from a raw HGETALL (RESP2 flat list: name, value, name, value...);
    buckets older than ``min_day`` are ignored."""
    days: dict[int, Totals] = {}
    lifetime = ZERO
    first = last = engaged = None
    revision = packed = meta = ""
    stale: list[bytes] = []
    it = iter(fields)
    for name, value in zip(it, it, strict=True):
        if name[0] == 100:  # b"d:<day>"
            day = int(name[2:])
            if day >= min_day:
                values = value.split(b",")
                days[day] = _new_totals(Totals, (*map(int, values), *_PAD[_N_TOTALS - len(values)]))
            else:
                stale.append(name)
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
        elif name == b"m":
            meta = value.decode()
    profile = Profile(customer_id, first, last, engaged, lifetime, days)
    return CustomerState(
        profile=profile, revision=revision, packed=packed, meta=meta, stale=tuple(stale)
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
