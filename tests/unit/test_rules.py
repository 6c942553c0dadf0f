"""The rules document: defaults, validation with paths, and the content-hash version."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.segmentation.rules import (
    NO_RFM_SEGMENT,
    RuleIssue,
    Rules,
    RulesError,
    load_rules,
    parse_rules,
)
from service.segmentation.types import Treatment

DEFAULT_TEXT = resources.files("service.segmentation").joinpath("default_rules.yaml").read_text()


def _default_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DEFAULT_TEXT)
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` at a dotted path (``segments.3.treatment``)."""
    out = copy.deepcopy(doc)
    node: Any = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return out


def _errors(doc: Any) -> list[RuleIssue]:
    with pytest.raises(RulesError) as caught:
        parse_rules(json.dumps(doc) if not isinstance(doc, str) else doc)
    return caught.value.errors


def _paths(doc: Any) -> set[str]:
    return {e["path"] for e in _errors(doc)}


# --- the default ------------------------------------------------------------------------------


def test_default_rules_load_and_are_complete() -> None:
    rules = load_rules(None)
    assert re.fullmatch(r"[0-9a-f]{12}", rules.version)
    assert rules.windows == (30, 90, 365)
    assert rules.max_window == 365
    assert [s.name for s in rules.segments] == [
        "key_account",
        "negative_value",
        "churned",
        "at_risk",
        "reactivated",
        "new_customer",
        "prospect",
        "loyal",
        "high_value",
        "price_sensitive",
        "quality_seeking",
        "regular",
        "occasional",
    ]
    assert [s.name for s in rules.rfm.segments] == [
        "champions",
        "loyal",
        "potential_loyalist",
        "new",
        "promising",
        "need_attention",
        "about_to_sleep",
        "cant_lose_them",
        "at_risk",
        "hibernating",
        "lost",
    ]
    assert rules.lifecycle.at_risk_days == 60
    assert rules.lifecycle.churned_days == 180
    assert rules.lifecycle.reactivated_days + rules.lifecycle.churned_days <= rules.max_window


def test_default_rules_file_path_and_none_agree(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_TEXT)
    assert load_rules(path).version == load_rules(None).version
    assert load_rules(path) == load_rules(None)


def test_every_named_rfm_cell_is_resolved_and_every_segment_has_a_treatment() -> None:
    compiled = load_rules(None).compiled
    names = {s.name for s in load_rules(None).rfm.segments}
    cells = [
        compiled.rfm_table[r * 36 + f * 6 + m]
        for r in range(1, 6)
        for f in range(1, 6)
        for m in range(1, 6)
    ]
    assert set(cells) <= names
    assert compiled.rfm_table[0] == NO_RFM_SEGMENT
    for segment in compiled.segments:
        assert isinstance(segment.treatment, Treatment)


def test_treatments_follow_the_domain_brief() -> None:
    rules = load_rules(None)
    by_segment = {s.name: rules.treatments[s.treatment] for s in rules.segments}
    assert by_segment["key_account"].support_queue == "priority"
    assert by_segment["key_account"].channel == "account_manager"
    assert by_segment["high_value"].support_queue == "priority"
    assert by_segment["loyal"].campaign == "loyalty_programme"
    assert by_segment["regular"].campaign == "loyalty_programme"
    assert by_segment["new_customer"].offer == "second_purchase_incentive"
    assert by_segment["prospect"].offer == "first_order_discount"
    assert by_segment["at_risk"].campaign == "retention_check_in"
    assert by_segment["churned"].campaign == "win_back"
    assert by_segment["price_sensitive"].discount_pct > 0
    assert by_segment["quality_seeking"].discount_pct == 0
    negative = by_segment["negative_value"]
    assert negative.discount_pct == 0 and negative.campaign is None
    assert negative.support_queue == "self_service"
    assert by_segment["occasional"].discount_pct == 0


# --- version ----------------------------------------------------------------------------------


