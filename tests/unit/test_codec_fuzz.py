"""Hostile input for the decoder: structure-aware mutations of valid events (fields, purchase
lines, bytes, JSON text, keys) and random bytes and text. Whatever arrives, ``decode`` returns
an event or a :class:`DeadLetter` with a :class:`Reason`, and never raises; what it accepts is
within the contract."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.codec import DeadLetter, DecodedEvent, EventCodec, Reason, dead_letter_headers
from schemas.events import ID_PATTERN
from service.segmentation.profile import MONEY_SCALE
from service.settings import ValidationSettings
from tests.support.events import engagement, purchase, refund
from tests.support.fuzz import MUTATORS, mutate

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
VALIDATION = ValidationSettings()
CODEC = EventCodec(VALIDATION)
ID = re.compile(ID_PATTERN)
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASES = [
    purchase("c-1", "e-1", NOW - timedelta(days=2), "19.99", margin="3.00", premium="5.00"),
    refund("c-2", "e-2", NOW - timedelta(days=1), "4.50"),
    engagement("c-3", "e-3", NOW - timedelta(hours=3)),
]


def check(key: bytes | None, value: bytes) -> DecodedEvent | DeadLetter:
    result = CODEC.decode(key, value, now=NOW)
    if isinstance(result, DeadLetter):
        assert isinstance(result.reason, Reason)
        assert result.detail
        headers = dead_letter_headers(result, topic="t", partition=0, offset=0)
        assert all(isinstance(v, bytes) for _, v in headers)
        return result
    assert isinstance(result, DecodedEvent)
    # The fast path accepts a subset of what the pydantic path accepts, with the same result.
    assert result == CODEC._decode_slow(key, value, NOW)
    assert key == result.customer_id.encode(), "accepted only under its customer's key"
    assert ID.fullmatch(result.customer_id) and ID.fullmatch(result.event_id)
    assert len(value) <= VALIDATION.max_record_bytes
    horizon = NOW + timedelta(seconds=VALIDATION.max_future_skew_s)
    assert result.delta.occurred_ms <= horizon.timestamp() * 1000
    cap = int(VALIDATION.max_amount * MONEY_SCALE)
    totals = result.delta.totals.as_tuple()
    assert all(abs(v) <= cap * (VALIDATION.max_items + 1) for v in totals)
    return result


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(BASES))
def test_fuzz_structure_aware_mutations(rng: random.Random, base: dict[str, Any]) -> None:
    check(*mutate(rng, base))


@FUZZ
@given(
    st.randoms(use_true_random=False),
    st.sampled_from(BASES),
    st.sampled_from(MUTATORS),
    st.integers(min_value=2, max_value=4),
)
def test_fuzz_stacked_mutations_of_one_kind(
    rng: random.Random, base: dict[str, Any], mutator: Any, rounds: int
) -> None:
    key, value = mutator(rng, base)
    check(key, value)
    for _ in range(rounds):  # keep damaging the (perhaps still valid) result as bytes
        data = bytearray(value)
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        value = bytes(data)
        check(key, value)


@FUZZ
@given(st.binary(min_size=0, max_size=4_096), st.none() | st.binary(max_size=200))
def test_fuzz_random_bytes(value: bytes, key: bytes | None) -> None:
    result = check(key, value)
    assert isinstance(result, DeadLetter)  # random bytes are never an event


@FUZZ
@given(st.text(max_size=2_000))
def test_fuzz_random_text(text: str) -> None:
    check(b"c-1", text.encode("utf-8", "surrogatepass"))


def test_every_mutator_yields_dead_letters_and_some_survivors() -> None:
    """The mutators reach many reasons (not one early rejection) and sometimes leave a valid
    event (so the accepting path is fuzzed too)."""
    rng = random.Random(11)
    reasons: set[str] = set()
    accepted = fast = 0
    for i in range(3_000):
        key, value = mutate(rng, BASES[i % len(BASES)])
        result = check(key, value)
        if isinstance(result, DeadLetter):
            reasons.add(result.reason)
        else:
            accepted += 1
            fast += CODEC._decode_fast(key, value, NOW) is not None
    assert len(reasons) >= 10, reasons
    assert accepted > 0
    assert fast > 0  # mutated records that stay valid are fuzzed on the fast path too


# --- the fast path against the pydantic path on generated valid-looking events ---------------

RATED = EventCodec(ValidationSettings(currency_rates={"USD": "0.92", "JPY": "0.0061", "XAU": "2"}))
_MONEY_TEXT = st.one_of(
    st.decimals(min_value=0, max_value=2_000_000, places=4).map(str),
    st.decimals(min_value=0, max_value=1000, places=2).map(str),
    st.integers(min_value=0, max_value=10**7).map(str),
    st.sampled_from(["0", "0.0", "00.5", "1e3", "5.", "0.00001", "999999.9999"]),
)
_SIGNED_TEXT = st.one_of(_MONEY_TEXT, _MONEY_TEXT.map(lambda t: "-" + t))


@st.composite
def _valid_looking(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["purchase", "refund", "engagement"]))
    at = NOW - timedelta(seconds=draw(st.integers(min_value=-400, max_value=400 * 86_400)))
    offset = draw(st.sampled_from(["Z", "+01:00", "-05:30", "+00:00"]))
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S")
    if draw(st.booleans()):
        stamp += (
            "."
            + str(draw(st.integers(min_value=0, max_value=999_999))).zfill(
                draw(st.integers(min_value=1, max_value=7))
            )[:7]
        )
    event: dict[str, Any] = {
        "schema_version": 1,
        "type": kind,
        "event_id": draw(st.from_regex(r"[A-Za-z0-9._:@-]{1,20}", fullmatch=True)),
        "customer_id": "c-1",
        "occurred_at": stamp + offset,
    }
    currency = draw(st.sampled_from([None, "EUR", "USD", "JPY", "XAU", "GBP", "usd"]))
    if kind == "engagement":
        event["action"] = draw(st.sampled_from(["viewed", "support_contact", "signed_up"]))
    else:
        event["order_id"] = "o-1"
        event["amount"] = draw(_MONEY_TEXT)
        if currency is not None:
            event["currency"] = currency
        if draw(st.booleans()):
            event["margin"] = draw(_SIGNED_TEXT if kind == "purchase" else _MONEY_TEXT)
    if kind == "purchase":
        if draw(st.booleans()):
            event["discount"] = draw(_MONEY_TEXT)
        event["items"] = [
            {
                "sku": draw(st.sampled_from(["sku-1", "s" * 128, "ß-ü"])),
                "category": draw(st.sampled_from(["home", "x" * 64, "x" * 65])),
                "quantity": draw(st.integers(min_value=0, max_value=10_001)),
                "unit_price": draw(_MONEY_TEXT),
                "tier": draw(st.sampled_from(["standard", "premium", "budget"])),
            }
            for _ in range(draw(st.integers(min_value=0, max_value=3)))
        ]
    return event


@settings(max_examples=1_500, deadline=None)
@given(_valid_looking())
def test_fast_path_equals_the_pydantic_path(event: dict[str, Any]) -> None:
    value = orjson.dumps(event)
    slow = RATED._decode_slow(b"c-1", value, NOW)
    fast = RATED._decode_fast(b"c-1", value, NOW)
    if fast is not None:
        assert fast == slow
    assert RATED.decode(b"c-1", value, now=NOW) == slow


def test_valid_events_take_the_fast_path() -> None:
    """Valid events in the common spelling are decoded by the fast path (else the properties
    above would compare nothing, and the consumer would run at the slow path's speed)."""
    fast = valid = 0
    for seed in range(400):
        rng = random.Random(seed)
        base = dict(BASES[seed % 3])
        base["event_id"] = f"e-{seed}"
        if "amount" in base:
            base["amount"] = f"{rng.randrange(1, 10**6)}.{rng.randrange(100):02d}"
        value = orjson.dumps(base)
        key = base["customer_id"].encode()
        result = RATED.decode(key, value, now=NOW)
        valid += isinstance(result, DecodedEvent)
        fast += RATED._decode_fast(key, value, NOW) is not None
    assert valid == 400
    assert fast == 400
