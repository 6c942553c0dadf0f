"""API metrics: latency by route and status, Redis errors counted, and one consistent view
across uvicorn workers (prometheus_client multiprocess mode under ``segments api --workers``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from tests.support.api import api_settings, running
from tests.support.kafka import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_latency_by_status_and_redis_errors_counted(redis_url: str) -> None:
    settings = api_settings(redis_url)
    down = settings.model_copy(deep=True)
    down.redis.url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    down.redis.socket_timeout_s = 1
    async with running(create_app(down)) as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        text = (await client.get("/metrics")).text
    assert 'segments_redis_errors_total{operation="/readyz"} 2.0' in text
    assert (
        'segments_api_request_duration_seconds_count{method="GET",route="/readyz",status="503"} 2.0'
        in text
    )
    healthz = 'method="GET",route="/healthz",status="200"'
    assert f"segments_api_request_duration_seconds_count{{{healthz}}} 1.0" in text


async def test_change_stream_kafka_errors_counted(redis_url: str) -> None:
    """Kafka unreachable: the change stream's reader fails and retries; each failure counts
    in ``segments_kafka_errors_total{operation="change_stream"}``."""
    settings = api_settings(redis_url)
    settings.kafka.bootstrap = "127.0.0.1:9"  # nothing listens (whatever the environment says)
    async with running(create_app(settings)) as client:

        async def counted() -> bool:
            text = (await client.get("/metrics")).text
            return 'segments_kafka_errors_total{operation="change_stream"}' in text

        await wait_for(counted, timeout_s=30, what="a change-stream Kafka error counted")
        text = (await client.get("/metrics")).text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('segments_kafka_errors_total{operation="change_stream"}')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_sum_every_worker(redis_url: str) -> None:
    """Two workers answer requests; every scrape, whichever worker serves it, counts all."""
    port = _free_port()
    env = {
        **os.environ,
        "SEGMENTS_REDIS__URL": redis_url,
        "SEGMENTS_API__AUTH_DISABLED": "true",
        "SEGMENTS_LOG_LEVEL": "INFO",
    }
    env.pop("SEGMENTS_REDIS_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the API exited at start"
            assert time.monotonic() < deadline, "the API did not start"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        time.sleep(2)  # the second worker too
        answered = 1  # the start-up poll that succeeded
        for _ in range(40):  # a new connection each: the workers share them
            assert httpx.get(f"{base}/healthz").status_code == 200
            answered += 1
        counts = set()
        for _ in range(8):
            text = httpx.get(f"{base}/metrics").text
            line = next(
                ln
                for ln in text.splitlines()
                if ln.startswith("segments_api_requests_total{")
                and 'route="/healthz"' in ln
                and 'status="200"' in ln
            )
            counts.add(float(line.rsplit(" ", 1)[1]))
        assert counts == {float(answered)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    # JSON lines from the parent and every worker (uvicorn's own messages included)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") for ln in lines), lines[:5]
    assert sum('"Started server process' in ln for ln in lines) == 2
