"""Time travel with an injected clock, real broker and Redis: a regular customer who stops
buying drifts to at risk and churned on time with no event, then a new purchase (through the
real consumer) reactivates them. Every review lands within 5 s of its due time with the default
sweep interval, and the changes topic holds exactly the expected change events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from consumers.runner import ConsumerApp
from consumers.segmenter import min_day_for
from consumers.sweeper import SweepStats, run_sweeper
from service.kafka import ensure_topics
from service.segmentation.classifier import classify
from service.segmentation.rules import load_rules
from service.segmentation.types import Segmentation
from service.store.keys import Keys
from service.store.packing import epoch_ms
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.events import encode, ground_truth, purchase
from tests.support.kafka import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

RULES = load_rules(None)
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CID = "c-regular"
MAX_LAG_S = 5.0


class TravelClock:
    """Real time, shifted: time passes normally, and a test can jump to any instant."""

    def __init__(self, start: datetime) -> None:
        self.offset = start - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def jump_to(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)


def _expected(events: list[dict], at: datetime) -> Segmentation:  # type: ignore[type-arg]
    profile = ground_truth(events, min_day=min_day_for(at, RULES))[CID]
    return classify(profile, RULES, now=at)


def _fingerprint(seg: Segmentation) -> tuple[object, ...]:
    return (seg.segment, seg.axes, seg.treatment.id)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_regular_to_at_risk_to_churned_on_time_then_reactivated(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()  # the default sweep interval (1 s)
    assert settings.sweep.interval_s == 1.0
    k = settings.kafka
    await ensure_topics(k, partitions=2)
    clock = TravelClock(T0)
    history = [
        purchase(CID, f"e{i}", T0 - timedelta(days=10 * i, hours=1), "40.00") for i in range(12)
    ]
    await produce(k, k.events_topic, [(CID.encode(), encode(e)) for e in history])

    app = ConsumerApp(settings, rules=RULES, clock=clock)
    stopping = asyncio.Event()
    stats = SweepStats()
    consumer = asyncio.create_task(app.run())
    sweeper = asyncio.create_task(
        run_sweeper(settings, stopping=stopping, rules=lambda: RULES, clock=clock, stats=stats)
    )
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)

    async def stored():  # type: ignore[no-untyped-def]
        states = await store.read([CID], min_day=0)
        return None if CID not in states else states[CID].stored

    # (cause, review_at, segment before, segment after, lifecycle after) of every change
    expected: list[tuple[str, str | None, str | None, str, str]] = []
    try:
        await wait_for(lambda: app.totals.records >= len(history), timeout_s=60, what="history")
        first = _expected(history, T0)
        assert first.axes.lifecycle == "regular"
        expected.append(("event", None, None, first.segment, "regular"))
        current = first
        lifecycles = ["regular"]

        # Jump to just before each review in turn; the sweeper must take it within 5 s.
        while current.axes.lifecycle != "churned":
            review_at = current.next_review_at
            assert review_at is not None
            after = _expected(history, review_at)
            clock.jump_to(review_at - timedelta(seconds=0.5))

            async def reviewed(at: datetime = review_at) -> bool:
                s = await stored()
                return s is not None and s.as_of_ms >= epoch_ms(at)

            await wait_for(reviewed, timeout_s=15, what=f"the review due at {review_at}")
            s = await stored()
            assert s is not None
            lag_s = (s.as_of_ms - epoch_ms(review_at)) / 1000
            assert 0 <= lag_s <= MAX_LAG_S, f"review due at {review_at} came {lag_s:.2f}s late"
            assert s.segment == after.segment
            assert s.axes == after.axes
            assert s.next_review_ms == (
                None if after.next_review_at is None else epoch_ms(after.next_review_at)
            )
            if _fingerprint(after) != _fingerprint(current):
                expected.append(
                    ("time", _iso(review_at), current.segment, after.segment, after.axes.lifecycle)
                )
            if after.axes.lifecycle != lifecycles[-1]:
                lifecycles.append(after.axes.lifecycle)
            current = after
        assert lifecycles == ["regular", "at_risk", "churned"]

        # A week later (before the next review), a purchase after the long silence, through
        # the real consumer: reactivated.
        assert current.next_review_at is not None
        week_later = clock() + timedelta(days=7)
        assert current.next_review_at > week_later
        clock.jump_to(week_later)
        comeback = purchase(CID, "e-back", clock() - timedelta(minutes=1), "25.00")
        history.append(comeback)
        back = _expected(history, clock())
        assert back.axes.lifecycle == "reactivated"
        expected.append(("event", None, current.segment, back.segment, "reactivated"))
        await produce(k, k.events_topic, [(CID.encode(), encode(comeback))])

        async def reactivated() -> bool:
            s = await stored()
            return s is not None and s.axes.lifecycle == "reactivated"

        await wait_for(reactivated, timeout_s=30, what="reactivation")
    finally:
        stopping.set()
        app.request_stop()
        await asyncio.wait_for(asyncio.gather(consumer, sweeper), 30)
        await redis.aclose()

    records = await read_topic(k, k.changes_topic, at_least=len(expected))
    changes = sorted((orjson.loads(r.value) for r in records), key=lambda c: c["as_of"])
    got = [
        (
            c["cause"],
            None if c["trigger"] is None else c["trigger"]["review_at"],
            None if c["previous"] is None else c["previous"]["segment"],
            c["current"]["segment"],
            c["current"]["axes"]["lifecycle"],
        )
        for c in changes
    ]
    assert got == expected
    for c in changes:
        if c["cause"] == "time":
            lag = datetime.fromisoformat(c["as_of"]) - datetime.fromisoformat(
                c["trigger"]["review_at"]
            )
            assert timedelta(0) <= lag <= timedelta(seconds=MAX_LAG_S)
    # The sweeper's own lag measure saw every time change, each within the bound.
    assert len(stats.lag_s) == sum(1 for c in changes if c["cause"] == "time")
    assert min(stats.lag_s) >= 0 and max(stats.lag_s) <= MAX_LAG_S
