"""Changing the rules through the API against real Redis: validation with exact paths (nothing
changes), dry run (diff and sample moves), activation with who/when, history, rollback,
re-classification progress, and every instance following a new version within 5 s."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import yaml

from consumers.segmenter import min_day_for
from schemas.rules import (
    ReclassificationProgress,
    RulesChangeResponse,
    RulesHistory,
)
from service.api.app import create_app
from service.rules_runtime import RulesWatcher
from service.rules_store import RulesRegistry
from service.segmentation.classifier import classify
from service.segmentation.rules import Rules, load_rules, rules_from_data
from service.store.keys import Keys
from service.store.redis_client import create_redis
from tests.support.api import MovableClock, api_key, api_settings, load_events, running
from tests.support.events import ground_truth, purchase

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEFAULT = load_rules(None)
YAML = {"Content-Type": "application/yaml"}


def stricter() -> Rules:
    """At risk after 20 days without a purchase (default 60): moves recent buyers."""
    doc = DEFAULT.document()
    doc["lifecycle"]["at_risk_days"] = 20
    return rules_from_data(doc)


def _events() -> list[dict[str, Any]]:
    events = []
    for i in range(40):
        cid = f"c-{i}"
        # regular buyers, the last purchase between 1 and 40 days ago
        for k in range(4):
            events.append(
                purchase(cid, f"e-{i}-{k}", NOW - timedelta(days=1 + i + 20 * k), "80.00")
            )
    return events


@pytest.fixture
def keys() -> dict[str, tuple[str, Any]]:
    return {"admin": api_key("ops-alice", "admin"), "read": api_key("checkout", "segments:read")}


async def test_invalid_rules_refused_with_paths_and_nothing_changes(  # type: ignore[no-untyped-def]
    redis_url, keys
) -> None:
    settings = api_settings(redis_url, keys=[keys["admin"][1], keys["read"][1]])
    app = create_app(settings, clock=MovableClock(NOW))
    bad = DEFAULT.document()
    bad["lifecycle"]["at_risk_days"] = 200  # not < churned_days 180
    bad["segments"][2]["treatment"] = "no_such_treatment"
    async with running(app, keys["admin"][0]) as client:
        r = await client.put("/v1/rules", content=yaml.safe_dump(bad), headers=YAML)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_rules"
        assert {(d["field"], d["message"]) for d in error["details"]} == {
            ("lifecycle.at_risk_days", "at_risk_days 200 must be < churned_days 180"),
            ("segments[2].treatment", "unknown treatment 'no_such_treatment'"),
        }

        missing = DEFAULT.document()
        del missing["value"]["window"]
        missing["rfm"]["r_max_recency_days"] = [14, 30, "soon", 120]
        r = await client.put(
            "/v1/rules", content=orjson.dumps(missing), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422
        fields = {d["field"] for d in r.json()["error"]["details"]}
        assert fields == {"value.window", "rfm.r_max_recency_days.2"} or fields == {
            "value.window",
            "rfm.r_max_recency_days[2]",
        }, fields

        r = await client.put("/v1/rules", content=b"lifecycle: [unclosed", headers=YAML)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_rules"
        r = await client.put("/v1/rules", content=b"x", headers={"Content-Type": "text/csv"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"

        # nothing changed
        assert (await client.get("/v1/rules")).json()["version"] == DEFAULT.version
        history = RulesHistory.model_validate((await client.get("/v1/rules/history")).json())
        assert history.entries == [] and history.active_version == DEFAULT.version
        progress = (await client.get("/v1/rules/reclassification")).json()
        assert progress["state"] == "none"

    async with running(app, keys["read"][0]) as reader:
        r = await reader.put(
            "/v1/rules", content=yaml.safe_dump(stricter().document()), headers=YAML
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await reader.post("/v1/rules/rollback", json={"version": DEFAULT.version})
        assert r.status_code == 403


async def test_dry_run_activate_history_rollback(redis_url, kafka_bootstrap, keys) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings(redis_url, kafka_bootstrap, keys=[keys["admin"][1], keys["read"][1]])
    events = _events()
    await load_events(settings, events, now=NOW)
    app = create_app(settings, clock=MovableClock(NOW))
    new = stricter()
    # what the dry run must count: every customer classified with both rule sets
    expected: dict[tuple[str, str], int] = {}
    for profile in ground_truth(events, min_day=min_day_for(NOW, DEFAULT)).values():
        before = classify(profile, DEFAULT, now=NOW).segment
        after = classify(profile, new, now=NOW).segment
        if before != after:
            expected[before, after] = expected.get((before, after), 0) + 1
    assert sum(expected.values()) > 10

    async with running(app, keys["admin"][0]) as client:
        r = await client.put(
            "/v1/rules?dry_run=true", content=yaml.safe_dump(new.document()), headers=YAML
        )
        assert r.status_code == 200, r.text
        dry = RulesChangeResponse.model_validate(r.json())
        assert dry.dry_run and not dry.changed and dry.activation is None
        assert dry.version == new.version and dry.active_version == DEFAULT.version
        assert [c.description for c in dry.changes] == ["changed lifecycle.at_risk_days: 60 -> 20"]
        assert dry.sample is not None and dry.sample.customers == 40
        assert {(m.from_segment, m.to_segment): m.customers for m in dry.sample.moves} == expected
        assert (await client.get("/v1/rules")).json()["version"] == DEFAULT.version  # unchanged

        r = await client.put(
            "/v1/rules",
            content=orjson.dumps(new.document()),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        done = RulesChangeResponse.model_validate(r.json())
        assert done.changed and not done.dry_run and done.active_version == new.version
        assert done.activation is not None
        assert (done.activation.by, done.activation.action) == ("ops-alice", "activate")
        assert done.activation.previous_version == DEFAULT.version
        assert done.activation.at == "2026-11-25T12:00:00Z"
        assert (await client.get("/v1/rules")).json()["version"] == new.version
        seg = (await client.get("/v1/customers/c-30/segment")).json()
        assert seg["rules_version"] == new.version and seg["segment"] == "at_risk"
        progress = ReclassificationProgress.model_validate(
            (await client.get("/v1/rules/reclassification")).json()
        )
        assert progress.version == new.version and progress.state == "pending"
        assert progress.shards_done == 0 and progress.shards_total == 1024

        # the same document again: nothing changes, no history entry
        r = await client.put("/v1/rules", content=yaml.safe_dump(new.document()), headers=YAML)
        assert r.status_code == 200 and r.json()["changed"] is False

        r = await client.post("/v1/rules/rollback", json={"version": "0123456789ab"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "rules_version_not_found"
        r = await client.post("/v1/rules/rollback", json={"version": DEFAULT.version})
        assert r.status_code == 200, r.text
        back = RulesChangeResponse.model_validate(r.json())
        assert back.changed and back.active_version == DEFAULT.version
        assert back.activation is not None and back.activation.action == "rollback"
        assert [c.description for c in back.changes] == ["changed lifecycle.at_risk_days: 20 -> 60"]
        assert (await client.get("/v1/rules")).json()["version"] == DEFAULT.version

        history = RulesHistory.model_validate((await client.get("/v1/rules/history")).json())
        assert history.active_version == DEFAULT.version
        assert [(e.version, e.action, e.by, e.previous_version) for e in history.entries] == [
            (DEFAULT.version, "rollback", "ops-alice", new.version),
            (new.version, "activate", "ops-alice", DEFAULT.version),
        ]
        progress = ReclassificationProgress.model_validate(
            (await client.get("/v1/rules/reclassification")).json()
        )
        assert progress.version == DEFAULT.version


@pytest.mark.parametrize("subscribe", [True, False], ids=["pubsub", "polling"])
async def test_watchers_follow_within_5s(redis_url, subscribe: bool) -> None:  # type: ignore[no-untyped-def]
    """With pub/sub a watcher whose polling is far too slow still switches at once; without
    it, polling alone switches within the interval."""
    settings = api_settings(redis_url)
    keys = Keys(settings.redis.key_prefix)
    clients = [create_redis(settings.redis) for _ in range(3)]
    watchers = [
        RulesWatcher(
            RulesRegistry(c, keys),
            c,
            fallback=DEFAULT,
            poll_interval_s=60.0 if subscribe else 1.0,
            subscribe=subscribe,
        )
        for c in clients[1:]
    ]
    seen: list[float] = []
    watchers[0]._on_change = lambda _: seen.append(time.monotonic())
    try:
        for w in watchers:
            await w.start()
        assert all(w.current().version == DEFAULT.version for w in watchers)
        await asyncio.sleep(0.3)  # subscribed
        new = stricter()
        t0 = time.monotonic()
        result = await RulesRegistry(clients[0], keys).activate(
            new, by="test", at=NOW, fallback=DEFAULT
        )
        assert result.changed
        deadline = t0 + 5.0
        while time.monotonic() < deadline and any(
            w.current().version != new.version for w in watchers
        ):
            await asyncio.sleep(0.02)
        assert all(w.current().version == new.version for w in watchers)
        took = time.monotonic() - t0
        assert took < (1.0 if subscribe else 2.5), took
        assert len(seen) == 1
    finally:
        for w in watchers:
            await w.aclose()
        for c in clients:
            await c.aclose()
