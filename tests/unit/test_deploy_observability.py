"""The Grafana dashboard and the Prometheus alerts use exactly the metric names and labels the
code exports: every PromQL expression is tokenised, every metric name it selects must be a
sample name of the real registries (``ConsumerMetrics``, ``ApiMetrics``), and every label it
matches or groups by must be a label of those metrics (or ``job``/``instance``, which
Prometheus adds at scrape time)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from consumers.handler import BatchStats
from consumers.metrics import ConsumerMetrics
from service.api.metrics import ApiMetrics
from service.segmentation.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "segments.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET_LABELS = {"job", "instance"}
"""Added by Prometheus to every scraped series."""

_AGGREGATIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
}  # fmt: skip
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*")
    | (?P<matchers>\{[^}]*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<lparen>\()
    | (?P<rparen>\))
    | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>,=])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"(?:\\.|[^\"\\])*\"\s*,?")


@dataclass
class Selection:
    """What one PromQL expression selects."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    """Metric name → label names matched in its ``{...}``."""
    grouping: set[str] = field(default_factory=set)
    """Label names in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenise {expr[pos : pos + 30]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, m.group()


def _matcher_labels(block: str) -> set[str]:
    inner = block[1:-1].strip()
    labels = set()
    pos = 0
    while pos < len(inner):
        m = _MATCHER.match(inner, pos)
        if m is None:
            raise ValueError(f"cannot read label matchers {block!r}")
        labels.add(m.group(1))
        pos = m.end()
    return labels


def select(expr: str) -> Selection:
    """Metric names (with their matched labels) and grouping labels of a PromQL expression."""
    tokens = list(_tokens(expr))
    out = Selection()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in _GROUPING:
            if following[0] == "lparen":  # a label list; group_left may have none
                j = i + 2
                while tokens[j][0] != "rparen":
                    if tokens[j][0] == "ident":
                        out.grouping.add(tokens[j][1])
                    j += 1
                i = j
        elif kind == "ident" and text in _KEYWORDS:
            pass
        elif kind == "ident" and (following[0] == "lparen" or text in _AGGREGATIONS):
            pass  # a function or an aggregation
        elif kind == "ident":
            labels = out.metrics.setdefault(text, set())
            if following[0] == "matchers":
                labels |= _matcher_labels(following[1])
                i += 1
        elif kind == "matchers":
            raise ValueError(f"label matchers without a metric name in {expr!r}")
        i += 1
    return out


def exported() -> dict[str, set[str]]:
    """Every sample name the code exports → its label names, from real registries with every
    labelled metric exercised once (a labelled metric has no sample before its first use)."""
    consumer = ConsumerMetrics()
    rules = load_rules(None)
    consumer.set_rules(rules)

    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    @dataclass(frozen=True)
    class Rec:
        timestamp: int

    consumer.observe_batch(
        BatchStats(records=2, applied=1, dead_lettered=1, dead_letter_reasons={"invalid_json": 1}),
        [Rec(1)],
        committed={TP("events", 0): 5},
        highwater=lambda tp: 9,
        commit_s=0.01,
    )
    consumer.set_assignment([TP("events", 0)])
    first = rules.segments[0].name
    consumer.observe_changes([{"cause": "event", "previous": None, "current": {"segment": first}}])
    consumer.observe_sweep([1.0])
    consumer.redis_error("apply")
    consumer.kafka_error("commit")
    api = ApiMetrics()
    api.observe("/healthz", "GET", 200, 0.001)
    api.redis_error("/readyz")
    api.kafka_error("stream")
    names: dict[str, set[str]] = {}
    for registry in (consumer.registry, api.registry):
        for family in registry.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard_exprs() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def problems(expr: str, names: dict[str, set[str]]) -> list[str]:
    selection = select(expr)
    found: list[str] = []
    if not selection.metrics:
        found.append(f"selects no metric: {expr}")
    available = set(TARGET_LABELS)
    for metric, labels in selection.metrics.items():
        if metric not in names:
            found.append(f"unknown metric {metric}")
            continue
        available |= names[metric]
        unknown = labels - names[metric] - TARGET_LABELS
        if unknown:
            found.append(f"{metric} has no label {sorted(unknown)}")
    if unknown_grouping := selection.grouping - available:
        found.append(f"grouping by labels no selected metric has: {sorted(unknown_grouping)}")
    return found


NAMES = exported()


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_expression_uses_exported_names(expr: str) -> None:
    assert problems(expr, NAMES) == []


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_uses_exported_names(rule: dict[str, object]) -> None:
    assert problems(str(rule["expr"]), NAMES) == []
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict) and labels["severity"] in ("warning", "critical")
    assert isinstance(annotations, dict) and annotations["summary"]
    assert re.fullmatch(r"\d+[smh]", str(rule["for"]))


def test_the_alerts_the_issue_asks_for_exist() -> None:
    alerts = {str(rule["alert"]) for rule in alert_rules()}
    for wanted in (
        "SegmentsConsumerLagGrowing",
        "SegmentsDeadLetters",
        "SegmentsSweeperLagHigh",
        "SegmentsApi5xxRate",
    ):
        assert wanted in alerts


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] == "customer-segments"
    titles = " | ".join(p["title"] for p in document["panels"]).lower()
    for topic in ("events per second", "lag", "dead letters", "latency", "cause", "sweeper",
                  "5xx"):  # fmt: skip
        assert topic in titles
    for panel in document["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]


def test_the_checker_catches_mistakes() -> None:
    """The parser must not wave anything through: typos, wrong labels, wrong suffixes."""
    assert problems("sum(rate(segments_events_consumd_total[5m]))", NAMES) == [
        "unknown metric segments_events_consumd_total"
    ]
    assert problems('segments_events_dead_lettered_total{reasn="x"}', NAMES) == [
        "segments_events_dead_lettered_total has no label ['reasn']"
    ]
    assert problems("sum by (stage) (segments_batch_size_records_count)", NAMES) == [
        "grouping by labels no selected metric has: ['stage']"
    ]
    assert problems("rate(segments_end_to_end_latency_seconds[5m])", NAMES) == [
        "unknown metric segments_end_to_end_latency_seconds"  # a histogram has no plain series
    ]
    assert problems("segments_consumer_lag_records_total", NAMES) == [
        "unknown metric segments_consumer_lag_records_total"  # a gauge has no _total
    ]
    assert select(
        'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{status!~"5..",a="b"}[5m])))'
    ).metrics == {"x_bucket": {"status", "a"}}
