"""Rolling windows over a profile's daily buckets, and the time facts derived from them.

A window of N days is the N whole UTC calendar days ending ``today`` (today included), so a
bucket of day ``d`` is in it while ``d >= today - N + 1`` and leaves it at the midnight that
starts day ``d + N``. There is no upper bound: a bucket a little in the future (clock skew
between producers) already counts.

Everything here is a pure function of its arguments; "today" is passed in as a UTC epoch day.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import compress

from service.segmentation.profile import MS_PER_DAY, ZERO, Buckets, Profile, Totals

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_DAY = timedelta(days=1)


def utc_day(now: datetime) -> int:
    """UTC epoch day of an aware instant (exact integer arithmetic, no float rounding)."""
    try:
        # timedelta.days floors, so instants before the epoch land on the right day too.
        return (now - EPOCH).days
    except TypeError:
        raise ValueError("now must be timezone-aware") from None


def day_start(day: int) -> datetime:
    """The UTC midnight that starts epoch ``day``."""
    return EPOCH + _ONE_DAY * day


def day_of_ms(ms: int) -> int:
    """UTC epoch day of epoch milliseconds."""
    return ms // MS_PER_DAY


def window_totals(profile: Profile, days: int, today: int) -> Totals:
    """Sum of the buckets in the ``days``-day window ending ``today``."""
    buckets = Buckets.of(profile.days)
    start = buckets.start(today - days + 1)
    if start == len(buckets):
        return ZERO
    return Totals(*[sum(column[start:]) for column in buckets.columns])


def recency_days(profile: Profile, today: int) -> int | None:
    """Whole days since the last purchase's UTC day (0 for today or a skewed future day)."""
    if profile.last_purchase_ms is None:
        return None
    return max(0, today - profile.last_purchase_ms // MS_PER_DAY)


def tenure_days(profile: Profile, today: int) -> int | None:
    """Whole days since the first purchase's UTC day (clamped at 0 like recency)."""
    if profile.first_purchase_ms is None:
        return None
    return max(0, today - profile.first_purchase_ms // MS_PER_DAY)


def purchase_days(profile: Profile, since: int) -> list[int]:
    """Ascending UTC days on or after ``since`` whose bucket holds at least one purchase."""
    buckets = Buckets.of(profile.days)
    start = buckets.start(since)
    return list(compress(buckets.days[start:], buckets.columns[0][start:]))


def active_periods(days: Iterable[int], today: int, window: int, period: int) -> int:
    """Distinct ``period``-day periods with a purchase among ``days`` in the last ``window`` days.

    Periods are anchored at the epoch (period ``k`` is days ``k*period .. k*period+period-1``),
    not at today: the count then changes only when a purchase day leaves the window, never
    because "today" slid past a period boundary, which keeps reviews rare. A customer buying
    monthly is active in about ``window / period`` periods either way.
    """
    since = today - window + 1
    return len({day // period for day in days if day >= since})


def reactivation_day(
    days: list[int], first_day: int, today: int, reactivated_days: int, churned_days: int
) -> tuple[int, int | None] | None:
    """The latest purchase day that reactivated the customer, with the purchase day before it.

    ``days`` are the ascending purchase days, complete back to at least
    ``today - reactivated_days - churned_days + 1`` (guaranteed when the rules keep
    ``reactivated_days + churned_days <= max_window``). A day ``p`` reactivates when it lies in
    the last ``reactivated_days`` days, no purchase fell in the ``churned_days`` days before it
    (``p - churned_days .. p - 1``), and the customer had bought before that gap
    (``first_day < p - churned_days``). Returns ``None`` when no such day exists; the previous
    day is ``None`` when it lies before the kept buckets.
    """
    since = today - reactivated_days + 1
    for i in range(len(days) - 1, -1, -1):
        p = days[i]
        if p < since:
            return None
        gap_start = p - churned_days
        previous = days[i - 1] if i else None
        if first_day < gap_start and (previous is None or previous < gap_start):
            return p, previous
    return None
