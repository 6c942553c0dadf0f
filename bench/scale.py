"""Scale-out benchmark: throughput of 1, 2 and 3 ``segments consume`` processes in one group.

    python bench/scale.py [--events 500000] [--customers 100000] [--partitions 12]
                          [--processes 1,2,3] [--runs 3] [--services-state DIR]

Uses the services in $SEGMENTS_KAFKA_BOOTSTRAP / $SEGMENTS_REDIS_URL (``make bench-scale``
starts its own Apache Kafka and Redis and passes their state dir, so the broker's and Redis's
CPU time is measured too). One pre-loaded topic; for each process count, each run starts that
many consumers in a fresh group on an empty key prefix and measures:

- throughput from the moment the group is formed (every process owns partitions) until the
  group's committed offsets reach the number of events produced: "done" is decided from
  committed offsets, never from the broker's end offsets; median of the runs;
- CPU per event of the consumers, of Redis and of the broker over the same stretch (start-up
  and the group's formation excluded), and how busy the machine's cores were meanwhile
  (/proc/stat);
- the load average before and after.

On a machine whose cores are already busy with one consumer, the broker and Redis, more
processes cannot add throughput: the figures show where the CPU goes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import generate  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from pipeline import consumer_env  # noqa: E402

from tests.support.consumers import spawn_consumer as spawn  # noqa: E402

POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds used so far: the machine's busy and total core time, Redis, the broker."""

    at: float
    machine_busy_s: float
    machine_total_s: float
    redis_s: float
    broker_s: float | None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) core-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / tick, total / tick


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def broker_pids(services_state: Path | None) -> list[int]:
    if services_state is None:
        return []
    state = json.loads((services_state / "state.json").read_text())
    return list(state.get("kafka", {}).get("pids", []))


def snapshot(r: redis.Redis, brokers: list[int]) -> CpuSnapshot:
    busy, total = machine_cpu()
    broker = [common.cpu_seconds(pid) for pid in brokers]
    return CpuSnapshot(
        at=time.monotonic(),
        machine_busy_s=busy,
        machine_total_s=total,
        redis_s=redis_cpu(r),
        broker_s=sum(b for b in broker if b is not None) if brokers else None,
    )


def group_formed(logs: list[Path]) -> bool:
    """Every process's last word on partitions is a non-empty assignment."""
    for path in logs:
        last: dict[str, Any] | None = None
        for line in path.read_bytes().splitlines():
            if b'"partitions ' in line and line.startswith(b"{"):
                entry = orjson.loads(line)
                if entry.get("msg") in ("partitions assigned", "partitions revoked"):
                    last = entry
        if last is None or last["msg"] != "partitions assigned" or not last["partitions"]:
            return False
    return True


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    """Removes one run's keys (never FLUSHALL: the Redis may be shared)."""
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            r.unlink(*batch)
            batch.clear()
    if batch:
        r.unlink(*batch)


def consumers_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    return sum(common.cpu_seconds(p.pid) or 0.0 for p in procs)