def test_version_ignores_formatting_comments_key_order_and_number_spelling() -> None:
    version = parse_rules(DEFAULT_TEXT).version
    doc = _default_doc()
    assert parse_rules(json.dumps(doc, indent=4)).version == version
    assert parse_rules(json.dumps(doc, sort_keys=True)).version == version
    assert parse_rules(yaml.safe_dump(doc, default_flow_style=True)).version == version
    assert parse_rules("# a new comment\n" + DEFAULT_TEXT + "\n# trailing\n").version == version
    reordered = dict(reversed(list(doc.items())))
    assert parse_rules(json.dumps(reordered)).version == version
    spelled = _set(doc, "value.high_min_net_spend", "1000.00")
    spelled = _set(spelled, "value.medium_min_net_spend", 200)
    assert parse_rules(json.dumps(spelled)).version == version
    # A condition is a set: its order and repeats do not matter.
    loyal = _set(doc, "segments.7.when.loyalty", ["medium", "high", "high"])
    assert parse_rules(json.dumps(loyal)).version == version
    # Spelling out the default windows is the same document as omitting them.
    no_windows = copy.deepcopy(doc)
    del no_windows["windows"]
    assert parse_rules(json.dumps(no_windows)).version == version


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("lifecycle.at_risk_days", 61),
        ("lifecycle.regular_min_orders", 4),
        ("value.high_min_net_spend", "1000.01"),
        ("loyalty.period_days", 31),
        ("needs.order", ["price_sensitive", "service_sensitive", "quality_seeking"]),
        ("needs.price_sensitive_min_discounted_share", "0.6"),
        ("rfm.r_max_recency_days", [14, 30, 60, 121]),
        ("rfm.segments.0.m", [5, 5]),
        ("levels.aov.high", "151"),
        ("key_account.min_orders", 13),
        ("treatments.promotions.discount_pct", 20),
        ("treatments.vip.offer", "other_offer"),
        ("segments.12.description", "Everyone else, reworded."),
        ("segments.8.treatment", "premium"),
        ("windows", [30, 90, 180, 365]),
    ],
)
def test_any_value_change_changes_the_version(path: str, value: Any) -> None:
    changed = parse_rules(json.dumps(_set(_default_doc(), path, value)))
    assert changed.version != load_rules(None).version


def test_reordering_the_segment_table_changes_the_version() -> None:
    doc = _default_doc()
    doc["segments"][7], doc["segments"][8] = doc["segments"][8], doc["segments"][7]
    assert parse_rules(json.dumps(doc)).version != load_rules(None).version


def test_json_and_canonical_document_round_trip() -> None:
    rules = load_rules(None)
    again = parse_rules(rules.canonical_json())
    assert again == rules
    assert again.version == rules.version
    assert rules.document()["value"]["high_min_net_spend"] == "1000"


def test_copies_are_validated_and_versioned_afresh() -> None:
    rules = load_rules(None)
    windows = rules.model_copy(update={"windows": (30, 90, 180, 365)})
    assert windows.version != rules.version
    assert windows.compiled is not rules.compiled
    with pytest.raises(RulesError):
        rules.model_copy(update={"windows": (30, 365)})


def test_rules_are_immutable() -> None:
    rules = load_rules(None)
    with pytest.raises(ValueError, match="frozen"):
        rules.windows = (30,)


