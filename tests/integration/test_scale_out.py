"""Scale-out: three ``segments consume`` processes in one group over 12 partitions work through
200,000 events; mid-stream one is SIGKILLed and a fourth joins, so partitions move twice while
events are still arriving. The state ends exactly the ground truth (no event lost or counted
twice across the hand-overs), every customer's final segmentation is on the change topic with
a consistent history, and the group's offsets are committed to the end."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bench.generate import iter_events
from service.kafka import ensure_topics
from service.segmentation.rules import load_rules
from tests.support.consumers import (
    assert_state_exact,
    change_sequence_problems,
    consumer_env,
    log_lines,
    read_changes,
    spawn_consumer,
)
from tests.support.kafka import committed, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = int(os.environ.get("SEGMENTS_SCALE_EVENTS", "200000"))
RATE = int(os.environ.get("SEGMENTS_SCALE_RATE", "10000"))
"""Events/s produced while the consumers run: slow enough that the stream is still flowing
when the group changes, so every hand-over happens mid-stream."""
CHUNK = 5_000
PARTITIONS = 12
CONSUMERS = 3
KILL_AT = EVENTS * 30 // 100
"""Produced events at which one consumer is SIGKILLed (once it committed a share of them)."""
ADD_AT = EVENTS * 60 // 100
"""Produced events at which a fourth consumer joins: 40% of the stream is still to come."""


async def test_kill_one_add_one_state_exact(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    k = settings.kafka
    await ensure_topics(k, partitions=PARTITIONS)
    records = list(iter_events(EVENTS, customers=EVENTS // 5, seed=23, now=datetime.now(UTC)))
    # Probes off: several consumers share this machine (and its port 9400).
    env = consumer_env(settings, SEGMENTS_KAFKA__MAX_BATCH="2000", SEGMENTS_PROBES__PORT="0")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    killed = -1

    def spawn() -> None:
        path = tmp_path / f"consumer-{len(procs)}.log"
        procs.append(spawn_consumer(env, path.open("ab")))
        logs.append(path)

    def assigned(i: int) -> list[list[str]]:
        return [e["partitions"] for e in log_lines(logs[i], "partitions assigned")]

    def check_alive() -> None:
        for i, proc in enumerate(procs):
            if i != killed and proc.poll() is not None:
                raise AssertionError(f"consumer {i} exited:\n{logs[i].read_text()[-3000:]}")

    async def progress() -> int:
        return sum((await committed(k, k.group_id, k.events_topic, range(PARTITIONS))).values())

    ends: dict[int, int] = {}
    produced = 0
    t0 = time.monotonic()
    try:
        for _ in range(CONSUMERS):
            spawn()
        # The group is formed (every member owns partitions) before the first event.
        deadline = time.monotonic() + 60
        while not all(a and a[-1] for a in map(assigned, range(CONSUMERS))):
            check_alive()
            assert time.monotonic() < deadline, "the group did not form"
            await asyncio.sleep(0.2)

        started = time.monotonic()
        while produced < EVENTS:
            chunk = records[produced : produced + CHUNK]
            for p, end in (await produce(k, k.events_topic, chunk)).items():
                ends[p] = max(ends.get(p, 0), end)
            produced += len(chunk)
            if produced == KILL_AT:
                # 1. One of the three dies without a goodbye once it has done some work: its
                #    partitions stall until the session timeout, then move to the others.
                deadline = time.monotonic() + 60
                while await progress() < KILL_AT // 2:
                    check_alive()
                    assert time.monotonic() < deadline, "no progress before the kill"
                    await asyncio.sleep(0.2)
                killed = random.Random(3).randrange(CONSUMERS)
                procs[killed].send_signal(signal.SIGKILL)
                procs[killed].wait(10)
                at_kill = await progress()
            elif produced == ADD_AT:
                # 2. A fourth joins while events keep arriving: partitions move again.
                spawn()
            check_alive()
            ahead = produced / RATE - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        assert sum(ends.values()) == EVENTS

        # 3. Done when the group's committed offsets reach the offsets the producer got back.
        deadline = time.monotonic() + 180
        while await committed(k, k.group_id, k.events_topic, list(ends)) != ends:
            check_alive()
            assert time.monotonic() < deadline, f"not caught up: {await progress()} committed"
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    # Graceful stops: each finishes its batch, commits and leaves the group.
    assert [c for i, c in enumerate(codes) if i != killed] == [0] * CONSUMERS, codes
    assert await committed(k, k.group_id, k.events_topic, list(ends)) == ends
    assert 0 < at_kill < EVENTS, at_kill
    assert assigned(killed)[-1], "the killed consumer owned no partition when it died"
    handled = [
        s[-1]["records"] if (s := log_lines(path, "consumer stopped")) else None for path in logs
    ]
    assert handled[-1], f"the added consumer handled no record: {handled}"
    print(
        f"\nscale-out: {EVENTS:,} events in {elapsed:.1f}s; consumer {killed} killed at "
        f"{at_kill:,} committed; records handled per process (None: killed): {handled}"
    )

    rules = load_rules(None)
    events = [orjson.loads(v) for _, v in records]
    final = await assert_state_exact(settings, events, rules)
    changes = await read_changes(k, final)
    problems = change_sequence_problems(changes)
    assert not problems, f"{len(problems)} problems, e.g. {problems[:5]}"
