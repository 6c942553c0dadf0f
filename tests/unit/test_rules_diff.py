"""The rule-level diff: by name for tables, moves found as the rules outside a longest common
subsequence, values compared leaf by leaf."""

from __future__ import annotations

from typing import Any

from service.segmentation.rules import Rules, load_rules, rules_from_data
from service.segmentation.rules_diff import diff_rules

DEFAULT = load_rules(None)


def edited(**edits: Any) -> Rules:
    doc = DEFAULT.document()
    for path, value in edits.items():
        *parents, leaf = path.split("__")
        node = doc
        for p in parents:
            node = node[p]
        node[leaf] = value
    return rules_from_data(doc)


def test_same_rules_no_changes() -> None:
    assert diff_rules(DEFAULT, load_rules(None)) == []


def test_threshold_changes_are_readable() -> None:
    new = edited(lifecycle__at_risk_days=45, rfm__f_min_orders=[10, 6, 3, 2])
    assert [c.describe() for c in diff_rules(DEFAULT, new)] == [
        "changed lifecycle.at_risk_days: 60 -> 45",
        "changed rfm.f_min_orders: [12, 6, 3, 2] -> [10, 6, 3, 2]",
    ]
    back = [c.describe() for c in diff_rules(new, DEFAULT)]
    assert back[0] == "changed lifecycle.at_risk_days: 45 -> 60"


def test_segment_table_by_name_with_one_move() -> None:
    doc = DEFAULT.document()
    segments = doc["segments"]
    high_value = next(i for i, s in enumerate(segments) if s["name"] == "high_value")
    segments.insert(1, segments.pop(high_value))  # one rule moved up past several
    segments.insert(
        3, {"name": "vip_prospect", "when": {"lifecycle": ["prospect"]}, "treatment": "vip"}
    )
    del segments[[s["name"] for s in segments].index("quality_seeking")]
    segments[0]["when"]["value_tier"] = ["high"]
    changes = {(c.kind, c.path) for c in diff_rules(DEFAULT, rules_from_data(doc))}
    assert changes == {
        ("moved", "segments.high_value"),
        ("added", "segments.vip_prospect"),
        ("removed", "segments.quality_seeking"),
        ("added", "segments.key_account.when.value_tier"),
    }


def test_treatments_by_id_and_rfm_segments_by_name() -> None:
    doc = DEFAULT.document()
    doc["treatments"]["vip"]["discount_pct"] = 5
    doc["treatments"]["gift"] = {"discount_pct": 0, "offer": "gift"}
    doc["rfm"]["segments"] = [s for s in doc["rfm"]["segments"] if s["name"] != "promising"]
    out = [c.as_json() for c in diff_rules(DEFAULT, rules_from_data(doc))]
    by_path = {c["path"]: c for c in out}
    assert by_path["treatments.vip.discount_pct"]["before"] == 0
    assert by_path["treatments.vip.discount_pct"]["after"] == 5
    assert by_path["treatments.gift"]["kind"] == "added"
    assert by_path["rfm.segments.promising"]["kind"] == "removed"
    assert by_path["rfm.segments.promising"]["before"] == {"r": [4, 4], "f": [1, 1], "m": [1, 5]}
    assert all(c["description"] for c in out)
