"""Building event records for tests, and the straightforward ground truth to compare against."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from service.segmentation.profile import MONEY_SCALE, Profile, Totals

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat()


def purchase(
    customer_id: str,
    event_id: str,
    at: datetime,
    amount: str,
    *,
    margin: str | None = None,
    discount: str | None = None,
    premium: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": "purchase",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": iso(at),
        "order_id": f"o-{event_id}",
        "amount": amount,
    }
    if margin is not None:
        event["margin"] = margin
    if discount is not None:
        event["discount"] = discount
    if premium is not None:
        event["items"] = [
            {
                "sku": "sku-p",
                "category": "general",
                "quantity": 1,
                "unit_price": premium,
                "tier": "premium",
            }
        ]
    return event


def refund(
    customer_id: str, event_id: str, at: datetime, amount: str, *, margin: str | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": "refund",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": iso(at),
        "order_id": f"o-r-{event_id}",
        "amount": amount,
    }
    if margin is not None:
        event["margin"] = margin
    return event


def engagement(
    customer_id: str, event_id: str, at: datetime, action: str = "viewed"
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "type": "engagement",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": iso(at),
        "action": action,
    }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


@dataclass(frozen=True, slots=True)
class Rec:
    """A consumer record as the handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _money(value: str | None) -> int:
    return 0 if value is None else int(Decimal(value) * MONEY_SCALE)


def _ms(at: str) -> int:
    return (datetime.fromisoformat(at) - EPOCH) // timedelta(milliseconds=1)


def ground_truth(events: list[dict[str, Any]], *, min_day: int) -> dict[str, Profile]:
    """Profiles recomputed from the full history, each event counted once by event_id.

    Written independently of the codec, the Lua script and ``apply_event``.
    """
    seen: set[str] = set()
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        by_customer[e["customer_id"]].append(e)
    profiles = {}
    for cid, evs in by_customer.items():
        days: dict[int, list[int]] = defaultdict(lambda: [0] * 9)
        life = [0] * 9
        purchases = [_ms(e["occurred_at"]) for e in evs if e["type"] == "purchase"]
        engaged = [_ms(e["occurred_at"]) for e in evs if e["type"] == "engagement"]
        for e in evs:
            row = [0] * 9
            if e["type"] == "purchase":
                amount = _money(e["amount"])
                premium = sum(
                    _money(i["unit_price"]) * i["quantity"]
                    for i in e.get("items", [])
                    if i.get("tier") == "premium"
                )
                row[0], row[1], row[4] = 1, amount, _money(e.get("margin"))
                row[5] = amount if _money(e.get("discount")) > 0 else 0
                row[6] = min(amount, premium)
            elif e["type"] == "refund":
                row[2], row[3], row[4] = 1, _money(e["amount"]), -_money(e.get("margin"))
            else:
                row[7] = 1
                row[8] = 1 if e["action"] == "support_contact" else 0
            day = _ms(e["occurred_at"]) // 86_400_000
            life = [a + b for a, b in zip(life, row, strict=True)]
            if day >= min_day:
                days[day] = [a + b for a, b in zip(days[day], row, strict=True)]
        profiles[cid] = Profile(
            customer_id=cid,
            first_purchase_ms=min(purchases) if purchases else None,
            last_purchase_ms=max(purchases) if purchases else None,
            last_engagement_ms=max(engaged) if engaged else None,
            lifetime=Totals(*life),
            days={d: Totals(*t) for d, t in days.items()},
        )
    return profiles