# --- validation errors point at the offending path ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "error_path", "message"),
    [
        ("segments.3.treatment", "nope", "segments[3].treatment", "unknown treatment 'nope'"),
        ("lifecycle.at_risk_days", 180, "lifecycle.at_risk_days", "must be < churned_days"),
        ("lifecycle.reactivated_days", 200, "lifecycle.reactivated_days", "exceeds the longest"),
        ("value.window", 120, "value.window", "window 120 is not one of windows"),
        ("lifecycle.regular_window", 60, "lifecycle.regular_window", "not one of windows"),
        ("value.medium_min_net_spend", "1000", "value.high_min_net_spend", "> medium"),
        ("value.high_min_net_spend", "10.00001", "value.high_min_net_spend", "4 decimals"),
        ("value.high_min_net_spend", "-5", "value.high_min_net_spend", ">= 0"),
        ("value.high_min_net_spend", "NaN", "value.high_min_net_spend", "finite"),
        ("rfm.r_max_recency_days", [14, 60, 30, 120], "rfm.r_max_recency_days", "increase"),
        ("rfm.f_min_orders", [12, 6, 6, 2], "rfm.f_min_orders", "decrease"),
        ("rfm.m_min_net_spend", ["100", "500", "1000", "2000"], "rfm.m_min_net_spend", "decrease"),
        ("rfm.f_min_orders", [12, 6, 3], "rfm.f_min_orders[3]", "Field required"),
        ("rfm.segments.0.r", [5, 4], "rfm.segments[0].r", "low <= high"),
        ("rfm.segments.0.r", [0, 5], "rfm.segments[0].r", "1 <= low"),
        ("rfm.segments.10", {"name": "lost", "r": [1, 1]}, "rfm.segments[10]", "catch-all"),
        ("rfm.segments.3.name", "none", "rfm.segments", "reserved"),
        ("rfm.segments.3.name", "loyal", "rfm.segments[3].name", "duplicate"),
        ("segments.12.when", {"lifecycle": ["occasional"]}, "segments[12]", "catch-all"),
        ("segments.4.when", {}, "segments[4]", "never match"),
        ("segments.4.name", "churned", "segments[4].name", "duplicate name 'churned'"),
        ("segments.2.when.lifecycle", ["lapsed"], "segments[2].when.lifecycle[0]", "Input should"),
        ("segments.2.when.lifecycle", [], "segments[2].when.lifecycle", "at least 1"),
        ("segments.2.when.rfm_segment", ["vip"], "segments[2].when.rfm_segment[0]", "unknown rfm"),
        ("segments.2.when.colour", ["red"], "segments[2].when.colour", "Extra inputs"),
        ("lifecycle.new_days", "30", "lifecycle.new_days", "valid integer"),
        ("lifecycle.new_days", 0, "lifecycle.new_days", "greater than or equal to 1"),
        ("loyalty.period_days", 400, "loyalty.period_days", "<= loyalty.window"),
        ("loyalty.medium_min_periods", 7, "loyalty.high_min_periods", ">= medium"),
        ("levels.frequency.medium", 12, "levels.frequency.high", "> medium"),
        ("needs.order", ["price_sensitive", "price_sensitive"], "needs.order", "once"),
        ("needs.order", ["thrifty"], "needs.order[0]", "Input should"),
        (
            "needs.quality_seeking_min_premium_share",
            "1.5",
            "needs.quality_seeking_min_premium_share",
            "between 0 and 1",
        ),
        ("treatments.vip.discount_pct", 150, "treatments.vip.discount_pct", "less than or equal"),
        ("treatments.vip.channel", "e mail", "treatments.vip.channel", "pattern"),
        ("key_account.value_tiers", ["gold"], "key_account.value_tiers[0]", "Input should"),
        ("windows", [30, 30, 365], "windows", "distinct"),
    ],
)
def test_invalid_documents_name_the_offending_path(
    path: str, value: Any, error_path: str, message: str
) -> None:
    errors = _errors(_set(_default_doc(), path, value))
    assert any(e["path"] == error_path and message in e["message"] for e in errors), errors


def test_missing_and_unknown_fields_are_reported_with_their_paths() -> None:
    doc = _default_doc()
    del doc["lifecycle"]["churned_days"]
    doc["lifecycle"]["new_dayz"] = 30
    doc["typo"] = 1
    assert _paths(doc) >= {"lifecycle.churned_days", "lifecycle.new_dayz", "typo"}


def test_every_problem_is_reported_at_once() -> None:
    doc = _set(_default_doc(), "segments.3.treatment", "nope")
    doc = _set(doc, "lifecycle.at_risk_days", 200)
    doc = _set(doc, "value.window", 7)
    assert _paths(doc) >= {"segments[3].treatment", "lifecycle.at_risk_days", "value.window"}


def test_windows_must_cover_every_window_a_rule_uses() -> None:
    doc = _set(_default_doc(), "windows", [30, 365])
    assert _paths(doc) == {"lifecycle.regular_window"}


def test_reactivation_must_be_decidable_from_the_kept_buckets() -> None:
    doc = _set(_default_doc(), "lifecycle.reactivated_days", 185)  # 185 + 180 = 365: fits
    assert parse_rules(json.dumps(doc)).lifecycle.reactivated_days == 185
    too_long = _set(_default_doc(), "lifecycle.reactivated_days", 186)
    assert _paths(too_long) == {"lifecycle.reactivated_days"}


def test_unparseable_and_non_mapping_documents() -> None:
    assert _errors("lifecycle: [unclosed")[0]["path"] == ""
    assert "mapping" in _errors("- just\n- a list\n")[0]["message"]
    assert "mapping" in _errors("")[0]["message"]


def test_duplicate_yaml_keys_are_refused() -> None:
    text = DEFAULT_TEXT.replace("  at_risk_days: 60\n", "  at_risk_days: 60\n  at_risk_days: 90\n")
    (error,) = _errors(text)
    assert "duplicate key 'at_risk_days'" in error["message"]


def test_rules_error_message_lists_every_issue() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(json.dumps(_set(_default_doc(), "segments.3.treatment", "nope")))
    assert "segments[3].treatment: unknown treatment 'nope'" in str(caught.value)


def test_constructing_rules_directly_runs_the_same_checks() -> None:
    with pytest.raises(RulesError):
        Rules.model_validate(_set(_default_doc(), "segments.3.treatment", "nope"))
