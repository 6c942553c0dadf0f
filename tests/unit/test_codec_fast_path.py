"""The decoder's fast path (``EventCodec._fast``) against the full pydantic path.

The fast path may decline any record (the full path then decides), but what it accepts it must
decode exactly as the full path does: same customer, event id, delta and hash. Hypothesis
builds records in many spellings, valid and subtly not (money with too many places or as
numbers, times in every RFC 3339 variation and some that are not, ids with forbidden
characters, labels with control characters, escapes, extra and missing fields, nulls), and
checks that rule on every one.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.codec import DecodedEvent, EventCodec
from service.settings import ValidationSettings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


class FullPathCodec(EventCodec):
    """The codec with its fast path switched off."""

    def _fast(self, key: bytes | None, value: bytes, now: datetime) -> DecodedEvent | None:
        return None


VALIDATION = ValidationSettings(currency_rates={"USD": Decimal("0.92"), "JPY": Decimal("0.0061")})
FAST = EventCodec(VALIDATION)
FULL = FullPathCodec(VALIDATION)
TAKEN: Counter[str] = Counter()


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten: records must often be valid but for one detail, or the
    fast path's acceptance would hardly be exercised."""
    return st.integers(0, 9).flatmap(lambda n: valid if n else invalid)


ids = mostly(
    st.one_of(
        st.sampled_from(["c-1", "c-000123", "a.b:c@d_e-f", "x" * 128]),
        st.text("abcXYZ019._:@-", min_size=1, max_size=10),
    ),
    st.sampled_from(["", "x" * 129, "c 1", "c{1}", "c*", "c/1", "ç-1", "c\n", "c-1\n"]),
)
labels = mostly(
    st.sampled_from(["web", "eu-west", "électronique", "a" * 64, "家", "x y"]),
    st.sampled_from(["", "a" * 65, "bad\x01", "tab\there", "del\x7f", "nl\n"]),
)
money = mostly(
    st.one_of(
        st.integers(0, 10**9).map(lambda c: f"{c // 100}.{c % 100:02d}"),
        st.integers(0, 10**12).map(str),
        st.decimals(min_value=0, max_value=10**9, places=4).map(str),
        st.integers(0, 10**6),
    ),
    st.one_of(
        st.sampled_from(
            [
                "0.00000",
                "1.23456",
                "-1.00",
                "-0",
                "01.5",
                "1.",
                ".5",
                "1e2",
                "1E+2",
                "1_000",
                " 1",
                "NaN",
                "Infinity",
                "99999999999999",
                "100000000000000.0",
                "12345678901234.5678",
                "-12345678901234.5678",
                "123456789012345.5",
            ]
        ),
        st.integers(-(10**15), 10**15),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.sampled_from([True, None, [], {}]),
    ),
)
signed_money = mostly(money, st.sampled_from(["-1.00", "-0", "-0.0001", -5, "-99999999999.9999"]))


@st.composite
def times(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 14)) == 0:
        return draw(
            st.sampled_from(
                [
                    "2026-02-30T10:00:00Z",
                    "2026-11-20T24:00:00Z",
                    "2026-11-20T23:59:60Z",
                    "2026-11-20T10:00:00",
                    "2026-11-20 10:00:00Z",
                    "2026-11-20t10:00:00z",
                    "2026-11-20",
                    "0000-01-01T00:00:00Z",
                    "2026-11-20T10:00:00+24:00",
                    "2026-11-20T10:00:00.1234567Z",
                    "2026-11-20T10:00:00,5Z",
                    "20261120T100000Z",
                    "2026-11-20T10:00Z",
                    "2099-01-01T00:00:00Z",
                    1764000000,
                    None,
                ]
            )
        )
    at = NOW - timedelta(seconds=draw(st.integers(-86_400, 800 * 86_400)))
    offset = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    local = at.astimezone(UTC) + timedelta(minutes=offset)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    places = draw(st.integers(0, 7))
    if places:
        text += "." + draw(st.text("0123456789", min_size=places, max_size=places))
    if offset == 0 and draw(st.booleans()):
        return text + "Z"
    sign = "+" if offset >= 0 else "-"
    return text + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


