"""The live change stream against a real uvicorn server, real Kafka and real Redis.

Change records are produced to the changes topic the way the consumer produces them (keyed by
customer); viewers read ``/v1/segment-changes/stream`` over HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.stats import ChangeStats
from service.api import changes_hub
from service.api.app import create_app
from service.kafka import ensure_topics
from service.settings import Settings, StreamSettings
from tests.support.api import api_key, api_settings
from tests.support.kafka import produce, wait_for
from tests.support.live import serve

pytestmark = pytest.mark.integration

PARTITIONS = 3


def change(
    customer: str, before: str | None, after: str, cause: str = "event", **extra: Any
) -> bytes:
    """A change event with the fields the stream and the counters read."""

    def seg(name: str, lifecycle: str) -> dict[str, Any]:
        return {"segment": name, "axes": {"lifecycle": lifecycle}}

    lifecycle = extra.get("lifecycle", "regular")
    doc = {
        "schema_version": 1,
        "change_id": f"{customer}:{before}>{after}:{cause}",
        "customer_id": customer,
        "cause": cause,
        "as_of": datetime.now(UTC).isoformat(),
        "rules_version": "test",
        "previous": None
        if before is None
        else seg(before, extra.get("before_lifecycle", "regular")),
        "current": seg(after, lifecycle),
        "trigger": None,
    }
    return orjson.dumps(doc)


@dataclass
class Received:
    changes: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """The id of each change, in order."""
    last_id: str | None = None
    """The last id seen (change or id-only message)."""
    events: list[str] = field(default_factory=list)
    comments: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)


async def read_stream(
    client: httpx.AsyncClient,
    into: Received,
    *,
    until: int,
    params: dict[str, str] | None = None,
    last_event_id: str | None = None,
) -> None:
    """Reads SSE until ``until`` changes arrived (or the server ends the stream)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with client.stream(
        "GET", "/v1/segment-changes/stream", params=params, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                event, data, event_id = "message", "", None
                for line in block.split("\n"):
                    if line.startswith(":"):
                        into.comments += 1
                        if "connected" in line:
                            into.connected.set()
                    elif line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data += line[6:]
                if event_id is not None:
                    into.last_id = event_id
                into.events.append(event)
                if event == "change":
                    into.changes.append(orjson.loads(data))
                    assert event_id is not None
                    into.ids.append(event_id)
                    if len(into.changes) >= until:
                        return


@dataclass
class Live:
    settings: Settings
    url: str
    read_key: str

    def client(self, key: str | None = "read") -> httpx.AsyncClient:
        headers = (
            {}
            if key is None
            else {"Authorization": f"Bearer {self.read_key if key == 'read' else key}"}
        )
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=httpx.Timeout(60.0))

    async def produce(self, changes: list[tuple[str, bytes]]) -> None:
        await produce(
            self.settings.kafka,
            self.settings.kafka.changes_topic,
            [(cid.encode(), value) for cid, value in changes],
        )


@contextlib.asynccontextmanager
async def live_api(redis_url: str, kafka_bootstrap: str, **stream: Any) -> AsyncIterator[Live]:
    read_key, read_cfg = api_key("viewer", "segments:read")
    settings = api_settings(redis_url, kafka_bootstrap, keys=[read_cfg])
    settings.stream = StreamSettings(heartbeat_s=stream.pop("heartbeat_s", 0.3), **stream)
    await ensure_topics(settings.kafka, partitions=PARTITIONS)
    async with serve(create_app(settings)) as url:
        yield Live(settings, url, read_key)


