"""Benchmark harness for the Quix Streams peer job (bench/peers/quix_segments.py).

Each run starts the Quix app in a subprocess with a fresh consumer group, state dir and
output topic, counts records on the output topic with a separate consumer (never end
offsets: Tansu's are short) until N have arrived, and reports throughput from the first
output record to the N-th (startup excluded) and the app's peak RSS (VmHWM).

    eval "$(python scripts/services.py env)"          # or pass --bootstrap, or --tansu
    python bench/generate.py --bootstrap $SEGMENTS_KAFKA_BOOTSTRAP --topic bench.events \
        --partitions 8 --events 1000000 --customers 200000 --seed 1 --create-topic
    python bench/peers/run_quix.py --topic bench.events --events 1000000 --runs 3

`--populate` produces the input topic first (with bench/generate.py); `--tansu` runs
everything against a private in-memory Tansu broker.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import generate  # noqa: E402

JOB = Path(__file__).resolve().parent / "quix_segments.py"


def run_once(
    bootstrap: str, topic: str, n: int, *, timeout: float, keep: bool, log_dir: Path
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    group = f"quix-bench-{run_id}"
    out_topic = f"bench.quix.out.{run_id}"
    partitions = common.partitions_of(bootstrap, topic)
    generate.create_topic(bootstrap, out_topic, len(partitions))
    state_dir = Path(tempfile.mkdtemp(prefix=f"quix-state-{run_id}-"))
    log_path = log_dir / f"quix-{run_id}.log"
    counter = common.RecordCounter(bootstrap, out_topic, target=n)
    proc = None
    try:
        with open(log_path, "wb") as log:
            t_start = time.monotonic()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(JOB),
                    "--bootstrap",
                    bootstrap,
                    "--input",
                    topic,
                    "--output",
                    out_topic,
                    "--group",
                    group,
                    "--state-dir",
                    str(state_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            rss = common.PeakRss(proc.pid)
            deadline = t_start + timeout
            while not counter.done.wait(0.5):
                if proc.poll() is not None:
                    raise RuntimeError(f"quix app exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"only {counter.count}/{n} outputs after {timeout}s; see {log_path}"
                    )
            peak_kb = rss.stop()
            cpu_s = common.cpu_seconds(proc.pid) or 0.0
        counter.stop()
        assert counter.first_at is not None and counter.done_at is not None
        span = counter.done_at - counter.first_at
        return {
            "events": n,
            "outputs": counter.count,
            "startup_s": counter.first_at - t_start,
            "seconds": span,
            "events_per_s": n / span if span > 0 else float("inf"),
            "wall_s": counter.done_at - t_start,
            "peak_rss_mb": peak_kb / 1024,
            "cpu_s": cpu_s,
            "log": str(log_path),
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Quix shuts down gracefully on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            counter.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        if not keep:
            from confluent_kafka.admin import AdminClient

            names = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
            common.delete_topics(bootstrap, [out_topic] + [t for t in names if group in t])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="default: $SEGMENTS_KAFKA_BOOTSTRAP")
    ap.add_argument("--tansu", action="store_true", help="use a private Tansu broker")
    ap.add_argument("--topic", default="bench.events")
    ap.add_argument(
        "--events",
        type=int,
        default=None,
        help="N: events in the input topic (default: count them by consuming)",
    )
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument(
        "--keep-topics", action="store_true", help="keep each run's output and changelog topics"
    )
    ap.add_argument("--log-dir", default=None, help="where the Quix app logs go")
    ap.add_argument(
        "--populate",
        action="store_true",
        help="create and fill the input topic with bench/generate.py first",
    )
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="quix-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.tansu:
            bootstrap = stack.enter_context(common.tansu_broker(log_dir / "tansu.log"))
            broker = f"Tansu (private, {bootstrap})"
        else:
            bootstrap = args.bootstrap or common.env_bootstrap()
            if not bootstrap:
                ap.error("no broker: pass --bootstrap, set SEGMENTS_KAFKA_BOOTSTRAP, or --tansu")
            broker = bootstrap
        if args.populate or args.tansu:
            n = args.events or 1_000_000
            generate.create_topic(bootstrap, args.topic, args.partitions)
            stats = generate.produce(
                bootstrap,
                args.topic,
                generate.iter_events(n, args.customers, args.seed, dt.datetime.now(dt.UTC)),
            )
            print(
                f"populated {args.topic}: {stats['events']} events in "
                f"{stats['seconds']:.1f} s = {stats['events_per_s']:,.0f} events/s",
                flush=True,
            )
        n = args.events or common.count_records(bootstrap, args.topic)
        print(
            f"broker {broker}, input {args.topic}: {n} events, "
            f"{len(common.partitions_of(bootstrap, args.topic))} partitions; "
            f"logs in {log_dir}",
            flush=True,
        )
        results = []
        for i in range(args.runs):
            r = run_once(
                bootstrap,
                args.topic,
                n,
                timeout=args.timeout,
                keep=args.keep_topics,
                log_dir=log_dir,
            )
            results.append(r)
            print(
                f"run {i + 1}/{args.runs}: quix-streams: {n} events in {r['seconds']:.1f} s "
                f"= {r['events_per_s']:,.0f} events/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(startup {r['startup_s']:.1f} s, wall {r['wall_s']:.1f} s, app CPU "
                f"{r['cpu_s']:.0f} s = {r['cpu_s'] / r['wall_s']:.2f} cores, "
                f"load avg {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        if args.runs > 1:
            rate = common.median([r["events_per_s"] for r in results])
            secs = common.median([r["seconds"] for r in results])
            rss = common.median([r["peak_rss_mb"] for r in results])
            print(f"median of {args.runs}: ", end="")
        else:
            rate, secs, rss = (results[0][k] for k in ("events_per_s", "seconds", "peak_rss_mb"))
        print(
            f"quix-streams: {n} events in {secs:.1f} s = {rate:,.0f} events/s, "
            f"peak RSS {rss:.0f} MB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
