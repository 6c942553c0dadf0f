"""Contract of the serving API against real Redis: every endpoint, status and error code.

State is written through the real consumer path (codec → Lua apply → classify → segment
writes); the app runs in process with an injected clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Depends

from consumers.segmenter import min_day_for
from schemas.api import (
    BatchGetResponse,
    ErrorResponse,
    ProfileResponse,
    RulesResponse,
    SegmentList,
    SegmentMembers,
    SegmentResponse,
)
from service.api.app import create_app
from service.api.auth import require
from service.segmentation.classifier import classify
from service.settings import Settings
from service.store.keys import Keys
from service.store.profiles import RedisProfileStore
from service.store.redis_client import create_redis
from tests.support.api import (
    RULES,
    MovableClock,
    api_key,
    api_settings,
    load_events,
    running,
)
from tests.support.events import engagement, purchase, refund

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


EVENTS = [
    # new: one purchase 10 days ago
    purchase("c-new", "e1", _ago(10), "59.90"),
    # loyal: bought every month for over a year
    *(purchase("c-loyal", f"l{i}", _ago(2 + 30 * i), "80.00") for i in range(14)),
    # churned: bought long ago
    purchase("c-gone", "g1", _ago(300), "20.00"),
    purchase("c-gone", "g2", _ago(200), "20.00"),
    # prospect: engaged, never bought
    engagement("c-browser", "b1", _ago(3)),
    # money rounding: 0.0050 and 0.0150 round half to even
    purchase("c-cents", "m1", _ago(5), "0.0050"),
    purchase("c-cents", "m2", _ago(400), "0.0150"),
    refund("c-cents", "m3", _ago(4), "0.0100"),
]


@dataclass
class World:
    settings: Settings
    read_key: str
    admin_key: str
    clock: MovableClock

    def app(self, **changes: Any) -> Any:
        return create_app(self.settings, clock=self.clock)


@pytest.fixture
async def world(redis_url: str, kafka_bootstrap: str) -> AsyncIterator[World]:
    read_key, read_cfg = api_key("checkout", "segments:read")
    admin_key, admin_cfg = api_key("ops", "admin")
    settings = api_settings(redis_url, kafka_bootstrap, keys=(read_cfg, admin_cfg))
    await load_events(settings, EVENTS, now=NOW)
    yield World(settings, read_key, admin_key, MovableClock(NOW))


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with running(world.app(), world.read_key) as c:
        yield c


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


# --- GET /v1/customers/{id}/segment ------------------------------------------------------------


async def test_segment_of_a_known_customer(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/customers/c-loyal/segment")
    assert r.status_code == 200
    body = SegmentResponse.model_validate(r.json())
    assert body.known is True
    assert body.customer_id == "c-loyal"
    assert body.segment == "key_account" or body.segment == "loyal"
    assert set(r.json()) == {
        "customer_id", "known", "segment", "axes", "treatment", "reasons",
        "rules_version", "as_of", "next_review_at",
    }  # fmt: skip
    assert set(r.json()["axes"]) >= {
        "lifecycle", "value_tier", "loyalty", "needs", "rfm", "key_account",
    }  # fmt: skip
    assert body.treatment is not None
    assert (
        body.treatment.id
        == RULES.segments[[s.name for s in RULES.segments].index(body.segment or "")].treatment
    )
    assert body.reasons
    assert body.rules_version == RULES.version
    assert r.json()["as_of"] == "2026-11-25T12:00:00Z"


async def test_each_customer_gets_the_classifiers_answer(client: httpx.AsyncClient) -> None:
    expected = {"c-new": "new_customer", "c-gone": "churned", "c-browser": "prospect"}
    for cid, segment in expected.items():
        r = await client.get(f"/v1/customers/{cid}/segment")
        assert r.status_code == 200, r.text
        assert r.json()["segment"] == segment, (cid, r.json())


async def test_unknown_customer_is_404_or_the_default_treatment(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/customers/c-nobody/segment"), 404, "customer_not_found")
    assert "c-nobody" in error["message"]

    r = await client.get("/v1/customers/c-nobody/segment", params={"default": "true"})
    assert r.status_code == 200
    body = SegmentResponse.model_validate(r.json())
    assert body.known is False
    assert body.segment is None and body.axes is None
    assert body.treatment is not None
    assert body.treatment.id == RULES.segments[-1].treatment == "standard"
    assert body.rules_version == RULES.version
    # a known customer is unaffected by the flag
    r = await client.get("/v1/customers/c-new/segment", params={"default": "true"})
    assert r.json()["known"] is True


async def test_lean_and_standard_paths_answer_alike(client: httpx.AsyncClient) -> None:
    """The common requests take the lean path; unusual spellings go through FastAPI's
    parameter handling; both must give the same answers."""
    for lean_query, standard_query in (
        ("", "?x=1"),
        ("?default=true", "?default=1"),
        ("?default=false", "?default=no"),
    ):
        for cid in ("c-new", "c-nobody"):
            a = await client.get(f"/v1/customers/{cid}/segment{lean_query}")
            b = await client.get(f"/v1/customers/{cid}/segment{standard_query}")
            assert (a.status_code, a.json()) == (b.status_code, b.json()), (cid, lean_query)
    a = await client.get("/v1/customers/c-loyal/profile")
    b = await client.get("/v1/customers/c-loyal/profile?x=1")
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    error_of(
        await client.get("/v1/customers/c-new/segment?default=maybe"), 422, "validation_failed"
    )
    for path in ("/v1/customers/c-new/segment", "/v1/customers/c-new/profile"):
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        error_of(r, 401, "unauthorized")


async def test_segment_changes_with_time_alone_no_sweeper(world: World) -> None:
    """c-new is stored as new_customer; 60 days later, with no event and no sweeper, the API
    answers at_risk because it classifies at the request's instant."""
    async with running(world.app(), world.read_key) as client:
        first = (await client.get("/v1/customers/c-new/segment")).json()
        assert first["segment"] == "new_customer"
        review = datetime.fromisoformat(first["next_review_at"])

        world.clock.now = NOW + timedelta(days=60)
        assert review < world.clock.now
        later = (await client.get("/v1/customers/c-new/segment")).json()
        assert later["segment"] == "at_risk"
        assert later["axes"]["lifecycle"] == "at_risk"
        assert later["treatment"]["id"] == "retention"
        assert later["as_of"] == "2027-01-24T12:00:00Z"
        assert any("at_risk" in reason for reason in later["reasons"])

        # the stored segmentation (what the sweeper would update) is still the old one
        listed = (await client.get("/v1/segments/new_customer/customers")).json()
        assert "c-new" in listed["customers"]
        batch = await client.post("/v1/segments:batch-get", json={"customer_ids": ["c-new"]})
        assert batch.json()["results"][0]["segment"] == "at_risk"


