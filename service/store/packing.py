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

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from operator import itemgetter

import msgspec

from service.segmentation.profile import (
    EMPTY_BUCKETS,
    N_TOTALS,
    ZERO,
    Buckets,
    Profile,
    Totals,
    _new_totals,
)
from service.segmentation.types import Axes, Rfm


def encode_totals(totals: Totals) -> str:
    n = N_TOTALS
    while not totals[n - 1]:  # trailing zeros dropped
        n -= 1
        if n == 1:
            break
    return ",".join(map(str, totals[:n]))


_PAD = {n: (0,) * n for n in range(N_TOTALS + 1)}
"""Zeros to append to a CSV of ``N_TOTALS - n`` fields (a longer one is a KeyError)."""


def decode_totals(raw: bytes | str) -> Totals:
    values = raw.split(b",") if isinstance(raw, bytes) else raw.split(",")
    return _new_totals(Totals, (*map(int, values), *_PAD[N_TOTALS - len(values)]))


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


@functools.lru_cache(maxsize=4096)
def axes_of(code: str, rfm_segment: str) -> Axes:
    """The axes packed as ``code`` (a few hundred combinations are common: memoised, the
    objects are immutable)."""
    lifecycle, value, loyalty, needs, level = _BACK
    return Axes(
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


def unpack_segmentation(g: bytes | str, m: bytes | str) -> StoredSegmentation:
    g_text = g.decode() if isinstance(g, bytes) else g
    m_text = m.decode() if isinstance(m, bytes) else m
    segment, code, treatment_id = g_text.split("|")
    rules_version, as_of_ms, next_review_ms, rfm_segment = m_text.split("|")
    axes = axes_of(code, rfm_segment)
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
    buckets older than ``min_day`` are left out of it and named in ``stale``.

    The buckets take one C-level parse for all of them (:func:`_bucket_columns`); a hash with
    a field this version does not know takes the field-by-field path, with the same result."""
    flat = fields if isinstance(fields, list) else list(fields)
    by_name = dict(zip(flat[0::2], flat[1::2], strict=True))
    pop = by_name.pop
    lifetime_raw, first, last, engaged = (
        pop(b"L", None),
        pop(b"f", None),
        pop(b"l", None),
        pop(b"e", None),
    )
    revision, packed, meta = pop(b"v", b""), pop(b"g", b""), pop(b"m", b"")
    for name in _OTHER_FIELDS:
        pop(name, None)
    buckets = _bucket_columns(by_name) if by_name else EMPTY_BUCKETS
    if buckets is None:
        buckets = Buckets.of(_bucket_rows(by_name))
    buckets, stale = _kept(buckets, min_day)
    profile = Profile(
        customer_id,
        None if first is None else int(first),
        None if last is None else int(last),
        None if engaged is None else int(engaged),
        ZERO if lifetime_raw is None else decode_totals(lifetime_raw),
        buckets,
    )
    return CustomerState(
        profile=profile,
        revision=revision.decode(),
        packed=packed.decode(),
        meta=meta.decode(),
        stale=stale,
    )


_decode_read_back_json = msgspec.json.Decoder(
    tuple[int | None, int | None, int | None, int | None, list[int], list[list[int]]]
).decode


def decode_read_back(
    customer_id: str, reply: Sequence[bytes], *, min_day: int
) -> CustomerState | None:
    """apply.lua's read-back of a customer (``[json, g, m]``, see the script): the state
    :func:`decode_customer` gives for the same hash, in one JSON parse; ``None`` for anything
    that does not parse as the script writes it (the caller reads the hash instead)."""
    raw, g, m = reply
    try:
        revision, first, last, engaged, lifetime, rows = _decode_read_back_json(raw)
    except msgspec.MsgspecError:
        return None
    if len(lifetime) > N_TOTALS:
        return None
    if rows:
        rows.sort()  # by day: a hash has each day once
        columns = list(zip_longest(*rows, fillvalue=0))
        if len(columns) > N_TOTALS + 1 or min(map(len, rows)) < 2:
            return None
        days = columns[0]
        del columns[0]
        columns += [(0,) * len(days)] * (N_TOTALS - len(columns))
        buckets = Buckets(days, columns)
    else:
        buckets = EMPTY_BUCKETS
    buckets, stale = _kept(buckets, min_day)
    profile = Profile(
        customer_id,
        first,
        last,
        engaged,
        _new_totals(Totals, (*lifetime, *_PAD[N_TOTALS - len(lifetime)])) if lifetime else ZERO,
        buckets,
    )
    return CustomerState(
        profile=profile,
        revision="" if revision is None else str(revision),
        packed=g.decode(),
        meta=m.decode(),
        stale=stale,
    )


def _kept(buckets: Buckets, min_day: int) -> tuple[Buckets, tuple[bytes, ...]]:
    """The buckets from ``min_day`` on, and the field names of those before it (stale: the
    consumer deletes them, RedisProfileStore.trim)."""
    if not buckets.days or buckets.days[0] >= min_day:
        return buckets, ()
    start = buckets.start(min_day)
    return buckets.tail(start), tuple([b"d:%d" % day for day in buckets.days[:start]])


_OTHER_FIELDS = (b"w", b"r", b"x")
"""Fields of a customer hash that are neither buckets nor read into the state."""
_decode_ints = msgspec.json.Decoder(list[int]).decode
_decode_rows = msgspec.json.Decoder(list[list[int]]).decode


def _bucket_columns(buckets: dict[bytes, bytes]) -> Buckets | None:
    """Every ``d:<day>`` field in two C-level parses (the days, then every bucket's CSV as one
    JSON array of arrays), turned into columns by one ``zip_longest`` (a CSV without its
    trailing zeros gets them back): ~0.5 µs a bucket against ~2 µs field by field. None when
    a field is not a bucket (the caller takes the field-by-field path)."""
    names = sorted(buckets)  # day order when the days have as many digits (since 1997)
    values = itemgetter(*names)(buckets) if len(names) > 1 else (buckets[names[0]],)
    try:
        days = _decode_ints(b"[" + b",".join(names).replace(b"d:", b"") + b"]")
        rows = _decode_rows(b"[[" + b"],[".join(values) + b"]]")
    except msgspec.MsgspecError:  # a name or value that is not integers
        return None
    n = len(days)
    columns = list(zip_longest(*rows, fillvalue=0))
    if n != len(names) or len(columns) > N_TOTALS or min(map(len, rows)) == 0:
        return None
    columns += [(0,) * n] * (N_TOTALS - len(columns))
    return Buckets.in_day_order(days, columns)


def _bucket_rows(buckets: dict[bytes, bytes]) -> dict[int, Totals]:
    """The buckets field by field (a CSV may omit trailing zeros); other fields are ignored."""
    rows: dict[int, Totals] = {}
    for name, value in buckets.items():
        if name[:2] == b"d:":
            values = value.split(b",")
            rows[int(name[2:])] = _new_totals(
                Totals, (*map(int, values), *_PAD[N_TOTALS - len(values)])
            )
    return rows


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def epoch_ms(instant: datetime) -> int:
    # Memoised: the consumer converts the same few instants (a batch's ``now``, day starts)
    # for every customer it classifies.
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