def spawn_consumer(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return spawn(env, log)  # the child keeps its own descriptor of the log


async def run_group(
    *,
    bootstrap: str,
    redis_url: str,
    topic: str,
    total: int,
    processes: int,
    log_dir: Path,
    overrides: dict[str, str],
    brokers: list[int],
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    group = f"bench-{run}"
    # Probes off: the processes share this machine's probe port.
    env = consumer_env(bootstrap, redis_url, topic, run, SEGMENTS_PROBES__PORT="0", **overrides)
    partitions = [TopicPartition(topic, p) for p in common.partitions_of(bootstrap, topic)]
    r = redis.Redis.from_url(redis_url)
    watcher = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await watcher.start()

    async def committed() -> int:
        return sum([(await watcher.committed(tp)) or 0 for tp in partitions])

    load_before = os.getloadavg()
    logs = [log_dir / f"scale-{run}-{i}.log" for i in range(processes)]
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        procs.extend(spawn_consumer(env, path) for path in logs)
        start: tuple[CpuSnapshot, int, float] | None = None
        while True:
            n = await committed()
            if start is None and group_formed(logs):
                start = (snapshot(r, brokers), n, consumers_cpu(procs))
            if n >= total:
                break
            for proc, path in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited: see {path}")
            if time.monotonic() - t0 > 1800:
                raise TimeoutError("the group did not finish in 30 minutes")
            await asyncio.sleep(POLL_S)
        end = snapshot(r, brokers)
        consumer_cpu = consumers_cpu(procs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        await watcher.stop()
    assert start is not None
    first, n_start, consumer_cpu_start = start
    if n_start >= total:
        raise RuntimeError("the group formed after the topic was done: use more --events")
    elapsed = end.at - first.at
    measured = total - n_start
    wall = end.at - t0
    result = {
        "run": run,
        "processes": processes,
        "events_per_s": measured / elapsed,
        "formed_at_s": first.at - t0,
        "formed_at_events": n_start,
        "wall_s": wall,
        "consumer_cpu_us_per_event": (consumer_cpu - consumer_cpu_start) / measured * 1e6,
        "redis_cpu_us_per_event": (end.redis_s - first.redis_s) / measured * 1e6,
        "broker_cpu_us_per_event": (
            None
            if end.broker_s is None or first.broker_s is None
            else (end.broker_s - first.broker_s) / measured * 1e6
        ),
        "machine_busy_pct": 100
        * (end.machine_busy_s - first.machine_busy_s)
        / (end.machine_total_s - first.machine_total_s),
        # Cores the pipeline (consumers + Redis + broker) used; the rest of the busy time was
        # other work on the machine.
        "pipeline_cores": (
            consumer_cpu
            - consumer_cpu_start
            + end.redis_s
            - first.redis_s
            + (end.broker_s or 0.0)
            - (first.broker_s or 0.0)
        )
        / elapsed,
        "machine_busy_cores": (end.machine_busy_s - first.machine_busy_s) / elapsed,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "logs": [str(p) for p in logs],
    }
    delete_prefix(r, f"b{run}:")
    r.close()
    common.delete_topics(bootstrap, [f"bench.{run}.changes", f"bench.{run}.dlq"])
    return result


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--processes", default="1,2,3", help="comma-separated process counts")
    ap.add_argument("--runs", type=int, default=3, help="runs per process count (median)")
    ap.add_argument("--topic", help="reuse an already-populated topic of --events events")
    ap.add_argument(
        "--services-state",
        type=Path,
        help="scripts/services.py state dir of the broker (to measure its CPU)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEGMENTS_X=V",
        help="consumer setting, e.g. SEGMENTS_KAFKA__LANES=2",
    )
    args = ap.parse_args()
    bootstrap = os.environ["SEGMENTS_KAFKA_BOOTSTRAP"]
    redis_url = os.environ["SEGMENTS_REDIS_URL"]
    counts = [int(x) for x in args.processes.split(",")]
    if max(counts) > args.partitions:
        ap.error("more processes than partitions: the extra ones would idle")
    overrides = dict(item.split("=", 1) for item in args.set)
    log_dir = ROOT / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)
    brokers = broker_pids(args.services_state)

    print(
        f"machine: {os.cpu_count()} cores, load average {fmt_load(os.getloadavg())} "
        f"(1/5/15 min) before producing",
        flush=True,
    )
    if args.topic:
        topic = args.topic
    else:
        topic = f"bench.{uuid.uuid4().hex[:6]}.scale"
        generate.create_topic(bootstrap, topic, args.partitions)
        events = generate.iter_events(args.events, args.customers, seed=1, now=datetime.now(UTC))
        produced = generate.produce(bootstrap, topic, events)
        print(
            f"produced {produced['events']:,} events ({args.customers:,} customer ids) to "
            f"{topic} ({args.partitions} partitions) at {produced['events_per_s']:,.0f}/s",
            flush=True,
        )

    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    # Interleaved (1, 2, 3, 1, 2, 3, ...): a change in the machine's load hits every count.
    for i in range(args.runs):
        for n in counts:
            res = asyncio.run(
                run_group(
                    bootstrap=bootstrap,
                    redis_url=redis_url,
                    topic=topic,
                    total=args.events,
                    processes=n,
                    log_dir=log_dir,
                    overrides=overrides,
                    brokers=brokers,
                )
            )
            results[n].append(res)
            broker = res["broker_cpu_us_per_event"]
            print(
                f"run {i + 1}, {n} process{'es' if n > 1 else ''}: "
                f"{res['events_per_s']:,.0f} events/s (group formed after "
                f"{res['formed_at_s']:.1f}s at {res['formed_at_events']:,} committed, "
                f"{res['wall_s']:.1f}s wall); CPU per event: consumers "
                f"{res['consumer_cpu_us_per_event']:.1f} us, Redis "
                f"{res['redis_cpu_us_per_event']:.1f} us, broker "
                f"{'n/a' if broker is None else f'{broker:.1f} us'}; machine "
                f"{res['machine_busy_pct']:.0f}% busy ({res['pipeline_cores']:.2f} cores for the "
                f"pipeline, {res['machine_busy_cores'] - res['pipeline_cores']:.2f} for other "
                f"work); load {fmt_load(res['load_before'])} -> "
                f"{fmt_load(res['load_after'])}",
                flush=True,
            )

    print(
        "\nprocesses | events/s (median) | runs | vs 1 | consumers us/event | "
        "Redis us/event | broker us/event | machine busy | pipeline cores"
    )
    base = None
    summary = []
    for n in counts:
        rs = results[n]
        rate = common.median([x["events_per_s"] for x in rs])
        base = base or rate
        runs = [round(x["events_per_s"]) for x in rs]
        row: dict[str, Any] = {
            "processes": n,
            "events_per_s": rate,
            "runs": runs,
            "consumer_cpu_us_per_event": common.median(
                [x["consumer_cpu_us_per_event"] for x in rs]
            ),
            "redis_cpu_us_per_event": common.median([x["redis_cpu_us_per_event"] for x in rs]),
            "broker_cpu_us_per_event": (
                None
                if rs[0]["broker_cpu_us_per_event"] is None
                else common.median([x["broker_cpu_us_per_event"] for x in rs])
            ),
            "machine_busy_pct": common.median([x["machine_busy_pct"] for x in rs]),
            "pipeline_cores": common.median([x["pipeline_cores"] for x in rs]),
        }
        summary.append(row)
        broker = row["broker_cpu_us_per_event"]
        print(
            f"{n} | {rate:,.0f} | {' / '.join(f'{x:,}' for x in runs)} | "
            f"{rate / base:.2f}x | {row['consumer_cpu_us_per_event']:.1f} | "
            f"{row['redis_cpu_us_per_event']:.1f} | "
            f"{'n/a' if broker is None else f'{broker:.1f}'} | {row['machine_busy_pct']:.0f}% | "
            f"{row['pipeline_cores']:.2f}"
        )
    print(f"load average after: {fmt_load(os.getloadavg())}")
    if not args.topic:
        common.delete_topics(bootstrap, [topic])
    out = log_dir / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args) | {"services_state": str(args.services_state)},
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