async def test_segment_reads_only_buckets_inside_the_windows(world: World) -> None:
    """The answer equals classify() of the profile as stored, at the request's instant."""
    redis = create_redis(world.settings.redis)
    store = RedisProfileStore(redis, Keys(world.settings.redis.key_prefix), ring_size=8)
    later = NOW + timedelta(days=100)
    states = await store.read(["c-loyal"], min_day=min_day_for(later, RULES))
    await redis.aclose()
    want = classify(states["c-loyal"].profile, RULES, now=later)
    world.clock.now = later
    async with running(world.app(), world.read_key) as client:
        got = (await client.get("/v1/customers/c-loyal/segment")).json()
    assert got["segment"] == want.segment
    assert got["reasons"] == list(want.reasons)
    assert got["next_review_at"] == (
        None
        if want.next_review_at is None
        else want.next_review_at.isoformat().replace("+00:00", "Z")
    )


@pytest.mark.parametrize(
    ("customer_id", "field"),
    [("x" * 129, "customer_id"), ("c{1}", "customer_id"), ("c*", "customer_id")],
)
async def test_path_ids_are_validated_like_events(
    client: httpx.AsyncClient, customer_id: str, field: str
) -> None:
    for what in ("segment", "profile"):
        error = error_of(
            await client.get(f"/v1/customers/{customer_id}/{what}"), 422, "validation_failed"
        )
        assert error["details"][0]["field"] == field


# --- POST /v1/segments:batch-get ---------------------------------------------------------------


