"""The broker goes away mid-stream and comes back: the consumer (its fetches, commits and the
change-event producer) recovers by itself; the state is exact; every customer's final segment
is on the change topic.

The test runs a broker of its own of the kind under test:
- Apache Kafka is SIGKILLed and restarted on the same port and log dirs (its data survives);
- Tansu runs with memory storage, which a restart empties (topics, offsets, groups): a restart
  cannot be survived by any client, so Tansu is frozen (SIGSTOP) for longer than the session
  timeout and thawed instead, an outage without data loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from consumers.runner import ConsumerApp
from service.kafka import client_options, ensure_topics
from service.settings import KafkaSettings, Settings
from tests.conftest import load_services
from tests.support.events import encode
from tests.support.faults import NOW, RULES, assert_state_exact, random_events, read_profiles
from tests.support.kafka import committed, produce, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _respawn(cmd: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    """The same command line again, in its own session, appending to the same log."""
    with log_file.open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def _final_segments_published(settings: Settings, customers: list[str]) -> None:
    """Every customer's stored segmentation appears on the change topic."""
    states = await read_profiles(settings, customers, now=NOW, rules=RULES)
    final = {}
    for cid, state in states.items():
        assert state.stored is not None, cid
        final[cid] = (state.stored.segment, state.stored.treatment_id)
    unseen = set(final)
    consumer = AIOKafkaConsumer(
        settings.kafka.changes_topic,
        **client_options(settings.kafka),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    deadline = time.monotonic() + 60
    try:
        while unseen and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in recs:
                    change = orjson.loads(r.value)
                    cur = change["current"]
                    if final.get(change["customer_id"]) == (
                        cur["segment"],
                        cur["treatment"]["id"],
                    ):
                        unseen.discard(change["customer_id"])
    finally:
        await consumer.stop()
    assert not unseen, f"{len(unseen)} final segments never published, e.g. {sorted(unseen)[:3]}"


async def test_broker_outage_mid_stream(
    make_settings: Any, broker_kind: str, tmp_path: Path
) -> None:
    services = load_services()
    state_dir = tmp_path / "own-broker"
    info = services.start(broker_kind, state_dir)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        base = make_settings(max_batch=200)
        settings = base.model_copy(
            update={
                "kafka": KafkaSettings(
                    **{**base.kafka.model_dump(), "bootstrap": info["bootstrap"]}
                )
            }
        )
        k = settings.kafka
        await ensure_topics(k, partitions=PARTITIONS)
        events = random_events(30_000, 600, seed=31, now=NOW)
        ends = await produce(
            k, k.events_topic, [(e["customer_id"].encode(), encode(e)) for e in events]
        )
        app = ConsumerApp(settings, rules=RULES, clock=lambda: NOW)
        task = asyncio.create_task(app.run())
        try:
            await wait_for(lambda: app.totals.records > 3_000, timeout_s=60, what="progress")
            t0 = time.monotonic()
            if broker_kind == "kafka":
                cmd = _cmdline(info["pid"])
                os.killpg(info["pid"], signal.SIGKILL)
                await asyncio.sleep(2.0)
                handled = app.totals.records
                await asyncio.sleep(2.0)
                assert app.totals.records - handled <= k.max_batch * k.lanes, "no broker?"
                restarted = _respawn(cmd, Path(info["log_file"]))

                def ready() -> bool:
                    with contextlib.suppress(OSError, ValueError, struct.error):
                        return bool(services._kafka_ready(info["port"]))
                    return False

                await wait_for(ready, timeout_s=90, what="Kafka back on its port")
            else:
                os.kill(info["pid"], signal.SIGSTOP)
                try:
                    await asyncio.sleep(2.0)
                    handled = app.totals.records
                    await asyncio.sleep(k.session_timeout_ms / 1000 + 2)
                    assert app.totals.records - handled <= k.max_batch * k.lanes
                finally:
                    os.kill(info["pid"], signal.SIGCONT)
            outage_s = time.monotonic() - t0

            async def all_committed() -> bool:
                return await committed(k, k.group_id, k.events_topic, list(ends)) == ends

            await wait_for(all_committed, timeout_s=150, what="every offset committed")
            recovery_s = time.monotonic() - t0 - outage_s
            print(f"\n{broker_kind}: outage {outage_s:.1f}s, caught up {recovery_s:.1f}s after")
        finally:
            app.request_stop()
            await asyncio.wait_for(task, 60)
        truth = await assert_state_exact(settings, events, now=NOW, rules=RULES)
        await _final_segments_published(settings, sorted(truth))
    finally:
        if restarted is not None:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait(30)
        services.stop(broker_kind, state_dir)
