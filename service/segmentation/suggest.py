"""Thresholds from data (pure): what ``segments rules suggest`` proposes.

The population is streamed once (shard by shard, by :mod:`service.rules_suggest`) into a
:class:`Reservoir`: a uniform random sample of bounded size (Vitter's algorithm R with a seeded
generator), so memory stays fixed however many millions of customers pass. From the sample:

- R/F/M quintile cut points (the 20/40/60/80 % quantiles of recency, orders and net spend over
  the RFM window), made strictly monotonic as the rules require;
- value-tier cut points by spend share: customers sorted by net spend, the spend at which the
  top customers hold ``high_share`` (default 50 %) and ``medium_share`` (80 %) of the net spend;
- a small k-means (k-means++ seeding, Lloyd iterations, pure Python) over the scaled features
  (recency, log orders, log net spend; each standardised), describing the natural clusters.

Everything is deterministic for a seed and the same data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

from service.segmentation.rules import Rules, rules_from_data


@dataclass(frozen=True, slots=True)
class Features:
    """One customer's RFM inputs over the RFM window."""

    recency_days: int
    orders: int
    net_spend: Decimal


class Reservoir:
    """A uniform sample of at most ``size`` items from a stream of unknown length."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.seen = 0
        self.items: list[Features] = []
        self._rng = random.Random(seed)  # noqa: S311 - sampling, not secrecy

    def add(self, item: Features) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = item


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of values sorted ascending."""
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def share_cut(net_spends: list[Decimal], share: float) -> Decimal:
    """Net spend of the customer at which the biggest spenders, from the top down, first
    hold ``share`` of the total positive net spend."""
    ordered = sorted((s for s in net_spends if s > 0), reverse=True)
    total = sum(ordered, Decimal(0))
    if total == 0:
        return Decimal(0)
    running = Decimal(0)
    for spend in ordered:
        running += spend
        if running >= total * Decimal(str(share)):
            return spend
    return ordered[-1]


@dataclass(frozen=True, slots=True)
class Cluster:
    size: int
    share: float
    recency_days: float
    """Centroid, in the original units (recency in days, orders, net spend)."""
    orders: float
    net_spend: float

    def describe(self) -> str:
        recent = (
            "recent"
            if self.recency_days <= 30
            else "lapsing"
            if self.recency_days <= 120
            else "lapsed"
        )
        return (
            f"{self.share:.0%} of customers: {recent} (~{self.recency_days:.0f} days), "
            f"~{self.orders:.1f} orders, ~{self.net_spend:.0f} net spend"
        )


def _scaled(items: list[Features]) -> tuple[list[list[float]], list[tuple[float, float]]]:
    raw = [
        [float(f.recency_days), math.log1p(f.orders), math.log1p(max(0.0, float(f.net_spend)))]
        for f in items
    ]
    stats = []
    for d in range(3):
        column = [row[d] for row in raw]
        mean = sum(column) / len(column)
        sd = math.sqrt(sum((x - mean) ** 2 for x in column) / len(column)) or 1.0
        stats.append((mean, sd))
    return [[(row[d] - stats[d][0]) / stats[d][1] for d in range(3)] for row in raw], stats


