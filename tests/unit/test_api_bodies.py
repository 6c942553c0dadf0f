"""Pure parts of the API: money rendering, cursors, error field names, built bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.api import CURSOR_PATTERN, SegmentResponse
from service.api.bodies import money, money_ratio, profile_body, segment_body, unknown_body
from service.api.errors import _field
from service.api.routes.segments import decode_cursor, encode_cursor
from service.segmentation.profile import Profile, Totals
from service.segmentation.rules import load_rules
from service.store.keys import SHARDS
from service.store.reads import MemberPosition

RULES = load_rules(None)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0.00"),
        (50, "0.00"),  # 0.005 -> half to even
        (150, "0.02"),  # 0.015 -> half to even
        (151, "0.02"),
        (-50, "0.00"),  # never "-0.00"
        (-150, "-0.02"),
        (12_345_678, "1234.57"),
        (10**20, "10000000000000000.00"),
    ],
)
def test_money(units: int, text: str) -> None:
    assert money(units) == text


def test_money_ratio_rounds_once() -> None:
    assert money_ratio(1_000_000, 3) == "33.33"
    assert money_ratio(250, 1) == "0.02"  # 0.025 -> 0.02
    assert money_ratio(350, 1) == "0.04"  # 0.035 -> 0.04


@given(shard=st.integers(0, SHARDS - 1), after=st.from_regex(r"\A[A-Za-z0-9._:@-]{0,128}\Z"))
def test_cursor_round_trip(shard: int, after: str) -> None:
    position = MemberPosition(shard, after)
    cursor = encode_cursor(position)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor) == position


def test_cursor_pattern_covers_exactly_the_shards() -> None:
    valid = {f"{n:04d}" for n in range(10_000) if re.fullmatch(CURSOR_PATTERN, f"{n:04d}")}
    assert valid == {f"{n:04d}" for n in range(SHARDS)}
    for bad in ("", "42", "0042:", "0042:a b", "0042x", "1024:c-1", "0042:" + "x" * 129):
        assert not re.fullmatch(CURSOR_PATTERN, bad), bad


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("body", "customer_ids", 3), "customer_ids[3]"),
        (("body",), "body"),
        (("body", 12), "[12]"),
        (("query", "limit"), "limit"),
        (("path", "customer_id"), "customer_id"),
        (("body", "a", "b", 0, "c"), "a.b[0].c"),
    ],
)
def test_error_field_names(loc: tuple[int | str, ...], field: str) -> None:
    assert _field(loc) == field


def test_bodies_conform_to_the_models() -> None:
    day = 20_000
    profile = Profile(
        "c-1",
        day * 86_400_000,
        day * 86_400_000,
        None,
        Totals(1, 100_000),
        {day: Totals(1, 100_000)},
    )
    SegmentResponse.model_validate(segment_body(profile, RULES, NOW))
    SegmentResponse.model_validate(unknown_body("c-2", RULES, NOW, with_default=True))
    SegmentResponse.model_validate(unknown_body("c-2", RULES, NOW, with_default=False))
    body = profile_body(profile, RULES, NOW)
    assert body["lifetime"]["spend"] == "10.00"
    assert list(body["windows"]) == [f"{w}d" for w in RULES.windows]
