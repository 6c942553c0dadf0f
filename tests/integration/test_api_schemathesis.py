"""schemathesis against a live ``uvicorn`` running the API, from the exported spec
(``schemas/openapi.json``): no 5xx, every response conforms (status, headers, body schema),
with a key (the handlers run) and without one (everything protected answers 401).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from schemas.openapi import OPENAPI_FILE
from service.settings import ApiKey
from tests.conftest import ROOT
from tests.support.api import api_settings, load_events
from tests.support.events import engagement, purchase, refund

pytestmark = pytest.mark.integration

KEY = secrets.token_urlsafe(24)
"""The key the live API accepts; schemathesis sends it through the spec's security scheme, so
its negative cases (a request without the required auth) leave it out as they should."""
keyed_schema = schemathesis.openapi.from_path(
    OPENAPI_FILE,
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {"auth": {"openapi": {"ApiKey": {"bearer": KEY}}}}
    ),
)
open_schema = schemathesis.openapi.from_path(OPENAPI_FILE)
# The live change stream answers an endless text/event-stream, which a request/response
# fuzzer would wait on forever; tests/integration/test_change_stream.py covers it (filters,
# auth, bad Last-Event-ID, resume). Without a key it answers 401 at once, so it stays there.
keyed_schema = keyed_schema.exclude(path="/v1/segment-changes/stream")

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    key: str


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live_api(redis_url: str, kafka_bootstrap: str) -> Iterator[LiveApi]:
    cfg = ApiKey(
        name="schemathesis",
        sha256=hashlib.sha256(KEY.encode()).hexdigest(),
        scopes=("segments:read",),
    )
    settings_ = api_settings(redis_url, kafka_bootstrap, keys=(cfg,))
    events = [
        purchase("c-1", "e1", NOW - timedelta(days=3), "59.90"),
        purchase("c-1", "e2", NOW - timedelta(days=50), "10.00"),
        refund("c-1", "e3", NOW - timedelta(days=2), "5.00"),
        engagement("c-2", "e4", NOW - timedelta(days=1)),
        purchase("0", "e5", NOW - timedelta(days=300), "1000"),
    ]
    asyncio.run(load_events(settings_, events, now=NOW))
    port = _free_port()
    env = {
        **os.environ,
        "SEGMENTS_REDIS__URL": settings_.redis.url,
        "SEGMENTS_REDIS__KEY_PREFIX": settings_.redis.key_prefix,
        "SEGMENTS_API__KEYS": json.dumps([cfg.model_dump()]),
        "SEGMENTS_API__AUTH_DISABLED": "false",
        "SEGMENTS_KAFKA__BOOTSTRAP": kafka_bootstrap,  # the change stream's reader
    }
    env.pop("SEGMENTS_REDIS_URL", None)
    env.pop("SEGMENTS_KAFKA_BOOTSTRAP", None)
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the API exited at start"
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.1)
        yield LiveApi(base_url, KEY)
    finally:
        server.terminate()
        server.wait(10)


_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@keyed_schema.parametrize()
@_SETTINGS
def test_api_with_a_key(case: schemathesis.Case, live_api: LiveApi) -> None:
    case.call_and_validate(base_url=live_api.base_url)


@open_schema.parametrize()
@_SETTINGS
def test_api_without_a_key(case: schemathesis.Case, live_api: LiveApi) -> None:
    response = case.call_and_validate(base_url=live_api.base_url)
    if case.operation.path not in ("/healthz", "/readyz", "/metrics"):
        assert response.status_code in (401, 404, 405, 413, 422), response.text


def test_the_keyed_run_reached_the_handlers(live_api: LiveApi) -> None:
    """Runs after the two above (file order): the server's own metrics show authorised
    requests answered by every protected handler, not only 401s."""
    metrics = httpx.get(f"{live_api.base_url}/metrics", timeout=5).text
    for route in (
        "/v1/customers/{customer_id}/segment",
        "/v1/customers/{customer_id}/profile",
        "/v1/segments:batch-get",
        "/v1/segments",
        "/v1/segments/{name}/customers",
        "/v1/rules",
    ):
        answered = (f'route="{route}",status="{status}"' for status in (200, 404))
        assert any(line in metrics for line in answered), route  # 404: no such segment
        assert f'route="{route}",status="401"' in metrics, route
