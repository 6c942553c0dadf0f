"""consumers.codec: every dead-letter reason with a real bad record, exact deltas, currency
conversion, headers, and fuzzing (decode never raises)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.codec import (
    DeadLetter,
    DecodedEvent,
    EventCodec,
    Reason,
    _Rejected,
    dead_letter_headers,
)
from service.segmentation.profile import MONEY_SCALE, EventDelta, Totals
from service.settings import ValidationSettings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CUSTOMER = "c-000123"
KEY = CUSTOMER.encode()


def make_codec(**overrides: Any) -> EventCodec:
    return EventCodec(ValidationSettings(**overrides))


CODEC = make_codec(currency_rates={"USD": Decimal("0.92")})


def purchase(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": "purchase",
        "event_id": "e-1",
        "customer_id": CUSTOMER,
        "occurred_at": "2026-11-20T10:15:00+01:00",
        "order_id": "o-1",
        "amount": "59.90",
        "currency": "EUR",
        "margin": "12.00",
        "discount": "5.00",
        "channel": "web",
        "items": [
            {
                "sku": "sku-1",
                "category": "shoes",
                "quantity": 1,
                "unit_price": "59.90",
                "tier": "premium",
            }
        ],
    }
    event.update(changes)
    return event


def refund(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": "refund",
        "event_id": "e-2",
        "customer_id": CUSTOMER,
        "occurred_at": "2026-11-20T18:00:00Z",
        "order_id": "o-1",
        "amount": "20.00",
        "margin": "4.00",
    }
    event.update(changes)
    return event


def engagement(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": "engagement",
        "event_id": "e-3",
        "customer_id": CUSTOMER,
        "occurred_at": "2026-11-20T08:00:00Z",
        "action": "viewed",
    }
    event.update(changes)
    return event


def without(event: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != field}


def item(**changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"sku": "s", "category": "c", "quantity": 1, "unit_price": "1"}
    line.update(changes)
    return line


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def raw(text: str) -> bytes:
    """A record typed by hand, for what a JSON encoder would not write."""
    return text.encode()


def ms(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def epoch_day(day: date) -> int:
    return day.toordinal() - date(1970, 1, 1).toordinal()


def decoded(value: bytes, *, codec: EventCodec = CODEC, key: bytes | None = KEY) -> DecodedEvent:
    result = codec.decode(key, value, now=NOW)
    assert isinstance(result, DecodedEvent), result
    return result


def dead(value: bytes | None, *, codec: EventCodec = CODEC, key: bytes | None = KEY) -> DeadLetter:
    result = codec.decode(key, value, now=NOW)
    assert isinstance(result, DeadLetter), result
    return result


# --- every reason, from a real bad record -----------------------------------------------------

NEAR_MAX = make_codec(max_record_bytes=256)
FEW_ITEMS = make_codec(max_items=2)
BAD_RECORDS: list[tuple[str, Reason, bytes | None, str]] = [
    # (case, expected reason, record value, a word the detail must name)
    ("too large, unparsed", Reason.RECORD_TOO_LARGE, b"{" + b" " * 70_000, "70001 bytes"),
    (
        "invalid utf-8 in a string",
        Reason.INVALID_UTF8,
        encode(purchase(channel="w\x00")).replace(b"w\\u0000", b"w\xff"),
        "byte",
    ),
    ("utf-16", Reason.INVALID_UTF8, json.dumps(purchase()).encode("utf-16"), "byte"),
    ("truncated", Reason.INVALID_JSON, encode(purchase())[:-3], "EOF"),
    ("empty value", Reason.INVALID_JSON, b"", "record"),
    ("tombstone", Reason.INVALID_JSON, None, "tombstone"),
    ("NaN literal", Reason.INVALID_JSON, raw('{"schema_version":1,"amount":NaN}'), "NaN"),
    (
        "Infinity literal",
        Reason.INVALID_JSON,
        encode(purchase(amount=0)).replace(b'"amount":0', b'"amount":Infinity'),
        "NaN and Infinity",
    ),
    ("trailing garbage", Reason.INVALID_JSON, encode(purchase()) + b"x", "record"),
    ("no amount", Reason.MISSING_FIELD, encode(without(purchase(), "amount")), "amount"),
    ("no type", Reason.MISSING_FIELD, encode(without(purchase(), "type")), "type"),
    (
        "no schema_version",
        Reason.MISSING_FIELD,
        encode(without(purchase(), "schema_version")),
        "schema_version",
    ),
    (
        "no item quantity",
        Reason.MISSING_FIELD,
        encode(purchase(items=[without(item(), "quantity")])),
        "items[0].quantity",
    ),
    ("no action", Reason.MISSING_FIELD, encode(without(engagement(), "action")), "action"),
    ("array record", Reason.WRONG_TYPE, b"[1, 2]", "JSON object"),
    ("string record", Reason.WRONG_TYPE, b'"purchase"', "JSON object"),
    ("amount is a boolean", Reason.WRONG_TYPE, encode(purchase(amount=True)), "amount"),
    ("amount is not a number", Reason.WRONG_TYPE, encode(purchase(amount="59,90")), "amount"),
    (
        "quantity is a string",
        Reason.WRONG_TYPE,
        encode(purchase(items=[item(quantity="1")])),
        "items[0].quantity",
    ),
    (
        "quantity is a float",
        Reason.WRONG_TYPE,
        encode(purchase(items=[item(quantity=1.5)])),
        "items[0].quantity",
    ),
    ("event_id is a number", Reason.WRONG_TYPE, encode(purchase(event_id=17)), "event_id"),
    ("items is an object", Reason.WRONG_TYPE, encode(purchase(items={"sku": "s"})), "items"),
    (
        "occurred_at is a number",
        Reason.WRONG_TYPE,
        encode(purchase(occurred_at=1_795_166_100)),
        "occurred_at",
    ),
    (
        "schema_version is a string",
        Reason.WRONG_TYPE,
        encode(purchase(schema_version="1")),
        "schema_version",
    ),
    (
        "unknown type",
        Reason.UNKNOWN_EVENT_TYPE,
        encode(purchase(type="subscription")),
        "subscription",
    ),
    ("type is a number", Reason.UNKNOWN_EVENT_TYPE, encode(purchase(type=1)), "type"),
    ("version 2", Reason.UNSUPPORTED_SCHEMA_VERSION, encode(purchase(schema_version=2)), "2"),
    (
        "version 2, new type",
        Reason.UNSUPPORTED_SCHEMA_VERSION,
        encode(purchase(schema_version=2, type="gift", extra=1)),
        "schema_version",
    ),
    (
        "version 0",
        Reason.UNSUPPORTED_SCHEMA_VERSION,
        encode(refund(schema_version=0)),
        "schema_version",
    ),
    ("negative amount", Reason.NEGATIVE_AMOUNT, encode(purchase(amount="-0.01")), "amount"),
    ("negative amount, number", Reason.NEGATIVE_AMOUNT, encode(purchase(amount=-5)), "amount"),
    ("negative discount", Reason.NEGATIVE_AMOUNT, encode(purchase(discount="-1")), "discount"),
    (
        "negative unit price",
        Reason.NEGATIVE_AMOUNT,
        encode(purchase(items=[item(unit_price=-1.5)])),
        "items[0].unit_price",
    ),
    ("negative refund", Reason.NEGATIVE_AMOUNT, encode(refund(amount="-20")), "amount"),
    ("negative refunded margin", Reason.NEGATIVE_AMOUNT, encode(refund(margin="-4")), "margin"),
    ("NaN string", Reason.NON_FINITE_AMOUNT, encode(purchase(amount="NaN")), "amount"),
    ("Infinity string", Reason.NON_FINITE_AMOUNT, encode(purchase(amount="Infinity")), "amount"),
    ("-Infinity margin", Reason.NON_FINITE_AMOUNT, encode(purchase(margin="-Infinity")), "margin"),
    ("sNaN refund", Reason.NON_FINITE_AMOUNT, encode(refund(amount="sNaN")), "amount"),
    ("5 places", Reason.TOO_MANY_DECIMALS, encode(purchase(amount="59.90001")), "amount"),
    ("5 places, number", Reason.TOO_MANY_DECIMALS, encode(purchase(amount=0.00001)), "amount"),
    ("tiny exponent", Reason.TOO_MANY_DECIMALS, encode(purchase(amount="1E-999999999")), "amount"),
    (
        "30 significant digits",
        Reason.TOO_MANY_DECIMALS,
        encode(purchase(amount="1.00000000000000000000000000001")),
        "amount",
    ),
    (
        "200 significant digits",
        Reason.TOO_MANY_DECIMALS,
        encode(purchase(amount="1." + "0" * 198 + "1")),
        "amount",
    ),
    (
        "5 places unit price",
        Reason.TOO_MANY_DECIMALS,
        encode(purchase(items=[item(), item(unit_price="0.12345")])),
        "items[1].unit_price",
    ),
    (
        "5 places refunded margin",
        Reason.TOO_MANY_DECIMALS,
        encode(refund(margin="0.00001")),
        "margin",
    ),
    ("above max", Reason.AMOUNT_TOO_LARGE, encode(purchase(amount="1000000.0001")), "max_amount"),
    ("huge exponent", Reason.AMOUNT_TOO_LARGE, encode(purchase(amount="1E+999999999")), "amount"),
    (
        "number beyond a double",
        Reason.AMOUNT_TOO_LARGE,
        encode(purchase(amount=0)).replace(b'"amount":0', b'"amount":1e400'),
        "amount",
    ),
    ("loss beyond max", Reason.AMOUNT_TOO_LARGE, encode(purchase(margin="-1000000.01")), "margin"),
    (
        "unit price above max",
        Reason.AMOUNT_TOO_LARGE,
        encode(purchase(items=[item(unit_price="2000000")])),
        "items[0].unit_price",
    ),
    ("refund above max", Reason.AMOUNT_TOO_LARGE, encode(refund(amount="99999999")), "amount"),
    (
        "braces in customer_id",
        Reason.INVALID_ID,
        encode(purchase(customer_id="c{s0001}")),
        "customer_id",
    ),
    ("space in customer_id", Reason.INVALID_ID, encode(purchase(customer_id="c 1")), "customer_id"),
    ("slash in event_id", Reason.INVALID_ID, encode(purchase(event_id="e/1")), "event_id"),
    ("star in order_id", Reason.INVALID_ID, encode(refund(order_id="o*")), "order_id"),
    ("empty event_id", Reason.INVALID_ID, encode(engagement(event_id="")), "event_id"),
    (
        "129-char customer_id",
        Reason.INVALID_ID,
        encode(purchase(customer_id="c" * 129)),
        "customer_id",
    ),
    ("non-ascii customer_id", Reason.INVALID_ID, encode(purchase(customer_id="cé")), "customer_id"),
    (
        "naive timestamp",
        Reason.TIMESTAMP_WITHOUT_OFFSET,
        encode(purchase(occurred_at="2026-11-20T10:15:00")),
        "occurred_at",
    ),
    (
        "not a timestamp",
        Reason.INVALID_TIMESTAMP,
        encode(purchase(occurred_at="yesterday")),
        "occurred_at",
    ),
    (
        "month 13",
        Reason.INVALID_TIMESTAMP,
        encode(refund(occurred_at="2026-13-01T00:00:00Z")),
        "occurred_at",
    ),
    (
        "offset +25:00",
        Reason.INVALID_TIMESTAMP,
        encode(engagement(occurred_at="2026-11-20T10:15:00+25:00")),
        "occurred_at",
    ),
    (
        "date only",
        Reason.INVALID_TIMESTAMP,
        encode(engagement(occurred_at="2026-11-20")),
        "occurred_at",
    ),
    (
        "301 s ahead",
        Reason.TIMESTAMP_IN_FUTURE,
        encode(purchase(occurred_at="2026-11-21T12:05:01Z")),
        "occurred_at",
    ),
    (
        "a year ahead",
        Reason.TIMESTAMP_IN_FUTURE,
        encode(engagement(occurred_at="2027-11-21T13:00:00+01:00")),
        "occurred_at",
    ),
    ("unknown currency", Reason.UNKNOWN_CURRENCY, encode(purchase(currency="JPY")), "JPY"),
    ("unknown refund currency", Reason.UNKNOWN_CURRENCY, encode(refund(currency="GBP")), "GBP"),
    ("unknown field", Reason.INVALID_FIELD, encode(purchase(coupon="X")), "coupon"),
    (
        "unknown item field",
        Reason.INVALID_FIELD,
        encode(purchase(items=[item(colour="red")])),
        "items[0].colour",
    ),
    ("region on a refund", Reason.INVALID_FIELD, encode(refund(region="eu")), "region"),
    ("unknown action", Reason.INVALID_FIELD, encode(engagement(action="clicked_ad")), "action"),
    (
        "unknown tier",
        Reason.INVALID_FIELD,
        encode(purchase(items=[item(tier="luxury")])),
        "items[0].tier",
    ),
    (
        "quantity 0",
        Reason.INVALID_FIELD,
        encode(purchase(items=[item(quantity=0)])),
        "items[0].quantity",
    ),
    (
        "quantity 10001",
        Reason.INVALID_FIELD,
        encode(purchase(items=[item(quantity=10_001)])),
        "items[0].quantity",
    ),
    ("zero refund", Reason.INVALID_FIELD, encode(refund(amount="0")), "amount"),
    ("lower-case currency", Reason.INVALID_FIELD, encode(purchase(currency="usd")), "currency"),
    ("empty channel", Reason.INVALID_FIELD, encode(purchase(channel="")), "channel"),
    (
        "control char in category",
        Reason.INVALID_FIELD,
        encode(purchase(items=[item(category="a\nb")])),
        "items[0].category",
    ),
]


@pytest.mark.parametrize(
    ("reason", "value", "named"),
    [pytest.param(reason, value, named, id=case) for case, reason, value, named in BAD_RECORDS],
)
def test_bad_record_is_dead_lettered_with_its_reason(
    reason: Reason, value: bytes | None, named: str
) -> None:
    letter = dead(value)
    assert letter.reason == reason
    assert named in letter.detail
    assert 0 < len(letter.detail) <= 300


def test_every_reason_has_a_bad_record() -> None:
    covered = {reason for _, reason, _, _ in BAD_RECORDS}
    # the other two need another codec or key: test_too_many_items, test_key_must_be_...
    assert covered | {Reason.TOO_MANY_ITEMS, Reason.KEY_MISMATCH} == set(Reason)


def test_record_too_large_is_checked_before_parsing() -> None:
    big_but_valid = encode(purchase(channel="w" * 64, region="r" * 64))
    assert len(big_but_valid) > 256
    assert dead(big_but_valid, codec=NEAR_MAX).reason == Reason.RECORD_TOO_LARGE
    assert isinstance(make_codec().decode(KEY, big_but_valid, now=NOW), DecodedEvent)


def test_too_many_items() -> None:
    three = encode(purchase(items=[item(), item(), item()]))
    letter = dead(three, codec=FEW_ITEMS)
    assert letter.reason == Reason.TOO_MANY_ITEMS
    assert "max_items 2" in letter.detail
    decoded(encode(purchase(items=[item(), item()])), codec=FEW_ITEMS)


@pytest.mark.parametrize("key", [b"c-000124", b"", b"C-000123", b"c-000123 ", None])
def test_key_must_be_the_customer_id(key: bytes | None) -> None:
    letter = dead(encode(purchase()), key=key)
    assert letter.reason == Reason.KEY_MISMATCH
    assert "key" in letter.detail


def test_reason_precedence() -> None:
    # the version decides how to read the rest; an unknown type beats a bad field
    assert (
        dead(encode(purchase(schema_version=3, amount="-1"))).reason
        == Reason.UNSUPPORTED_SCHEMA_VERSION
    )
    assert dead(encode(purchase(type="gift", amount="-1"))).reason == Reason.UNKNOWN_EVENT_TYPE
    # a record that fails validation is not blamed on its key
    assert dead(encode(purchase(amount="-1")), key=b"other").reason == Reason.NEGATIVE_AMOUNT


def test_future_skew_boundary() -> None:
    at_limit = NOW + timedelta(seconds=300)
    decoded(encode(purchase(occurred_at=at_limit.isoformat())))
    just_past = at_limit + timedelta(milliseconds=1)
    assert (
        dead(encode(purchase(occurred_at=just_past.isoformat()))).reason
        == Reason.TIMESTAMP_IN_FUTURE
    )
    strict = make_codec(max_future_skew_s=0)
    assert dead(
        encode(engagement(occurred_at="2026-11-21T12:00:00.001Z")), codec=strict
    ).reason == (Reason.TIMESTAMP_IN_FUTURE)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_codec().decode(KEY, encode(engagement()), now=datetime(2026, 11, 21))


# --- valid records → exact deltas ------------------------------------------------------------


def test_purchase_delta() -> None:
    result = decoded(encode(purchase()))
    assert (result.customer_id, result.event_id) == (CUSTOMER, purchase()["event_id"])
    occurred = datetime(2026, 11, 20, 9, 15, tzinfo=UTC)  # 10:15+01:00
    assert result.delta == EventDelta(
        kind="purchase",
        day=epoch_day(date(2026, 11, 20)),
        occurred_ms=ms(occurred),
        totals=Totals(
            orders=1,
            spend=599_000,
            margin=120_000,
            discounted_spend=599_000,
            premium_spend=599_000,
        ),
    )
    assert result.event_hash == hashlib.blake2b(b"e-1", digest_size=8).digest()
    assert len(result.event_hash) == 8


def test_minimal_purchase_delta() -> None:
    minimal = without(
        without(without(without(purchase(), "margin"), "discount"), "items"), "channel"
    )
    result = decoded(encode(without(minimal, "currency")))
    assert result.delta.totals == Totals(orders=1, spend=599_000)


def test_premium_spend_sums_premium_lines_and_is_capped_by_the_amount() -> None:
    lines = [
        item(unit_price="10.00", quantity=2, tier="premium"),
        item(unit_price="5.5", quantity=3, tier="premium"),
        item(unit_price="100", quantity=1, tier="standard"),
        item(unit_price="1", quantity=1),  # tier defaults to standard
        item(unit_price="7", quantity=1, tier="budget"),
    ]
    result = decoded(encode(purchase(amount="150.00", items=lines, discount="0")))
    assert result.delta.totals == Totals(
        orders=1,
        spend=1_500_000,
        margin=120_000,
        premium_spend=365_000,  # 20 + 16.5
    )
    capped = decoded(encode(purchase(amount="30", items=lines)))
    assert capped.delta.totals.premium_spend == capped.delta.totals.spend == 300_000


def test_negative_margin_and_zero_discount() -> None:
    result = decoded(encode(purchase(margin="-3.2500", discount=0, items=[])))
    assert result.delta.totals == Totals(orders=1, spend=599_000, margin=-32_500)


def test_amounts_as_json_numbers() -> None:
    result = decoded(encode(purchase(amount=59.9, margin=12, discount=0.5, items=[])))
    assert result.delta.totals == Totals(
        orders=1, spend=599_000, margin=120_000, discounted_spend=599_000
    )


def test_trailing_zeros_are_not_decimal_places() -> None:
    result = decoded(encode(purchase(amount="59.900000", items=[])))
    assert result.delta.totals.spend == 599_000


def test_max_amount_is_accepted() -> None:
    result = decoded(encode(purchase(amount="1000000", margin="-1000000", items=[])))
    assert result.delta.totals.spend == 1_000_000 * MONEY_SCALE
    assert result.delta.totals.margin == -1_000_000 * MONEY_SCALE


def test_refund_delta() -> None:
    result = decoded(encode(refund()))
    assert result.delta == EventDelta(
        kind="refund",
        day=epoch_day(date(2026, 11, 20)),
        occurred_ms=ms(datetime(2026, 11, 20, 18, tzinfo=UTC)),
        totals=Totals(refunds=1, refunded=200_000, margin=-40_000),
    )
    assert decoded(encode(without(refund(), "margin"))).delta.totals == Totals(
        refunds=1, refunded=200_000
    )


@pytest.mark.parametrize(
    ("action", "totals"),
    [
        ("viewed", Totals(engagements=1)),
        ("added_to_cart", Totals(engagements=1)),
        ("wishlisted", Totals(engagements=1)),
        ("signed_up", Totals(engagements=1)),
        ("email_opened", Totals(engagements=1)),
        ("email_clicked", Totals(engagements=1)),
        ("support_contact", Totals(engagements=1, support_contacts=1)),
    ],
)
def test_engagement_delta(action: str, totals: Totals) -> None:
    result = decoded(encode(engagement(action=action, region="eu-west")))
    assert result.delta == EventDelta(
        kind="engagement",
        day=epoch_day(date(2026, 11, 20)),
        occurred_ms=ms(datetime(2026, 11, 20, 8, tzinfo=UTC)),
        totals=totals,
    )


@pytest.mark.parametrize(
    ("occurred_at", "utc"),
    [
        ("2026-11-21T00:30:00+01:00", datetime(2026, 11, 20, 23, 30, tzinfo=UTC)),
        ("2026-11-20T23:30:00-05:00", datetime(2026, 11, 21, 4, 30, tzinfo=UTC)),
        ("2026-11-20T10:15:00.123999Z", datetime(2026, 11, 20, 10, 15, 0, 123_000, tzinfo=UTC)),
        ("1969-12-31T23:59:59.999Z", datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
    ],
)
def test_day_and_ms_are_utc(occurred_at: str, utc: datetime) -> None:
    delta = decoded(encode(engagement(occurred_at=occurred_at))).delta
    assert delta.occurred_ms == ms(utc)  # floored to the millisecond
    assert delta.day == epoch_day(utc.date())


def test_epoch_day_before_1970_floors() -> None:
    delta = decoded(encode(engagement(occurred_at="1969-12-31T23:59:59.999Z"))).delta
    assert (delta.occurred_ms, delta.day) == (-1, -1)


# --- currency -------------------------------------------------------------------------------


def test_currency_converted_with_its_rate() -> None:
    result = decoded(encode(purchase(currency="USD")))
    # 59.90 * 0.92 = 55.108; 12.00 * 0.92 = 11.04
    assert result.delta.totals == Totals(
        orders=1, spend=551_080, margin=110_400, discounted_spend=551_080, premium_spend=551_080
    )


def test_base_currency_explicit_or_absent_is_not_converted() -> None:
    codec = make_codec(base_currency="USD", currency_rates={"EUR": Decimal("1.08")})
    assert decoded(encode(purchase(currency="USD")), codec=codec).delta.totals.spend == 599_000
    assert (
        decoded(encode(without(purchase(), "currency")), codec=codec).delta.totals.spend == 599_000
    )
    assert decoded(encode(purchase()), codec=codec).delta.totals.spend == 646_920  # 64.692


def test_rates_configured_in_lower_case_apply() -> None:
    codec = make_codec(currency_rates={"usd": Decimal("2")})
    assert decoded(encode(refund(currency="USD")), codec=codec).delta.totals == Totals(
        refunds=1, refunded=400_000, margin=-80_000
    )


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        ("0.0001", 0),  # 0.00005 → 0.0000 (half to even)
        ("0.0003", 2),  # 0.00015 → 0.0002
        ("0.0005", 2),  # 0.00025 → 0.0002 (half-up would give 3)
        ("0.0007", 4),  # 0.00035 → 0.0004
        ("1.2345", 6172),  # 0.61725 → 0.6172
    ],
)
def test_conversion_rounds_half_even_to_4_places(amount: str, units: int) -> None:
    codec = make_codec(currency_rates={"XTS": Decimal("0.5")})
    spend = decoded(
        encode(purchase(currency="XTS", amount=amount, items=[], margin="0")), codec=codec
    )
    assert spend.delta.totals.spend == units


def test_premium_lines_are_summed_then_converted() -> None:
    codec = make_codec(currency_rates={"XTS": Decimal("0.5")})
    lines = [item(unit_price="0.0001", tier="premium")] * 3  # 0.0003 * 0.5 = 0.00015 → 2 units
    result = decoded(encode(purchase(currency="XTS", amount="1", items=lines)), codec=codec)
    assert result.delta.totals.premium_spend == 2


def test_max_amount_applies_in_base_currency() -> None:
    codec = make_codec(currency_rates={"JPY": Decimal("0.0062"), "KWD": Decimal("3")})
    decoded(encode(purchase(currency="JPY", amount="100000000", items=[])), codec=codec)
    letter = dead(encode(purchase(currency="KWD", amount="400000", items=[])), codec=codec)
    assert letter.reason == Reason.AMOUNT_TOO_LARGE
    assert "1200000" in letter.detail


@pytest.mark.parametrize(
    "overrides",
    [
        {"currency_rates": {"USD": Decimal("0")}},
        {"currency_rates": {"USD": Decimal("-1")}},
        {"max_amount": Decimal("1e12")},
        {"currency_rates": {"XTS": Decimal("1e-30")}},
    ],
)
def test_bad_settings_fail_fast(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"currency_rates|max_amount|too small"):
        make_codec(**overrides)


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1." + "0" * 60_000 + "1", Reason.TOO_MANY_DECIMALS),
        ("9" * 60_000, Reason.AMOUNT_TOO_LARGE),
        ("0." + "0" * 60_000 + "1", Reason.TOO_MANY_DECIMALS),
        ("1E+999999999", Reason.AMOUNT_TOO_LARGE),
    ],
)
@pytest.mark.parametrize("currency", ["EUR", "USD"])
def test_hostile_numbers_are_refused_cheaply(amount: str, reason: Reason, currency: str) -> None:
    record = encode(purchase(amount=amount, currency=currency, items=[]))
    started = time.perf_counter()
    assert dead(record).reason == reason
    assert time.perf_counter() - started < 0.1  # exact rational arithmetic took ~250 ms


@pytest.mark.parametrize("zero", ["0E+999999999", "0E-999999999", "-0.0", "0.000000"])
def test_zero_is_zero_whatever_its_exponent(zero: str) -> None:
    result = decoded(encode(purchase(amount=zero, margin=zero, currency="USD", items=[])))
    assert result.delta.totals == Totals(orders=1, discounted_spend=0)


def test_long_but_exact_amount() -> None:
    result = decoded(encode(purchase(amount="1" + "0" * 6 + "." + "0" * 60_000, items=[])))
    assert result.delta.totals.spend == 1_000_000 * MONEY_SCALE


# --- headers --------------------------------------------------------------------------------


def test_dead_letter_headers() -> None:
    letter = DeadLetter(reason=Reason.NEGATIVE_AMOUNT, detail="amount: Input should be ≥ 0")
    headers = dead_letter_headers(
        letter,
        topic="customer.events",
        partition=3,
        offset=1234,
        failed_at=datetime(2026, 11, 21, 12, 0, 1, 500_000, tzinfo=UTC),
    )
    assert headers == [
        ("dlq.reason", b"negative_amount"),
        ("dlq.detail", "amount: Input should be ≥ 0".encode()),
        ("dlq.source.topic", b"customer.events"),
        ("dlq.source.partition", b"3"),
        ("dlq.source.offset", b"1234"),
        ("dlq.failed_at", b"2026-11-21T12:00:01.500+00:00"),
    ]


def test_dead_letter_headers_default_to_now() -> None:
    before = datetime.now(UTC)
    headers = dict(dead_letter_headers(dead(b"{"), topic="t", partition=0, offset=0))
    failed_at = datetime.fromisoformat(headers["dlq.failed_at"].decode())
    assert before - timedelta(seconds=1) <= failed_at <= datetime.now(UTC)
    assert headers["dlq.reason"] == b"invalid_json"


# --- fuzzing: decode never raises ------------------------------------------------------------

FIELD_NAMES = sorted({*purchase(), *refund(), *engagement(), *item(), "tier", "region", "currency"})
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.text(max_size=40)
    | st.sampled_from(
        ["purchase", "refund", "engagement", "premium", "viewed", "EUR", "USD", CUSTOMER]
    )
    | st.sampled_from(
        ["2026-11-20T10:15:00Z", "2026-11-20T10:15:00", "NaN", "-Infinity", "1E+999999"]
    )
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_never_raises(value: bytes, key: bytes | None = KEY) -> DecodedEvent | DeadLetter:
    result = CODEC.decode(key, value, now=NOW)
    assert isinstance(result, DecodedEvent | DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.reason in set(Reason)
        assert result.detail
        dead_letter_headers(result, topic="t", partition=0, offset=0)  # always encodable
    return result


@FUZZ
@given(st.binary(max_size=600), st.none() | st.binary(max_size=16))
def test_fuzz_arbitrary_bytes(value: bytes, key: bytes | None) -> None:
    check_never_raises(value, key)


@FUZZ
@given(JSON_VALUES)
def test_fuzz_arbitrary_json(document: object) -> None:
    check_never_raises(json.dumps(document).encode())  # stdlib: writes NaN, big ints


@FUZZ
@given(
    st.sampled_from([purchase(), refund(), engagement()]),
    st.sampled_from(FIELD_NAMES),
    st.one_of(st.just("<delete>"), JSON_VALUES),
)
def test_fuzz_one_field_of_a_valid_event(
    event: dict[str, Any], field: str, replacement: object
) -> None:
    changed = without(event, field) if replacement == "<delete>" else {**event, field: replacement}
    result = check_never_raises(json.dumps(changed).encode())
    if isinstance(result, DecodedEvent):
        assert result.customer_id == CUSTOMER
        assert sum(result.delta.totals.as_tuple()[i] for i in (0, 2, 7)) == 1  # one kind


MONEY = st.decimals(min_value=0, max_value=1_000_000, places=4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    amount=MONEY,
    margin=st.none() | st.decimals(min_value=-1_000_000, max_value=1_000_000, places=4),
    as_number=st.booleans(),
    at=st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2026, 11, 21),
        timezones=st.just(UTC),
    ),
)
def test_valid_purchases_convert_exactly(
    amount: Decimal, margin: Decimal | None, as_number: bool, at: datetime
) -> None:
    encode_money: Callable[[Decimal], object] = float if as_number else str
    event = purchase(amount=encode_money(amount), items=[], occurred_at=at.isoformat())
    if margin is None:
        del event["margin"]
    else:
        event["margin"] = encode_money(margin)
    result = decoded(encode(event))
    assert result.delta.totals.spend == int(amount * MONEY_SCALE)
    assert result.delta.totals.margin == (0 if margin is None else int(margin * MONEY_SCALE))
    assert result.delta.occurred_ms == ms(at)


# --- the fast money path agrees with the exact Decimal path ---------------------------------

RATES = [None, Decimal("0.92"), Decimal("3"), Decimal("0.0062"), Decimal("1.0837")]
DECIMAL_TEXT = st.from_regex(
    r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{0,7})?([eE][-+]?[0-9]{1,2})?", fullmatch=True
)


def money_outcome(convert: Callable[[], int]) -> object:
    try:
        return convert()
    except _Rejected as rejected:
        return (rejected.reason, rejected.detail)


@settings(max_examples=1000, deadline=None)
@given(
    value=DECIMAL_TEXT.map(Decimal)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.decimals(min_value=-2_000_000, max_value=2_000_000, places=4),
    rate=st.sampled_from(RATES),
    index=st.sampled_from([-1, 0, 3]),
)
def test_fast_money_path_agrees_with_the_exact_path(
    value: Decimal, rate: Decimal | None, index: int
) -> None:
    codec = make_codec(currency_rates={} if rate is None else {"XTS": rate})
    currency_rate = codec._rate(None if rate is None else "XTS")
    fast = money_outcome(lambda: codec._money(value, currency_rate, "unit_price", index))
    exact = money_outcome(lambda: codec._money_exact(value, currency_rate, "unit_price", index))
    assert fast == exact


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        ("1E+2", 1_000_000),
        ("5.99E+1", 599_000),
        ("599E-1", 599_000),
        ("0.5990E+2", 599_000),
        ("1.234E-1", 1_234),
        ("000059.90", 599_000),
        ("59.9000", 599_000),
    ],
)
def test_amount_in_any_spelling_converts_exactly(amount: str, units: int) -> None:
    record = encode(purchase(amount=amount, margin="0", discount="0", items=[]))
    assert decoded(record).delta.totals.spend == units


# --- the fast path: a subset of the pydantic path, with the same result ----------------------

_EDGE_SPELLINGS: list[tuple[str, Any]] = [
    # money: canonical forms take the fast path, every other spelling the slow one
    ("amount", "59.9"),
    ("amount", "0"),
    ("amount", "059.90"),
    ("amount", "59."),
    ("amount", ".5"),
    ("amount", "5E+1"),
    ("amount", " 59.90"),
    ("amount", "59.90\n"),
    ("amount", "1_000"),
    ("amount", "١٢٣"),
    ("amount", "-0"),
    ("amount", "59.12345"),
    ("amount", "1000000"),
    ("amount", "1000000.0001"),
    ("amount", "9999999999999999"),
    ("amount", 59.9),
    ("amount", 60),
    ("margin", "-0"),
    ("margin", "-12.5"),
    ("margin", "-012.5"),
    ("margin", None),
    ("discount", "0.00"),
    ("discount", "0.01"),
    ("discount", None),
    # ids and labels
    ("event_id", "e-1\n"),
    ("event_id", "e 1"),
    ("event_id", "a" * 128),
    ("event_id", "a" * 129),
    ("order_id", "{s0001}"),
    ("channel", "web\n"),
    ("channel", "w\u00a0b"),
    ("channel", "ç-ünïcödé-😀"),
    ("channel", "x" * 64),
    ("channel", "x" * 65),
    ("channel", ""),
    ("region", "\ud800"),
    ("currency", "eur"),
    ("currency", "EURO"),
    ("currency", "USD"),
    ("currency", None),
    # timestamps
    ("occurred_at", "2026-11-20T10:15:00.1234567+01:00"),
    ("occurred_at", "2026-11-20T10:15:00.123456+01:00"),
    ("occurred_at", "2026-11-20t10:15:00z"),
    ("occurred_at", "2026-11-20 10:15:00Z"),
    ("occurred_at", "2026-11-20T10:15Z"),
    ("occurred_at", "2026-11-20T10:15:00+0100"),
    ("occurred_at", "2026-11-20T10:15:60Z"),
    ("occurred_at", "2026-11-20T24:00:00Z"),
    ("occurred_at", "2026-02-30T10:00:00Z"),
    ("occurred_at", "2026-11-20T10:15:00+24:00"),
    ("occurred_at", "2026-11-20T10:15:00-00:00"),
    ("occurred_at", "2026-11-20T10:15:00"),
    ("schema_version", 1.0),
    ("schema_version", True),
]


@pytest.mark.parametrize(("field", "spelling"), _EDGE_SPELLINGS)
def test_fast_path_agrees_with_the_pydantic_path(field: str, spelling: Any) -> None:
    event = purchase()
    event[field] = spelling
    if spelling is None:
        del event[field]
    value = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")
    fast = CODEC._decode_fast(KEY, value, NOW)
    slow = CODEC._decode_slow(KEY, value, NOW)
    if fast is not None:
        assert fast == slow
    assert CODEC.decode(KEY, value, now=NOW) == slow


@pytest.mark.parametrize(
    ("item_field", "spelling"),
    [
        ("quantity", 0),
        ("quantity", 10_001),
        ("quantity", True),
        ("quantity", 2.0),
        ("unit_price", "012.00"),
        ("unit_price", 12),
        ("sku", "s" * 129),
        ("category", "\t"),
        ("tier", "luxury"),
        ("tier", "premium"),
    ],
)
def test_fast_path_agrees_on_line_items(item_field: str, spelling: Any) -> None:
    event = purchase()
    event["items"][0][item_field] = spelling
    value = encode(event)
    fast = CODEC._decode_fast(KEY, value, NOW)
    if fast is not None:
        assert fast == CODEC._decode_slow(KEY, value, NOW)


def test_common_events_take_the_fast_path() -> None:
    """What producers send (canonical money, RFC 3339 times) is decoded without pydantic."""
    records = [
        encode(purchase()),
        encode(without(purchase(), "margin")),
        encode(refund()),
        encode(without(refund(), "margin")),
        *(encode(engagement(action=a)) for a in ("viewed", "support_contact")),
    ]
    for value in records:
        fast = CODEC._decode_fast(KEY, value, NOW)
        assert fast is not None, value
        assert fast == CODEC._decode_slow(KEY, value, NOW)