items = st.lists(
    st.fixed_dictionaries(
        {
            "sku": st.one_of(labels, ids),
            "category": labels,
            "quantity": mostly(
                st.integers(1, 10_000), st.sampled_from([0, 10_001, 1.0, "2", True])
            ),
            "unit_price": money,
        },
        optional={
            "tier": mostly(
                st.sampled_from(["budget", "standard", "premium"]),
                st.sampled_from(["gold", None, "Premium"]),
            )
        },
    ),
    max_size=4,
)


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    kind = draw(mostly(st.sampled_from(["purchase", "refund", "engagement"]), st.just("other")))
    customer = draw(ids)
    event: dict[str, Any] = {
        "schema_version": draw(mostly(st.just(1), st.sampled_from([2, 1.0, "1", True, None]))),
        "type": kind,
        "event_id": draw(ids),
        "customer_id": customer,
        "occurred_at": draw(times()),
    }
    optional: dict[str, Any] = {}
    if kind in ("purchase", "refund", "other"):
        event["order_id"] = draw(ids)
        event["amount"] = draw(money)
        optional["currency"] = mostly(
            st.sampled_from(["EUR", "USD", "JPY", None]), st.sampled_from(["GBP", "eur", 1])
        )
        optional["margin"] = signed_money
    if kind in ("purchase", "other"):
        optional["discount"] = money
        optional["channel"] = st.one_of(labels, st.none())
        optional["items"] = st.one_of(items, st.none())
    if kind in ("engagement", "other"):
        event["action"] = draw(
            mostly(st.sampled_from(["viewed", "support_contact"]), st.sampled_from(["liked", ""]))
        )
    if kind in ("purchase", "engagement", "other"):
        optional["region"] = st.one_of(labels, st.none())
    for name, strategy in optional.items():
        if draw(st.booleans()):
            event[name] = draw(strategy)
    if draw(st.integers(0, 19)) == 0:
        event[draw(st.sampled_from(["extra", "Amount", "items"]))] = 1
    if draw(st.integers(0, 19)) == 0:
        event.pop(draw(st.sampled_from(sorted(event))))
    value = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
    key_choice = draw(st.integers(0, 19))
    key = None if key_choice == 0 else b"other" if key_choice == 1 else customer.encode()
    return key, value


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records())
def test_what_the_fast_path_accepts_it_decodes_as_the_full_path(
    record: tuple[bytes | None, bytes],
) -> None:
    key, value = record
    fast = FAST._fast(key, value, NOW)
    full = FULL.decode(key, value, now=NOW)
    if fast is not None:
        assert isinstance(full, DecodedEvent), (value, full)
        assert fast == full
    TAKEN["fast" if fast is not None else "valid" if isinstance(full, DecodedEvent) else "bad"] += 1
    assert FAST.decode(key, value, now=NOW) == full


def test_the_property_exercised_both_paths() -> None:
    """Runs after the property (file order): both paths were taken often enough to count."""
    assert TAKEN["fast"] >= 300, TAKEN
    assert TAKEN["bad"] >= 300, TAKEN


def test_the_fast_path_takes_the_benchmark_traffic() -> None:
    """The generator's records (every kind) all take the fast path, and give what the full
    path gives."""
    sys.path.insert(0, str(ROOT / "bench"))
    import generate  # type: ignore[import-not-found]

    fast, full = EventCodec(ValidationSettings()), FullPathCodec(ValidationSettings())
    now = datetime.now(UTC)
    seen = 0
    for key, value in generate.iter_events(3_000, 500, seed=7, now=now):
        result = fast._fast(key, value, now)
        assert result is not None, value
        assert result == full.decode(key, value, now=now)
        seen += 1
    assert seen == 3_000
