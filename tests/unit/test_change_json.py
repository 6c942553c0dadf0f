"""The hot path writes change events as plain dicts; they must be exactly the published model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.segmenter import Trigger, segmentation_json
from schemas.changes import SegmentationOut, SegmentChange
from schemas.changes import Trigger as TriggerOut
from service.segmentation.classifier import classify
from service.segmentation.profile import MS_PER_DAY, Profile, Totals
from service.segmentation.rules import load_rules
from service.store.packing import StoredSegmentation, pack_segmentation, unpack_segmentation

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def _profile() -> Profile:
    day = int(NOW.timestamp() * 1000) // MS_PER_DAY - 3
    t = Totals(orders=2, spend=1_234_500, margin=100_000)
    return Profile("c-1", day * MS_PER_DAY, day * MS_PER_DAY, None, t, {day: t})


def test_segmentation_json_is_the_published_shape() -> None:
    seg = classify(_profile(), load_rules(None), now=NOW)
    data = segmentation_json(seg)
    model = SegmentationOut.model_validate(data)
    assert model.model_dump(mode="json") == SegmentationOut.from_domain(seg).model_dump(mode="json")
    assert data == SegmentationOut.from_domain(seg).model_dump(mode="json") | {
        "as_of": data["as_of"],
        "next_review_at": data["next_review_at"],
    }
    assert str(data["as_of"]).endswith("Z")


def test_trigger_json_and_identity_match_the_schema_model() -> None:
    for trigger in (
        Trigger(event_id="e-1", topic="t", partition=3, offset=9),
        Trigger(review_at=NOW + timedelta(days=1)),
        Trigger(rules_version="abc123"),
    ):
        published = TriggerOut.model_validate(trigger.as_json())
        assert published.identity() == trigger.identity()


def test_change_event_validates() -> None:
    seg = classify(_profile(), load_rules(None), now=NOW)
    change = {
        "schema_version": 1,
        "change_id": "x" * 32,
        "customer_id": "c-1",
        "cause": "event",
        "as_of": "2026-11-25T12:00:00Z",
        "rules_version": seg.rules_version,
        "previous": None,
        "current": segmentation_json(seg),
        "trigger": Trigger(event_id="e-1", topic="t", partition=0, offset=1).as_json(),
    }
    SegmentChange.model_validate(change)


def test_packing_round_trips_and_fits_listpack() -> None:
    rules = load_rules(None)
    seg = classify(_profile(), rules, now=NOW)
    stored = StoredSegmentation(seg.segment, seg.axes, seg.treatment.id, seg.rules_version, 1, None)
    g, m = pack_segmentation(stored)
    assert unpack_segmentation(g, m) == stored
    longest_segment = max(len(s.name) for s in rules.segments)
    longest_treatment = max(len(t) for t in rules.treatments)
    longest_rfm = max(len(s.name) for s in rules.rfm.segments)
    # Redis keeps a hash compact (listpack) only while every value is <= 64 bytes.
    assert longest_segment + 11 + longest_treatment + 2 <= 64
    assert 12 + 13 + 13 + longest_rfm + 3 <= 64
