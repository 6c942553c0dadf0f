"""ConsumerMetrics without services: bounded label sets and the bulk histogram's exposition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from consumers.handler import BatchStats
from consumers.metrics import MAX_SEGMENT_LABELS, OTHER, BulkHistogram, ConsumerMetrics
from service.segmentation.rules import load_rules


def test_bulk_histogram_exposes_like_prometheus_histogram() -> None:
    values = [0.0, 0.01, 0.02, 0.5, 0.5, 3.0, 1e6]
    buckets = (0.01, 0.1, 1.0, 5.0)
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    BulkHistogram("h_seconds", "x", buckets, mine).observe_many(values)
    reference = Histogram("h_seconds", "x", buckets=buckets, registry=theirs)
    for v in values:
        reference.observe(v)

    def exposed(r: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for f in r.collect()
            for s in f.samples
            if not s.name.endswith("_created")
        }

    assert exposed(mine) == exposed(theirs)


def test_dead_letter_reasons_and_segments_stay_bounded() -> None:
    m = ConsumerMetrics()
    rules = load_rules(None)
    m.set_rules(rules)
    m.observe_batch(BatchStats(records=3, dead_letter_reasons={"invalid_json": 1, "made_up": 2}))
    r = m.registry
    assert (
        r.get_sample_value("segments_events_dead_lettered_total", {"reason": "invalid_json"}) == 1
    )
    assert r.get_sample_value("segments_events_dead_lettered_total", {"reason": OTHER}) == 2
    known = rules.segments[0].name
    m.observe_changes(
        [
            {"cause": "event", "previous": None, "current": {"segment": known}},
            {"cause": "time", "previous": {"segment": known}, "current": {"segment": "nope"}},
            {"cause": "weird", "previous": {"segment": "x"}, "current": {"segment": known}},
        ]
    )

    def changes(frm: str, to: str, cause: str) -> float | None:
        labels = {"from_segment": frm, "to_segment": to, "cause": cause}
        return r.get_sample_value("segments_segment_changes_total", labels)

    assert changes("none", known, "event") == 1
    assert changes(known, OTHER, "time") == 1
    assert changes(OTHER, known, OTHER) == 1
    # Rules that bring ever more names: at most MAX_SEGMENT_LABELS distinct values.
    for i in range(MAX_SEGMENT_LABELS * 2):
        m.observe_changes([{"cause": "rules", "previous": None, "current": {"segment": f"s{i}"}}])
    to_values = {
        s.labels["to_segment"]
        for f in r.collect()
        for s in f.samples
        if s.name == "segments_segment_changes_total"
    }
    assert len(to_values) <= MAX_SEGMENT_LABELS + 1  # + other


def test_rules_info_keeps_one_version_and_lag_series_follow_assignment() -> None:
    m = ConsumerMetrics()
    rules = load_rules(None)
    m.set_rules(rules)
    assert m.registry.get_sample_value("segments_rules_info", {"version": rules.version}) == 1

    class TP:
        def __init__(self, p: int) -> None:
            self.topic, self.partition = "ev", p

    a, b = TP(0), TP(1)
    m.observe_batch(BatchStats(records=1), committed={a: 5, b: 7}, highwater=lambda tp: 10)
    lag = "segments_consumer_lag_records"
    assert m.registry.get_sample_value(lag, {"topic": "ev", "partition": "0"}) == 5
    m.set_assignment([a], revoked=[b])
    assert m.registry.get_sample_value(lag, {"topic": "ev", "partition": "1"}) is None
    assert m.registry.get_sample_value("segments_consumer_assigned_partitions") == 1
