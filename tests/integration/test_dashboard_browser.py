"""The dashboard in real headless Chromium against a running system, like ``make demo``.

Consumer, API and demo traffic run as the real ``segments`` processes (own topics and key
prefix on the test's Kafka and Redis); Debian's ``chromium`` is driven by Playwright through
its system executable. A screenshot is saved under ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, async_playwright

from tests.support.api import api_key
from tests.support.live import free_port, stop_processes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def running_system(
    kafka_bootstrap: str, redis_url: str, broker_kind: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Topics, consumer, API and demo traffic; yields (base URL, read key)."""
    run = uuid.uuid4().hex[:10]
    read_key, read_cfg = api_key("dashboard", "segments:read")
    env = {
        **os.environ,
        "SEGMENTS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SEGMENTS_REDIS_URL": redis_url,
        "SEGMENTS_KAFKA__EVENTS_TOPIC": f"b{run}.events",
        "SEGMENTS_KAFKA__CHANGES_TOPIC": f"b{run}.segment-changes",
        "SEGMENTS_KAFKA__DLQ_TOPIC": f"b{run}.events.dlq",
        "SEGMENTS_KAFKA__GROUP_ID": f"b{run}-consumer",
        "SEGMENTS_REDIS__KEY_PREFIX": f"b{run}:",
        "SEGMENTS_API__KEYS": f"[{read_cfg.model_dump_json()}]",
        "SEGMENTS_KAFKA__LANES": "1",
    }
    cli = [sys.executable, "-m", "service.cli"]
    subprocess.run([*cli, "topics", "--partitions", "2"], env=env, check=True, cwd=ROOT, timeout=60)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for name, args in (
            ("consumer", ["consume"]),
            ("api", ["api", "--port", str(port)]),
            ("demo", ["demo", "--customers", "300", "--rate", "40"]),
        ):
            log = (tmp_path / f"{name}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [*cli, *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
            )
        yield f"http://127.0.0.1:{port}", read_key
    finally:
        stop_processes(procs, tmp_path, logs)


async def _wait_for_data(url: str, key: str) -> None:
    """Until the consumer has classified customers (segments have members)."""
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        for _ in range(240):
            try:
                r = await client.get("/v1/segments")
                if r.status_code == 200 and sum(s["members"] for s in r.json()["segments"]) > 0:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError("no customer was classified within 2 minutes")


def check_json_logs(log_dir: Path) -> None:
    """Every line the consumer, API and demo wrote is one JSON object (ts, level, logger,
    msg); a dead letter names its record as ``topic[partition]@offset``."""
    seen = set()
    for log_file in sorted(log_dir.glob("*.log")):
        text = log_file.read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # still being written
        assert lines, f"{log_file.name} is empty"
        for line in lines:
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert {"ts", "level", "logger", "msg"} <= set(entry), line
            if entry["msg"] == "dead letter":
                assert re.fullmatch(r"b\w+\.events\[\d+\]@\d+", entry["at"]), line
            seen.add((log_file.stem, entry["msg"]))
    assert ("consumer", "partitions assigned") in seen
    assert ("api", "change hub reading") in seen


async def test_dashboard_in_headless_chromium(
    running_system: tuple[str, str], broker_kind: str, tmp_path: Path
) -> None:
    url, key = running_system
    await _wait_for_data(url, key)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            await page.goto(url + "/")
            await page.fill("#key", key)
            await page.click("#login button[type=submit]")

            # segment sizes: the bar chart shows members
            # (selectors, not wait_for_function: the page's CSP forbids evaluating strings)
            await page.wait_for_selector("#sizes rect.bar", timeout=30_000)
            total = await page.locator("#sizes").get_attribute("data-total")
            assert int(total or 0) > 0
            assert await page.locator("#sizes rect.bar").count() > 0
            assert await page.locator("#kpis tbody tr").count() > 0
            assert "consumer lag" in await page.inner_text("#health")

            # live changes arrive through the SSE stream
            await page.wait_for_selector("#feed tbody tr", timeout=60_000)
            # the lookup shows a known customer's segment and reasons
            await page.fill("#customer", "c-000001")
            await page.click("#lookup button[type=submit]")
            await page.wait_for_selector("#reasons li", timeout=10_000)
            assert await page.locator("#reasons li").count() > 0
            assert "c-000001" in await page.inner_text("#customer-result")

            # let a refresh or two run, then take the picture
            await page.wait_for_selector("#matrix td", timeout=30_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(
                path=str(ARTIFACTS / f"dashboard-{broker_kind}.png"), full_page=True
            )
        finally:
            await browser.close()
    assert errors == [], errors
    check_json_logs(tmp_path)
