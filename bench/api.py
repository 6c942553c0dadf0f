"""Serving API benchmark: single-customer GET and batch-get against 200,000 loaded customers.

    python bench/api.py [--customers 200000] [--runs 3] [--duration 10]

Uses the Redis in $SEGMENTS_REDIS_URL, or starts one (scripts/services.py) and stops it after.
Every figure is the median of ``--runs`` runs:

1. load: customers written with the real apply script (RedisProfileStore.apply, the consumer's
   Lua path) and segmented with the real Segmenter (change events to a null sink);
2. throughput: ``wrk`` (one thread, 64 connections, random customers) against
   ``segments api`` with 1 and 2 uvicorn workers (uvloop + httptools, API key checked), and
   against the floor: a bare uvicorn ASGI callable doing the same HGETALL and returning the
   hash as JSON (bench/api_floor.py), no framework, no classification;
3. latency at a steady rate: an open-loop generator (requests scheduled at fixed instants,
   latency measured from the scheduled instant, so a stall is not hidden) at 1,000 GET/s, and
   at 100 batch-gets/s of 100 random ids each; p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from consumers.segmenter import Segmenter, min_day_for  # noqa: E402
from service.segmentation.profile import MS_PER_DAY, EventDelta, Totals  # noqa: E402
from service.segmentation.rules import load_rules  # noqa: E402
from service.settings import RedisSettings  # noqa: E402
from service.store.keys import Keys  # noqa: E402
from service.store.profiles import ApplyRequest, RedisProfileStore  # noqa: E402
from service.store.redis_client import create_redis  # noqa: E402
from service.store.resp import RespPipeline  # noqa: E402

RULES = load_rules(None)
KEY = "bench-" + uuid.uuid4().hex
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()
LOAD_BATCH = 5_000


# --- loading -------------------------------------------------------------------------------------


def customer_id(i: int) -> str:
    return f"c-{i:07d}"


def _events(i: int, rng: random.Random, today: int) -> Iterator[EventDelta]:
    """1-8 purchase days in the last 400 days, an occasional refund and engagement."""
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 6, 8))):
        day = today - rng.randrange(400)
        ms = day * MS_PER_DAY + rng.randrange(MS_PER_DAY)
        spend = rng.randrange(5_00, 300_00) * 100  # money units (1/10,000)
        discounted = spend if rng.random() < 0.3 else 0
        premium = spend if rng.random() < 0.1 else 0
        yield EventDelta(
            "purchase", day, ms, Totals(1, spend, 0, 0, spend // 5, discounted, premium)
        )
    if rng.random() < 0.05:
        day = today - rng.randrange(60)
        yield EventDelta("refund", day, day * MS_PER_DAY, Totals(0, 0, 1, 10_00 * 100))
    if rng.random() < 0.1:
        day = today - rng.randrange(30)
        yield EventDelta("engagement", day, day * MS_PER_DAY, Totals(engagements=1))


class _NullSink:
    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        return None


async def load(redis_url: str, prefix: str, customers: int) -> float:
    """Writes ``customers`` through the consumer's apply + settle path; returns seconds."""
    now = datetime.now(UTC)
    today = now.toordinal() - datetime(1970, 1, 1).toordinal()
    min_day = min_day_for(now, RULES)
    redis = create_redis(RedisSettings(url=redis_url))
    fast = RespPipeline(redis_url, timeout_s=30)
    store = RedisProfileStore(redis, Keys(prefix), ring_size=8, fast=fast)
    segmenter = Segmenter(store, _NullSink(), changes_topic="bench", rules=lambda: RULES)
    rng = random.Random(42)
    offset = 0
    start = time.perf_counter()
    batch: list[ApplyRequest] = []
    for i in range(customers):
        cid = customer_id(i)
        for delta in _events(i, rng, today):
            batch.append(ApplyRequest(cid, 0, offset, offset.to_bytes(8, "big"), delta))
            offset += 1
        if len(batch) >= LOAD_BATCH or i == customers - 1:
            _, states = await store.apply(batch, min_day=min_day)
            await segmenter.settle(states, now=now, cause="event", trigger_for=lambda _: None)
            batch = []
    elapsed = time.perf_counter() - start
    await fast.aclose()
    await redis.aclose()
    return elapsed


# --- servers -------------------------------------------------------------------------------------


@contextmanager
def server(kind: str, redis_url: str, prefix: str, workers: int = 1) -> Iterator[str]:
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}
    env.update(
        SEGMENTS_REDIS__URL=redis_url,
        SEGMENTS_REDIS__KEY_PREFIX=prefix,
        SEGMENTS_API__KEYS=json.dumps(
            [{"name": "bench", "sha256": KEY_SHA, "scopes": ["segments:read"]}]
        ),
        SEGMENTS_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    if kind == "api":
        cmd = [sys.executable, "-m", "service.cli", "api", "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "uvicorn", "api_floor:app", "--app-dir", str(ROOT / "bench"),
               "--port", str(port), "--loop", "uvloop", "--http", "httptools",
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    try:
        common.wait_for_port("127.0.0.1", port, timeout=30)
        time.sleep(1.0 if workers > 1 else 0.3)  # every worker accepting
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- load generators -----------------------------------------------------------------------------

_WRK_SCRIPT = """
math.randomseed(os.time())
local headers = {["Authorization"] = "Bearer %(key)s"}
request = function()
  local path = string.format("%(path)s", math.random(0, %(customers)d - 1))
  return wrk.format("GET", path, headers)
end
"""


def wrk(
    url: str, path: str, customers: int, seconds: float, connections: int = 64
) -> dict[str, float]:
    script = _WRK_SCRIPT % {"key": KEY, "path": path, "customers": customers}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency",
               "-s", f.name, url]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    p99 = _wrk_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    if non2xx or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    return {"rps": rps, "p99_ms": p99}


def _wrk_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _open_loop(
    url: str,
    make_request: Any,
    rate: float,
    seconds: float,
    connections: int,
) -> dict[str, float]:
    """Requests scheduled at ``start + i / rate``; latency counted from the scheduled instant."""
    host, port = url.removeprefix("http://").split(":")
    total = int(rate * seconds)
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        while (due := await queue.get()) is not None:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(make_request())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)
    start = time.perf_counter() + 0.1
    for i in range(total):
        queue.put_nowait(start + i / rate)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    latencies.sort()
    achieved = total / (max(latencies[-1], 0) + total / rate) if latencies else 0.0
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "rate": achieved,
    }


