"""Microbenchmark of ``classify``: microseconds per call for a typical and a heavy profile.

Run: ``python -m bench.classifier`` (or ``python bench/classifier.py``). The consumer calls
``classify`` once per touched customer, so at 25,000 events/s the budget is 40 µs per event
for everything; the target for ``classify`` alone is <= 20 µs for a typical customer.
"""

from __future__ import annotations

import sys
import timeit
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.segmentation.classifier import classify
from service.segmentation.profile import MONEY_SCALE, MS_PER_DAY, Profile, Totals
from service.segmentation.rules import load_rules
from service.segmentation.windows import utc_day

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def _profile(purchase_days: int, spacing: int) -> Profile:
    today = utc_day(NOW)
    days: dict[int, Totals] = {}
    lifetime = Totals()
    for i in range(purchase_days):
        day = today - 3 - i * spacing
        totals = Totals(
            orders=1,
            spend=(40 + i % 7 * 10) * MONEY_SCALE,
            margin=12 * MONEY_SCALE,
            discounted_spend=(10 * MONEY_SCALE) if i % 3 == 0 else 0,
            premium_spend=(20 * MONEY_SCALE) if i % 4 == 0 else 0,
            engagements=2,
        )
        days[day] = totals
        lifetime = lifetime + totals
    first, last = min(days), max(days)
    return Profile(
        customer_id="bench",
        first_purchase_ms=first * MS_PER_DAY + 3_600_000,
        last_purchase_ms=last * MS_PER_DAY + 3_600_000,
        last_engagement_ms=last * MS_PER_DAY,
        lifetime=lifetime,
        days=days,
    )


def main() -> None:
    rules = load_rules(None)
    cases = {
        "typical (5 purchase days)": _profile(5, 40),
        "heavy (200 purchase days)": _profile(200, 1),
        "prospect (no buckets)": Profile(customer_id="p", last_engagement_ms=0),
    }
    for name, profile in cases.items():
        result = classify(profile, rules, now=NOW)

        def run(profile: Profile = profile) -> None:
            classify(profile, rules, now=NOW)

        timer = timeit.Timer(run)
        loops, _ = timer.autorange()
        best = min(timer.repeat(repeat=5, number=loops)) / loops
        print(f"{name:28} {best * 1e6:7.2f} µs/classify  -> {result.segment}")


if __name__ == "__main__":
    main()
