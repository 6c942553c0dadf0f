"""``classify``: a customer's profile, the rules and an instant in, the segmentation out.

Pure and deterministic: no I/O, no clock; ``now`` is passed in. The consumer calls it for
every touched customer, so the hot path reads the precompiled :class:`CompiledRules` and sums
each window as slices of the buckets' columns in day order (:class:`Buckets`), with no object
per day.

``next_review_at`` is the first UTC midnight at which the answer may change with no new event.
Time alone changes only two kinds of input, and each yields a candidate day:

1. recency and tenure grow by one each day: the days a threshold on them is crossed
   (at_risk, churned, every RFM recency cut point; new, loyalty tenure);
2. buckets leave windows: for every window the rules read, the day its oldest bucket leaves
   (the loyalty periods and the reactivation test only read buckets, so they are covered by
   their windows; a reactivated customer also stops being one when the comeback purchase
   leaves ``reactivated_days``).

The earliest candidate is conservative (a review that finds nothing changed is cheap); a
missed one would leave a stale segment, which the property tests guard against.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import datetime
from typing import Final

from service.segmentation import windows
from service.segmentation.profile import MONEY_SCALE, MS_PER_DAY, Buckets, Profile
from service.segmentation.rules import CompiledRules, Rules
from service.segmentation.types import Level, Lifecycle, Loyalty, Needs, Segmentation, ValueTier
from service.segmentation.windows import day_start, reactivation_day, utc_day

# Positions in a window's sums (a plain tuple: cheapest to build and index), see _window_sums.
_ORDERS: Final = 0
_SPEND: Final = 1
_REFUNDED: Final = 2
_MARGIN: Final = 3
_DISCOUNTED: Final = 4
_PREMIUM: Final = 5
_SUPPORT: Final = 6
_OLDEST: Final = 7

_WindowSums = tuple[int, int, int, int, int, int, int, int | None]


def classify(profile: Profile, rules: Rules, *, now: datetime) -> Segmentation:
    """Segment, every axis, treatment, reasons and ``next_review_at`` of ``profile`` at ``now``."""
    c = rules.compiled
    today = utc_day(now)
    reasons: list[str] = []
    review_days: list[int] = []

    # The windows are suffixes of the buckets in day order: their sums are sums of column
    # slices, and the purchase days that can matter one compress (Buckets).
    buckets = Buckets.of(profile.days)
    purchase_days = windows.purchase_days(profile, today - c.lookback + 1)
    sums = [_window_sums(buckets, buckets.start(today - window + 1)) for window in c.class_windows]
    for window, window_sums in zip(c.class_windows, sums, strict=True):
        window_oldest = window_sums[_OLDEST]
        if window_oldest is not None:
            review_days.append(window_oldest + window)

    first_ms, last_ms = profile.first_purchase_ms, profile.last_purchase_ms
    bought = first_ms is not None and last_ms is not None
    recency = tenure = 0
    first_day = 0
    if first_ms is not None and last_ms is not None:
        first_day, last_day = first_ms // MS_PER_DAY, last_ms // MS_PER_DAY
        recency, tenure = max(0, today - last_day), max(0, today - first_day)
        after_last = c.next_after(c.recency_offsets, last_day, today)
        if after_last is not None:
            review_days.append(after_last)
        after_first = c.next_after(c.tenure_offsets, first_day, today)
        if after_first is not None:
            review_days.append(after_first)

    lifecycle = _lifecycle(
        c, bought, recency, tenure, first_day, today, purchase_days, sums, reasons, review_days
    )
    value_tier = _value_tier(c, sums[c.value_window_i], reasons)
    loyalty = _loyalty(c, purchase_days, today, tenure, profile.lifetime.orders, reasons)
    needs = _needs(c, sums[c.needs_window_i], reasons)

    if bought:
        rfm_sums = sums[c.rfm_window_i]
        rfm_orders, rfm_net = rfm_sums[_ORDERS], rfm_sums[_SPEND] - rfm_sums[_REFUNDED]
        r = 5 - bisect_left(c.r_cuts, recency)
        f = 1 + bisect_right(c.f_cuts, rfm_orders)
        m = 1 + bisect_right(c.m_cuts, rfm_net)
        rfm_index = r * 36 + f * 6 + m
        reasons.append(
            f"rfm r={r} f={f} m={m} -> {c.rfm_table[rfm_index]}: recency {recency} days, "
            f"{rfm_orders} orders and net_spend {_money(rfm_net)} in {c.rfm_window}d"
        )
    else:
        rfm_index = 0
        reasons.append("rfm r=0 f=0 m=0 -> none: no purchase yet")

    key_sums = sums[c.key_window_i]
    key_account = value_tier in c.key_tiers and key_sums[_ORDERS] >= c.key_min_orders
    if key_account:
        reasons.append(
            f"key_account: value_tier {value_tier} and {key_sums[_ORDERS]} orders in "
            f"{c.key_window}d >= {c.key_min_orders}"
        )

    level_sums = sums[c.levels_window_i]
    orders, spend, margin = level_sums[_ORDERS], level_sums[_SPEND], level_sums[_MARGIN]
    frequency: Level = (
        "high"
        if orders >= c.frequency_high
        else "medium"
        if orders >= c.frequency_medium
        else "low"
    )
    # aov >= threshold  <=>  spend >= threshold * orders (no division, exact).
    aov: Level = (
        "low"
        if not orders
        else "high"
        if spend >= c.aov_high * orders
        else "medium"
        if spend >= c.aov_medium * orders
        else "low"
    )
    profit: Level = (
        "high" if margin >= c.profit_high else "medium" if margin >= c.profit_medium else "low"
    )
    reasons.append(
        f"levels in {c.levels_window}d: frequency {frequency} ({orders} orders), aov {aov} "
        f"({_money(spend // orders if orders else 0)}), profit {profit} ({_money(margin)})"
    )

    key = (lifecycle, value_tier, loyalty, needs, rfm_index, key_account, frequency, aov, profit)
    resolved = c.resolved.get(key)
    axes, segment = resolved if resolved is not None else c.resolve(key)
    reasons.append(
        f"segment {segment.name}: first match of rule '{segment.name}' "
        f"({segment.index + 1} of {c.segment_count})"
    )

    return Segmentation(
        segment=segment.name,
        axes=axes,
        treatment=segment.treatment,
        reasons=tuple(reasons),
        rules_version=rules.version,
        as_of=now,
        next_review_at=day_start(min(review_days)) if review_days else None,
    )


def _window_sums(buckets: Buckets, start: int) -> _WindowSums:
    """Sums of the buckets from index ``start`` on, and the day of the first of them."""
    days = buckets.days
    if start >= len(days):
        return 0, 0, 0, 0, 0, 0, 0, None
    orders, spend, _, refunded, margin, discounted, premium, _, support = buckets.columns
    if start > 0:  # only the columns summed are sliced
        return (
            sum(orders[start:]),
            sum(spend[start:]),
            sum(refunded[start:]),
            sum(margin[start:]),
            sum(discounted[start:]),
            sum(premium[start:]),
            sum(support[start:]),
            days[start],
        )
    return (
        sum(orders),
        sum(spend),
        sum(refunded),
        sum(margin),
        sum(discounted),
        sum(premium),
        sum(support),
        days[0],
    )


def _lifecycle(
    c: CompiledRules,
    bought: bool,
    recency: int,
    tenure: int,
    first_day: int,
    today: int,
    purchase_days: list[int],
    sums: list[_WindowSums],
    reasons: list[str],
    review_days: list[int],
) -> Lifecycle:
    if not bought:
        reasons.append("lifecycle prospect: no purchase yet")
        return "prospect"
    if recency >= c.churned_days:
        reasons.append(
            f"lifecycle churned: {recency} days since last purchase >= churned_days "
            f"{c.churned_days}"
        )
        return "churned"
    if recency >= c.at_risk_days:
        reasons.append(
            f"lifecycle at_risk: {recency} days since last purchase >= at_risk_days "
            f"{c.at_risk_days}"
        )
        return "at_risk"
    comeback = reactivation_day(purchase_days, first_day, today, c.reactivated_days, c.churned_days)
    if comeback is not None:
        day, previous = comeback
        # Stays reactivated until this purchase leaves the last reactivated_days days.
        review_days.append(day + c.reactivated_days)
        gap = f"{day - previous - 1} days" if previous is not None else "a longer gap"
        reasons.append(
            f"lifecycle reactivated: purchase {max(0, today - day)} days ago (< reactivated_days "
            f"{c.reactivated_days}) after {gap} without one (>= churned_days {c.churned_days})"
        )
        return "reactivated"
    if tenure < c.new_days:
        reasons.append(f"lifecycle new: tenure {tenure} days < new_days {c.new_days}")
        return "new"
    orders = sums[c.regular_window_i][_ORDERS]
    if orders >= c.regular_min_orders:
        reasons.append(
            f"lifecycle regular: {orders} orders in {c.regular_window}d >= regular_min_orders "
            f"{c.regular_min_orders}"
        )
        return "regular"
    reasons.append(
        f"lifecycle occasional: {orders} orders in {c.regular_window}d < regular_min_orders "
        f"{c.regular_min_orders}"
    )
    return "occasional"


def _value_tier(c: CompiledRules, sums: _WindowSums, reasons: list[str]) -> ValueTier:
    net, margin = sums[_SPEND] - sums[_REFUNDED], sums[_MARGIN]
    window = c.value_window
    if net < 0:
        reasons.append(f"value_tier negative: net_spend {_money(net)} in {window}d < 0")
        return "negative"
    if margin < 0:
        reasons.append(f"value_tier negative: margin {_money(margin)} in {window}d < 0")
        return "negative"
    if net >= c.value_high:
        reasons.append(
            f"value_tier high: net_spend {_money(net)} in {window}d >= {_money(c.value_high)}"
        )
        return "high"
    if net >= c.value_medium:
        reasons.append(
            f"value_tier medium: net_spend {_money(net)} in {window}d >= {_money(c.value_medium)}"
        )
        return "medium"
    reasons.append(
        f"value_tier low: net_spend {_money(net)} in {window}d < {_money(c.value_medium)}"
    )
    return "low"


def _loyalty(
    c: CompiledRules,
    purchase_days: list[int],
    today: int,
    tenure: int,
    lifetime_orders: int,
    reasons: list[str],
) -> Loyalty:
    since = today - c.loyalty_window + 1
    period = c.period_days
    periods = len({day // period for day in purchase_days if day >= since})
    active = f"{periods} active {period}-day periods in {c.loyalty_window}d"
    if periods >= c.loyalty_high_periods and tenure >= c.loyalty_high_tenure:
        reasons.append(
            f"loyalty high: {active} >= {c.loyalty_high_periods} and tenure {tenure} days >= "
            f"{c.loyalty_high_tenure}"
        )
        return "high"
    if periods >= c.loyalty_medium_periods:
        reasons.append(f"loyalty medium: {active} >= {c.loyalty_medium_periods}")
        return "medium"
    if lifetime_orders >= c.loyalty_low_orders:
        reasons.append(
            f"loyalty low: {active}, {lifetime_orders} lifetime orders >= {c.loyalty_low_orders}"
        )
        return "low"
    reasons.append(f"loyalty none: {active}, {lifetime_orders} lifetime orders")
    return "none"


def _needs(c: CompiledRules, sums: _WindowSums, reasons: list[str]) -> Needs:
    spend, window = sums[_SPEND], c.needs_window
    for kind in c.needs_order:
        if kind == "service_sensitive":
            contacts = sums[_SUPPORT]
            if contacts >= c.service_min_contacts:
                reasons.append(
                    f"needs service_sensitive: {contacts} support contacts in {window}d >= "
                    f"{c.service_min_contacts}"
                )
                return kind
        elif kind == "price_sensitive":
            discounted = sums[_DISCOUNTED]
            # discounted / spend >= num / den, exactly, without division.
            if spend > 0 and discounted * c.price_share_den >= spend * c.price_share_num:
                reasons.append(
                    f"needs price_sensitive: discounted share {discounted / spend:.2f} of spend "
                    f"in {window}d >= {c.price_share_text}"
                )
                return kind
        elif kind == "quality_seeking":
            premium = sums[_PREMIUM]
            if spend > 0 and premium * c.quality_share_den >= spend * c.quality_share_num:
                reasons.append(
                    f"needs quality_seeking: premium share {premium / spend:.2f} of spend "
                    f"in {window}d >= {c.quality_share_text}"
                )
                return kind
        elif spend > 0:  # function_seeking
            reasons.append(
                f"needs function_seeking: spend {_money(spend)} in {window}d, no stronger need"
            )
            return kind
    reasons.append(f"needs unknown: no need applies in {window}d")
    return "unknown"


def _money(units: int) -> str:
    # Display only (reasons); the contract's money rendering lives at the API edge.
    return f"{units / MONEY_SCALE:.2f}"
