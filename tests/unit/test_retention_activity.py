"""The retention job's judgement of activity (pure)."""

from __future__ import annotations

from consumers.retention import last_activity_ms


def test_last_activity_is_the_latest_purchase_engagement_or_bucket() -> None:
    assert last_activity_ms({}) is None
    assert last_activity_ms({b"v": b"3", b"L": b"1,2"}) is None
    assert last_activity_ms({b"l": b"1000", b"e": b"5000"}) == 5000
    assert last_activity_ms({b"l": b"1000", b"d:2": b"1"}) == 3 * 86_400_000 - 1
