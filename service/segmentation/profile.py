"""Per-customer aggregates and the pure fold that builds them.

The Redis apply script (``service/store/lua/apply.lua``) is the incremental twin of
:func:`apply_event`: both must produce the same :class:`Profile` for the same events, and the
property tests hold them to it.

Money is kept as integers in ten-thousandths of the base currency (``MONEY_SCALE``), so sums
never drift; the API renders it with exactly two decimals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Literal, NamedTuple

MONEY_SCALE = 10_000
"""Money unit: 1 = 0.0001 of the base currency."""

MS_PER_DAY = 86_400_000

EventKind = Literal["purchase", "refund", "engagement"]


class Totals(NamedTuple):
    """Additive aggregates of a set of events (a day, a window or a lifetime).

    A named tuple, not a dataclass: the consumer builds hundreds of thousands per second, and
    a tuple is several times cheaper to make than a frozen dataclass.
    """

    orders: int = 0
    """Purchase events."""
    spend: int = 0
    """Sum of purchase amounts, money units."""
    refunds: int = 0
    """Refund events."""
    refunded: int = 0
    """Sum of refund amounts, money units."""
    margin: int = 0
    """Purchase margins minus refunded margins, where known, money units."""
    discounted_spend: int = 0
    """Spend on orders that carried a discount, money units."""
    premium_spend: int = 0
    """Spend on premium-tier items, money units."""
    engagements: int = 0
    """Engagement events of any action."""
    support_contacts: int = 0
    """Engagement events with action ``support_contact``."""

    def __add__(self, other: Totals) -> Totals:  # type: ignore[override]
        """Element-wise sum (not tuple concatenation)."""
        return Totals(*map(int.__add__, self, other))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(self)

    @property
    def net_spend(self) -> int:
        return self.spend - self.refunded


ZERO = Totals()
N_TOTALS = len(ZERO)

_new_totals = tuple.__new__
"""``_new_totals(Totals, nine_ints)``: a Totals without the named tuple's Python ``__new__``."""


class Buckets(Mapping[int, Totals]):
    """Daily buckets as columns in day order: the shape the classifier sums windows over.

    ``days`` ascending; ``columns[k][i]`` is field ``k`` (:class:`Totals` order) of day
    ``days[i]``. A window is a suffix of the days, so its sums are sums of column slices, each
    one C loop, where a mapping of per-day tuples costs a Python step per day and field. A
    heavy customer has hundreds of buckets and is read back on every event at a low rate, so
    this is most of what reading a customer costs (docs/PERFORMANCE.md).

    A read-only :class:`Mapping` of day to :class:`Totals` for everything else, equal to a
    dict with the same buckets.
    """

    __slots__ = ("columns", "days")

    def __init__(self, days: Sequence[int], columns: Sequence[Sequence[int]]) -> None:
        self.days = days
        self.columns = columns

    @classmethod
    def of(cls, buckets: Mapping[int, Totals]) -> Buckets:
        """The columns of any mapping of day to totals (itself when it already is one)."""
        if isinstance(buckets, Buckets):
            return buckets
        items = sorted(buckets.items())
        if not items:
            return EMPTY_BUCKETS
        return cls(tuple(day for day, _ in items), tuple(zip(*(t for _, t in items), strict=True)))

    @classmethod
    def in_day_order(cls, days: list[int], columns: Sequence[Sequence[int]]) -> Buckets:
        """Buckets from days and their columns (aligned with them), sorting them unless the
        days already ascend."""
        n = len(days)
        if n > 1 and days != sorted(days):
            pick = itemgetter(*sorted(range(n), key=days.__getitem__))
            return cls(pick(days), [pick(column) for column in columns])
        return cls(days, columns) if n else EMPTY_BUCKETS

    def start(self, day: int) -> int:
        """Index of the first bucket on or after ``day``."""
        return bisect_left(self.days, day)

    def tail(self, start: int) -> Buckets:
        """The buckets from index ``start`` on."""
        if start <= 0:
            return self
        return Buckets(self.days[start:], [column[start:] for column in self.columns])

    def __getitem__(self, day: int) -> Totals:
        days = self.days
        i = bisect_left(days, day)
        if i == len(days) or days[i] != day:
            raise KeyError(day)
        return _new_totals(Totals, tuple([column[i] for column in self.columns]))

    def __contains__(self, day: object) -> bool:
        if not isinstance(day, int):
            return False
        days = self.days
        i = bisect_left(days, day)
        return i < len(days) and days[i] == day

    def __iter__(self) -> Iterator[int]:
        return iter(self.days)

    def __len__(self) -> int:
        return len(self.days)

    def __repr__(self) -> str:
        return f"Buckets({dict(self.items())!r})"


EMPTY_BUCKETS = Buckets((), ((),) * N_TOTALS)


class EventDelta(NamedTuple):
    """What one validated event adds to a customer's aggregates (the apply script's input).

    A named tuple: one is made per event (a third of a frozen dataclass's cost)."""

    kind: EventKind
    day: int
    """UTC epoch day of ``occurred_at``."""
    occurred_ms: int
    """``occurred_at`` in epoch milliseconds."""
    totals: Totals


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the classifier knows about one customer."""

    customer_id: str
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None
    last_engagement_ms: int | None = None
    lifetime: Totals = ZERO
    days: Mapping[int, Totals] = field(default_factory=dict)
    """Daily buckets by UTC epoch day, kept back to the longest window."""

    @property
    def known(self) -> bool:
        return self.lifetime != ZERO or bool(self.days)


def apply_event(profile: Profile, delta: EventDelta, *, min_day: int) -> Profile:
    """Fold one event into a profile; buckets older than ``min_day`` are dropped.

    Mirrors ``apply.lua`` exactly (minus the idempotency marks, which live only in Redis).
    """
    first, last, engaged = (
        profile.first_purchase_ms,
        profile.last_purchase_ms,
        profile.last_engagement_ms,
    )
    if delta.kind == "purchase":
        first = delta.occurred_ms if first is None else min(first, delta.occurred_ms)
        last = delta.occurred_ms if last is None else max(last, delta.occurred_ms)
    elif delta.kind == "engagement":
        engaged = delta.occurred_ms if engaged is None else max(engaged, delta.occurred_ms)
    days = {d: t for d, t in profile.days.items() if d >= min_day}
    if delta.day >= min_day:
        days[delta.day] = days.get(delta.day, ZERO) + delta.totals
    return replace(
        profile,
        first_purchase_ms=first,
        last_purchase_ms=last,
        last_engagement_ms=engaged,
        lifetime=profile.lifetime + delta.totals,
        days=days,
    )
