"""Thresholds from data: quantiles, spend-share cuts, k-means and the proposed rules file."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from service.segmentation.rules import load_rules, parse_rules
from service.segmentation.suggest import (
    Features,
    Reservoir,
    kmeans,
    quantile,
    share_cut,
    suggest,
)

BASE = load_rules(None)


def population(n: int, seed: int = 3) -> list[Features]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.2:  # loyal big spenders
            out.append(
                Features(
                    rng.randrange(0, 20), rng.randrange(8, 30), Decimal(rng.randrange(1500, 6000))
                )
            )
        elif kind < 0.6:  # occasional
            out.append(
                Features(
                    rng.randrange(10, 120), rng.randrange(1, 5), Decimal(rng.randrange(50, 600))
                )
            )
        else:  # lapsed
            out.append(
                Features(
                    rng.randrange(150, 365), rng.randrange(0, 2), Decimal(rng.randrange(0, 200))
                )
            )
    return out


def test_quantile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert [quantile(values, q) for q in (0.2, 0.5, 0.8, 1.0)] == [2.0, 5.0, 8.0, 10.0]
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_share_cut_top_customers_holding_half() -> None:
    spends = [Decimal(v) for v in (100, 50, 25, 15, 10, -5, 0)]
    assert share_cut(spends, 0.5) == Decimal(100)  # 100 of 200 is half
    assert share_cut(spends, 0.8) == Decimal(25)  # 100 + 50 + 25 = 175 >= 160
    assert share_cut([Decimal(0)], 0.5) == Decimal(0)


def test_reservoir_is_bounded_uniform_and_seeded() -> None:
    items = population(5_000)
    a, b = Reservoir(500, seed=9), Reservoir(500, seed=9)
    for f in items:
        a.add(f)
        b.add(f)
    assert a.seen == 5_000 and len(a.items) == 500 and a.items == b.items
    lapsed = sum(1 for f in a.items if f.recency_days >= 150) / 500
    assert 0.32 < lapsed < 0.48  # ~40 % of the population


def test_kmeans_finds_the_three_groups_deterministically() -> None:
    items = population(1_500)
    clusters = kmeans(items, 3, seed=1)
    assert clusters == kmeans(items, 3, seed=1)
    assert len(clusters) == 3 and sum(c.size for c in clusters) == 1_500
    top, _, bottom = clusters
    assert top.net_spend > 1_000 and top.recency_days < 30 and 0.15 < top.share < 0.25
    assert bottom.recency_days > 120


def test_suggest_writes_valid_monotonic_rules() -> None:
    sample = Reservoir(2_000, seed=4)
    for f in population(3_000):
        sample.add(f)
    s = suggest(BASE, sample, seed=4, k=3)
    rfm = s.rules.rfm
    assert list(rfm.r_max_recency_days) == sorted(set(rfm.r_max_recency_days))
    assert list(rfm.f_min_orders) == sorted(set(rfm.f_min_orders), reverse=True)
    assert s.rules.value.high_min_net_spend > s.rules.value.medium_min_net_spend
    text = s.render_yaml()
    assert parse_rules(text) == s.rules  # the file is the rules, comments aside
    assert f"# version: {s.rules.version}" in text
    again = Reservoir(2_000, seed=4)
    for f in population(3_000):
        again.add(f)
    assert suggest(BASE, again, seed=4, k=3).render_yaml() == text
    # thresholds other than R/F/M and value are the base's
    assert s.rules.lifecycle == BASE.lifecycle and s.rules.segments == BASE.segments


def test_suggest_needs_buyers() -> None:
    with pytest.raises(ValueError, match="no customer"):
        suggest(BASE, Reservoir(10, seed=1), seed=1)
