"""Pipeline benchmark: our consumer vs the Quix Streams peer, same events, same broker.

    python bench/pipeline.py [--events 1000000] [--customers 200000] [--runs 3] [--warmup 1]
                             [--skip-peer]

Uses the services in $SEGMENTS_KAFKA_BOOTSTRAP / $SEGMENTS_REDIS_URL (``make bench-pipeline``
starts Apache Kafka and Redis). Figures printed:

- throughput of one ``segments consume`` process over a pre-loaded topic with 8 partitions:
  all the events over the time from its partition assignment (its log says when; process
  start-up and group join excluded) to the last offset committed, median of runs, after one
  warm-up run that is printed and not counted (``--warmup``; the broker has just started, and
  the peer's runs come after ours);
  "done" is decided from the group's committed offsets against the offsets the producer got
  back, never from the broker's end offsets;
- Redis memory per customer: median ``MEMORY USAGE`` of sampled customer hashes, and
  ``used_memory`` growth divided by customers (keys + indexes, everything);
- end-to-end latency (record timestamp → segment written, reported by the consumer) at a steady
  5,000 events/s;
- the Quix Streams peer (bench/peers/run_quix.py) on the same topic, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import generate  # noqa: E402
import redis  # noqa: E402

from service.store.keys import Keys  # noqa: E402


class CommittedTotal:
    """The group's committed offsets summed over the topic's partitions, read through one
    long-lived client (librdkafka, in C): polling it costs the machine next to nothing, where
    a new client per poll took CPU from the consumer under test."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: list[int]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        # Never subscribes, so it never joins the group: it only reads the group's offsets.
        self._client = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._partitions = [TopicPartition(topic, p) for p in partitions]
        self._last = 0

    def __call__(self) -> int:
        from confluent_kafka import KafkaException

        try:
            got = self._client.committed(self._partitions, timeout=10)
        except KafkaException:
            return self._last  # the group coordinator is not there yet (a fresh broker)
        self._last = sum(max(tp.offset, 0) for tp in got)
        return self._last

    def close(self) -> None:
        self._client.close()


