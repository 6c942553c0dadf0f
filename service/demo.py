"""Synthetic customer traffic for the demo: a year of history, then live events.

Personas follow the business material: regulars who buy often, one-off buyers, customers who
are lapsing, refund-heavy ones, price-sensitive bargain hunters, premium buyers, and browsers who
never buy. Deterministic for a seed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from service.kafka import client_options, ensure_topics
from service.settings import Settings

log = logging.getLogger(__name__)

CATEGORIES = ("shoes", "outdoor", "kitchen", "books", "electronics", "garden", "toys")


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    weight: float
    purchase_gap_days: tuple[int, int]
    """Days between purchases (min, max); (0, 0) never buys."""
    basket: tuple[float, float]
    refund_rate: float
    discount_rate: float
    premium_rate: float
    stopped_days_ago: int = 0
    """Bought until this many days ago, then nothing (lapsing customers)."""


PERSONAS = (
    Persona("regular", 0.22, (5, 25), (20, 120), 0.03, 0.2, 0.3),
    Persona("vip", 0.03, (2, 8), (150, 900), 0.02, 0.05, 0.7),
    Persona("one_off", 0.22, (400, 400), (15, 80), 0.05, 0.4, 0.1),
    Persona("lapsing", 0.15, (10, 40), (20, 150), 0.05, 0.2, 0.2, stopped_days_ago=75),
    Persona("churned", 0.1, (15, 60), (20, 100), 0.05, 0.3, 0.1, stopped_days_ago=220),
    Persona("refunder", 0.06, (10, 30), (40, 200), 0.8, 0.3, 0.1),
    Persona("bargain", 0.1, (10, 40), (10, 60), 0.03, 0.95, 0.0),
    Persona("browser", 0.12, (0, 0), (0, 0), 0.0, 0.0, 0.0),
)


class TrafficGenerator:
    def __init__(self, customers: int, *, seed: int = 42) -> None:
        self._rng = random.Random(seed)
        weights = [p.weight for p in PERSONAS]
        self.customers = [
            (f"c-{i:06d}", self._rng.choices(PERSONAS, weights)[0]) for i in range(customers)
        ]
        self._n = 0

    def _event_id(self) -> str:
        self._n += 1
        return f"demo-{self._rng.getrandbits(48):012x}-{self._n}"

    def history(self, now: datetime, days: int = 400) -> Iterator[dict[str, object]]:
        """Each customer's past, oldest first per customer."""
        for cid, persona in self.customers:
            yield from self._past(cid, persona, now, days)

    def _past(self, cid: str, p: Persona, now: datetime, days: int) -> Iterator[dict[str, object]]:
        rng = self._rng
        if p.purchase_gap_days == (0, 0):
            for _ in range(rng.randint(1, 6)):
                yield self._engagement(cid, now - timedelta(days=rng.uniform(0, 60)))
            return
        t = now - timedelta(days=rng.uniform(30, days))
        end = now - timedelta(days=p.stopped_days_ago)
        while t < end:
            yield from self._purchase_and_maybe_refund(cid, p, t)
            if p.purchase_gap_days[0] >= 400:
                break
            t += timedelta(days=rng.uniform(*p.purchase_gap_days))

    def _purchase_and_maybe_refund(
        self, cid: str, p: Persona, at: datetime
    ) -> Iterator[dict[str, object]]:
        rng = self._rng
        amount = round(rng.uniform(*p.basket), 2)
        discounted = rng.random() < p.discount_rate
        premium = rng.random() < p.premium_rate
        order = f"o-{self._event_id()}"
        yield {
            "schema_version": 1,
            "type": "purchase",
            "event_id": self._event_id(),
            "customer_id": cid,
            "occurred_at": at.isoformat(),
            "order_id": order,
            "amount": f"{amount:.2f}",
            "margin": f"{amount * rng.uniform(0.1, 0.35):.2f}",
            "discount": f"{amount * 0.15:.2f}" if discounted else "0",
            "channel": rng.choice(("web", "app", "store")),
            "items": [
                {
                    "sku": f"sku-{rng.randrange(500)}",
                    "category": rng.choice(CATEGORIES),
                    "quantity": 1,
                    "unit_price": f"{amount:.2f}",
                    "tier": "premium" if premium else "standard",
                }
            ],
        }
        if rng.random() < p.refund_rate:
            yield {
                "schema_version": 1,
                "type": "refund",
                "event_id": self._event_id(),
                "customer_id": cid,
                "occurred_at": (at + timedelta(days=rng.uniform(1, 10))).isoformat(),
                "order_id": order,
                "amount": f"{amount * rng.uniform(0.5, 1.0):.2f}",
            }

    def _engagement(self, cid: str, at: datetime) -> dict[str, object]:
        action = self._rng.choice(
            ("viewed", "viewed", "added_to_cart", "email_opened", "support_contact")
        )
        return {
            "schema_version": 1,
            "type": "engagement",
            "event_id": self._event_id(),
            "customer_id": cid,
            "occurred_at": at.isoformat(),
            "action": action,
        }

    def live(self, now: datetime) -> list[dict[str, object]]:
        """One live event (or a purchase with its refund) from a customer picked by persona."""
        cid, p = self._rng.choice(self.customers)
        if p.purchase_gap_days == (0, 0) or p.stopped_days_ago or self._rng.random() < 0.15:
            if p.stopped_days_ago and self._rng.random() < 0.05:
                return list(self._purchase_and_maybe_refund(cid, p, now))  # a win-back
            return [self._engagement(cid, now)]
        return [e for e in self._purchase_and_maybe_refund(cid, p, now) if e["type"] == "purchase"]


async def run_demo(
    settings: Settings, *, rate: float, customers: int, duration_s: float | None
) -> None:
    """Backfills a year of history, then produces live events at ``rate`` per second."""
    await ensure_topics(settings.kafka)
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", linger_ms=20)
    await producer.start()
    gen = TrafficGenerator(customers)
    topic = settings.kafka.events_topic
    try:
        n = 0
        for event in gen.history(datetime.now(UTC)):
            await producer.send(topic, orjson.dumps(event), key=str(event["customer_id"]).encode())
            n += 1
        await producer.flush()
        log.info("demo history produced", extra={"events": n, "customers": customers})
        started = time.monotonic()
        sent = 0
        while duration_s is None or time.monotonic() - started < duration_s:
            for event in gen.live(datetime.now(UTC)):
                await producer.send(
                    topic, orjson.dumps(event), key=str(event["customer_id"]).encode()
                )
                sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
