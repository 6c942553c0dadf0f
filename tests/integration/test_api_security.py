"""Security of the API against real Redis: every protected route refuses missing, wrong and
under-scoped keys (routes enumerated from the app, so a new route is covered or fails here);
hostile ids are refused or harmless; body and batch limits hold; CORS is closed by default;
no key and no customer data reach the logs at INFO."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from schemas.api import MAX_BATCH_IDS
from service.settings import Settings
from tests.integration.test_erase import (
    ADMIN_SECRET,
    NOW,
    READ_SECRET,
    _index_entries,
    _settings,
    pipeline,
)
from tests.support.api import MovableClock, app_for, running
from tests.support.events import engagement, purchase

pytestmark = pytest.mark.integration

PUBLIC = {
    ("/openapi.json", "GET"),
    ("/docs", "GET"),
    ("/docs/oauth2-redirect", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/", "GET"),
    ("/static/{name}", "GET"),
}
"""Routes anyone may call; every other route must demand a key."""

_PARAMS = {"customer_id": "c-sec-1", "name": "champions"}
_BODIES = {
    "/v1/segments:batch-get": {"customer_ids": ["c-sec-1"]},
    "/v1/rules": {"schema_version": 1},
    "/v1/rules/rollback": {"version": "0123456789ab"},
}


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    admin: bool
    """Needs the ``admin`` scope (documents 403)."""

    def url(self) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: _PARAMS[m.group(1)], self.path)


def endpoints(app: FastAPI) -> Iterator[tuple[Endpoint, bool]]:
    """Every (route, method) of the app and whether it declares the bearer scheme."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:  # a plain Starlette route (docs, OpenAPI document)
            for method in sorted(getattr(route, "methods", None) or ()):
                if method != "HEAD":
                    yield Endpoint(getattr(route, "path", ""), method, admin=False), False
            continue
        for ctx in contexts():
            secured = bool((ctx.openapi_extra or {}).get("security"))
            for method in sorted(ctx.methods):
                yield Endpoint(ctx.path, method, admin=403 in (ctx.responses or {})), secured


@pytest.fixture
async def live(redis_url: str, kafka_bootstrap: str) -> AsyncIterator[tuple[Settings, FastAPI]]:
    settings = _settings(redis_url, kafka_bootstrap)
    async with pipeline(settings) as p:
        events = [
            purchase("c-sec-1", "e1", NOW - timedelta(days=3), "59.90"),
            engagement("c-sec-2", "e2", NOW - timedelta(days=1)),
        ]
        assert (await p.handle(p.records(events, 0))).applied == 2
        yield settings, app_for(settings, MovableClock(NOW))


async def _call(client: httpx.AsyncClient, e: Endpoint, headers: dict[str, str]) -> int:
    body = _BODIES.get(e.path) if e.method in ("POST", "PUT") else None
    async with client.stream(e.method, e.url(), json=body, headers=headers) as response:
        return response.status_code  # the stream route: status line only, then closed


async def test_every_protected_route_refuses_missing_wrong_and_underscoped_keys(
    live: tuple[Settings, FastAPI],
) -> None:
    _, app = live
    found = list(endpoints(app))
    unsecured = {(e.path, e.method) for e, secured in found if not secured}
    assert unsecured == PUBLIC, "a route without the bearer scheme that is not public"
    protected = [e for e, secured in found if secured]
    assert {e.path for e in protected} >= {"/v1/customers/{customer_id}", "/v1/rules"}
    assert any(e.admin for e in protected) and len(protected) >= 15
    wrong = "x" + READ_SECRET[1:]
    async with running(app) as client:
        for e in protected:
            for headers in (
                {},
                {"Authorization": ""},
                {"Authorization": "Bearer"},
                {"Authorization": f"Bearer {wrong}"},
                {"Authorization": f"Bearer {hashlib.sha256(READ_SECRET.encode()).hexdigest()}"},
                {"Authorization": f"Basic {READ_SECRET}"},
                {"Authorization": f"Bearer {READ_SECRET}\x00"},
            ):
                assert await _call(client, e, headers) == 401, (e, headers)
            if e.path.endswith("/stream"):
                continue  # accepted: an endless response (the ASGI test client waits for its end)
            status = await _call(client, e, {"Authorization": f"Bearer {READ_SECRET}"})
            if e.admin:
                assert status == 403, e
            else:
                assert status not in (401, 403), e
        # nothing a refused call touched changed: the customer is still there
        ok = await client.get(
            "/v1/customers/c-sec-1/segment", headers={"Authorization": f"Bearer {READ_SECRET}"}
        )
        assert ok.status_code == 200


HOSTILE_IDS = [
    "*",
    "c-sec-*",
    "c-sec-?",
    "c-sec-[1]",
    "{s0001}",
    "c-{sec}-1",
    "a" * 129,
    "a" * 10_000,
    "ç-ünïcödé",
    "c\u200bsec",
    "c-sec-1\n",
    "c sec",
    "%2A",
    "",
]
"""Ids outside the alphabet (`A-Za-z0-9._:@-`, 1-128): refused with 422 (or 404: no route)."""
HARMLESS_IDS = ["..", ".", "c-sec-1:seg:champions", "c:counts", "c-sec-1:due", "@", "-"]
"""Ids of the alphabet that look like key parts or paths: valid, unknown, touch nothing else."""


