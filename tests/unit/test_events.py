"""schemas.events and schemas.changes: the wire models on their own (the codec adds the
settings-dependent bounds and the reason codes; see test_codec.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.changes import SegmentationOut, SegmentChange, Trigger
from schemas.events import (
    EVENT_ADAPTER,
    EngagementEvent,
    LineItem,
    PurchaseEvent,
    RefundEvent,
)
from service.segmentation.types import Axes, Rfm, Segmentation, Treatment

EXAMPLE = (
    b'{"schema_version":1,"type":"purchase","event_id":"e-1","customer_id":"c-000123",'
    b'"occurred_at":"2026-11-20T10:15:00+01:00","order_id":"o-1","amount":"59.90",'
    b'"currency":"EUR","margin":"12.00","discount":"5.00","channel":"web","items":[{"sku":'
    b'"sku-1","category":"shoes","quantity":1,"unit_price":"59.90","tier":"premium"}]}'
)


def errors_of(document: dict[str, Any]) -> list[tuple[str, tuple[int | str, ...]]]:
    with pytest.raises(ValidationError) as caught:
        EVENT_ADAPTER.validate_json(orjson.dumps(document))
    return [(e["type"], e["loc"]) for e in caught.value.errors()]


def engagement(**changes: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "type": "engagement",
        "event_id": "e-3",
        "customer_id": "c-1",
        "occurred_at": "2026-11-20T08:00:00Z",
        "action": "viewed",
        **changes,
    }


def test_design_example_parses_exactly() -> None:
    event = EVENT_ADAPTER.validate_json(EXAMPLE)
    assert event == PurchaseEvent(
        schema_version=1,
        type="purchase",
        event_id="e-1",
        customer_id="c-000123",
        occurred_at=datetime(2026, 11, 20, 10, 15, tzinfo=timezone(timedelta(hours=1))),
        order_id="o-1",
        amount=Decimal("59.90"),
        currency="EUR",
        margin=Decimal("12.00"),
        discount=Decimal("5.00"),
        channel="web",
        items=(
            LineItem(
                sku="sku-1",
                category="shoes",
                quantity=1,
                unit_price=Decimal("59.90"),
                tier="premium",
            ),
        ),
    )


def test_defaults() -> None:
    event = EVENT_ADAPTER.validate_json(
        b'{"schema_version":1,"type":"purchase","event_id":"e","customer_id":"c",'
        b'"occurred_at":"2026-11-20T10:15:00Z","order_id":"o","amount":1,'
        b'"items":[{"sku":"s","category":"c","quantity":2,"unit_price":0.5}]}'
    )
    assert isinstance(event, PurchaseEvent)
    assert (event.currency, event.margin, event.discount, event.channel, event.region) == (
        None,
        None,
        Decimal(0),
        None,
        None,
    )
    assert event.items[0].tier == "standard"


def test_discriminated_on_type() -> None:
    assert isinstance(EVENT_ADAPTER.validate_json(orjson.dumps(engagement())), EngagementEvent)
    refund = engagement(type="refund", order_id="o-1", amount="1.5")
    del refund["action"]
    assert isinstance(EVENT_ADAPTER.validate_json(orjson.dumps(refund)), RefundEvent)
    assert errors_of(engagement(type="gift"))[0][0] == "union_tag_invalid"


def test_round_trip_through_json() -> None:
    event = EVENT_ADAPTER.validate_json(EXAMPLE)
    assert EVENT_ADAPTER.validate_json(event.model_dump_json()) == event


def test_frozen() -> None:
    event = EVENT_ADAPTER.validate_json(EXAMPLE)
    with pytest.raises(ValidationError, match="frozen"):
        event.customer_id = "someone-else"


@pytest.mark.parametrize(
    "customer_id",
    ["c", "c-000123", "A.b_c:d@e-f", "0" * 128, "user@example.com", "tenant:42:c.7"],
)
def test_good_ids(customer_id: str) -> None:
    assert EVENT_ADAPTER.validate_json(orjson.dumps(engagement(customer_id=customer_id)))


@pytest.mark.parametrize(
    "customer_id",
    ["", "0" * 129, "{s0001}", "c*", "c 1", "c/1", "c\\1", "c\n", "c\t1", "ü", "c#1", "c,1"],
)
def test_bad_ids(customer_id: str) -> None:
    ((kind, loc),) = errors_of(engagement(customer_id=customer_id))
    assert loc == ("engagement", "customer_id")
    assert kind.startswith("string_")


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"occurred_at": "2026-11-20T10:15:00"}, "timezone_aware"),
        ({"occurred_at": 1_795_166_100}, "datetime_type"),  # strict: no epoch numbers
        ({"schema_version": 2}, "literal_error"),
        ({"action": "clicked"}, "literal_error"),
        ({"extra": 1}, "extra_forbidden"),
        ({"region": ""}, "string_too_short"),
        ({"region": "r" * 65}, "string_too_long"),
        ({"event_id": 5}, "string_type"),
    ],
)
def test_engagement_rejections(changes: dict[str, Any], kind: str) -> None:
    assert errors_of(engagement(**changes))[0][0] == kind


def test_money_signs_and_finiteness_are_checked_by_the_model() -> None:
    purchase = orjson.loads(EXAMPLE)
    assert errors_of({**purchase, "amount": "-1"})[0][0] == "greater_than_equal"
    assert errors_of({**purchase, "amount": "NaN"})[0][0] == "finite_number"
    assert (
        errors_of({**purchase, "items": [{**purchase["items"][0], "quantity": "2"}]})[0][0]
        == "int_type"
    )  # strict: no numeric strings for integers
    # a loss is a legal margin on a purchase, not on a refund
    assert EVENT_ADAPTER.validate_json(orjson.dumps({**purchase, "margin": "-3.5"}))


# --- outgoing: segment changes --------------------------------------------------------------

AS_OF = datetime(2026, 11, 21, 12, tzinfo=UTC)


def segmentation(segment: str = "champions", **changes: Any) -> Segmentation:
    fields: dict[str, Any] = {
        "segment": segment,
        "axes": Axes(
            lifecycle="regular",
            value_tier="high",
            loyalty="high",
            needs="quality_seeking",
            rfm=Rfm(r=5, f=4, m=5),
            rfm_segment="champions",
            key_account=True,
            frequency="high",
            aov="medium",
            profit="high",
        ),
        "treatment": Treatment(id="vip", discount_pct=10, free_shipping=True, campaign="gold"),
        "reasons": ("recency 3d <= 30", "spend 1200.00 >= 1000.00"),
        "rules_version": "r-abc123",
        "as_of": AS_OF,
        "next_review_at": AS_OF + timedelta(days=1, hours=12),
        **changes,
    }
    return Segmentation(**fields)


def test_segmentation_out_from_domain() -> None:
    out = SegmentationOut.from_domain(segmentation())
    assert out.model_dump(mode="json") == {
        "segment": "champions",
        "axes": {
            "lifecycle": "regular",
            "value_tier": "high",
            "loyalty": "high",
            "needs": "quality_seeking",
            "rfm": {"r": 5, "f": 4, "m": 5},
            "rfm_segment": "champions",
            "key_account": True,
            "frequency": "high",
            "aov": "medium",
            "profit": "high",
        },
        "treatment": {
            "id": "vip",
            "discount_pct": 10,
            "free_shipping": True,
            "support_queue": "standard",
            "campaign": "gold",
            "channel": "email",
            "offer": None,
        },
        "reasons": ["recency 3d <= 30", "spend 1200.00 >= 1000.00"],
        "rules_version": "r-abc123",
        "as_of": "2026-11-21T12:00:00Z",
        "next_review_at": "2026-11-23T00:00:00Z",
    }


def test_segmentation_out_never_reviewed() -> None:
    out = SegmentationOut.from_domain(segmentation(next_review_at=None))
    assert out.next_review_at is None


def test_segment_change_shape_and_round_trip() -> None:
    change = SegmentChange(
        change_id="0123abcd",
        customer_id="c-1",
        cause="event",
        as_of=AS_OF,
        rules_version="r-abc123",
        previous=SegmentationOut.from_domain(segmentation("loyal")),
        current=SegmentationOut.from_domain(segmentation()),
        trigger=Trigger(event_id="e-1", topic="customer.events", partition=3, offset=42),
    )
    wire = orjson.loads(change.model_dump_json())
    assert list(wire) == [
        "schema_version",
        "change_id",
        "customer_id",
        "cause",
        "as_of",
        "rules_version",
        "previous",
        "current",
        "trigger",
    ]
    assert wire["schema_version"] == 1
    assert wire["previous"]["segment"] == "loyal"
    assert wire["trigger"] == {
        "event_id": "e-1",
        "topic": "customer.events",
        "partition": 3,
        "offset": 42,
        "review_at": None,
        "rules_version": None,
    }
    assert SegmentChange.model_validate_json(change.model_dump_json()) == change


def test_first_segmentation_has_no_previous_and_time_trigger() -> None:
    change = SegmentChange(
        change_id="x",
        customer_id="c-1",
        cause="time",
        as_of=AS_OF,
        rules_version="r",
        previous=None,
        current=SegmentationOut.from_domain(segmentation()),
        trigger=Trigger(review_at=AS_OF),
    )
    assert orjson.loads(change.model_dump_json())["previous"] is None


def test_trigger_event_fields_come_together() -> None:
    with pytest.raises(ValidationError, match="together"):
        Trigger(event_id="e-1", topic="customer.events")


def test_trigger_identity_is_stable_and_distinct() -> None:
    event = Trigger(event_id="e-1", topic="customer.events", partition=3, offset=42)
    assert event.identity() == Trigger.model_validate_json(event.model_dump_json()).identity()
    review = Trigger(review_at=datetime(2026, 11, 22, 1, tzinfo=timezone(timedelta(hours=1))))
    assert review.identity() == Trigger(review_at=datetime(2026, 11, 22, tzinfo=UTC)).identity()
    identities = {
        event.identity(),
        Trigger(event_id="e-1", topic="customer.events", partition=3, offset=43).identity(),
        review.identity(),
        Trigger(rules_version="r-2").identity(),
    }
    assert len(identities) == 4


def test_naive_times_are_refused_on_the_way_out() -> None:
    with pytest.raises(ValidationError):
        SegmentationOut.from_domain(segmentation(as_of=datetime(2026, 11, 21)))
