"""A rules change reaches every running role within 5 s: real ``segments api``,
``segments consume`` and ``segments sweep`` processes, the new version activated through
``PUT /v1/rules``; each process reports the version it classifies with (the API's
``GET /v1/rules``, the consumer's and sweeper's ``segments_rules_info`` on their probes port),
and a change event the consumer produces afterwards names the new version."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from service.kafka import ensure_topics
from service.segmentation.rules import load_rules
from service.settings import KafkaSettings
from tests.support.api import api_key
from tests.support.events import encode, purchase
from tests.support.kafka import produce, read_topic
from tests.support.live import free_port, stop_processes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_rules(None)
ROLLOUT_S = 5.0


@pytest.fixture
def system(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:10]
    admin_key, admin_cfg = api_key("ops", "admin", "segments:read")
    ports = {"api": free_port(), "consume": free_port(), "sweep": free_port()}
    env = {name: v for name, v in os.environ.items() if not name.startswith("SEGMENTS_")}
    env.update(
        SEGMENTS_KAFKA__BOOTSTRAP=kafka_bootstrap,
        SEGMENTS_REDIS__URL=redis_url,
        SEGMENTS_REDIS__CLUSTER=os.environ.get("SEGMENTS_REDIS__CLUSTER", "false"),
        SEGMENTS_KAFKA__EVENTS_TOPIC=f"r{run}.events",
        SEGMENTS_KAFKA__CHANGES_TOPIC=f"r{run}.segment-changes",
        SEGMENTS_KAFKA__DLQ_TOPIC=f"r{run}.events.dlq",
        SEGMENTS_KAFKA__GROUP_ID=f"r{run}-consumer",
        SEGMENTS_KAFKA__LANES="1",
        SEGMENTS_REDIS__KEY_PREFIX=f"r{run}:",
        SEGMENTS_API__KEYS=f"[{admin_cfg.model_dump_json()}]",
        SEGMENTS_PROBES__HOST="127.0.0.1",
    )
    cli = [sys.executable, "-m", "service.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for role, args in (
            ("api", ["api", "--port", str(ports["api"])]),
            ("consume", ["consume"]),
            ("sweep", ["sweep"]),
        ):
            log = (tmp_path / f"{role}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [*cli, *args],
                    env={**env, "SEGMENTS_PROBES__PORT": str(ports[role])},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        yield {"env": env, "ports": ports, "admin_key": admin_key, "procs": procs}
    finally:
        stop_processes(procs, tmp_path, logs)


async def _versions(client: httpx.AsyncClient, ports: dict[str, int], key: str) -> dict[str, str]:
    """The rules version each role reports now ('' while it does not answer)."""
    seen = {role: "" for role in ports}
    try:
        r = await client.get(
            f"http://127.0.0.1:{ports['api']}/v1/rules",
            headers={"Authorization": f"Bearer {key}"},
        )
        if r.status_code == 200:
            seen["api"] = r.json()["version"]
    except httpx.TransportError:
        pass
    for role in ("consume", "sweep"):
        try:
            r = await client.get(f"http://127.0.0.1:{ports[role]}/metrics")
        except httpx.TransportError:
            continue
        for line in r.text.splitlines():
            if line.startswith('segments_rules_info{version="') and line.endswith(" 1.0"):
                seen[role] = line.split('"')[1]
    return seen


async def test_every_role_uses_a_new_rules_version_within_5s(system: dict[str, Any]) -> None:
    ports, key, env = system["ports"], system["admin_key"], system["env"]
    kafka = KafkaSettings(
        bootstrap=env["SEGMENTS_KAFKA__BOOTSTRAP"],
        events_topic=env["SEGMENTS_KAFKA__EVENTS_TOPIC"],
        changes_topic=env["SEGMENTS_KAFKA__CHANGES_TOPIC"],
        dlq_topic=env["SEGMENTS_KAFKA__DLQ_TOPIC"],
        group_id=env["SEGMENTS_KAFKA__GROUP_ID"],
    )
    doc = DEFAULT.document()
    doc["lifecycle"]["at_risk_days"] = 20
    body = yaml.safe_dump(doc)
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + 90
        while await _versions(client, ports, key) != dict.fromkeys(ports, DEFAULT.version):
            for proc in system["procs"]:
                assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
            assert time.monotonic() < deadline, await _versions(client, ports, key)
            await asyncio.sleep(0.2)

        t0 = time.monotonic()
        r = await client.put(
            f"http://127.0.0.1:{ports['api']}/v1/rules",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/yaml"},
        )
        assert r.status_code == 200, r.text
        new_version = r.json()["version"]
        assert new_version != DEFAULT.version
        took: dict[str, float] = {}
        while len(took) < len(ports) and time.monotonic() - t0 < ROLLOUT_S + 5:
            for role, version in (await _versions(client, ports, key)).items():
                if version == new_version and role not in took:
                    took[role] = time.monotonic() - t0
            await asyncio.sleep(0.05)
    print(f"rules rollout: {took}")
    assert set(took) == set(ports), took
    assert max(took.values()) <= ROLLOUT_S, took

    # The consumer classifies with it: a new customer's first change names the new version.
    await ensure_topics(kafka, partitions=2)
    event = purchase("c-after", "e-after", datetime.now(UTC) - timedelta(days=1), "25.00")
    await produce(kafka, kafka.events_topic, [(b"c-after", encode(event))])
    records = await read_topic(kafka, kafka.changes_topic, at_least=1, timeout_s=60)
    firsts = [
        change
        for change in (orjson.loads(rec.value) for rec in records)
        if change["customer_id"] == "c-after" and change["cause"] == "event"
    ]
    assert firsts and firsts[0]["rules_version"] == new_version
    assert firsts[0]["current"]["rules_version"] == new_version