async def test_batch_get_order_duplicates_and_unknown(
    world: World, client: httpx.AsyncClient
) -> None:
    ids = ["c-gone", "c-nobody", "c-new", "c-gone", "c-browser"]
    reader = client._transport.app.state.reader  # type: ignore[attr-defined]
    fast = reader._fast  # None on a Redis Cluster: redis-py's cluster pipeline, not counted
    calls: list[list[Any]] = []
    if fast is not None:
        original = fast.execute

        async def counting_execute(commands: Any) -> Any:
            calls.append(list(commands))
            return await original(commands)

        fast.execute = counting_execute
    try:
        r = await client.post("/v1/segments:batch-get", json={"customer_ids": ids})
    finally:
        if fast is not None:
            fast.execute = original
    assert r.status_code == 200, r.text
    if fast is not None:
        assert len(calls) == 1  # one pipelined round trip, each distinct id once
        assert [c[0] for c in calls[0]] == ["HGETALL"] * 4
    results = BatchGetResponse.model_validate(r.json()).results
    assert [x.customer_id for x in results] == ids
    assert [x.known for x in results] == [True, False, True, True, True]
    assert [x.segment for x in results] == ["churned", None, "new_customer", "churned", "prospect"]
    assert results[1].treatment is None
    assert r.json()["results"][0] == r.json()["results"][3]
    single = (await client.get("/v1/customers/c-new/segment")).json()
    assert r.json()["results"][2] == single

    r = await client.post(
        "/v1/segments:batch-get", params={"default": "true"}, json={"customer_ids": ids}
    )
    assert r.json()["results"][1]["treatment"]["id"] == "standard"


async def test_batch_get_limits(client: httpx.AsyncClient) -> None:
    ok = await client.post(
        "/v1/segments:batch-get", json={"customer_ids": [f"c-{i}" for i in range(1_000)]}
    )
    assert ok.status_code == 200
    assert len(ok.json()["results"]) == 1_000

    error = error_of(
        await client.post(
            "/v1/segments:batch-get", json={"customer_ids": [f"c-{i}" for i in range(1_001)]}
        ),
        422,
        "batch_too_large",
    )
    assert "1000" in error["message"]

    error_of(
        await client.post("/v1/segments:batch-get", json={"customer_ids": []}),
        422,
        "validation_failed",
    )
    error = error_of(
        await client.post(
            "/v1/segments:batch-get", json={"customer_ids": ["c-1", "c-2", "c-3", "bad id"]}
        ),
        422,
        "validation_failed",
    )
    assert [d["field"] for d in error["details"]] == ["customer_ids[3]"]
    error = error_of(
        await client.post("/v1/segments:batch-get", json={"ids": ["c-1"]}),
        422,
        "validation_failed",
    )
    assert {d["field"] for d in error["details"]} == {"customer_ids", "ids"}
    error = error_of(
        await client.post(
            "/v1/segments:batch-get",
            content=b'{"customer_ids": [',
            headers={"content-type": "application/json"},
        ),
        422,
        "validation_failed",
    )
    assert error["details"][0]["field"] is not None
    error = error_of(
        await client.post(
            "/v1/segments:batch-get",
            content=b'{"customer_ids": ["\xff"]}',
            headers={"content-type": "application/json"},
        ),
        422,
        "validation_failed",
    )
    assert error["details"] == [{"field": "body", "message": "not JSON in UTF-8"}]


