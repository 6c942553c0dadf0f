"""The comparison behind ``segments replay``'s verification (pure parts, no services)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

from consumers.replay import _ArrivalCodec
from service.segmentation.profile import Profile, Totals
from service.segmentation.types import Axes, Rfm
from service.settings import Settings
from service.store.keys import Keys
from service.store.packing import StoredSegmentation, epoch_ms, pack_segmentation
from service.store.state_diff import (
    Context,
    Difference,
    DiffReport,
    Positions,
    ShardSide,
    Snapshot,
    compare_customer,
    compare_shard,
    snapshot,
)
from service.store.verify import customer_pattern, glob_escape, parse_customer_key
from tests.support.events import Rec, encode, purchase

NOW_MS = 1_790_000_000_000
DAY = NOW_MS // 86_400_000

AXES = Axes(
    lifecycle="regular",
    value_tier="high",
    loyalty="medium",
    needs="quality_seeking",
    rfm=Rfm(5, 4, 3),
    rfm_segment="loyal",
    key_account=False,
    frequency="high",
    aov="medium",
    profit="low",
)
STORED = StoredSegmentation(
    segment="loyal",
    axes=AXES,
    treatment_id="t-loyal",
    rules_version="v1",
    as_of_ms=NOW_MS - 1000,
    next_review_ms=NOW_MS + 86_400_000,
)


def _snap(**changes: object) -> Snapshot:
    base = Snapshot(
        profile=Profile(
            "c-1", NOW_MS - 5000, NOW_MS - 5000, None, Totals(1, 100), {DAY: Totals(1, 100)}
        ),
        watermark=(2, 40),
        ring=b"12345678",
        tombstone=False,
        stored=STORED,
        in_member_set=True,
        due_ms=STORED.next_review_ms,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


CTX = Context(now_ms=NOW_MS)


def _kinds(diffs: list[Difference]) -> list[str]:
    return [d.kind for d in diffs]


def test_equal_customers_have_no_difference() -> None:
    assert compare_customer("c-1", 3, _snap(), _snap(), CTX) == ([], None)


def test_as_of_is_not_compared_but_the_rest_of_the_segmentation_is() -> None:
    later = dataclasses.replace(STORED, as_of_ms=NOW_MS)
    assert compare_customer("c-1", 3, _snap(), _snap(stored=later), CTX) == ([], None)
    other = dataclasses.replace(STORED, rules_version="v2")
    diffs, _ = compare_customer("c-1", 3, _snap(), _snap(stored=other), CTX)
    assert _kinds(diffs) == ["segmentation"]
    assert "v1" in diffs[0].detail and "v2" in diffs[0].detail


def test_profile_marks_and_indexes_are_each_reported() -> None:
    rebuilt = _snap(
        profile=Profile("c-1", NOW_MS - 5000, NOW_MS - 5000, None, Totals(2, 100), {}),
        watermark=(2, 41),
        ring=b"87654321",
        in_member_set=False,
        due_ms=None,
    )
    diffs, why = compare_customer("c-1", 3, _snap(), rebuilt, CTX)
    assert why is None
    assert _kinds(diffs) == ["profile", "watermark", "ring", "member_set", "due_index"]
    assert "lifetime" in diffs[0].detail and "daily buckets differ on 1 day" in diffs[0].detail
    assert all(d.customer_id == "c-1" and d.shard == 3 for d in diffs)


def test_missing_sides_and_tombstones() -> None:
    assert _kinds(compare_customer("c-1", 0, _snap(), None, CTX)[0]) == ["missing_in_rebuilt"]
    assert _kinds(compare_customer("c-1", 0, None, _snap(), CTX)[0]) == ["missing_in_live"]
    assert compare_customer("c-1", 0, None, None, CTX) == ([], None)
    tomb = _snap(tombstone=True)
    assert _kinds(compare_customer("c-1", 0, _snap(), tomb, CTX)[0]) == ["tombstone"]


def test_newer_in_live_is_excused_only_past_the_rebuilds_end() -> None:
    live = _snap(watermark=(2, 57))
    rebuilt = _snap(watermark=(2, 40))
    past_end = Context(NOW_MS, Positions(read_to={2: 50}, live_committed={2: 58}))
    assert compare_customer("c-1", 0, live, rebuilt, past_end) == ([], "newer_in_live")
    # A new customer after the end is excused as well.
    assert compare_customer("c-1", 0, live, None, past_end) == ([], "newer_in_live")
    # Live applied an event below the end that the rebuild lacks: a real difference.
    before_end = Context(NOW_MS, Positions(read_to={2: 60}, live_committed={2: 60}))
    diffs, why = compare_customer("c-1", 0, live, rebuilt, before_end)
    assert why is None and "watermark" in _kinds(diffs)


def test_in_flight_is_excused_only_while_the_live_group_has_not_committed_it() -> None:
    live = _snap(watermark=(2, 40))
    rebuilt = _snap(watermark=(2, 45))
    uncommitted = Context(NOW_MS, Positions(read_to={2: 46}, live_committed={2: 41}))
    assert compare_customer("c-1", 0, live, rebuilt, uncommitted) == ([], "in_flight")
    assert compare_customer("c-1", 0, None, rebuilt, uncommitted) == ([], "in_flight")
    committed = Context(NOW_MS, Positions(read_to={2: 46}, live_committed={2: 46}))
    diffs, why = compare_customer("c-1", 0, live, rebuilt, committed)
    assert why is None and "watermark" in _kinds(diffs)


def test_a_due_customer_compares_its_profile_not_its_segmentation() -> None:
    due = dataclasses.replace(STORED, segment="at_risk", next_review_ms=NOW_MS - 1)
    live = _snap(stored=due, due_ms=NOW_MS - 1)
    diffs, why = compare_customer("c-1", 0, live, _snap(), CTX)
    assert (diffs, why) == ([], "due")
    changed = _snap(profile=Profile("c-1"))
    diffs, why = compare_customer("c-1", 0, live, changed, CTX)
    assert why == "due" and _kinds(diffs) == ["profile"]


def test_expired_by_retention_only_when_inactive_long_enough() -> None:
    old = Profile("c-1", NOW_MS - 400 * 86_400_000, NOW_MS - 400 * 86_400_000, None, Totals(1, 5))
    ctx = Context(NOW_MS, retention_ms=365 * 86_400_000)
    assert compare_customer("c-1", 0, None, _snap(profile=old), ctx) == ([], "expired")
    diffs, why = compare_customer("c-1", 0, None, _snap(), ctx)
    assert why is None and _kinds(diffs) == ["missing_in_live"]


def test_shard_indexes_consistent_on_each_side_and_equal_across() -> None:
    def side(
        counts: dict[str, int], sizes: dict[str, int], due: int, seen: dict[str, int]
    ) -> ShardSide:
        return ShardSide(
            counts=counts,
            set_sizes=sizes,
            due_size=due,
            segments=Counter(seen),
            with_review=sum(seen.values()),
        )

    good = side({"loyal": 2, "new": 1}, {"loyal": 2, "new": 1}, 3, {"loyal": 2, "new": 1})
    assert compare_shard(7, good, good, {}) == []
    broken = side({"loyal": 2, "new": 1}, {"loyal": 1, "new": 1}, 2, {"loyal": 2, "new": 1})
    kinds = _kinds(compare_shard(7, good, broken, {}))
    assert kinds == ["set_size", "due_size"]
    # Counts differ across sides by exactly what the excused customers explain.
    moved = side({"loyal": 1, "new": 2}, {"loyal": 1, "new": 2}, 3, {"loyal": 1, "new": 2})
    assert _kinds(compare_shard(7, good, moved, {})) == ["counts", "counts"]
    assert compare_shard(7, good, moved, {"loyal": 1, "new": -1}) == []


def test_snapshot_decodes_a_hash() -> None:
    g, m = pack_segmentation(STORED)
    fields = {b"L": b"1,100", f"d:{DAY}".encode(): b"1,100", b"l": b"5", b"f": b"5"}
    fields |= {b"w": b"3:17", b"r": b"abcdefgh", b"v": b"9", b"g": g.encode(), b"m": m.encode()}
    s = snapshot("c-1", fields, min_day=DAY, in_member_set=True, due_ms=7)
    assert s.watermark == (3, 17)
    assert s.stored == STORED
    assert s.profile.lifetime == Totals(1, 100)
    assert not s.tombstone
    assert s.last_activity_ms == DAY * 86_400_000
    assert snapshot("c-1", {b"x": b"1"}, min_day=DAY, in_member_set=False, due_ms=None).tombstone


def test_report_counts_every_difference_and_keeps_the_first_examples() -> None:
    report = DiffReport(examples_wanted=2)
    report.add(Difference("profile", 1, f"c-{i}", "x") for i in range(5))
    report.excused["due"] += 3
    assert report.differences == 5 and not report.equal
    assert [d.customer_id for d in report.examples] == ["c-0", "c-1"]
    text = "\n".join(report.lines())
    assert "differences: 5 (profile 5)" in text
    assert "excused: due 3" in text
    assert "profile: customer 'c-0' (shard 1): x" in text


def test_keys_patterns_are_literal_and_parse_back() -> None:
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    keys = Keys("r*1:")
    assert customer_pattern(keys) == "r\\*1:{s[0-9][0-9][0-9][0-9]}:c:*"
    assert parse_customer_key(keys, keys.customer("c-42").encode()) == (
        int(keys.customer("c-42")[6:10]),
        "c-42",
    )


def test_replay_judges_the_future_bound_at_each_records_arrival() -> None:
    codec = _ArrivalCodec(Settings(_env_file=None))  # type: ignore[call-arg]
    arrived = datetime(2026, 1, 10, 12, tzinfo=UTC)
    early = purchase("c-1", "e-1", arrived + timedelta(days=2), "1.00")
    fine = purchase("c-1", "e-2", arrived - timedelta(days=1), "1.00")
    records = [Rec("t", 0, i, b"c-1", encode(e)) for i, e in enumerate((early, fine))]
    stamped = [_Stamped(r, epoch_ms(arrived)) for r in records]
    codec.expect(stamped, {})
    replay_now = arrived + timedelta(days=30)
    first = codec.decode(stamped[0].key, stamped[0].value, now=replay_now)
    second = codec.decode(stamped[1].key, stamped[1].value, now=replay_now)
    assert getattr(first, "reason", None) == "timestamp_in_future"
    assert not hasattr(second, "reason")


@dataclasses.dataclass(frozen=True)
class _Stamped:
    rec: Rec
    timestamp: int

    @property
    def topic(self) -> str:
        return self.rec.topic

    @property
    def partition(self) -> int:
        return self.rec.partition

    @property
    def offset(self) -> int:
        return self.rec.offset

    @property
    def key(self) -> bytes | None:
        return self.rec.key

    @property
    def value(self) -> bytes | None:
        return self.rec.value
