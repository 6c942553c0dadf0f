"""Helpers of the fault tests: a Redis that can be killed and restarted on the same port and
data dir, processes stopped and resumed, RSS readings, and ground truth per partition offset."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2

from consumers.segmenter import min_day_for
from service.segmentation.profile import Profile
from service.segmentation.rules import Rules, load_rules
from service.settings import Settings
from service.store.keys import Keys
from service.store.packing import CustomerState
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.events import ground_truth, purchase, refund

HOST = "127.0.0.1"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""The fixed instant the fault tests classify at."""
RULES = load_rules(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server of a test's own, restartable on the same port with the same data dir.

    ``aof=True`` runs with ``appendonly yes`` and ``appendfsync always`` (every write is on
    disk before Redis answers it); otherwise no persistence at all, as the shared test Redis.
    """

    data_dir: Path
    aof: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed (scripts/install.sh)"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not _ping(self.port):
            assert self.process.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"redis did not start\n{self.log_tail()}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.data_dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid``, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def slope_per_min(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, value per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60


def partition_of(customer_id: str, partitions: int) -> int:
    """The partition aiokafka's default partitioner gives a keyed record (Java-compatible)."""
    return int((murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions)


def offsets_of(events: Sequence[dict[str, Any]], partitions: int) -> list[tuple[int, int]]:
    """(partition, offset) of each event produced in this order to a fresh topic."""
    next_offset = [0] * partitions
    out = []
    for e in events:
        p = partition_of(e["customer_id"], partitions)
        out.append((p, next_offset[p]))
        next_offset[p] += 1
    return out


async def read_profiles(
    settings: Settings, customer_ids: Sequence[str], *, now: datetime, rules: Rules
) -> dict[str, CustomerState]:
    redis = create_redis(settings.redis)
    store = RedisProfileStore(redis, Keys(settings.redis.key_prefix), ring_size=8)
    min_day = min_day_for(now, rules)
    states: dict[str, CustomerState] = {}
    try:
        for i in range(0, len(customer_ids), 2000):
            states.update(await store.read(list(customer_ids[i : i + 2000]), min_day=min_day))
    finally:
        await redis.aclose()
    return states


async def assert_state_exact(
    settings: Settings, events: Sequence[dict[str, Any]], *, now: datetime, rules: Rules
) -> dict[str, Profile]:
    """Every customer of ``events`` has exactly the ground-truth profile of ``events``."""
    truth = ground_truth(list(events), min_day=min_day_for(now, rules))
    states = await read_profiles(settings, list(truth), now=now, rules=rules)
    wrong = [cid for cid in truth if cid not in states or states[cid].profile != truth[cid]]
    if wrong:
        first = wrong[0]
        got = states[first].profile if first in states else None
        raise AssertionError(
            f"{len(wrong)} of {len(truth)} profiles differ, e.g. {wrong[:3]}; {first}:\n"
            f"  want {truth[first].lifetime}\n  got  {got.lifetime if got else None}"
        )
    return truth


def stopped(pid: int) -> _Stopped:
    """``with stopped(pid):`` SIGSTOP on entry, SIGCONT on exit (whatever happens)."""
    return _Stopped(pid)


class _Stopped:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *_: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def random_events(n: int, customers: int, *, seed: int, now: datetime) -> list[dict[str, Any]]:
    """``n`` purchases (90%) and refunds over ``customers`` customers, in the 300 days before
    ``now``; distinct event ids."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cid = f"c-{rng.randrange(customers)}"
        at = now - timedelta(days=rng.randrange(0, 300), minutes=rng.randrange(1440))
        if rng.random() < 0.9:
            amount = f"{rng.randrange(100, 90000) / 100:.2f}"
            out.append(purchase(cid, f"e-{seed}-{i}", at, amount))
        else:
            out.append(refund(cid, f"e-{seed}-{i}", at, "4.00"))
    return out
