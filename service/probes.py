"""Health and metrics over HTTP for the roles without an API (consumer, sweeper).

A deliberately small HTTP/1.1 server on ``asyncio.start_server`` (no dependency, one short
request per connection, ``Connection: close``) answering three paths:

- ``/healthz``: 200 while the event loop runs (liveness);
- ``/readyz``: runs the role's named checks concurrently, each bounded by
  ``probes.check_timeout_s``; 200 when all pass, else 503; the JSON body names each result;
- ``/metrics``: the role's Prometheus registry in the text exposition format.

Use :func:`serve_probes` around the role's main loop; ``SEGMENTS_PROBES__PORT=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.settings import ProbesSettings

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]
"""A readiness check: True when the dependency is usable. Raising counts as False."""

_MAX_HEAD_BYTES = 8_192
_READ_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_JSON = "application/json"


class ProbesServer:
    """The server; :func:`serve_probes` is the usual way to run one."""

    def __init__(
        self,
        *,
        checks: Mapping[str, Check],
        registry: CollectorRegistry | None,
        check_timeout_s: float = 2.0,
    ) -> None:
        self._checks = dict(checks)
        self._registry = registry
        self._timeout_s = check_timeout_s
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=_MAX_HEAD_BYTES, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def readiness(self) -> dict[str, bool]:
        """Every check's result, run concurrently, each bounded in time."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _run(self, check: Check) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), self._timeout_s))
        except Exception:  # noqa: BLE001 - any failure of a dependency means "not ready"
            return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, target = _request_line(head)
            status, content_type, body = await self._answer(method, target)
            writer.write(_response(status, content_type, body, with_body=method != "HEAD"))
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            pass  # a broken or slow client; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, _JSON, _error("not_found", f"no such path: {path[:100]}")
        if method not in ("GET", "HEAD"):
            return 405, _JSON, _error("method_not_allowed", "only GET and HEAD")
        if path == "/healthz":
            return 200, _JSON, orjson.dumps({"status": "ok"})
        if path == "/readyz":
            checks = await self.readiness()
            ready = all(checks.values())
            body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
            return (200 if ready else 503), _JSON, orjson.dumps(body)
        if self._registry is None:
            return 404, _JSON, _error("not_found", "metrics are off")
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request line")
    return parts[0], parts[1]


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": []}})


def _response(status: int, content_type: str, body: bytes, *, with_body: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body if with_body else head


@contextlib.asynccontextmanager
async def serve_probes(
    settings: ProbesSettings,
    *,
    checks: Mapping[str, Check],
    registry: CollectorRegistry | None,
) -> AsyncIterator[ProbesServer | None]:
    """Serves the probes for the duration of the block (nothing when ``settings.port`` is 0).

    ``checks`` name the role's readiness conditions, e.g. ``{"redis": ..., "kafka": ...,
    "assigned": ...}`` (see :func:`redis_check` and :func:`kafka_consumer_checks`).
    """
    if settings.port == 0:
        yield None
        return
    server = ProbesServer(
        checks=checks, registry=registry, check_timeout_s=settings.check_timeout_s
    )
    try:
        await server.start(settings.host, settings.port)
    except OSError as exc:
        # Another process on this host holds the port (several roles on one machine, e.g. a
        # local run or the tests): the role still works, without probes. In a container each
        # role has the port to itself; a missing probe there fails its liveness check, loudly.
        log.warning(
            "probes port unavailable; running without probes",
            extra={"host": settings.host, "port": settings.port, "error": str(exc)},
        )
        yield None
        return
    log.info("probes listening", extra={"host": settings.host, "port": server.port})
    try:
        yield server
    finally:
        await server.close()


def redis_check(ping: Callable[[], Awaitable[object]]) -> Check:
    """Ready while Redis answers PING (``redis.asyncio.Redis.ping`` or any coroutine)."""

    async def check() -> bool:
        return bool(await ping())

    return check


def kafka_consumer_checks(consumer: Any) -> dict[str, Check]:
    """``kafka``: the cluster answers a metadata request; ``assigned``: the consumer owns at
    least one partition (a surplus instance in a group owns none and reports not ready).

    ``consumer`` is an ``aiokafka.AIOKafkaConsumer`` (typed loosely: aiokafka has no stubs).
    """

    async def kafka() -> bool:
        await consumer.topics()  # a metadata round trip to the brokers
        return True

    async def assigned() -> bool:
        return bool(consumer.assignment())

    return {"kafka": kafka, "assigned": assigned}


def kafka_producer_check(producer: Any) -> Check:
    """Ready while the cluster answers a metadata request through ``producer``
    (an ``aiokafka.AIOKafkaProducer``; for the sweeper, which only produces)."""

    async def check() -> bool:
        await producer.client.fetch_all_metadata()
        return True

    return check
