"""Windows, recency/tenure and the reactivation / regularity helpers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.segmentation.profile import MS_PER_DAY, ZERO, Profile, Totals
from service.segmentation.windows import (
    active_periods,
    day_of_ms,
    day_start,
    purchase_days,
    reactivation_day,
    recency_days,
    tenure_days,
    utc_day,
    window_totals,
)

TODAY = 20_000


def _profile(
    days: dict[int, Totals], *, first: int | None = None, last: int | None = None
) -> Profile:
    return Profile(
        customer_id="c1",
        first_purchase_ms=None if first is None else first * MS_PER_DAY + 5,
        last_purchase_ms=None if last is None else last * MS_PER_DAY + 5,
        days=days,
    )


def test_utc_day_is_exact_at_midnight_and_honours_offsets() -> None:
    midnight = day_start(TODAY)
    assert utc_day(midnight) == TODAY
    assert utc_day(midnight - timedelta(microseconds=1)) == TODAY - 1
    # 23:30 at UTC-02:00 is 01:30 UTC the next day.
    west = datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert utc_day(west) == utc_day(datetime(2024, 3, 2, 1, 30, tzinfo=UTC))
    assert utc_day(datetime(1969, 12, 31, 23, 59, tzinfo=UTC)) == -1


def test_utc_day_rejects_naive_instants() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_day(datetime(2024, 3, 1))


def test_day_of_ms() -> None:
    assert day_of_ms(TODAY * MS_PER_DAY) == TODAY
    assert day_of_ms(TODAY * MS_PER_DAY - 1) == TODAY - 1


def test_window_includes_exactly_n_days_ending_today_and_the_future() -> None:
    one = Totals(orders=1, spend=10)
    days = {TODAY - 30: one, TODAY - 29: one, TODAY: one, TODAY + 1: one}
    totals = window_totals(_profile(days), 30, TODAY)
    assert totals.orders == 3  # TODAY-29 .. TODAY, plus the skewed future bucket
    assert totals.spend == 30
    assert window_totals(_profile(days), 1, TODAY).orders == 2
    assert window_totals(_profile({}), 30, TODAY) == ZERO


def test_window_sums_every_field() -> None:
    a = Totals(1, 100, 0, 0, 20, 5, 50, 2, 1)
    b = Totals(0, 0, 1, 40, -10, 0, 0, 1, 0)
    assert window_totals(_profile({TODAY - 1: a, TODAY: b}), 2, TODAY) == a + b


def test_recency_and_tenure() -> None:
    never = _profile({})
    assert recency_days(never, TODAY) is None
    assert tenure_days(never, TODAY) is None
    bought = _profile({}, first=TODAY - 100, last=TODAY - 7)
    assert recency_days(bought, TODAY) == 7
    assert tenure_days(bought, TODAY) == 100
    skewed = _profile({}, first=TODAY + 1, last=TODAY + 1)
    assert recency_days(skewed, TODAY) == 0
    assert tenure_days(skewed, TODAY) == 0


def test_purchase_days_skip_buckets_without_orders() -> None:
    days = {
        TODAY - 5: Totals(orders=1),
        TODAY - 3: Totals(refunds=1, refunded=5),
        TODAY - 1: Totals(orders=2),
        TODAY - 400: Totals(orders=1),
    }
    assert purchase_days(_profile(days), TODAY - 365) == [TODAY - 5, TODAY - 1]


def test_active_periods_are_anchored_at_the_epoch() -> None:
    # Days 30 apart always fall in distinct periods; two days in one period count once.
    assert active_periods([TODAY - 30 * i for i in range(6)], TODAY, 365, 30) == 6
    start = (TODAY // 30) * 30
    assert active_periods([start, start + 29], start + 29, 365, 30) == 1
    assert active_periods([start - 1, start], start + 29, 365, 30) == 2
    # Only the window counts.
    assert active_periods([TODAY - 365, TODAY - 364], TODAY, 365, 30) == 1


def test_reactivation_day() -> None:
    churned, window = 180, 60
    first = TODAY - 400
    # A comeback after a full churned_days gap (days p-180 .. p-1 empty).
    p = TODAY - 10
    assert reactivation_day([first, p - churned - 1, p], first, TODAY, window, churned) == (
        p,
        p - churned - 1,
    )
    # One purchase inside the gap spoils it.
    assert reactivation_day([first, p - churned, p], first, TODAY, window, churned) is None
    # The first purchase must lie before the gap.
    assert reactivation_day([p - churned, p], p - churned, TODAY, window, churned) is None
    assert reactivation_day([p], p, TODAY, window, churned) is None
    # The previous purchase may be older than the kept buckets.
    assert reactivation_day([p], first, TODAY, window, churned) == (p, None)
    # Only the last reactivated_days days count: TODAY-59 yes, TODAY-60 no.
    assert reactivation_day([TODAY - 59], first, TODAY, window, churned) == (TODAY - 59, None)
    assert reactivation_day([TODAY - 60], first, TODAY, window, churned) is None
    # A later ordinary purchase keeps the customer reactivated by the earlier comeback.
    assert reactivation_day([p - 5, p], first, TODAY, window, churned) == (p - 5, None)
