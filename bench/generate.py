"""Deterministic synthetic customer events for benchmarks.

Library::

    from bench.generate import iter_events, create_topic, produce
    for key, value in iter_events(1000, customers=100, seed=1, now=now):
        ...

CLI::

    python bench/generate.py --bootstrap HOST:PORT --topic T --partitions 8 \
        --events 1000000 --customers 200000 --seed 1 --create-topic

Same (n, customers, seed, now, start) => byte-identical events, in the same order.

Shape of the traffic:
- customer popularity is Zipf-Mandelbrot (weight of popularity rank r ~ 1/(r+50)): a few heavy
  buyers with thousands of events, and a long tail of one-off buyers (and customers with no
  event at all); ranks are shuffled over customer ids so heavy buyers are spread out;
- ~90% purchases, ~4% refunds (full or partial, of one of the last 4096 orders, by that
  order's customer), ~6% engagement events;
- occurred_at advances with the event index over the last 400 days (a replay of history, with
  up to +-3 h of jitter, so neighbours may be slightly out of order), rendered in the
  customer's own UTC offset (+01:00, -05:00, +05:30, ...), never after `now`;
- money as strings with exactly 2 decimals; some orders carry a discount, most a margin,
  ~8% of items are premium tier; all amounts in EUR.

Records are keyed by customer_id (UTF-8) and produced with the Java-compatible murmur2
partitioner, so a customer's events always land on the same partition as a Java producer's
would.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

SPAN_DAYS = 400
JITTER_S = 3 * 3600
ZIPF_S = 1.0
ZIPF_Q = 50.0

# (offset in minutes, weight): most customers in Europe, some in the Americas and Asia.
_OFFSETS = [
    (60, 30),
    (0, 15),
    (120, 12),
    (-300, 12),
    (-480, 8),
    (330, 6),
    (540, 5),
    (-180, 4),
    (480, 4),
    (600, 2),
    (-600, 1),
    (345, 1),
]
_CATEGORIES = [
    # name, min unit price (cents), max unit price (cents), weight
    ("apparel", 900, 12000, 22),
    ("shoes", 2900, 18000, 14),
    ("beauty", 400, 6000, 14),
    ("home", 1200, 25000, 12),
    ("electronics", 1900, 120000, 8),
    ("books", 500, 4500, 10),
    ("grocery", 150, 3000, 12),
    ("sports", 1500, 30000, 6),
    ("toys", 800, 9000, 2),
]
_CHANNELS = [("web", 55), ("app", 30), ("store", 12), ("phone", 3)]
_ACTIONS = [
    ("viewed", 60),
    ("added_to_cart", 25),
    ("support_contact", 8),
    ("signed_up", 5),
    ("wishlisted", 2),
]
_N_ITEMS = [(1, 60), (2, 25), (3, 10), (4, 5)]
_QUANTITY = [(1, 80), (2, 15), (3, 5)]

P_PURCHASE = 0.90
P_REFUND = 0.04  # the rest (~6%) is engagement
P_DISCOUNT = 0.20
P_MARGIN = 0.85
P_PREMIUM = 0.08
P_FULL_REFUND = 0.5
RING = 4096
SKUS_PER_CATEGORY = 500


def _expand(pairs: list[tuple[Any, int]]) -> list[Any]:
    """A lookup table: pick uniformly from it to get the weighted distribution."""
    return [v for v, w in pairs for _ in range(w)]


def _fmt_offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    m = abs(minutes)
    return f"{sign}{m // 60:02d}:{m % 60:02d}"


_CENTS = [f"{i:02d}" for i in range(100)]


def _money(cents: int) -> str:
    q, r = divmod(cents, 100)
    return f"{q}.{_CENTS[r]}"


def _to_epoch(now: datetime | float | int | None) -> int:
    if now is None:
        now = datetime.now(UTC)
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return int(now.timestamp())
    return int(now)


def _catalog(rng: random.Random) -> list[dict[int, tuple[dict[str, Any], int]]]:
    """SKUs_PER_CATEGORY SKUs per category, each with a fixed price and tier; entries are
    picked with the category weights. Each entry maps quantity -> (item object, line cents);
    the item objects are shared between events (they are only serialized)."""
    rand = rng.random
    catalog = []
    for cat, lo, hi, weight in _CATEGORIES:
        skus = []
        for k in range(SKUS_PER_CATEGORY):
            r = rand()
            premium = rand() < P_PREMIUM
            unit = lo + int((hi - lo) * r * r)
            if premium:
                unit = unit * 5 // 2
            if unit >= 100:
                unit = unit // 10 * 10 + 9  # x.x9 prices
            tier = "premium" if premium else "standard"
            skus.append(
                {
                    q: (
                        {
                            "sku": f"sku-{cat[:3]}-{k}",
                            "category": cat,
                            "quantity": q,
                            "unit_price": _money(unit),
                            "tier": tier,
                        },
                        unit * q,
                    )
                    for q in (1, 2, 3)
                }
            )
        catalog.extend(skus * weight)
    return catalog


def customer_id(index: int, customers: int) -> str:
    width = max(6, len(str(max(customers - 1, 0))))
    return f"c-{index:0{width}d}"


def iter_events(
    n: int,
    customers: int,
    seed: int = 1,
    now: datetime | float | int | None = None,
    *,
    start: int = 0,
    span_days: int = SPAN_DAYS,
) -> Iterator[tuple[bytes, bytes]]:
    """Yield `n` events as (key, value) bytes: key = customer_id, value = one JSON object.

    `now` (aware datetime or epoch seconds; default: the current time) anchors the 400-day
    span; pass it explicitly for reproducible output. `start` offsets the event/order numbers
    (e-<n>, o-<n>) so several batches can share a topic without id clashes. `span_days`: how
    many days back the history starts (a shorter span bounds each customer's daily buckets).
    """
    if n < 0 or customers < 1:
        raise ValueError("need n >= 0 and customers >= 1")
    now_s = _to_epoch(now)
    rng = random.Random(seed)
    rand = rng.random

    # Popularity: rank r has weight 1/(r+q)^s; ranks are shuffled over customer indexes.
    cum = list(itertools.accumulate(1.0 / (r + ZIPF_Q) ** ZIPF_S for r in range(customers)))
    total = cum[-1]
    rank_to_customer = list(range(customers))
    rng.shuffle(rank_to_customer)
    cids = [customer_id(i, customers) for i in range(customers)]
    ids = [c.encode() for c in cids]
    offsets = _expand(_OFFSETS)
    # A customer's UTC offset is a fixed function of its index (people don't move much).
    cust_offset = [offsets[(i * 2654435761 >> 7) % len(offsets)] for i in range(customers)]
    offset_str = {m: _fmt_offset(m) for m, _ in _OFFSETS}

    catalog = _catalog(rng)
    n_catalog = len(catalog)
    channels = _expand(_CHANNELS)
    actions = _expand(_ACTIONS)
    n_items_t = _expand(_N_ITEMS)
    qty_t = _expand(_QUANTITY)
    n_chan, n_act, n_items_n, n_qty = len(channels), len(actions), len(n_items_t), len(qty_t)
    # Refunds are of recent orders: a ring of the last RING orders (None once refunded).
    ring: list[tuple[int, int, int] | None] = [None] * RING  # (customer, order number, cents)
    ring_pos = 0
    day_str: dict[int, str] = {}
    tod = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)]
    epoch0 = date(1970, 1, 1)
    dumps = orjson.dumps
    bisect_ = bisect.bisect
    span_s = span_days * 86400
    t_begin = now_s - span_s

    for k in range(n):
        num = start + k
        u = rand()
        refund = None
        if P_PURCHASE <= u < P_PURCHASE + P_REFUND:
            slot = int(rand() * RING)
            refund = ring[slot]
            ring[slot] = None
            if refund is None:
                u = 0.0  # nothing to refund yet: a purchase instead
        if refund is not None:
            cidx = refund[0]
        else:
            cidx = rank_to_customer[min(bisect_(cum, rand() * total), customers - 1)]
        cid = cids[cidx]

        t = t_begin + (span_s * (k + rand())) // max(n, 1) + int((rand() * 2 - 1) * JITTER_S)
        if t > now_s - 1:
            t = now_s - 1
        off = cust_offset[cidx]
        local = int(t) + off * 60
        day, sod = divmod(local, 86400)
        ds = day_str.get(day)
        if ds is None:
            ds = day_str[day] = (epoch0 + timedelta(days=day)).isoformat()
        occurred_at = ds + tod[sod] + offset_str[off]

        ev: dict[str, Any]
        if refund is not None:
            _, order_no, order_cents = refund
            if rand() < P_FULL_REFUND:
                cents = order_cents
            else:
                cents = max(1, int(order_cents * (0.1 + 0.8 * rand())))
            ev = {
                "schema_version": 1,
                "type": "refund",
                "event_id": f"e-{num}",
                "customer_id": cid,
                "occurred_at": occurred_at,
                "order_id": f"o-{order_no}",
                "amount": _money(cents),
            }
        elif u >= P_PURCHASE + P_REFUND:
            ev = {
                "schema_version": 1,
                "type": "engagement",
                "event_id": f"e-{num}",
                "customer_id": cid,
                "occurred_at": occurred_at,
                "action": actions[int(rand() * n_act)],
            }
        else:
            items = []
            subtotal = 0
            for _ in range(n_items_t[int(rand() * n_items_n)]):
                item, line_cents = catalog[int(rand() * n_catalog)][qty_t[int(rand() * n_qty)]]
                items.append(item)
                subtotal += line_cents
            discount = 0
            if rand() < P_DISCOUNT:
                discount = subtotal * (5 + int(rand() * 21)) // 100
            amount = subtotal - discount
            ev = {
                "schema_version": 1,
                "type": "purchase",
                "event_id": f"e-{num}",
                "customer_id": cid,
                "occurred_at": occurred_at,
                "order_id": f"o-{num}",
                "amount": _money(amount),
                "currency": "EUR",
            }
            if rand() < P_MARGIN:
                ev["margin"] = _money(amount * (10 + int(rand() * 36)) // 100)
            if discount:
                ev["discount"] = _money(discount)
            ev["channel"] = channels[int(rand() * n_chan)]
            ev["items"] = items
            ring[ring_pos] = (cidx, num, amount)
            ring_pos = (ring_pos + 1) % RING
        yield ids[cidx], dumps(ev)


def create_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> bool:
    """Create `topic`; return False if it already exists (its partition count is checked)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=config or {},
            )
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )[topic]
    created = True
    try:
        fut.result()
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
        created = False
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic=topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) > 0:
            if len(md.partitions) != partitions:
                raise RuntimeError(
                    f"topic {topic} has {len(md.partitions)} partitions, wanted {partitions}"
                )
            return created
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not visible after {timeout}s")
        time.sleep(0.2)


PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "compression.type": "lz4",
    "acks": "all",
    "partitioner": "murmur2_random",  # same partition as the Java client for the same key
    "delivery.report.only.error": True,
}


def produce(
    bootstrap: str,
    topic: str,
    events: Iterator[tuple[bytes, bytes]] | Any,
    *,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Produce (key, value) pairs to `topic`; return counts and timing. Raises if any failed."""
    from confluent_kafka import Producer

    errors: list[str] = []

    def on_error(err: Any, msg: Any) -> None:  # called for failed deliveries only
        if err is not None:
            errors.append(str(err))

    conf = {
        "bootstrap.servers": bootstrap,
        **PRODUCER_CONFIG,
        **(config or {}),
        "on_delivery": on_error,
    }
    p = Producer(conf)
    produce_ = p.produce
    poll = p.poll
    count = 0
    nbytes = 0
    t0 = time.perf_counter()
    for key, value in events:
        while True:
            try:
                produce_(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        count += 1
        nbytes += len(value)
        if count & 0x3FFF == 0:
            poll(0)
    remaining = p.flush(120)
    elapsed = time.perf_counter() - t0
    if remaining:
        raise RuntimeError(f"{remaining} messages still undelivered after flush")
    if errors:
        raise RuntimeError(f"{len(errors)} deliveries failed, first: {errors[0]}")
    return {
        "events": count,
        "bytes": nbytes,
        "seconds": elapsed,
        "events_per_s": count / elapsed if elapsed else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="HOST:PORT (not needed with --dry-run)")
    ap.add_argument("--topic", default="customer.events")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first event/order number")
    ap.add_argument("--now", help="anchor time, RFC 3339 (default: current time)")
    ap.add_argument("--create-topic", action="store_true")
    ap.add_argument("--compression", default="lz4", help="lz4 | none | zstd | ...")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="generate only (measures the generator), print a summary",
    )
    ap.add_argument(
        "--print",
        type=int,
        default=0,
        metavar="K",
        help="print the first K events to stdout and exit",
    )
    args = ap.parse_args(argv)

    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    gen = iter_events(args.events, args.customers, args.seed, now, start=args.start)
    if args.print:
        for key, value in itertools.islice(gen, args.print):
            print(key.decode(), value.decode())
        return 0
    if args.dry_run:
        t0 = time.perf_counter()
        kinds: dict[bytes, int] = {}
        keys = set()
        for key, value in gen:
            kind = value[28 : value.index(b'"', 28)]
            kinds[kind] = kinds.get(kind, 0) + 1
            keys.add(key)
        dt = time.perf_counter() - t0
        mix = {k.decode(): f"{v / max(args.events, 1):.1%}" for k, v in kinds.items()}
        print(
            f"generated {args.events} events in {dt:.2f} s = {args.events / dt:,.0f} "
            f"events/s; {len(keys)} distinct customers; mix {mix}"
        )
        return 0
    if not args.bootstrap:
        ap.error("--bootstrap is required unless --dry-run/--print")
    if args.create_topic:
        created = create_topic(args.bootstrap, args.topic, args.partitions)
        print(
            f"topic {args.topic}: {'created' if created else 'exists'}, "
            f"{args.partitions} partitions",
            file=sys.stderr,
        )
    stats = produce(args.bootstrap, args.topic, gen, config={"compression.type": args.compression})
    print(
        f"produced {stats['events']} events ({stats['bytes'] / 1e6:.0f} MB JSON) to "
        f"{args.topic} in {stats['seconds']:.2f} s = {stats['events_per_s']:,.0f} events/s "
        f"(generation included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
