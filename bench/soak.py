"""Soak: N events at the maximum rate through a real consumer while the real API serves a
steady open-loop read load; memory sampled throughout; the final state checked exactly.

    python bench/soak.py --events 2000000 --rate 200        # `make soak`

Needs a running Kafka and Redis (``SEGMENTS_KAFKA_BOOTSTRAP``, ``SEGMENTS_REDIS_URL``; `make
soak` starts its own). Produces the events of :func:`bench.generate.iter_events` to a fresh
topic (``--live-produce``: while consuming instead), runs ``segments consume`` and ``segments
api`` as child processes on a fresh key prefix, and while the consumer works through the
events at its full rate sends ``rate`` ``GET /v1/customers/{id}/segment`` per second (open
loop: on schedule, whatever the answers take). At the end:

- every answer's status (only 200 is intended: unknown customers are asked with
  ``?default=true``), p50/p99 latency;
- RSS of the consumer and the API, and Redis's ``used_memory_rss``, sampled every second; after
  warm-up (the first ``warmup`` share of the run) the slope, MiB per minute, and the growth of
  the peaks (:func:`peak_growth`), which is checked;
- the profile of every customer in Redis against the ground truth recomputed from the
  generator's events (streamed in chunks, so memory stays bounded).

Prints a JSON report; the exit code is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.generate import customer_id, iter_events  # noqa: E402
from consumers.segmenter import min_day_for  # noqa: E402
from service.kafka import client_options, ensure_topics  # noqa: E402
from service.segmentation.profile import Profile, Totals  # noqa: E402
from service.segmentation.rules import load_rules  # noqa: E402
from service.settings import KafkaSettings, RedisSettings  # noqa: E402
from service.store.keys import Keys  # noqa: E402
from service.store.profiles import RedisProfileStore  # noqa: E402
from service.store.redis_client import create_redis  # noqa: E402
from tests.support.events import ground_truth  # noqa: E402

TRUTH_CHUNK = 100_000
"""Events turned into partial ground truth at a time (merged per customer)."""


@dataclass
class Report:
    events: int
    customers: int
    rate: float
    seconds: float = 0.0
    events_per_s: float = 0.0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    late_requests: int = 0
    rss_mib: dict[str, dict[str, float]] = field(default_factory=dict)
    mismatched_profiles: int = -1
    checked_profiles: int = 0
    first_mismatch: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_growth(samples: list[tuple[float, float]]) -> float:
    """How much higher the peak of the second half of ``samples`` (seconds, value) is than the
    peak of the first half. The consumer's RSS is a saw (batches of records come and go,
    ~100 MiB apart), so the first and last samples alone say more about where in the saw they
    fell than about growth; a leak raises the peaks."""
    if len(samples) < 2:
        return 0.0
    middle = (samples[0][0] + samples[-1][0]) / 2
    first = max(v for t, v in samples if t <= middle)
    second = max(v for t, v in samples if t > middle)
    return second - first


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, value per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in samples) / var * 60


def _merge(a: Profile, b: Profile) -> Profile:
    days = dict(a.days)
    for day, totals in b.days.items():
        days[day] = (
            Totals(*(x + y for x, y in zip(days[day], totals, strict=True)))
            if (day in days)
            else totals
        )

    def pick(f: Any, x: int | None, y: int | None) -> int | None:
        return y if x is None else x if y is None else f(x, y)

    return Profile(
        customer_id=a.customer_id,
        first_purchase_ms=pick(min, a.first_purchase_ms, b.first_purchase_ms),
        last_purchase_ms=pick(max, a.last_purchase_ms, b.last_purchase_ms),
        last_engagement_ms=pick(max, a.last_engagement_ms, b.last_engagement_ms),
        lifetime=Totals(*(x + y for x, y in zip(a.lifetime, b.lifetime, strict=True))),
        days=days,
    )


def streamed_truth(records: Iterator[tuple[bytes, bytes]], *, min_day: int) -> dict[str, Profile]:
    """Ground truth of every record, built chunk by chunk (the generator repeats no
    event_id, so chunks merge by plain addition)."""
    truth: dict[str, Profile] = {}
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        for cid, profile in ground_truth(chunk, min_day=min_day).items():
            truth[cid] = _merge(truth[cid], profile) if cid in truth else profile
        chunk.clear()

    for _, value in records:
        chunk.append(orjson.loads(value))
        if len(chunk) >= TRUTH_CHUNK:
            flush()
    flush()
    return truth


MAX_IN_FLIGHT = 256
"""Read requests outstanding at once; one due beyond that is not sent and counted ``shed``
(an open loop that queued without bound would measure its own queue)."""


def read_load(port: int, secret: str, customers: int, rate: float, stop: Any, results: Any) -> None:
    """Open loop (run in its own process): request k is sent at t0 + k/rate, whatever the
    earlier answers take; puts a dict of requests, statuses, late, latencies on ``results``."""
    results.put(asyncio.run(_read_load(port, secret, customers, rate, stop)))


async def _read_load(
    port: int, secret: str, customers: int, rate: float, stop: Any
) -> dict[str, Any]:
    rng = random.Random(7)
    ids = [customer_id(i, customers) for i in range(customers)]
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    late = 0
    interval = 1 / rate
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits
    ) as client:

        async def one(path: str) -> None:
            t = time.perf_counter()
            try:
                r = await client.get(path, timeout=10)
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            latencies.append((time.perf_counter() - t) * 1000)
            statuses[key] = statuses.get(key, 0) + 1

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        k = 0
        while not stop.is_set():
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1:
                late += 1
            k += 1
            if len(tasks) >= MAX_IN_FLIGHT:
                statuses["shed"] = statuses.get("shed", 0) + 1
                continue
            task = asyncio.create_task(one(f"/v1/customers/{rng.choice(ids)}/segment?default=true"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return {"requests": k, "statuses": statuses, "late_requests": late, "latencies": latencies}


def _log_dir(path: str) -> Path:
    logs = Path(path)
    logs.mkdir(parents=True, exist_ok=True)
    return logs


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        run = uuid.uuid4().hex[:8]
        self.kafka = KafkaSettings(
            bootstrap=args.bootstrap,
            events_topic=f"soak{run}.events",
            changes_topic=f"soak{run}.segment-changes",
            dlq_topic=f"soak{run}.events.dlq",
            group_id=f"soak{run}-consumer",
        )
        self.redis = RedisSettings(
            url=args.redis_url, key_prefix=f"soak{run}:", cluster=args.redis_cluster
        )
        self.now = datetime.now(UTC)
        self.report = Report(args.events, args.customers, args.rate)
        self.samples: dict[str, list[tuple[float, float]]] = {
            "consumer": [],
            "api": [],
            "redis": [],
        }
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.secret = secrets.token_urlsafe(24)
        self.api_port = _free_port()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}
        digest = hashlib.sha256(self.secret.encode()).hexdigest()
        env.update(
            {
                "SEGMENTS_KAFKA__BOOTSTRAP": self.kafka.bootstrap,
                "SEGMENTS_KAFKA__EVENTS_TOPIC": self.kafka.events_topic,
                "SEGMENTS_KAFKA__CHANGES_TOPIC": self.kafka.changes_topic,
                "SEGMENTS_KAFKA__DLQ_TOPIC": self.kafka.dlq_topic,
                "SEGMENTS_KAFKA__GROUP_ID": self.kafka.group_id,
                "SEGMENTS_REDIS__URL": self.redis.url,
                "SEGMENTS_REDIS__KEY_PREFIX": self.redis.key_prefix,
                "SEGMENTS_REDIS__CLUSTER": str(self.redis.cluster).lower(),
                "SEGMENTS_PROBES__PORT": "0",
                "SEGMENTS_LOG_LEVEL": "WARNING",
                "SEGMENTS_API__KEYS": json.dumps(
                    [{"name": "soak", "sha256": digest, "scopes": ["segments:read"]}]
                ),
            }
        )
        return env

    def _spawn(
        self, *cli: str, log: Path, nice: int = 0, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # `nice` execs the command: the pid sampled is the consumer's own
            prefix = ["nice", "-n", str(nice)] if nice else []
            return subprocess.Popen(
                [*prefix, sys.executable, "-m", "service.cli", *cli],
                cwd=ROOT,
                env=self._env() | (extra or {}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def run(self) -> Report:
        a = self.args
        await ensure_topics(self.kafka, partitions=a.partitions)
        logs = _log_dir(a.log_dir)
        # Pre-loaded (the default): the consumer meets the whole backlog at once, so it runs at
        # the most it can take, and the producer's own CPU does not compete with the consumer,
        # Redis and the API on this machine (in production the producers run elsewhere).
        preloaded = await self._produce() if not a.live_produce else None
        # The consumer at a lower CPU priority: in production the API and the consumers have
        # CPU of their own (pods with requests, deploy/k8s); on this 2-core machine, at equal
        # priority the consumer at full speed with Redis and the broker starves the API.
        consumer = self._spawn(
            "consume",
            log=logs / "soak-consumer.log",
            nice=a.consumer_nice,
            extra=dict(item.split("=", 1) for item in a.set),
        )
        api = self._spawn(
            "api", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1",
            log=logs / "soak-api.log",
        )  # fmt: skip
        t0 = time.monotonic()
        redis = create_redis(self.redis)
        try:
            await self._wait_api()
            sampler = asyncio.create_task(self._sample(consumer.pid, api.pid, redis, t0))
            # The read load runs in a process of its own, so producing at full speed here
            # cannot delay its schedule.
            ctx = multiprocessing.get_context("spawn")
            stop, results = ctx.Event(), ctx.Queue()
            load = ctx.Process(
                target=read_load,
                args=(self.api_port, self.secret, a.customers, a.rate, stop, results),
            )
            load.start()
            ends = preloaded if preloaded is not None else await self._produce()
            await self._wait_committed(ends, consumer)
            self.report.seconds = round(time.monotonic() - t0, 1)
            self.report.events_per_s = round(a.events / self.report.seconds)
            self.done.set()
            stop.set()
            await sampler
            loaded = await asyncio.to_thread(results.get, True, 120)
            await asyncio.to_thread(load.join, 30)
            self.latencies = loaded.pop("latencies")
            for name, value in loaded.items():
                setattr(self.report, name, value)
        finally:
            for proc in (consumer, api):
                proc.send_signal(signal.SIGTERM)
            for proc in (consumer, api):
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._summarise()
        (logs / "soak-rss.json").write_text(json.dumps(self.samples))
        await self._verify(redis)
        await redis.aclose()
        return self.report

    async def _wait_api(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    r = await client.get(f"http://127.0.0.1:{self.api_port}/readyz")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("the API did not become ready in 60 s")

    async def _produce(self) -> dict[int, int]:
        a = self.args
        producer = AIOKafkaProducer(
            **client_options(self.kafka), acks="all", linger_ms=20, max_batch_size=1024 * 1024
        )
        await producer.start()
        ends: dict[int, int] = {}
        try:
            pending = []
            for key, value in iter_events(
                a.events, a.customers, seed=a.seed, now=self.now, span_days=a.span_days
            ):
                pending.append(await producer.send(self.kafka.events_topic, value, key=key))
                if len(pending) >= 20_000:
                    for md in await asyncio.gather(*pending):
                        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
                    pending = []
            for md in await asyncio.gather(*pending):
                ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        finally:
            await producer.stop()
        return ends

    async def _wait_committed(self, ends: dict[int, int], proc: subprocess.Popen[bytes]) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka), group_id=self.kafka.group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + self.args.timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the consumer exited with {proc.returncode}")
                got = {
                    p: await consumer.committed(TopicPartition(self.kafka.events_topic, p)) or 0
                    for p in ends
                }
                if got == ends:
                    return
                await asyncio.sleep(0.5)
        finally:
            await consumer.stop()
        raise RuntimeError(f"not every offset committed within {self.args.timeout_s} s")

    async def _sample(self, consumer: int, api: int, redis: Any, t0: float) -> None:
        while not self.done.is_set():
            t = time.monotonic() - t0
            try:
                self.samples["consumer"].append((t, _rss_mib(consumer)))
                self.samples["api"].append((t, _rss_mib(api)))
                info = await redis.info("memory")
                self.samples["redis"].append((t, info["used_memory_rss"] / 2**20))
            except (OSError, aioredis.RedisError):
                pass
            await asyncio.sleep(1.0)

    def _summarise(self) -> None:
        a, r = self.args, self.report
        ordered = sorted(self.latencies)
        if ordered:
            r.latency_p50_ms = round(ordered[len(ordered) // 2], 1)
            r.latency_p99_ms = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)
        unintended = {s: n for s, n in r.statuses.items() if s != "200"}
        if unintended:
            r.failures.append(f"unintended answers: {unintended}")
        for name, samples in self.samples.items():
            if not samples:
                continue
            cut = samples[-1][0] * a.warmup
            steady = [s for s in samples if s[0] >= cut]
            r.rss_mib[name] = {
                "start": round(samples[0][1], 1),
                "after_warmup": round(steady[0][1], 1) if steady else 0.0,
                "end": round(samples[-1][1], 1),
                "max": round(max(v for _, v in samples), 1),
                "slope_per_min": round(slope_per_min(steady), 2),
                "growth_after_warmup": round(peak_growth(steady), 1),
            }
            growth = r.rss_mib[name]["growth_after_warmup"]
            if name != "redis" and growth > a.max_growth:
                r.failures.append(f"{name} RSS peaks grew {growth:.1f} MiB after warm-up")

    async def _verify(self, redis: Any) -> None:
        rules = load_rules(None)
        min_day = min_day_for(datetime.now(UTC), rules)
        a = self.args
        events = iter_events(
            a.events, a.customers, seed=a.seed, now=self.now, span_days=a.span_days
        )
        truth = streamed_truth(events, min_day=min_day)
        store = RedisProfileStore(redis, Keys(self.redis.key_prefix), ring_size=8)
        ids = sorted(truth)
        wrong = 0
        for i in range(0, len(ids), 2_000):
            part = ids[i : i + 2_000]
            states = await store.read(part, min_day=min_day)
            for cid in part:
                got = states.get(cid)
                if got is None or got.profile != truth[cid]:
                    wrong += 1
                    if not self.report.first_mismatch:
                        self.report.first_mismatch = {
                            "customer_id": cid,
                            "want": repr(truth[cid].lifetime),
                            "got": repr(got.profile.lifetime) if got else None,
                            "want_days": len(truth[cid].days),
                            "got_days": len(got.profile.days) if got else None,
                        }
        self.report.checked_profiles = len(ids)
        self.report.mismatched_profiles = wrong
        if wrong:
            self.report.failures.append(f"{wrong} of {len(ids)} profiles differ from the truth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--customers", type=int, default=None, help="default: events / 20")
    p.add_argument("--rate", type=float, default=200.0, help="API reads per second")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--span-days",
        type=int,
        default=30,
        help="the history's span: the events' days advance over it. 30 (default): each "
        "customer's daily buckets stop growing early in the run, so what is left after "
        "warm-up is the steady state whose memory must be flat; 400: the benchmark's replay, "
        "where every customer's history grows for the whole run",
    )
    p.add_argument("--warmup", type=float, default=0.3, help="share of the run before slopes")
    p.add_argument(
        "--max-growth", type=float, default=64.0, help="RSS growth allowed after warm-up, MiB"
    )
    p.add_argument(
        "--live-produce",
        action="store_true",
        help="produce while consuming (default: pre-load the topic, then consume)",
    )
    p.add_argument(
        "--consumer-nice",
        type=int,
        default=10,
        help="CPU niceness of the consumer process (0: same priority as the API)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEGMENTS_X=V",
        help="consumer setting, e.g. SEGMENTS_STATE__CUSTOMER_CACHE=50000",
    )
    p.add_argument("--timeout-s", type=float, default=3_600.0)
    p.add_argument("--log-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--bootstrap", default=os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP"))
    p.add_argument("--redis-url", default=os.environ.get("SEGMENTS_REDIS_URL"))
    p.add_argument("--redis-cluster", action="store_true", help="the Redis is a Redis Cluster")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not args.bootstrap or not args.redis_url:
        raise SystemExit("need --bootstrap/--redis-url or SEGMENTS_KAFKA_BOOTSTRAP/_REDIS_URL")
    if args.customers is None:
        args.customers = max(1, args.events // 20)
    return args


def main(argv: list[str] | None = None) -> int:
    report = asyncio.run(Soak(parse(argv)).run())
    print(json.dumps(report.__dict__, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