def consumer_env(
    bootstrap: str, redis_url: str, topic: str, run: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}
    env.update(
        SEGMENTS_KAFKA__BOOTSTRAP=bootstrap,
        SEGMENTS_KAFKA__EVENTS_TOPIC=topic,
        SEGMENTS_KAFKA__CHANGES_TOPIC=f"bench.{run}.changes",
        SEGMENTS_KAFKA__DLQ_TOPIC=f"bench.{run}.dlq",
        SEGMENTS_KAFKA__GROUP_ID=f"bench-{run}",
        SEGMENTS_REDIS__URL=redis_url,
        SEGMENTS_REDIS__KEY_PREFIX=f"b{run}:",
        SEGMENTS_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def assigned_at(log_path: Path) -> float:
    """Epoch seconds of the consumer's first "partitions assigned" log line."""
    import orjson

    for line in log_path.read_text().splitlines():
        if '"partitions assigned"' in line:
            ts = orjson.loads(line)["ts"]
            return datetime.fromisoformat(ts).timestamp()
    raise RuntimeError(f"no partition assignment in {log_path}")


def run_ours(
    bootstrap: str, redis_url: str, topic: str, total: int, log_dir: Path, overrides: dict[str, str]
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    env = consumer_env(bootstrap, redis_url, topic, run, **overrides)
    partitions = common.partitions_of(bootstrap, topic)
    log_path = log_dir / f"consumer-{run}.log"
    r = redis.Redis.from_url(redis_url)
    mem_before = int(r.info("memory")["used_memory"])
    with open(log_path, "wb") as log:
        t0, t0_wall = time.monotonic(), time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "consume"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        rss = common.PeakRss(proc.pid)
        committed = CommittedTotal(bootstrap, f"bench-{run}", topic, partitions)
        try:
            while True:
                n = committed()
                now = time.monotonic()
                if n >= total:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited: see {log_path}")
                if now - t0 > 1800:
                    raise TimeoutError("consumer did not finish in 30 minutes")
                rss.sample()
                time.sleep(0.25)
            end_wall = time.time()
            cpu_s = common.cpu_seconds(proc.pid)
        finally:
            committed.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    # From the moment the consumer had its partitions (its log says when) to the last offset
    # committed: every event's work is inside the span. Timing from the first commit instead
    # left out the other lanes' first batches, nearly done by then but counted after it, and
    # overstated the rate by ~10% at 4 lanes x 40,000 records (more with larger batches).
    assigned_wall = assigned_at(log_path)
    elapsed = end_wall - assigned_wall
    rate = total / elapsed if elapsed > 0 else float("inf")
    keys = Keys(f"b{run}:")
    sample = []
    pattern = f"{keys.prefix}*:c:*"
    for key in r.scan_iter(match=pattern, count=5000):
        sample.append(key)
        if len(sample) >= 3000:
            break
    usage = [r.memory_usage(k, samples=0) for k in sample]
    customers = int(
        r.eval(
            "local n=0 for _,k in ipairs(redis.call('KEYS', ARGV[1])) do n=n+1 end return n",
            0,
            pattern,
        )
    )
    mem_after = int(r.info("memory")["used_memory"])
    return {
        "run": run,
        "events_per_s": rate,
        "startup_s": assigned_wall - t0_wall,
        "peak_rss_mb": rss.stop() / 1024,
        "cpu_s": cpu_s,
        "wall_s": end_wall - t0_wall,
        "customers": customers,
        "memory_usage_median_b": statistics.median(usage) if usage else None,
        "used_memory_per_customer_b": (mem_after - mem_before) / customers if customers else None,
        "log": str(log_path),
    }


def run_latency(
    bootstrap: str,
    redis_url: str,
    *,
    rate: int,
    seconds: float,
    customers: int,
    log_dir: Path,
    overrides: dict[str, str],
    state_run: str | None,
) -> dict[str, Any]:
    """A steady ``rate`` of events/s for ``seconds``; the consumer reports the latency from each
    record's creation to its segments written and offsets committed.

    With ``state_run`` the consumer works on the state the throughput runs built (the same
    customers, already known), as a live system would; otherwise on an empty store."""
    import orjson
    from confluent_kafka import Producer

    run = uuid.uuid4().hex[:8]
    topic = f"bench.{run}.latency"
    generate.create_topic(bootstrap, topic, 8)
    env = consumer_env(bootstrap, redis_url, topic, run, **overrides)
    if state_run:
        env["SEGMENTS_REDIS__KEY_PREFIX"] = f"b{state_run}:"
    partitions = list(range(8))
    log_path = log_dir / f"consumer-latency-{run}.log"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all"})
    events = generate.iter_events(int(rate * seconds) + 1, customers, seed=7, now=datetime.now(UTC))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "consume"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        committed = CommittedTotal(bootstrap, f"bench-{run}", topic, partitions)
        try:
            # Warm-up: one event through, so the group has joined before the clock starts.
            key, value = next(events)
            producer.produce(topic, value, key)
            producer.flush(10)
            deadline = time.monotonic() + 60
            while committed() < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"consumer never committed; see {log_path}")
                time.sleep(0.2)
            sent = 1
            cpu_start = common.cpu_seconds(proc.pid)
            start = time.monotonic()
            for key, value in events:
                producer.produce(topic, value, key)
                sent += 1
                ahead = (sent - 1) / rate - (time.monotonic() - start)
                if ahead > 0.002:
                    producer.poll(0)
                    time.sleep(ahead)
            producer.flush(30)
            deadline = time.monotonic() + 120
            while committed() < sent:
                if time.monotonic() > deadline:
                    raise TimeoutError("consumer did not catch up")
                time.sleep(0.2)
            cpu_end = common.cpu_seconds(proc.pid)
            caught_up_s = time.monotonic() - start
        finally:
            committed.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    summary: dict[str, Any] = {}
    for line in log_path.read_text().splitlines():
        if '"consumer stopped"' in line:
            summary = orjson.loads(line)
    summary["sent"] = sent
    summary["achieved_rate"] = (sent - 1) / (time.monotonic() - start)
    if cpu_start is not None and cpu_end is not None:
        # The consumer's share of a core while it kept up, and its CPU per event at that rate
        # (small batches: far more per event than the throughput runs' large ones).
        summary["cpu_share"] = (cpu_end - cpu_start) / caught_up_s
        summary["cpu_us_per_event"] = (cpu_end - cpu_start) / (sent - 1) * 1e6
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="runs of ours before the measured ones, printed and not counted: a broker just "
        "started (JIT, page cache) is slower than a running one, for ours and the peer alike",
    )
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--peer-runs", type=int, default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEGMENTS_X=V",
        help="consumer setting for our runs, e.g. SEGMENTS_KAFKA__LANES=1",
    )
    ap.add_argument("--topic", help="reuse an already-populated topic")
    ap.add_argument("--latency-rate", type=int, default=5000, help="events/s; 0 skips the phase")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    args = ap.parse_args()
    bootstrap = os.environ["SEGMENTS_KAFKA_BOOTSTRAP"]
    redis_url = os.environ["SEGMENTS_REDIS_URL"]
    log_dir = ROOT / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)

    overrides = dict(item.split("=", 1) for item in args.set)
    if args.topic:
        topic = args.topic
    else:
        topic = f"bench.{uuid.uuid4().hex[:6]}.events"
        generate.create_topic(bootstrap, topic, args.partitions)
        now = datetime.now(UTC)
        events = generate.iter_events(args.events, args.customers, seed=1, now=now)
        produced = generate.produce(bootstrap, topic, events)
        print(
            f"produced {produced['events']:,} events to {topic} ({args.partitions} partitions) "
            f"at {produced['events_per_s']:,.0f}/s",
            flush=True,
        )

    for i in range(args.warmup):
        res = run_ours(bootstrap, redis_url, topic, args.events, log_dir, overrides)
        print(
            f"warm-up run {i + 1} (not counted): {res['events_per_s']:,.0f} events/s, "
            f"CPU {res['cpu_s']:.1f}s of {res['wall_s']:.1f}s wall",
            flush=True,
        )
        redis.Redis.from_url(redis_url).flushall()

    results = []
    for i in range(args.runs):
        res = run_ours(bootstrap, redis_url, topic, args.events, log_dir, overrides)
        results.append(res)
        print(
            f"ours run {i + 1}: {res['events_per_s']:,.0f} events/s, "
            f"startup {res['startup_s']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB, "
            f"CPU {res['cpu_s']:.1f}s of {res['wall_s']:.1f}s wall, "
            f"{res['customers']:,} customers, "
            f"MEMORY USAGE median {res['memory_usage_median_b']} B, "
            f"used_memory/customer {res['used_memory_per_customer_b']:.0f} B",
            flush=True,
        )
        if i + 1 < args.runs:
            redis.Redis.from_url(redis_url).flushall()
    ours = statistics.median(r["events_per_s"] for r in results) if results else 0.0
    if results:
        print(f"ours: median {ours:,.0f} events/s over {args.runs} runs", flush=True)

    if args.latency_rate:
        lat = run_latency(
            bootstrap,
            redis_url,
            rate=args.latency_rate,
            seconds=args.latency_seconds,
            customers=args.customers,
            log_dir=log_dir,
            overrides=overrides,
            state_run=results[-1]["run"] if results else None,
        )
        print(
            f"latency at {lat['achieved_rate']:,.0f} events/s steady ({lat['sent']:,} events): "
            f"produce -> segment written p50 {lat.get('latency_p50_ms')} ms, "
            f"p99 {lat.get('latency_p99_ms')} ms ({lat.get('latency_samples')} samples, "
            f"{'on the customers loaded above' if results else 'on an empty store'}); "
            f"consumer CPU {lat.get('cpu_share', 0):.0%} of a core, "
            f"{lat.get('cpu_us_per_event', 0):.0f} us/event",
            flush=True,
        )
        redis.Redis.from_url(redis_url).flushall()

    if not args.skip_peer:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench/peers/run_quix.py"),
                "--bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--events",
                str(args.events),
                "--runs",
                str(args.peer_runs or args.runs),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout, end="")
        rates = [
            float(x.replace(",", "")) for x in re.findall(r"=\s*([\d,\.]+) events/s", out.stdout)
        ]
        if rates:
            peer = statistics.median(rates)
            print(
                f"ratio ours/quix-streams: {ours / peer:.2f}x "
                f"(median {ours:,.0f} vs {peer:,.0f} events/s)"
            )
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