async def test_hostile_ids_are_refused_or_harmless(
    live: tuple[Settings, FastAPI], redis_url: str
) -> None:
    settings, app = live
    async with pipeline(settings) as p:
        before = {c: await _index_entries(p, c) for c in ("c-sec-1", "c-sec-2")}
        admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
        async with running(app, READ_SECRET) as client:
            for cid in HOSTILE_IDS:
                quoted = f"/v1/customers/{quote(cid, safe='')}"
                for path in (f"{quoted}/segment", f"{quoted}/profile"):
                    r = await client.get(path)
                    assert r.status_code in (404, 422), (cid[:40], r.status_code)
                r = await client.delete(quoted, headers=admin)
                assert r.status_code in (404, 405, 422), (cid[:40], r.status_code)
                r = await client.post("/v1/segments:batch-get", json={"customer_ids": [cid]})
                assert r.status_code == 422, cid[:40]
            for name in ("*", "champ?ons", "[a-z]*", "{s0001}", "A" * 65, "a:b"):
                r = await client.get(f"/v1/segments/{name}/customers")
                assert r.status_code in (404, 422), name
            for cursor in ("*", "0001:*x", "9999", "0001:" + "a" * 200, "0001:{s0001}"):
                r = await client.get("/v1/segments/champions/customers", params={"cursor": cursor})
                assert r.status_code == 422, cursor
            for cid in HARMLESS_IDS:
                r = await client.get(f"/v1/customers/{cid}/segment")
                assert r.status_code in (404, 405, 422), (cid, r.status_code)  # "." normalised
                if r.status_code == 404 and cid not in (".", ".."):
                    assert r.json()["error"]["code"] == "customer_not_found"
                r = await client.post("/v1/segments:batch-get", json={"customer_ids": [cid]})
                assert r.status_code == 200 and r.json()["results"][0]["known"] is False
                r = await client.delete(f"/v1/customers/{cid}", headers=admin)
                assert r.status_code in (200, 404, 405), (cid, r.status_code)
        after = {c: await _index_entries(p, c) for c in ("c-sec-1", "c-sec-2")}
        assert after == before, "hostile ids reached other customers' keys"


async def test_body_and_batch_limits(live: tuple[Settings, FastAPI]) -> None:
    settings, app = live
    cap = settings.api.max_body_bytes
    async with running(app, READ_SECRET) as client:
        big = b'{"customer_ids": ["' + b"a" * cap + b'"]}'
        r = await client.post(
            "/v1/segments:batch-get", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(cap // 1024 + 2):
                yield b" " * 1024

        r = await client.post(
            "/v1/segments:batch-get", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, "a chunked body without Content-Length is capped too"
        ids = [f"c-{i}" for i in range(MAX_BATCH_IDS + 1)]
        r = await client.post("/v1/segments:batch-get", json={"customer_ids": ids})
        assert r.status_code == 422 and r.json()["error"]["code"] == "batch_too_large"
        r = await client.post("/v1/segments:batch-get", json={"customer_ids": ids[:-1]})
        assert r.status_code == 200 and len(r.json()["results"]) == MAX_BATCH_IDS


async def test_cors_is_closed_by_default(live: tuple[Settings, FastAPI]) -> None:
    settings, app = live
    assert settings.api.cors_origins == ()
    origin = {"Origin": "https://evil.example"}
    async with running(app, READ_SECRET) as client:
        r = await client.get("/v1/customers/c-sec-1/segment", headers=origin)
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        preflight = await client.options(
            "/v1/customers/c-sec-1",
            headers={
                **origin,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code in (404, 405)


_TEST_CLIENTS = {"httpx", "httpcore"}
"""The test's own HTTP client logs the URLs it requests; the service is what is checked."""


async def test_no_key_or_customer_data_in_logs_at_info(
    redis_url: str, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A workload (events with a bad record, reads, misses, refusals, an erase) with every
    logger at INFO: no record carries a key, a key's hash or a customer id."""
    settings = _settings(redis_url, kafka_bootstrap)
    secrets_ = [ADMIN_SECRET, READ_SECRET]
    hashes = [hashlib.sha256(s.encode()).hexdigest() for s in secrets_]
    customers = ["cust-log-alpha", "cust-log-beta", "cust-log-gamma"]
    caplog.set_level(logging.INFO)
    async with pipeline(settings) as p:
        events = [
            purchase(customers[0], "log-e1", NOW - timedelta(days=3), "59.90"),
            engagement(customers[1], "log-e2", NOW - timedelta(days=1)),
        ]
        records = p.records(events, 0)
        bad = p.records([{**events[0], "amount": "-1", "event_id": "log-e3"}], 2)
        stats = await p.handle([*records, *bad])
        assert stats.applied == 2 and stats.dead_lettered == 1
        app = app_for(settings, MovableClock(NOW))
        async with running(app, READ_SECRET) as client:
            for cid in customers:
                await client.get(f"/v1/customers/{cid}/segment")
                await client.get(f"/v1/customers/{cid}/profile")
            await client.post("/v1/segments:batch-get", json={"customer_ids": customers})
            await client.get(
                f"/v1/customers/{customers[0]}/segment", headers={"Authorization": "Bearer nope"}
            )
            await client.delete(f"/v1/customers/{customers[0]}")  # 403
            r = await client.delete(
                f"/v1/customers/{customers[0]}", headers={"Authorization": f"Bearer {ADMIN_SECRET}"}
            )
            assert r.status_code == 200
    texts = []
    for record in caplog.records:
        if record.levelno >= logging.INFO and record.name.split(".")[0] not in _TEST_CLIENTS:
            texts.append(record.getMessage())
            texts.extend(repr(v) for v in vars(record).values())
    assert any("customer erased" in t for t in texts), "the workload did log at INFO"
    logged = "\n".join(texts)
    for secret in (*secrets_, *hashes, *customers):
        assert secret not in logged, secret
