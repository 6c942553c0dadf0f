"""classify: every axis at its boundaries, the segment table, and next_review_at."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.segmentation.classifier import classify
from service.segmentation.profile import (
    MONEY_SCALE,
    MS_PER_DAY,
    EventDelta,
    EventKind,
    Profile,
    Totals,
    apply_event,
)
from service.segmentation.rules import Rules, load_rules, parse_rules
from service.segmentation.types import Rfm, Segmentation
from service.segmentation.windows import day_start, utc_day

NOW = datetime(2025, 6, 15, 15, 30, tzinfo=UTC)
T = utc_day(NOW)
NOON_MS = 12 * 3_600_000


@cache
def default_rules() -> Rules:
    return load_rules(None)


def rules_with(**changes: Any) -> Rules:
    """Default rules with ``section__field=value`` changes."""
    doc: dict[str, Any] = yaml.safe_load(default_rules().canonical_json())
    for key, value in changes.items():
        section, field = key.split("__")
        doc[section][field] = value
    return parse_rules(json.dumps(doc))


def money(amount: str) -> int:
    return int(Decimal(amount) * MONEY_SCALE)


def buy(
    day: int,
    amount: str = "50",
    *,
    margin: str = "0",
    discounted: bool = False,
    premium: str = "0",
) -> EventDelta:
    spend = money(amount)
    totals = Totals(
        orders=1,
        spend=spend,
        margin=money(margin),
        discounted_spend=spend if discounted else 0,
        premium_spend=money(premium),
    )
    return EventDelta("purchase", day, day * MS_PER_DAY + NOON_MS, totals)


def refund(day: int, amount: str, *, margin: str = "0") -> EventDelta:
    totals = Totals(refunds=1, refunded=money(amount), margin=-money(margin))
    return EventDelta("refund", day, day * MS_PER_DAY + NOON_MS, totals)


def engage(day: int, *, support: bool = False) -> EventDelta:
    totals = Totals(engagements=1, support_contacts=int(support))
    return EventDelta("engagement", day, day * MS_PER_DAY + NOON_MS, totals)


def profile(*events: EventDelta) -> Profile:
    result = Profile(customer_id="c1")
    for event in events:
        result = apply_event(result, event, min_day=-(10**9))
    return result


def seg(p: Profile, rules: Rules | None = None, now: datetime = NOW) -> Segmentation:
    return classify(p, rules or default_rules(), now=now)


def has_reason(result: Segmentation, text: str) -> bool:
    return any(text in reason for reason in result.reasons)


# --- lifecycle ----------------------------------------------------------------------------------


def test_prospect_never_bought() -> None:
    result = seg(profile(engage(T - 3)))
    assert result.axes.lifecycle == "prospect"
    assert result.axes.rfm == Rfm(0, 0, 0)
    assert result.axes.rfm_segment == "none"
    assert result.axes.loyalty == "none"
    assert result.axes.needs == "unknown"
    assert result.segment == "prospect"
    assert result.treatment.id == "conversion"
    assert has_reason(result, "lifecycle prospect: no purchase yet")


def test_new_until_tenure_reaches_new_days() -> None:
    assert seg(profile(buy(T - 29))).axes.lifecycle == "new"
    assert seg(profile(buy(T - 30))).axes.lifecycle == "occasional"
    result = seg(profile(buy(T)))
    assert result.axes.lifecycle == "new"
    assert result.segment == "new_customer"
    assert result.treatment.id == "onboarding"
    assert has_reason(result, "lifecycle new: tenure 0 days < new_days 30")


@pytest.mark.parametrize(
    ("days_ago", "lifecycle"),
    [(59, "occasional"), (60, "at_risk"), (179, "at_risk"), (180, "churned"), (900, "churned")],
)
def test_recency_thresholds(days_ago: int, lifecycle: str) -> None:
    assert seg(profile(buy(T - days_ago))).axes.lifecycle == lifecycle


def test_at_risk_and_churned_reasons_and_segments() -> None:
    at_risk = seg(profile(buy(T - 75)))
    assert at_risk.segment == "at_risk"
    assert at_risk.treatment.id == "retention"
    assert has_reason(at_risk, "lifecycle at_risk: 75 days since last purchase >= at_risk_days 60")
    assert has_reason(at_risk, "segment at_risk: first match of rule 'at_risk'")
    churned = seg(profile(buy(T - 200)))
    assert churned.segment == "churned"
    assert churned.treatment.id == "win_back"
    assert has_reason(churned, "200 days since last purchase >= churned_days 180")


def test_regular_needs_min_orders_in_the_regular_window() -> None:
    base = [buy(T - 300), buy(T - 20)]
    assert seg(profile(*base, buy(T - 89), buy(T - 10))).axes.lifecycle == "regular"
    # An order on T-90 is outside the 90-day window.
    assert seg(profile(*base, buy(T - 90), buy(T - 10))).axes.lifecycle == "occasional"
    result = seg(profile(*base, buy(T - 89), buy(T - 10)))
    assert has_reason(result, "lifecycle regular: 3 orders in 90d >= regular_min_orders 3")


def test_several_orders_on_one_day_count_each() -> None:
    assert seg(profile(buy(T - 100), buy(T - 5), buy(T - 5), buy(T - 5))).axes.lifecycle == (
        "regular"
    )


def test_reactivated_after_a_churned_gap() -> None:
    result = seg(profile(buy(T - 250), buy(T - 10)))
    assert result.axes.lifecycle == "reactivated"
    assert result.segment == "reactivated"
    assert result.treatment.id == "welcome_back"
    assert has_reason(result, "lifecycle reactivated: purchase 10 days ago")
    assert has_reason(result, "after 239 days without one (>= churned_days 180)")


def test_reactivated_gap_boundaries() -> None:
    p = T - 10
    # No purchase in p-180 .. p-1: a gap of exactly churned_days.
    assert seg(profile(buy(p - 181), buy(p))).axes.lifecycle == "reactivated"
    # A purchase on p-180 is inside the gap.
    assert seg(profile(buy(p - 180), buy(p))).axes.lifecycle == "occasional"
    # The first purchase must come before the gap (p - 181 < p - 180).
    assert seg(profile(buy(p - 180), buy(p))).axes.lifecycle != "reactivated"
    # Still reactivated after a further ordinary purchase.
    assert seg(profile(buy(p - 200), buy(p), buy(T - 2))).axes.lifecycle == "reactivated"


def test_reactivated_window_boundary() -> None:
    rules = rules_with(lifecycle__reactivated_days=30)
    assert seg(profile(buy(T - 400), buy(T - 29)), rules).axes.lifecycle == "reactivated"
    assert seg(profile(buy(T - 400), buy(T - 30)), rules).axes.lifecycle == "occasional"


def test_reactivated_wins_over_new_and_regular() -> None:
    events = [buy(T - 300), buy(T - 5), buy(T - 4), buy(T - 3)]
    assert seg(profile(*events)).axes.lifecycle == "reactivated"


# --- value --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "tier"),
    [("1000", "high"), ("999.99", "medium"), ("200", "medium"), ("199.99", "low"), ("0", "low")],
)
def test_value_tier_thresholds(amount: str, tier: str) -> None:
    assert seg(profile(buy(T - 40, amount))).axes.value_tier == tier


def test_value_uses_net_spend_of_the_window() -> None:
    assert seg(profile(buy(T - 40, "1200"), refund(T - 30, "300"))).axes.value_tier == "medium"
    assert seg(profile(buy(T - 365, "5000"), buy(T - 40, "10"))).axes.value_tier == "low"


def test_negative_value_when_refunds_exceed_purchases() -> None:
    # Bought outside the window, refunded inside it: net spend in 365d is negative.
    result = seg(profile(buy(T - 400, "300"), refund(T - 20, "300")))
    assert result.axes.value_tier == "negative"
    assert result.segment == "negative_value"
    assert result.treatment.id == "no_promotions"
    assert result.treatment.discount_pct == 0
    assert has_reason(result, "value_tier negative: net_spend -300.00 in 365d < 0")


def test_negative_value_when_known_margin_is_negative() -> None:
    events = [buy(T - 40, "100", margin="10"), refund(T - 30, "50", margin="30")]
    result = seg(profile(*events))
    assert result.axes.value_tier == "negative"
    assert has_reason(result, "margin -20.00 in 365d < 0")
    # Unknown margin (zero) is not negative.
    assert seg(profile(buy(T - 40, "100"), refund(T - 30, "50"))).axes.value_tier == "low"


def test_negative_value_beats_every_other_segment_but_key_account() -> None:
    result = seg(profile(buy(T - 400, "300"), buy(T - 100, "10"), refund(T - 20, "300")))
    assert result.axes.lifecycle == "at_risk"
    assert result.segment == "negative_value"


# --- loyalty ------------------------------------------------------------------------------------


def test_loyalty_classes() -> None:
    six_periods = [buy(T - 30 * i) for i in range(6)]
    medium = seg(profile(*six_periods))  # 6 periods but tenure 150 < 180
    assert medium.axes.loyalty == "medium"
    high = seg(profile(buy(T - 200), *six_periods))
    assert high.axes.loyalty == "high"
    assert has_reason(high, "loyalty high: 7 active 30-day periods in 365d >= 6 and tenure 200")
    assert seg(profile(buy(T - 200), buy(T - 100), buy(T - 40))).axes.loyalty == "medium"
    assert seg(profile(buy(T - 100), buy(T - 40))).axes.loyalty == "low"
    assert seg(profile(buy(T - 40), buy(T - 40))).axes.loyalty == "low"  # repeat, one period
    assert seg(profile(buy(T - 40))).axes.loyalty == "none"
    # Lifetime orders count for "low" even outside the window.
    assert seg(profile(buy(T - 500), buy(T - 40))).axes.loyalty == "low"


def test_loyal_segment_needs_regular_and_loyalty() -> None:
    events = [buy(T - 200), *(buy(T - 30 * i) for i in range(6)), buy(T - 1)]
    result = seg(profile(*events))
    assert result.axes.lifecycle == "regular"
    assert result.axes.loyalty == "high"
    assert result.segment == "loyal"
    assert result.treatment.id == "loyalty_programme"


# --- needs --------------------------------------------------------------------------------------


def test_needs_classes() -> None:
    base = buy(T - 40, "100")
    support = [engage(T - d, support=True) for d in (1, 2, 3)]
    assert seg(profile(base, *support)).axes.needs == "service_sensitive"
    assert seg(profile(base, *support[:2])).axes.needs == "function_seeking"
    half_discounted = [buy(T - 40, "100", discounted=True), buy(T - 41, "100")]
    assert seg(profile(*half_discounted)).axes.needs == "price_sensitive"
    less = [buy(T - 40, "99.99", discounted=True), buy(T - 41, "100")]
    assert seg(profile(*less)).axes.needs == "function_seeking"
    assert seg(profile(buy(T - 40, "100", premium="50"))).axes.needs == "quality_seeking"
    assert seg(profile(buy(T - 40, "100", premium="49.99"))).axes.needs == "function_seeking"
    assert seg(profile(engage(T))).axes.needs == "unknown"
    assert seg(profile(buy(T - 400, "100"))).axes.needs == "unknown"  # no spend in 365d
    assert seg(profile(*support)).axes.needs == "service_sensitive"  # a prospect, too


def test_needs_reasons_and_segments() -> None:
    result = seg(profile(buy(T - 40, "100", discounted=True), buy(T - 41, "100")))
    assert has_reason(
        result, "needs price_sensitive: discounted share 0.50 of spend in 365d >= 0.5"
    )
    assert result.segment == "price_sensitive"
    assert result.treatment.id == "promotions"
    quality = seg(profile(buy(T - 40, "100", premium="80")))
    assert quality.segment == "quality_seeking"
    assert quality.treatment.id == "premium"
    assert quality.treatment.discount_pct == 0


def test_needs_order_is_configurable() -> None:
    both = profile(
        buy(T - 40, "100", discounted=True), *(engage(T - d, support=True) for d in (1, 2, 3))
    )
    assert seg(both).axes.needs == "service_sensitive"
    rules = rules_with(needs__order=["price_sensitive", "service_sensitive"])
    assert seg(both, rules).axes.needs == "price_sensitive"
    # A kind left out of the order is never chosen.
    assert seg(profile(buy(T - 40)), rules).axes.needs == "unknown"


# --- RFM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_ago", "r"), [(0, 5), (14, 5), (15, 4), (30, 4), (31, 3), (60, 3), (61, 2), (120, 2)]
)
def test_r_score_cut_points(days_ago: int, r: int) -> None:
    assert seg(profile(buy(T - 300), buy(T - days_ago))).axes.rfm.r == r


def test_r_score_beyond_the_last_cut_point() -> None:
    assert seg(profile(buy(T - 121))).axes.rfm.r == 1


@pytest.mark.parametrize(
    ("orders", "f"), [(1, 1), (2, 2), (3, 3), (5, 3), (6, 4), (11, 4), (12, 5)]
)
def test_f_score_cut_points(orders: int, f: int) -> None:
    assert seg(profile(*(buy(T - 5 - i) for i in range(orders)))).axes.rfm.f == f


@pytest.mark.parametrize(
    ("net", "m"),
    [("99.99", 1), ("100", 2), ("499.99", 2), ("500", 3), ("1000", 4), ("1999.99", 4), ("2000", 5)],
)
def test_m_score_cut_points(net: str, m: int) -> None:
    assert seg(profile(buy(T - 5, net))).axes.rfm.m == m


def test_m_score_uses_net_spend() -> None:
    assert seg(profile(buy(T - 5, "2100"), refund(T - 2, "200"))).axes.rfm.m == 4


def _orders(count: int, amount: str, last_days_ago: int) -> list[EventDelta]:
    return [buy(T - last_days_ago - i, amount) for i in range(count)]


@pytest.mark.parametrize(
    ("events", "rfm", "name"),
    [
        (_orders(12, "200", 3), (5, 5, 5), "champions"),
        (_orders(6, "50", 40), (3, 4, 2), "loyal"),
        (_orders(2, "50", 3), (5, 2, 2), "potential_loyalist"),
        (_orders(1, "50", 3), (5, 1, 1), "new"),
        (_orders(1, "50", 20), (4, 1, 1), "promising"),
        (_orders(2, "50", 40), (3, 2, 2), "need_attention"),
        (_orders(1, "50", 40), (3, 1, 1), "about_to_sleep"),
        (_orders(6, "200", 100), (2, 4, 4), "cant_lose_them"),
        (_orders(6, "20", 100), (2, 4, 2), "at_risk"),
        (_orders(2, "20", 100), (2, 2, 1), "hibernating"),
        (_orders(1, "20", 200), (1, 1, 1), "lost"),
        (_orders(1, "20", 500), (1, 1, 1), "lost"),
    ],
)
def test_named_rfm_segments(events: list[EventDelta], rfm: tuple[int, int, int], name: str) -> None:
    result = seg(profile(*events))
    assert (result.axes.rfm.r, result.axes.rfm.f, result.axes.rfm.m) == rfm
    assert result.axes.rfm_segment == name
    assert has_reason(result, f"rfm r={rfm[0]} f={rfm[1]} m={rfm[2]} -> {name}")


# --- key account, levels, segment table ----------------------------------------------------------


def test_key_account() -> None:
    twelve = [buy(T - 5 - 20 * i, "100") for i in range(12)]
    result = seg(profile(*twelve))
    assert result.axes.value_tier == "high"
    assert result.axes.key_account is True
    assert result.segment == "key_account"
    assert result.treatment.id == "key_account_care"
    assert result.treatment.support_queue == "priority"
    assert has_reason(result, "key_account: value_tier high and 12 orders in 365d >= 12")
    # High value with 11 orders: not a key account. (Bought in few periods and not often
    # lately, so neither loyal nor regular either.)
    eleven = [*(buy(T - 100, "100") for _ in range(9)), buy(T - 40, "100"), buy(T - 41, "100")]
    not_enough = seg(profile(*eleven))
    assert not_enough.axes.value_tier == "high"
    assert not_enough.axes.key_account is False
    assert not_enough.segment == "high_value"
    assert not_enough.treatment.id == "vip"


def test_key_account_is_configurable() -> None:
    rules = rules_with(key_account__value_tiers=["high", "medium"], key_account__min_orders=2)
    assert seg(profile(buy(T - 5, "150"), buy(T - 6, "150")), rules).axes.key_account is True


def test_levels() -> None:
    result = seg(profile(*(buy(T - 5 - i, "200", margin="50") for i in range(12))))
    assert (result.axes.frequency, result.axes.aov, result.axes.profit) == ("high", "high", "high")
    result = seg(profile(*(buy(T - 5 - i, "50", margin="25") for i in range(4))))
    assert (result.axes.frequency, result.axes.aov, result.axes.profit) == (
        "medium",
        "medium",
        "medium",
    )
    result = seg(profile(buy(T - 5, "49.99", margin="99.99")))
    assert (result.axes.frequency, result.axes.aov, result.axes.profit) == ("low", "low", "low")
    prospect = seg(profile(engage(T)))
    assert (prospect.axes.frequency, prospect.axes.aov, prospect.axes.profit) == ("low",) * 3
    assert has_reason(prospect, "levels in 365d: frequency low (0 orders), aov low (0.00)")


def test_occasional_is_the_catch_all() -> None:
    result = seg(profile(buy(T - 40)))
    assert result.axes.lifecycle == "occasional"
    assert result.segment == "occasional"
    assert result.treatment.id == "standard"
    assert has_reason(result, "segment occasional: first match of rule 'occasional' (13 of 13)")


def test_every_default_segment_maps_to_its_treatment() -> None:
    rules = default_rules()
    cases = {
        "key_account": profile(*(buy(T - 5 - 20 * i, "100") for i in range(12))),
        "negative_value": profile(buy(T - 400, "300"), refund(T - 20, "300")),
        "churned": profile(buy(T - 200)),
        "at_risk": profile(buy(T - 75)),
        "reactivated": profile(buy(T - 250), buy(T - 10)),
        "new_customer": profile(buy(T - 2)),
        "prospect": profile(engage(T - 2)),
        "loyal": profile(buy(T - 200), *(buy(T - 30 * i) for i in range(6)), buy(T - 1)),
        "high_value": profile(buy(T - 40, "1500")),
        "price_sensitive": profile(buy(T - 40, "100", discounted=True)),
        "quality_seeking": profile(buy(T - 40, "100", premium="100")),
        "regular": profile(buy(T - 40), buy(T - 5), buy(T - 5)),
        "occasional": profile(buy(T - 40)),
    }
    assert set(cases) == {s.name for s in rules.segments}
    treatments = {s.name: s.treatment for s in rules.segments}
    for name, p in cases.items():
        result = seg(p)
        assert result.segment == name, (name, result.reasons)
        assert result.treatment.id == treatments[name]
        expected = rules.treatments[treatments[name]]
        assert result.treatment.discount_pct == expected.discount_pct
        assert result.treatment.channel == expected.channel


def test_result_metadata_and_determinism() -> None:
    p = profile(buy(T - 75, "120"), engage(T - 3))
    first, second = seg(p), seg(p)
    assert first == second
    assert first.rules_version == default_rules().version
    assert first.as_of == NOW
    assert len(first.reasons) == len(set(first.reasons)) >= 6


def test_classify_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        classify(profile(buy(T)), default_rules(), now=datetime(2025, 1, 1))


# --- next_review_at ---------------------------------------------------------------------------


def test_next_review_is_the_earliest_threshold_or_window_exit() -> None:
    # Last purchase T-75: the bucket leaves the 90-day window at T+15, before r drops (T+46).
    result = seg(profile(buy(T - 75)))
    assert result.next_review_at == day_start(T + 15)
    # Only the recency thresholds left: r cut 120 -> T+46 after the 90-day exit.
    later = seg(profile(buy(T - 95)))
    assert later.next_review_at == day_start(T - 95 + 121)


def test_next_review_for_a_fresh_customer_is_the_first_r_cut() -> None:
    result = seg(profile(buy(T)))
    assert result.next_review_at == day_start(T + 15)  # recency 15 -> r drops from 5 to 4


def test_next_review_is_none_when_nothing_can_change() -> None:
    assert seg(profile(buy(T - 400))).next_review_at is None
    assert seg(Profile(customer_id="c1")).next_review_at is None
    # A prospect whose only bucket will leave the windows is reviewed then.
    assert seg(profile(engage(T - 10))).next_review_at == day_start(T - 10 + 90)


def test_next_review_at_is_a_utc_midnight_after_now() -> None:
    result = seg(profile(buy(T - 3), buy(T - 100)))
    assert result.next_review_at is not None
    assert result.next_review_at > NOW
    assert result.next_review_at == day_start(utc_day(result.next_review_at))


def _sparse_rules() -> Rules:
    return _rule_sets()[2]


@pytest.mark.parametrize(
    ("rules_index", "events", "review_day", "axis", "before", "after"),
    [
        # at_risk_days 60 reached at last purchase + 60.
        (0, [buy(T - 100), buy(T - 59)], T + 1, "lifecycle", "occasional", "at_risk"),
        # Tenure reaches new_days 45.
        (2, [buy(T - 10)], T + 35, "lifecycle", "new", "occasional"),
        # Tenure reaches the loyalty high_min_tenure_days 60 (4 active weeks already).
        (
            2,
            [buy(T - 50), buy(T - 43), buy(T - 36), buy(T - 29)],
            T + 10,
            "loyalty",
            "medium",
            "high",
        ),
        # The comeback purchase leaves reactivated_days 30.
        (2, [buy(T - 400), buy(T - 20)], T + 10, "lifecycle", "reactivated", "occasional"),
        # The third order leaves the 90-day regular window.
        (0, [buy(T - 85), buy(T - 3), buy(T - 2)], T + 5, "lifecycle", "regular", "occasional"),
    ],
)
def test_next_review_finds_each_kind_of_change(
    rules_index: int,
    events: list[EventDelta],
    review_day: int,
    axis: str,
    before: str,
    after: str,
) -> None:
    rules = _rule_sets()[rules_index]
    p = profile(*events)
    result = seg(p, rules)
    assert getattr(result.axes, axis) == before
    assert result.next_review_at == day_start(review_day)
    just_before = seg(p, rules, now=day_start(review_day) - timedelta(microseconds=1))
    assert just_before.fingerprint() == result.fingerprint()
    assert getattr(seg(p, rules, now=day_start(review_day)).axes, axis) == after


# Random histories: purchases, refunds and engagements over two years around "today",
# including a day in the future (producer clock skew). Days cluster in a few bands so that
# short tenures, comebacks after a churned gap and window edges all occur often.
_offset = st.one_of(
    st.integers(min_value=-730, max_value=1),
    st.integers(min_value=-35, max_value=1),
    st.integers(min_value=-65, max_value=-40),
    st.integers(min_value=-260, max_value=-170),
    st.integers(min_value=-370, max_value=-355),
)
_event = st.tuples(
    st.sampled_from(["purchase", "purchase", "purchase", "refund", "engagement"]),
    _offset,
    st.integers(min_value=0, max_value=3_000 * MONEY_SCALE),
    st.integers(min_value=-50 * MONEY_SCALE, max_value=500 * MONEY_SCALE),
    st.booleans(),
    st.booleans(),
)


def _delta(today: int, raw: tuple[str, int, int, int, bool, bool]) -> EventDelta:
    kind, offset, amount, margin, flag_a, flag_b = raw
    day = today + offset
    if kind == "purchase":
        totals = Totals(
            orders=1,
            spend=amount,
            margin=margin,
            discounted_spend=amount if flag_a else 0,
            premium_spend=amount // 2 if flag_b else 0,
        )
    elif kind == "refund":
        totals = Totals(refunds=1, refunded=amount // 3, margin=-abs(margin) if flag_a else 0)
    else:
        totals = Totals(engagements=1, support_contacts=int(flag_a))
    occurred_ms = day * MS_PER_DAY + 1_000 * (amount % 86_400)
    return EventDelta(cast("EventKind", kind), day, occurred_ms, totals)


@cache
def _rule_sets() -> tuple[Rules, ...]:
    return (
        default_rules(),
        # Different windows per axis, a short reactivation window, dense recency cut points.
        rules_with(
            lifecycle__reactivated_days=20,
            lifecycle__regular_window=30,
            value__window=90,
            needs__window=30,
            loyalty__high_min_tenure_days=0,
            loyalty__period_days=7,
            rfm__r_max_recency_days=[0, 3, 45, 300],
        ),
        # Sparse thresholds, one window: the tenure, loyalty and reactivation reviews are
        # rarely hidden behind an earlier recency or window one.
        rules_with(
            lifecycle__new_days=45,
            lifecycle__at_risk_days=100,
            lifecycle__churned_days=300,
            lifecycle__reactivated_days=30,
            lifecycle__regular_window=365,
            loyalty__high_min_tenure_days=60,
            loyalty__high_min_periods=4,
            loyalty__medium_min_periods=2,
            loyalty__period_days=7,
            rfm__r_max_recency_days=[150, 200, 250, 299],
        ),
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_event, max_size=25),
    today=st.integers(min_value=19_000, max_value=21_000),
    now_ms=st.integers(min_value=0, max_value=MS_PER_DAY - 1),
    trim=st.booleans(),
    rules_index=st.integers(min_value=0, max_value=2),
    fractions=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=4),
)
def test_nothing_changes_before_next_review_at(
    events: list[tuple[str, int, int, int, bool, bool]],
    today: int,
    now_ms: int,
    trim: bool,
    rules_index: int,
    fractions: list[float],
) -> None:
    rules = _rule_sets()[rules_index]
    # The store keeps buckets back to the longest window (trim) or may not have trimmed yet.
    min_day = today - rules.max_window + 1 if trim else -(10**9)
    p = Profile(customer_id="c1")
    for raw in events:
        p = apply_event(p, _delta(today, raw), min_day=min_day)
    now = day_start(today) + timedelta(milliseconds=now_ms)
    result = classify(p, rules, now=now)
    review = result.next_review_at
    if review is None:
        for years in (1, 3, 30):
            later = classify(p, rules, now=now + timedelta(days=365 * years))
            assert later.fingerprint() == result.fingerprint()
        return
    assert review > now
    assert review == day_start(utc_day(review))
    span = review - now
    instants = [now + span * f for f in fractions]
    instants += [review - timedelta(microseconds=1), now + timedelta(microseconds=1)]
    for instant in instants:
        if now < instant < review:
            later = classify(p, rules, now=instant)
            assert later.fingerprint() == result.fingerprint(), (instant, later.reasons)