async def connect(
    live: Live, client: httpx.AsyncClient, until: int, **kw: Any
) -> tuple[Received, asyncio.Task[None]]:
    got = Received()
    task = asyncio.create_task(read_stream(client, got, until=until, **kw))
    connected = asyncio.create_task(got.connected.wait())
    await asyncio.wait({task, connected}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    connected.cancel()
    if task.done():
        task.result()
    assert got.connected.is_set(), "viewer was not connected"
    return got, task


def workload(n: int, prefix: str = "c") -> list[tuple[str, bytes]]:
    segments = ["new", "loyal", "at_risk", "champions"]
    out = []
    for i in range(n):
        before = None if i % 5 == 0 else segments[i % 4]
        out.append((f"{prefix}-{i % 37}", change(f"{prefix}-{i}", before, segments[(i + 1) % 4])))
    return out


async def test_fifty_viewers_receive_the_same_changes(
    redis_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[AIOKafkaConsumer] = []

    class CountedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(changes_hub, "AIOKafkaConsumer", CountedConsumer)
    async with live_api(redis_url, kafka_bootstrap) as live:
        clients = [live.client() for _ in range(50)]
        try:
            viewers = [await connect(live, c, until=300) for c in clients]
            sent = workload(300)
            await live.produce(sent)
            await asyncio.wait_for(asyncio.gather(*(t for _, t in viewers)), 60)
            first = viewers[0][0]
            expected = sorted(orjson.loads(v)["customer_id"] for _, v in sent)
            assert sorted(c["customer_id"] for c in first.changes) == expected
            for got, _ in viewers:
                assert [c["customer_id"] for c in got.changes] == [
                    c["customer_id"] for c in first.changes
                ]
                assert got.ids == first.ids
            # one Kafka reader (the worker's hub) served all 50 viewers
            assert len(created) == 1, f"{len(created)} Kafka consumers for 50 viewers"
            # the hub counted every change once for the dashboard
            async with live.client() as client:

                async def counted() -> bool:
                    r = await client.get("/v1/stats/changes", params={"window": "1h"})
                    return bool(r.json()["total"] == 300)

                await wait_for(counted, timeout_s=10, what="300 changes counted")
                body = ChangeStats.model_validate((await client.get("/v1/stats/changes")).json())
            cells = {(m.from_segment, m.to_segment): m.changes for m in body.migrations}
            assert cells[("none", "loyal")] == 15  # i % 5 == 0 and (i + 1) % 4 == 1: i = 0, 20, 40…
            assert sum(cells.values()) == 300
            assert body.by_cause == {"event": 300}
            assert sum(p.changes for p in body.per_minute) == 300
        finally:
            for c in clients:
                await c.aclose()


@pytest.mark.parametrize("ring_size", [10_000, 5], ids=["from-memory", "re-read-kafka"])
async def test_resume_with_last_event_id_loses_nothing(
    redis_url: str, kafka_bootstrap: str, ring_size: int
) -> None:
    async with (
        live_api(redis_url, kafka_bootstrap, ring_size=ring_size) as live,
        live.client() as client,
    ):
        first, task = await connect(live, client, until=40)
        batch1 = workload(60, "a")
        await live.produce(batch1)
        await asyncio.wait_for(task, 30)  # disconnects after 40 of 60
        assert len(first.changes) == 40
        batch2 = workload(50, "b")
        await live.produce(batch2)
        # let the hub read batch 2 (so with ring 5 the resume point is long gone from memory)
        _probe, probe_task = await connect(live, client, until=1, params={"cause": "rules"})
        await asyncio.sleep(1.5)
        probe_task.cancel()
        second, task2 = await connect(live, client, until=70, last_event_id=first.ids[-1])
        await asyncio.wait_for(task2, 30)
        seen = [c["customer_id"] for c in first.changes + second.changes]
        expected = [orjson.loads(v)["customer_id"] for _, v in batch1 + batch2]
        assert sorted(seen) == sorted(expected), "lost or repeated changes across the resume"
        assert len(set(seen)) == len(seen)
        # resuming from the very last id gives nothing old
        third, task3 = await connect(live, client, until=1, last_event_id=second.ids[-1])
        await live.produce([("z", change("z-1", "new", "loyal"))])
        await asyncio.wait_for(task3, 30)
        assert [c["customer_id"] for c in third.changes] == ["z-1"]


async def test_resume_of_a_viewer_that_saw_no_change(redis_url: str, kafka_bootstrap: str) -> None:
    """The id-only message at connection lets even an idle viewer resume without loss."""
    async with live_api(redis_url, kafka_bootstrap) as live, live.client() as client:
        idle, task = await connect(live, client, until=1, params={"to": "nothing_here"})
        assert idle.last_id is not None
        task.cancel()
        sent = workload(12, "i")
        await live.produce(sent)
        again, task2 = await connect(live, client, until=12, last_event_id=idle.last_id)
        await asyncio.wait_for(task2, 30)
        assert sorted(c["customer_id"] for c in again.changes) == sorted(
            orjson.loads(v)["customer_id"] for _, v in sent
        )


async def test_filters(redis_url: str, kafka_bootstrap: str) -> None:
    async with live_api(redis_url, kafka_bootstrap) as live, live.client() as client:
        into_loyal, t1 = await connect(live, client, until=2, params={"to": "loyal"})
        from_none, t2 = await connect(live, client, until=2, params={"from": "none"})
        by_time, t3 = await connect(live, client, until=1, params={"cause": "time,rules"})
        combined, t4 = await connect(
            live,
            client,
            until=1,
            params={"from": "new", "to": "loyal,at_risk", "cause": "event"},
        )
        await live.produce(
            [
                ("f", change("f-1", None, "new")),
                ("f", change("f-2", "new", "loyal")),
                ("f", change("f-3", "loyal", "at_risk", cause="time")),
                ("f", change("f-4", None, "loyal")),
            ]
        )
        await asyncio.wait_for(asyncio.gather(t1, t2, t3, t4), 30)
        assert [c["customer_id"] for c in into_loyal.changes] == ["f-2", "f-4"]
        assert [c["customer_id"] for c in from_none.changes] == ["f-1", "f-4"]
        assert [c["customer_id"] for c in by_time.changes] == ["f-3"]
        assert [c["customer_id"] for c in combined.changes] == ["f-2"]


async def test_auth_and_bad_requests(redis_url: str, kafka_bootstrap: str) -> None:
    async with live_api(redis_url, kafka_bootstrap) as live:
        async with live.client(key=None) as anonymous:
            r = await anonymous.get("/v1/segment-changes/stream")
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized"
        async with live.client(key="not-a-key") as wrong:
            r = await wrong.get("/v1/segment-changes/stream")
            assert r.status_code == 401
        async with live.client() as client:
            r = await client.get("/v1/segment-changes/stream", headers={"Last-Event-ID": "x"})
            assert r.status_code == 422
            assert r.json()["error"]["code"] == "invalid_last_event_id"
            r = await client.get("/v1/segment-changes/stream", params={"cause": "magic"})
            assert r.status_code == 422
            assert r.json()["error"]["code"] == "validation_failed"
            # heartbeats keep an idle stream alive
            idle, task = await connect(live, client, until=1)
            await asyncio.sleep(1.0)
            task.cancel()
            assert idle.comments >= 3  # "connected" and at least two heartbeats (0.3 s)


async def test_changes_counted_once_across_workers(redis_url: str, kafka_bootstrap: str) -> None:
    """Two API workers read the same changes; the dashboard counts each change once."""
    async with live_api(redis_url, kafka_bootstrap) as live:
        second = create_app(live.settings)
        async with (
            serve(second) as second_url,
            live.client() as client,
            httpx.AsyncClient(base_url=second_url, headers=client.headers) as client2,
        ):
            # a viewer on each worker: both hubs are at the end of the topic by now
            await connect(live, client, until=1)
            await connect(live, client2, until=1)
            sent = [
                ("w", change(f"w-{i}", "at_risk", "churned_out", lifecycle="churned"))
                for i in range(40)
            ]
            sent += [
                (
                    "v",
                    change(
                        f"v-{i}",
                        "churned_out",
                        "back",
                        lifecycle="reactivated",
                        before_lifecycle="churned",
                    ),
                )
                for i in range(10)
            ]
            await live.produce(sent)

            async def counted() -> bool:
                r = await client.get("/v1/stats/changes", params={"window": "24h"})
                return bool(r.json()["total"] >= 50)

            await wait_for(counted, timeout_s=15, what="changes counted")
            await asyncio.sleep(1.0)
            body = (await client.get("/v1/stats/changes", params={"window": "24h"})).json()
            assert body["total"] == 50
            assert body["lost_to_churn"] == {"at_risk": 40}
            assert body["won_back"] == {"back": 10}
