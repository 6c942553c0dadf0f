"""Prometheus metrics of the API: requests and latency by route template, method and status;
Redis and Kafka errors by operation.

A pure ASGI middleware (no per-request task or body copy, unlike ``BaseHTTPMiddleware``). The
route *template* (``/v1/customers/{customer_id}/segment``) labels a request, never its path, so
label cardinality stays bounded; paths no route matched are labelled ``unmatched``.

Several uvicorn workers: ``segments api --workers N`` (N > 1) runs prometheus_client's
multiprocess mode. It points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before the
workers start; every worker then writes its samples to memory-mapped files there and whichever
worker answers ``/metrics`` sums all of them (:meth:`ApiMetrics.render`), so a scrape sees the
whole instance, including workers that exited (counters never go back).
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds; the hot endpoints answer in about a millisecond."""

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own switch (read by the library at import): set, it runs multiprocess."""


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "segments_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "segments_api_request_duration_seconds",
            "Time from request start to the response's first byte, by route template, method "
            "and status.",
            ("route", "method", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "segments_redis_errors",
            "Failed Redis calls, by operation (the request answered 503).",
            ("operation",),
            registry=self.registry,
        )
        self.kafka_errors = Counter(
            "segments_kafka_errors",
            "Failed Kafka calls, by operation (e.g. the change stream's reader).",
            ("operation",),
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._multiprocess_dir = os.environ.get(MULTIPROC_ENV)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            code = str(status)
            children = self._children[key] = (
                self.requests.labels(route, method, code),
                self.latency.labels(route, method, code),
            )
        children[0].inc()
        children[1].observe(seconds)

    def redis_error(self, operation: str) -> None:
        """``operation`` is a name in the code (``read``, ``ping``): bounded."""
        self.redis_errors.labels(operation).inc()

    def kafka_error(self, operation: str) -> None:
        self.kafka_errors.labels(operation).inc()

    def render(self) -> bytes:
        if self._multiprocess_dir:
            # every worker's samples, summed (counters, histograms); this process's included
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        elapsed: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, elapsed
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if elapsed is None:
                elapsed = time.perf_counter() - start
            self.metrics.observe(template, scope["method"], status, elapsed)