def steady_get(url: str, customers: int, rate: float, seconds: float) -> dict[str, float]:
    rng = random.Random(1)
    host = url.removeprefix("http://")

    def request() -> bytes:
        cid = customer_id(rng.randrange(customers))
        return (
            f"GET /v1/customers/{cid}/segment HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n"
        ).encode()

    return _run_async(_open_loop(url, request, rate, seconds, connections=32))


def steady_batch(
    url: str, customers: int, rate: float, seconds: float, size: int = 100
) -> dict[str, float]:
    rng = random.Random(2)
    host = url.removeprefix("http://")

    def request() -> bytes:
        ids = [customer_id(rng.randrange(customers)) for _ in range(size)]
        body = json.dumps({"customer_ids": ids}).encode()
        return (
            f"POST /v1/segments:batch-get HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return _run_async(_open_loop(url, request, rate, seconds, connections=16))


def _run_async(coro: Any) -> dict[str, float]:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(coro)


# --- main ----------------------------------------------------------------------------------------


@contextmanager
def redis_service() -> Iterator[str]:
    if url := os.environ.get("SEGMENTS_REDIS_URL"):
        yield url
        return
    state = Path(tempfile.mkdtemp(prefix="segments-bench-api."))
    services = [sys.executable, str(ROOT / "scripts" / "services.py"), "--state-dir", str(state)]
    subprocess.run([*services, "start", "redis"], check=True, stdout=subprocess.DEVNULL)
    try:
        env = subprocess.run([*services, "env"], check=True, capture_output=True, text=True).stdout
        yield re.search(r"SEGMENTS_REDIS_URL=(\S+)", env).group(1)  # type: ignore[union-attr]
    finally:
        subprocess.run([*services, "stop", "all"], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2:3]
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"Redis {''.join(redis_version).removeprefix('v=')}, wrk {_wrk_version()}"
    )


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    print(f"machine: {machine()}")
    print(f"load average before: {_load()} (other work on the machine skews every figure)")
    results: dict[str, dict[str, float]] = {}
    with redis_service() as redis_url:
        prefix = f"bapi{uuid.uuid4().hex[:6]}:"
        seconds = asyncio.run(load(redis_url, prefix, args.customers))
        print(f"loaded {args.customers:,} customers in {seconds:.1f} s (apply + settle)")
        path = "/v1/customers/c-%07d/segment"
        for label, kind, workers in (
            ("floor: bare uvicorn + HGETALL, 1 worker", "floor", 1),
            ("segments api, 1 worker", "api", 1),
            ("segments api, 2 workers", "api", 2),
        ):
            runs = []
            with server(kind, redis_url, prefix, workers) as url:
                wrk(url, path if kind == "api" else "/c/c-%07d", args.customers, 2)  # warm-up
                for _ in range(args.runs):
                    target = path if kind == "api" else "/c/c-%07d"
                    runs.append(wrk(url, target, args.customers, args.duration))
            results[label] = median_of(runs)
            got = results[label]
            print(f"  {label:44s} {got['rps']:>9,.0f} req/s   "
                  f"p99 {got['p99_ms']:.2f} ms (64 connections, closed loop)")  # fmt: skip

        with server("api", redis_url, prefix, 1) as url:
            steady_get(url, args.customers, 200, 2)  # warm-up
            get = median_of(
                [steady_get(url, args.customers, 1_000, args.duration) for _ in range(args.runs)]
            )
            batch = median_of(
                [steady_batch(url, args.customers, 100, args.duration) for _ in range(args.runs)]
            )
        print(f"  GET at a steady 1,000 req/s (1 worker):   p50 {get['p50_ms']:.2f} ms  "
              f"p99 {get['p99_ms']:.2f} ms  max {get['max_ms']:.1f} ms")  # fmt: skip
        print(f"  batch-get of 100 ids at 100 req/s:        p50 {batch['p50_ms']:.2f} ms  "
              f"p99 {batch['p99_ms']:.2f} ms  max {batch['max_ms']:.1f} ms")  # fmt: skip

        floor = results["floor: bare uvicorn + HGETALL, 1 worker"]["rps"]
        one = results["segments api, 1 worker"]["rps"]
        two = results["segments api, 2 workers"]["rps"]
        print(f"  ratio api/floor (1 worker): {one / floor:.2f}; 2 workers / 1: {two / one:.2f}")
        print(f"load average after: {_load()}")

        import redis as redis_sync

        r = redis_sync.Redis.from_url(redis_url)
        for key in r.scan_iter(f"{prefix}*", count=10_000):
            r.unlink(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
