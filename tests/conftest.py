"""Shared fixtures. Services are real and started here (or by `make test`), never assumed.

- ``SEGMENTS_TEST_BROKER``: ``kafka`` (Apache Kafka, default) or ``tansu``.
- ``SEGMENTS_TEST_KAFKA_BOOTSTRAP`` / ``SEGMENTS_TEST_REDIS_URL``: reuse running services
  (the Makefile starts them once for several pytest runs); otherwise the session starts its own
  in a temporary state dir and stops them at the end. A service that cannot start fails the
  tests that need it: nothing is skipped.
- ``SEGMENTS_TEST_REDIS_CLUSTER=1``: the Redis is a Redis Cluster (``SEGMENTS_TEST_REDIS_URL``
  names one of its nodes, or the session starts a 3-master cluster). Every test's settings get
  ``redis.cluster`` set (build them with :func:`redis_settings`), and so do the processes tests
  start (``SEGMENTS_REDIS__CLUSTER`` in the environment they inherit).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.settings import KafkaSettings, RedisSettings, Settings

ROOT = Path(__file__).resolve().parent.parent

REDIS_CLUSTER = os.environ.get("SEGMENTS_TEST_REDIS_CLUSTER", "0") == "1"
"""The shared test Redis is a Redis Cluster."""

if REDIS_CLUSTER:
    # Processes the tests start (CLI, API, consumers) inherit it.
    os.environ["SEGMENTS_REDIS__CLUSTER"] = "true"


def redis_settings(url: str, **fields: Any) -> RedisSettings:
    """Settings of the shared test Redis (cluster-aware when the session runs on a cluster);
    a test that starts a single node of its own builds ``RedisSettings`` directly."""
    return RedisSettings(url=url, cluster=REDIS_CLUSTER, **fields)


def load_services() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "segments_services", ROOT / "scripts" / "services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["segments_services"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def services_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("services")
    yield state
    load_services().stop("all", state)


@pytest.fixture(scope="session")
def broker_kind() -> str:
    kind = os.environ.get("SEGMENTS_TEST_BROKER", "kafka")
    assert kind in ("kafka", "tansu"), f"SEGMENTS_TEST_BROKER must be kafka or tansu, not {kind!r}"
    return kind


@pytest.fixture(scope="session")
def kafka_bootstrap(services_state: Path, broker_kind: str) -> str:
    if given := os.environ.get("SEGMENTS_TEST_KAFKA_BOOTSTRAP"):
        return given
    info = load_services().start(broker_kind, services_state)
    return f"{info['host']}:{info['port']}"


@pytest.fixture(scope="session")
def redis_url(services_state: Path) -> str:
    if REDIS_CLUSTER:
        url = os.environ.get("SEGMENTS_TEST_REDIS_URL") or str(
            load_services().start("redis-cluster", services_state)["url"]
        )
        # The flat SEGMENTS_REDIS_URL (set by `services.py env` for the single node) overrides
        # any configured URL: point it at the cluster too.
        os.environ["SEGMENTS_REDIS_URL"] = url
        return url
    if given := os.environ.get("SEGMENTS_TEST_REDIS_URL"):
        return given
    info = load_services().start("redis", services_state)
    return f"redis://{info['host']}:{info['port']}/0"


@pytest.fixture(scope="session")
def single_redis_url(redis_url: str, services_state: Path) -> str:
    """A single Redis node, for the tests of the single-node clients (the consumer's RESP
    pipeline, the API's multiplexed connection): the shared Redis, or on a cluster run a node
    of the session's own."""
    if not REDIS_CLUSTER:
        return redis_url
    info = load_services().start("redis", services_state)
    return f"redis://{info['host']}:{info['port']}/0"


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(kafka_bootstrap: str, redis_url: str) -> SettingsFactory:
    """Settings isolated per test: own topics, own consumer group, own Redis key prefix."""

    def build(**overrides: Any) -> Settings:
        run = uuid.uuid4().hex[:10]
        kafka = KafkaSettings(
            bootstrap=kafka_bootstrap,
            events_topic=f"t{run}.events",
            changes_topic=f"t{run}.segment-changes",
            dlq_topic=f"t{run}.events.dlq",
            group_id=f"t{run}-consumer",
            max_batch=overrides.pop("max_batch", 500),
            poll_timeout_ms=100,
            session_timeout_ms=6_000,
        )
        redis = redis_settings(
            redis_url, key_prefix=f"t{run}:", retry_initial_s=0.05, retry_max_s=0.5
        )
        return Settings(kafka=kafka, redis=redis, _env_file=None, **overrides)  # type: ignore[call-arg]

    return build