def _distance(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def kmeans(
    items: list[Features], k: int, seed: int, *, restarts: int = 8, iterations: int = 50
) -> list[Cluster]:
    """k-means on standardised (recency, log1p orders, log1p net spend): k-means++ seeding and
    Lloyd iterations, the best of ``restarts`` runs (lowest within-cluster sum of squares)."""
    if not items:
        return []
    points, _ = _scaled(items)
    k = max(1, min(k, len(points)))
    rng = random.Random(seed)  # noqa: S311 - seeding, not secrecy
    best: tuple[float, list[int]] | None = None
    for _ in range(restarts):
        inertia, assignment = _lloyd(points, _plus_plus(points, k, rng), iterations)
        if best is None or inertia < best[0]:
            best = (inertia, assignment)
    assert best is not None
    assignment = best[1]
    clusters = []
    for c in sorted(set(assignment)):
        members = [f for f, a in zip(items, assignment, strict=True) if a == c]
        clusters.append(
            Cluster(
                size=len(members),
                share=len(members) / len(items),
                recency_days=sum(m.recency_days for m in members) / len(members),
                orders=sum(m.orders for m in members) / len(members),
                net_spend=sum(float(m.net_spend) for m in members) / len(members),
            )
        )
    return sorted(clusters, key=lambda c: (-c.net_spend, c.recency_days))


def _plus_plus(points: list[list[float]], k: int, rng: random.Random) -> list[list[float]]:
    centres = [points[rng.randrange(len(points))]]
    while len(centres) < k:
        weights = [min(_distance(p, c) for c in centres) for p in points]
        total = sum(weights)
        if total == 0:
            break
        pick = rng.random() * total
        chosen = points[-1]
        for p, w in zip(points, weights, strict=True):
            pick -= w
            if pick <= 0:
                chosen = p
                break
        centres.append(chosen)
    return centres


def _lloyd(
    points: list[list[float]], centres: list[list[float]], iterations: int
) -> tuple[float, list[int]]:
    assignment: list[int] = []
    for _ in range(iterations):
        new = [min(range(len(centres)), key=lambda c: _distance(p, centres[c])) for p in points]
        if new == assignment:
            break
        assignment = new
        for c in range(len(centres)):
            near = [p for p, a in zip(points, assignment, strict=True) if a == c]
            if near:
                centres[c] = [sum(m[d] for m in near) / len(near) for d in range(3)]
    inertia = sum(_distance(p, centres[a]) for p, a in zip(points, assignment, strict=True))
    return inertia, assignment


@dataclass(frozen=True, slots=True)
class Suggestion:
    rules: Rules
    customers_seen: int
    sampled: int
    clusters: list[Cluster]
    notes: list[str]

    def render_yaml(self) -> str:
        """A rules file: comments with what was measured, then the document."""
        header = [
            "# Rules proposed by `segments rules suggest` from the data:",
            f"#   {self.customers_seen} customers scanned, {self.sampled} sampled uniformly.",
            *(f"#   {note}" for note in self.notes),
            "# Natural clusters (k-means over scaled recency, log orders, log net spend):",
            *(f"#   - {c.describe()}" for c in self.clusters),
            "# Dry-run it (PUT /v1/rules?dry_run=true, `segments rules diff FILE --sample`),",
            "# then activate it.",
            f"# version: {self.rules.version}",
            "",
        ]
        body = yaml.safe_dump(self.rules.document(), sort_keys=False, allow_unicode=True)
        return "\n".join(header) + body


def _strictly_decreasing(values: list[int], floor: int) -> list[int]:
    """Cut points for scores 5..2, strictly decreasing, the last >= floor."""
    out = list(values)
    out[-1] = max(out[-1], floor)
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] + 1)
    return out


def suggest(
    base: Rules,
    sample: Reservoir,
    *,
    seed: int,
    k: int = 5,
    high_share: float = 0.5,
    medium_share: float = 0.8,
) -> Suggestion:
    """New R/F/M cut points and value-tier thresholds on top of ``base``; all else kept."""
    items = sample.items
    if not items:
        raise ValueError("no customer with a purchase to learn from")
    recency = sorted(float(f.recency_days) for f in items)
    orders = sorted(float(f.orders) for f in items)
    spend = sorted(float(f.net_spend) for f in items)

    # R: recency at most these many days scores 5, 4, 3, 2 (ascending, strictly).
    r_cuts: list[int] = []
    for q in (0.2, 0.4, 0.6, 0.8):
        value = max(0, int(quantile(recency, q)))
        r_cuts.append(max(value, r_cuts[-1] + 1) if r_cuts else value)
    # F and M: at least these score 5, 4, 3, 2 (descending, strictly).
    f_cuts = _strictly_decreasing([int(quantile(orders, q)) for q in (0.8, 0.6, 0.4, 0.2)], 1)
    m_cents = _strictly_decreasing(
        [round(quantile(spend, q) * 100) for q in (0.8, 0.6, 0.4, 0.2)], 1
    )
    net = [f.net_spend for f in items]
    high = share_cut(net, high_share).quantize(Decimal("0.01"))
    medium = share_cut(net, medium_share).quantize(Decimal("0.01"))
    if medium >= high:
        medium = max(Decimal(0), high - Decimal("0.01"))

    doc: dict[str, Any] = base.document()
    doc["rfm"]["r_max_recency_days"] = r_cuts
    doc["rfm"]["f_min_orders"] = f_cuts
    doc["rfm"]["m_min_net_spend"] = [str(Decimal(c) / 100) for c in m_cents]
    doc["value"]["high_min_net_spend"] = str(high)
    doc["value"]["medium_min_net_spend"] = str(medium)
    rules = rules_from_data(doc)
    notes = [
        f"R cut points (days, quintiles of recency): {r_cuts}",
        f"F cut points (orders in {base.rfm.window}d, quintiles): {f_cuts}",
        f"M cut points (net spend in {base.rfm.window}d, quintiles): "
        f"{doc['rfm']['m_min_net_spend']}",
        f"value high: the top customers holding {high_share:.0%} of net spend spend >= {high}",
        f"value medium: ... holding {medium_share:.0%} of net spend spend >= {medium}",
    ]
    return Suggestion(
        rules=rules,
        customers_seen=sample.seen,
        sampled=len(items),
        clusters=kmeans(items, k, seed),
        notes=notes,
    )
