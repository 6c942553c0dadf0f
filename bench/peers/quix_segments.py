"""The segmentation job as a Python team would write it with Quix Streams (peer benchmark).

Consume customer events (JSON, key = customer_id), keep per-customer daily buckets
(orders, spend, refunded) in Quix state (RocksDB, keyed by the message key = customer_id),
derive 30/90/365-day windows, score RFM and name a segment, and emit one record per input
event to the output topic: key customer_id, value {customer_id, segment, r, f, m}.

Quix settings are the library defaults on purpose (Quix Streams 3.28): RocksDB state with
changelog topics, processing_guarantee="at-least-once", commit_interval=5.0 s,
commit_every=0, default RocksDB options, orjson (de)serializers. Windows are UTC calendar
days ending today (wall clock), recency in whole days since the last purchase's UTC day.

    python bench/peers/quix_segments.py --bootstrap HOST:PORT --input customer.events \
        --output segments.quix --group quix-bench-1 --state-dir /tmp/quix-state
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from quixstreams import Application, State

WINDOWS = (30, 90, 365)
LONGEST = max(WINDOWS)


def _cents(amount: str) -> int:
    return int(Decimal(amount) * 100)


def _utc_day(occurred_at: str) -> int:
    return int(datetime.fromisoformat(occurred_at).timestamp()) // 86400


def score_r(recency_days: int | None) -> int:
    if recency_days is None:
        return 1
    if recency_days <= 14:
        return 5
    if recency_days <= 30:
        return 4
    if recency_days <= 60:
        return 3
    if recency_days <= 120:
        return 2
    return 1


def score_f(orders_365: int) -> int:
    if orders_365 >= 12:
        return 5
    if orders_365 >= 6:
        return 4
    if orders_365 >= 3:
        return 3
    if orders_365 >= 2:
        return 2
    return 1


def score_m(net_cents_365: int) -> int:
    if net_cents_365 >= 200_000:
        return 5
    if net_cents_365 >= 100_000:
        return 4
    if net_cents_365 >= 50_000:
        return 3
    if net_cents_365 >= 10_000:
        return 2
    return 1


def segment_name(r: int, f: int, m: int) -> str:
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r <= 2 and f >= 3:
        return "at_risk"
    if r == 1 and f == 1:
        return "lost"
    if f == 1 and r >= 4:
        return "new"
    if f >= 3:
        return "loyal"
    return "other"


def windows(buckets: list[list[int]], today: int) -> dict[int, list[int]]:
    """{N: [orders, spend_cents, refunded_cents]} over the N UTC days ending today."""
    out = {n: [0, 0, 0] for n in WINDOWS}
    for day, orders, spend, refunded in buckets:
        age = today - day
        if age < 0:
            age = 0  # slightly future-dated (clock skew): counts as today
        for n, acc in out.items():
            if age < n:
                acc[0] += orders
                acc[1] += spend
                acc[2] += refunded
    return out


def update_and_classify(event: dict[str, Any], state: State) -> dict[str, Any]:
    """Apply one event to the customer's profile in state and return its segment."""
    today = int(time.time()) // 86400
    profile = state.get("profile") or {"last": None, "b": []}
    buckets: list[list[int]] = profile["b"]
    kind = event["type"]
    if kind in ("purchase", "refund"):
        day = _utc_day(event["occurred_at"])
        cents = _cents(event["amount"])
        if kind == "purchase" and (profile["last"] is None or day > profile["last"]):
            profile["last"] = day
        if today - day < LONGEST:
            for b in buckets:
                if b[0] == day:
                    break
            else:
                b = [day, 0, 0, 0]
                buckets.append(b)
            if kind == "purchase":
                b[1] += 1
                b[2] += cents
            else:
                b[3] += cents
        # Trim buckets that have left the longest window.
        profile["b"] = [b for b in buckets if today - b[0] < LONGEST]
        state.set("profile", profile)

    w = windows(profile["b"], today)[365]
    last = profile["last"]
    r = score_r(None if last is None else max(0, today - last))
    f = score_f(w[0])
    m = score_m(w[1] - w[2])
    return {
        "customer_id": event["customer_id"],
        "segment": segment_name(r, f, m),
        "r": r,
        "f": f,
        "m": m,
    }


def tolerate_missing_topic_configs() -> None:
    """Tansu 0.6 answers DescribeConfigs with no topic configs, and Quix needs `retention.ms`
    of the input topic to derive its changelog topic. Fill in Kafka's defaults when a
    broker returns none; on a real Kafka broker this changes nothing."""
    from quixstreams.models.topics.admin import TopicAdmin

    original = TopicAdmin.inspect_topics

    def inspect_topics(self: TopicAdmin, *args: Any, **kwargs: Any) -> Any:
        configs = original(self, *args, **kwargs)
        for cfg in configs.values():
            if cfg is not None:
                cfg.extra_config.setdefault("retention.ms", "604800000")
                cfg.extra_config.setdefault("retention.bytes", "-1")
        return configs

    TopicAdmin.inspect_topics = inspect_topics  # type: ignore[method-assign]


def build_app(
    bootstrap: str, input_topic: str, output_topic: str, group: str, state_dir: str | None
) -> Application:
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
    )
    events = app.topic(input_topic, value_deserializer="json", key_deserializer="str")
    segments = app.topic(output_topic, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(events)
    sdf = sdf.apply(update_and_classify, stateful=True)
    sdf.to_topic(segments)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", default="customer.events")
    ap.add_argument("--output", default="customer.segments.quix")
    ap.add_argument("--group", default="quix-segments")
    ap.add_argument("--state-dir", default=None)
    args = ap.parse_args()
    tolerate_missing_topic_configs()
    build_app(args.bootstrap, args.input, args.output, args.group, args.state_dir).run()


if __name__ == "__main__":
    main()
