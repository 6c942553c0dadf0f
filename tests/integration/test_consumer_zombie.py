"""A consumer stalled past its session timeout with batches in flight (SIGSTOP), its
partitions handed to another consumer, then resumed (SIGCONT): the zombie's late applies are
fenced by the per-customer watermark and its segment writes by the revision check; nothing is
counted twice, nothing lost, and its late commits are refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from consumers.runner import ConsumerApp
from service.kafka import ensure_topics
from service.settings import Settings
from tests.conftest import ROOT
from tests.support.events import encode
from tests.support.faults import NOW, RULES, assert_state_exact, random_events
from tests.support.kafka import committed, produce, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _spawn(settings: Settings, log: IO[bytes]) -> subprocess.Popen[bytes]:
    k = settings.kafka
    env = {
        **os.environ,
        "SEGMENTS_KAFKA__BOOTSTRAP": k.bootstrap,
        "SEGMENTS_KAFKA__EVENTS_TOPIC": k.events_topic,
        "SEGMENTS_KAFKA__CHANGES_TOPIC": k.changes_topic,
        "SEGMENTS_KAFKA__DLQ_TOPIC": k.dlq_topic,
        "SEGMENTS_KAFKA__GROUP_ID": k.group_id,
        "SEGMENTS_KAFKA__SESSION_TIMEOUT_MS": str(k.session_timeout_ms),
        "SEGMENTS_KAFKA__MAX_BATCH": str(k.max_batch),
        "SEGMENTS_REDIS__URL": settings.redis.url,
        "SEGMENTS_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "SEGMENTS_PROBES__PORT": "0",
    }
    env.pop("SEGMENTS_KAFKA_BOOTSTRAP", None)
    env.pop("SEGMENTS_REDIS_URL", None)
    # The zombie classifies with the same rules and clock as the test (fixed instant).
    code = (
        "import asyncio, datetime as d;"
        "from consumers.runner import ConsumerApp;"
        "from service.settings import Settings;"
        "from service.segmentation.rules import load_rules;"
        f"now = d.datetime.fromisoformat({NOW.isoformat()!r});"
        "app = ConsumerApp(Settings(), rules=load_rules(None), clock=lambda: now);"
        "loop = asyncio.new_event_loop();"
        "import signal;"
        "loop.add_signal_handler(signal.SIGTERM, app.request_stop);"
        "loop.run_until_complete(app.run())"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


async def test_stalled_consumer_is_fenced_after_rebalance(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(max_batch=2_000)
    k = settings.kafka
    await ensure_topics(k, partitions=PARTITIONS)
    events = random_events(60_000, 400, seed=41, now=NOW)
    ends = await produce(
        k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events]
    )

    async def progress() -> int:
        return sum((await committed(k, k.group_id, k.events_topic, list(ends))).values())

    log_path = tmp_path / "zombie.log"
    log = _open_log(log_path)
    zombie = _spawn(settings, log)
    other = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
    other_task: asyncio.Task[None] | None = None
    try:
        done = 0
        while done < 5_000:
            assert zombie.poll() is None, log_path.read_text()[-3000:]
            done = await progress()
            await asyncio.sleep(0.1)
        zombie.send_signal(signal.SIGSTOP)  # mid-stream: its lanes have batches in flight
        stalled_at = await progress()
        try:
            other_task = asyncio.create_task(other.run())
            # The group waits for the zombie's session to expire, then hands its partitions
            # over; the new owner replays from the last commit, i.e. the zombie's batches.
            await wait_for(
                lambda: other.totals.records > 3 * k.max_batch,
                timeout_s=90,
                what="the other consumer taking over",
            )
            assert await progress() > stalled_at
        finally:
            zombie.send_signal(signal.SIGCONT)  # the zombie finishes its stale batches

        async def all_committed() -> bool:
            return await progress() == sum(ends.values())

        await wait_for(all_committed, timeout_s=120, what="every offset committed")
    finally:
        zombie.send_signal(signal.SIGTERM)
        zombie.wait(60)
        log.close()
        other.request_stop()
        if other_task is not None:
            await asyncio.wait_for(other_task, 60)

    output = log_path.read_text()
    assert "commit refused" in output, output[-3000:]  # its late batches were not committed
    await assert_state_exact(settings, events, now=NOW, rules=RULES)
