"""The API assembled in one place: ``create_app`` (uvicorn factory) and its lifespan.

``segments api`` runs ``uvicorn --factory service.api.app:create_app``; each worker builds
its own app from the environment. Tests pass settings and a clock.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service.api.auth import SECURITY_SCHEME, SECURITY_SCHEME_SPEC, KeyRing
from service.api.changes_hub import ChangeHub
from service.api.deps import Clock, RulesProvider, StaticRules, utc_now
from service.api.errors import install_error_handlers
from service.api.figures import Figures
from service.api.limits import BodyLimitMiddleware
from service.api.metrics import ApiMetrics, MetricsMiddleware
from service.api.routes import customers, dashboard, health, segments, stats, stream
from service.api.routes import rules as rules_routes
from service.rules_runtime import RulesWatcher
from service.rules_store import RulesRegistry
from service.segmentation.rules import load_rules
from service.settings import ApiSettings, Settings, get_settings
from service.store.erase import CustomerEraser
from service.store.keys import Keys
from service.store.multiplex import MultiplexedRedis
from service.store.reads import StateReader
from service.store.redis_client import create_redis
from service.store.stats import ChangeCounter

API_VERSION = "1.0.0"

DESCRIPTION = """\
Segment and treatment of every customer, classified from the live Redis state.

* A customer is classified afresh on every read: an answer is never stale.
* Authentication: `Authorization: Bearer <API key>`; keys are configured hashed with scopes
  (`segments:read`; `admin` implies it). `/healthz`, `/readyz`, `/metrics` are open.
* Every error answers `{"error": {"code", "message", "details"}}` with a stable `code`.
* Unknown customer: `404 customer_not_found`, or `?default=true` for `200` with
  `known: false` and the default treatment (the treatment of the rules' last, catch-all segment).
"""


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    rules: RulesProvider | None = None,
) -> FastAPI:
    """The API. ``settings`` default to the environment; ``clock`` to the system clock (UTC);
    ``rules`` to a watcher of the rules registry in Redis (the rules activated at run time),
    with the rules file of the settings (or the packaged default) as fallback."""
    settings = settings or get_settings()
    api = settings.api

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(settings.redis)
        fast = (
            None
            if settings.redis.cluster
            else MultiplexedRedis(settings.redis.url, timeout_s=settings.redis.socket_timeout_s)
        )
        keys = Keys(settings.redis.key_prefix)
        app.state.reader = StateReader(redis, keys, fast=fast)
        app.state.eraser = CustomerEraser(redis, keys)
        app.state.figures = Figures(settings, redis, app.state.reader)
        # One reader of the changes topic per worker for every live-stream viewer; started
        # now (not on the first viewer) because it also counts changes for the dashboard.
        # It connects in the background: the API serves without Kafka.
        hub = ChangeHub(
            settings,
            ChangeCounter(redis, keys, settings.kafka.changes_topic),
            on_kafka_error=app.state.metrics.kafka_error,
        )
        app.state.hub = hub
        hub.start()
        app.state.redis = redis
        app.state.registry = RulesRegistry(redis, keys, history_limit=settings.rules.history_limit)
        watcher: RulesWatcher | None = None
        if rules is None:
            # Follow the rules activated at run time (PUT /v1/rules): pub/sub plus polling.
            watcher = RulesWatcher(
                app.state.registry,
                redis,
                fallback=app.state.rules_fallback,
                poll_interval_s=settings.rules.poll_interval_s,
            )
            await watcher.start()
            app.state.rules = watcher
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's scans, which otherwise walk it on every full collection (tail latency).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await hub.stop()
            await app.state.figures.aclose()
            if watcher is not None:
                await watcher.aclose()
            if fast is not None:
                await fast.aclose()
            await redis.aclose()

    app = FastAPI(
        title="Customer segments API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if api.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if api.docs else None,
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(api)
    app.state.clock = clock or utc_now
    # Loaded now, not in the lifespan: a bad rules file stops the process at start. Without an
    # explicit provider, the lifespan replaces it by a watcher of the rules registry, for which
    # the file's rules are the fallback (in effect while nothing was activated at run time).
    app.state.rules_fallback = rules.current() if rules else load_rules(settings.rules_file)
    app.state.rules = rules or StaticRules(app.state.rules_fallback)
    app.state.metrics = ApiMetrics()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = document.setdefault("components", {})
            components["securitySchemes"] = {SECURITY_SCHEME: SECURITY_SCHEME_SPEC}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    app.include_router(customers.router)
    app.include_router(segments.router)
    app.include_router(rules_routes.router)
    app.include_router(stream.router)
    app.include_router(stats.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    if api.metrics:
        app.include_router(health.metrics_router)

    # Outermost last: metrics see every answer, including refused bodies and CORS preflights.
    if api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(api.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def openapi_document() -> dict[str, Any]:
    """The spec as published (``schemas/openapi.json``): docs and metrics on, no keys needed."""
    # Explicit groups win over the environment: the document never depends on where it is made.
    settings = Settings(_env_file=None, api=ApiSettings())  # type: ignore[call-arg]
    return create_app(settings, rules=StaticRules(load_rules(None))).openapi()