async def test_body_size_is_capped(client: httpx.AsyncClient) -> None:
    big = b'{"customer_ids": ["' + b"x" * 300_000 + b'"]}'
    error_of(
        await client.post(
            "/v1/segments:batch-get", content=big, headers={"content-type": "application/json"}
        ),
        413,
        "body_too_large",
    )

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for i in range(0, len(big), 65_536):
            yield big[i : i + 65_536]

    error_of(
        await client.post(
            "/v1/segments:batch-get",
            content=chunks(),
            headers={"content-type": "application/json"},
        ),
        413,
        "body_too_large",
    )

    async def small() -> AsyncIterator[bytes]:
        yield b'{"customer_ids": '
        yield b'["c-new"]}'

    r = await client.post(
        "/v1/segments:batch-get", content=small(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert r.json()["results"][0]["known"] is True


# --- GET /v1/customers/{id}/profile ------------------------------------------------------------


async def test_profile_shape_and_money(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/customers/c-cents/profile")
    assert r.status_code == 200
    body = r.json()
    ProfileResponse.model_validate(body)
    assert set(body) == {
        "customer_id", "as_of", "first_purchase_at", "last_purchase_at", "last_engagement_at",
        "recency_days", "tenure_days", "lifetime", "windows",
    }  # fmt: skip
    assert list(body["windows"]) == ["30d", "90d", "365d"]
    assert body["recency_days"] == 5
    assert body["tenure_days"] == 400
    assert body["lifetime"] == {
        "orders": 2,
        "spend": "0.02",  # 0.0200
        "refunds": 1,
        "refunded": "0.01",
        "net_spend": "0.01",
        "margin": "0.00",
        "aov": "0.01",  # 0.0100
    }
    # only the 0.0050 purchase is in the windows: half to even gives 0.00; the refund 0.01
    assert body["windows"]["30d"]["spend"] == "0.00"
    assert body["windows"]["30d"]["net_spend"] == "0.00"  # -0.0050: never "-0.00"
    assert body["windows"]["365d"]["orders"] == 1


async def test_profile_of_a_regular_customer(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/customers/c-loyal/profile")).json()
    assert body["lifetime"]["orders"] == 14
    assert body["lifetime"]["spend"] == "1120.00"
    assert body["lifetime"]["aov"] == "80.00"
    assert body["windows"]["30d"]["orders"] == 1
    assert body["windows"]["90d"]["orders"] == 3
    assert body["windows"]["365d"]["orders"] == 13
    assert body["last_purchase_at"] == "2026-11-23T12:00:00Z"
    browser = (await client.get("/v1/customers/c-browser/profile")).json()
    assert browser["recency_days"] is None
    assert browser["lifetime"]["aov"] is None
    assert browser["last_engagement_at"] == "2026-11-22T12:00:00Z"
    error_of(await client.get("/v1/customers/c-nobody/profile"), 404, "customer_not_found")


# --- segments ----------------------------------------------------------------------------------


async def test_segment_definitions_with_live_counts(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/segments")
    assert r.status_code == 200
    body = SegmentList.model_validate(r.json())
    assert [s.name for s in body.segments] == [s.name for s in RULES.segments]
    assert body.rules_version == RULES.version
    counts = {s.name: s.members for s in body.segments}
    assert counts["new_customer"] == 1
    assert counts["churned"] == 1
    assert counts["prospect"] == 1
    assert sum(counts.values()) + body.other_members == 5
    occasional = next(s for s in body.segments if s.name == "occasional")
    assert occasional.treatment.id == "standard"
    assert occasional.description


async def test_segment_members(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/segments/churned/customers")
    assert r.status_code == 200
    body = SegmentMembers.model_validate(r.json())
    assert body.customers == ["c-gone"]
    assert body.next_cursor is None

    error_of(await client.get("/v1/segments/no_such/customers"), 404, "segment_not_found")
    error = error_of(await client.get("/v1/segments/Bad-Name/customers"), 422, "validation_failed")
    assert error["details"][0]["field"] == "name"
    for limit in ("0", "1001", "x"):
        error = error_of(
            await client.get("/v1/segments/churned/customers", params={"limit": limit}),
            422,
            "validation_failed",
        )
        assert error["details"][0]["field"] == "limit"
    for cursor in ("a b", "1024", "0042:", "42", "0042:c{1}"):
        error = error_of(
            await client.get("/v1/segments/churned/customers", params={"cursor": cursor}),
            422,
            "validation_failed",
        )
        assert error["details"][0]["field"] == "cursor"
    # any well-formed position is valid: after the last member of the last shard, nothing
    r = await client.get("/v1/segments/churned/customers", params={"cursor": "1023:zzz"})
    assert r.json() == {"segment": "churned", "customers": [], "next_cursor": None}


async def test_rules(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/rules")
    assert r.status_code == 200
    body = RulesResponse.model_validate(r.json())
    assert body.version == RULES.version
    assert body.rules == RULES.document()


# --- auth --------------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/customers/c-new/segment", None),
    ("GET", "/v1/customers/c-new/profile", None),
    ("POST", "/v1/segments:batch-get", {"customer_ids": ["c-new"]}),
    ("GET", "/v1/segments", None),
    ("GET", "/v1/segments/churned/customers", None),
    ("GET", "/v1/rules", None),
]


async def test_every_protected_endpoint_needs_a_valid_key(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(world.app()) as client:
        for method, path, body in PROTECTED:
            r = await client.request(method, path, json=body)
            error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
            for header in (
                "Bearer not-a-key",
                f"Basic {world.read_key}",
                f"Bearer {world.read_key}x",
                "Bearer",
            ):
                r = await client.request(method, path, json=body, headers={"Authorization": header})
                error_of(r, 401, "unauthorized")
            for key in (world.read_key, world.admin_key):
                r = await client.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert r.status_code == 200, (path, r.text)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert world.read_key not in logged
    assert world.admin_key not in logged


async def test_scope_is_enforced(world: World) -> None:
    """No endpoint needs more than segments:read yet; the admin check is exercised on a probe."""
    app = world.app()
    app.get("/v1/_probe", dependencies=[Depends(require("admin"))])(lambda: {"ok": True})
    async with running(app) as client:
        r = await client.get("/v1/_probe", headers={"Authorization": f"Bearer {world.read_key}"})
        error = error_of(r, 403, "forbidden")
        assert "checkout" in error["message"] and "admin" in error["message"]
        r = await client.get("/v1/_probe", headers={"Authorization": f"Bearer {world.admin_key}"})
        assert r.status_code == 200


async def test_without_configured_keys_everything_protected_is_refused(redis_url: str) -> None:
    settings = api_settings(redis_url)
    async with running(create_app(settings, clock=lambda: NOW), "anything") as client:
        for method, path, body in PROTECTED:
            error = error_of(await client.request(method, path, json=body), 401, "unauthorized")
            assert "SEGMENTS_API__KEYS" in error["message"]
        assert (await client.get("/healthz")).status_code == 200

    open_settings = api_settings(redis_url, auth_disabled=True)
    async with running(create_app(open_settings, clock=lambda: NOW)) as client:
        assert (await client.get("/v1/rules")).status_code == 200


# --- operations, errors, toggles ---------------------------------------------------------------


async def test_health_and_readiness_are_open(world: World) -> None:
    async with running(world.app()) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_redis_unavailable_is_503_with_retry_after(world: World) -> None:
    down = world.settings.model_copy(deep=True)
    down.redis.url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    down.redis.socket_timeout_s = 1
    async with running(create_app(down, clock=world.clock), world.read_key) as client:
        for method, path, body in [*PROTECTED[:5], ("GET", "/readyz", None)]:
            r = await client.request(method, path, json=body)
            error_of(r, 503, "store_unavailable")
            assert r.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/v1/rules")).status_code == 200  # needs no Redis


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    error_of(await client.get("/v2/nothing"), 404, "not_found")
    error_of(await client.get("/v1/customers/a/b/segment"), 404, "not_found")
    r = await client.delete("/v1/rules")
    error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, PUT"  # every route at the path, not the first
    error_of(await client.get("/v1/segments:batch-get"), 405, "method_not_allowed")


async def test_docs_metrics_and_cors_toggles(world: World, redis_url: str) -> None:
    async with running(world.app()) as client:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200
        await client.get("/v1/customers/c-new/segment")  # 401
        metrics = (await client.get("/metrics")).text
        assert (
            'segments_api_requests_total{method="GET",'
            'route="/v1/customers/{customer_id}/segment",status="401"} 1.0'
        ) in metrics
        assert "segments_api_request_duration_seconds_bucket" in metrics
        # CORS closed by default: no CORS headers at all
        r = await client.options(
            "/v1/rules",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in r.headers

    closed = api_settings(
        redis_url, docs=False, metrics=False, cors_origins=("https://ops.example",)
    )
    async with running(create_app(closed, clock=lambda: NOW)) as client:
        error_of(await client.get("/docs"), 404, "not_found")
        error_of(await client.get("/openapi.json"), 404, "not_found")
        error_of(await client.get("/metrics"), 404, "not_found")
        r = await client.options(
            "/v1/rules",
            headers={"Origin": "https://ops.example", "Access-Control-Request-Method": "GET"},
        )
        assert r.headers["access-control-allow-origin"] == "https://ops.example"
        r = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
