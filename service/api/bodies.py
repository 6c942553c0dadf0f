"""Response bodies built from the pure core's values (plain dicts, serialised by orjson).

Their shapes are :mod:`schemas.api`'s models (DESIGN.md "Windows and response shapes"); the
tests validate what these functions build against the models.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from consumers.segmenter import segmentation_json, treatment_json, treatment_of
from service.segmentation.classifier import classify
from service.segmentation.profile import MONEY_SCALE, Profile, Totals
from service.segmentation.rules import Rules
from service.segmentation.windows import recency_days, tenure_days, utc_day, window_totals
from service.store.packing import from_epoch_ms

_CENT = Decimal("0.01")
_SCALE = Decimal(MONEY_SCALE)


def iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def money(units: int) -> str:
    """Money units (1/10,000) as a string with exactly two decimals, rounded half to even."""
    return _cents(Decimal(units) / _SCALE)


def _cents(amount: Decimal) -> str:
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_EVEN)
    return "0.00" if cents.is_zero() else str(cents)  # never "-0.00"


def default_treatment_id(rules: Rules) -> str:
    """The treatment for a customer nothing is known about: the catch-all segment's (the last
    segment of the rules, which matches everyone)."""
    return rules.segments[-1].treatment


def segment_body(profile: Profile, rules: Rules, now: datetime) -> dict[str, Any]:
    """A known customer classified at ``now``: always fresh, never the stored segmentation."""
    seg = classify(profile, rules, now=now)
    body: dict[str, Any] = {"customer_id": profile.customer_id, "known": True}
    body.update(segmentation_json(seg))
    return body


def unknown_body(
    customer_id: str, rules: Rules, now: datetime, *, with_default: bool
) -> dict[str, Any]:
    """A customer without any applied event; with the default treatment if asked for."""
    treatment: dict[str, Any] | None = None
    reasons: list[str] = []
    if with_default:
        tid = default_treatment_id(rules)
        t = treatment_of(rules, tid)
        treatment = treatment_json(t)
        reasons = [
            f"unknown customer: default treatment {tid} of catch-all segment "
            f"{rules.segments[-1].name}"
        ]
    return {
        "customer_id": customer_id,
        "known": False,
        "segment": None,
        "axes": None,
        "treatment": treatment,
        "reasons": reasons,
        "rules_version": rules.version,
        "as_of": iso(now),
        "next_review_at": None,
    }


def _totals(t: Totals) -> dict[str, Any]:
    return {
        "orders": t.orders,
        "spend": money(t.spend),
        "refunds": t.refunds,
        "refunded": money(t.refunded),
        "net_spend": money(t.spend - t.refunded),
        "margin": money(t.margin),
        # spend / orders in units, rounded once, at the end
        "aov": money_ratio(t.spend, t.orders) if t.orders else None,
    }


def money_ratio(units: int, count: int) -> str:
    """``units / count`` as money, rounded once (half to even)."""
    return _cents(Decimal(units) / (_SCALE * count))


def _at(ms: int | None) -> str | None:
    return None if ms is None else iso(from_epoch_ms(ms))


def profile_body(profile: Profile, rules: Rules, now: datetime) -> dict[str, Any]:
    today = utc_day(now)
    return {
        "customer_id": profile.customer_id,
        "as_of": iso(now),
        "first_purchase_at": _at(profile.first_purchase_ms),
        "last_purchase_at": _at(profile.last_purchase_ms),
        "last_engagement_at": _at(profile.last_engagement_ms),
        "recency_days": recency_days(profile, today),
        "tenure_days": tenure_days(profile, today),
        "lifetime": _totals(profile.lifetime),
        "windows": {
            f"{days}d": _totals(window_totals(profile, days, today)) for days in rules.windows
        },
    }
