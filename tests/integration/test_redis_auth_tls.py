"""Redis with AUTH and TLS, through every client the roles use: redis-py (admin, API, sweeper,
cluster), the consumer's hot-path pipeline and the API's multiplexed connection.

Runs against a redis-server of its own (``scripts/services.py start redis-secure``): a password
on a plain port and on a TLS port, with a throw-away CA. Single node by nature (the shared test
Redis, single or cluster, has no password).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.segmentation.profile import EventDelta, Totals
from service.settings import RedisSettings
from service.store.keys import Keys
from service.store.multiplex import MultiplexedRedis
from service.store.profiles import APPLIED, ApplyRequest, RedisProfileStore
from service.store.reads import StateReader
from service.store.redis_client import create_redis
from service.store.resp import RespPipeline
from tests.conftest import load_services

pytestmark = pytest.mark.integration

DAY = 20_000
"""A UTC epoch day (2024-10-04); the store does not care which."""


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("redis-secure")
    services = load_services()
    try:
        yield services.start("redis-secure", state)
    finally:
        services.stop("redis-secure", state)


def _with_password(url: str, userinfo: str) -> str:
    """``url`` with other credentials: ``userinfo`` is ``user:password`` or ``:password``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.hostname}:{parts.port}"))


def _purchase(customer_id: str, offset: int, amount: int) -> ApplyRequest:
    delta = EventDelta("purchase", DAY, DAY * 86_400_000, Totals(orders=1, spend=amount))
    return ApplyRequest(customer_id, 0, offset, uuid.uuid4().bytes, delta)


async def _round_trip(url: str) -> None:
    """Apply through the hot-path client, read back through redis-py and the API's client."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:")
    redis = create_redis(RedisSettings(url=url))
    fast = RespPipeline(url, timeout_s=5)
    store = RedisProfileStore(redis, keys, ring_size=8, fast=fast)
    multiplexed = MultiplexedRedis(url, timeout_s=5)
    try:
        outcomes, states = await store.apply(
            [_purchase("c-1", 1, 1_250), _purchase("c-1", 2, 750), _purchase("c-2", 3, 99)],
            min_day=DAY - 400,
        )
        assert outcomes == [APPLIED] * 3
        assert states["c-1"].profile.lifetime.spend == 2_000

        plain = RedisProfileStore(redis, keys, ring_size=8)  # redis-py path
        again = await plain.read(["c-1", "c-2"], min_day=DAY - 400)
        assert again["c-1"].profile.lifetime.orders == 2
        assert again["c-2"].profile.lifetime.spend == 99

        reader = StateReader(redis, keys, fast=multiplexed)
        assert await reader.ping()
        assert await reader.customer("c-2")  # the raw hash, non-empty
    finally:
        await multiplexed.aclose()
        await store.aclose()
        await redis.aclose()


async def test_auth_with_a_user_and_with_the_default_user(secure: dict[str, Any]) -> None:
    await _round_trip(secure["url"])  # redis://segments:<password>@host:port/0 (ACL user)
    await _round_trip(_with_password(secure["url"], f":{secure['password']}"))  # requirepass


async def test_wrong_or_missing_password_is_refused_by_every_client(
    secure: dict[str, Any],
) -> None:
    bad = _with_password(secure["url"], "segments:not-the-password")
    redis = create_redis(RedisSettings(url=bad))
    with pytest.raises(AuthenticationError):
        await redis.ping()
    await redis.aclose()

    fast = RespPipeline(bad, timeout_s=5)
    with pytest.raises(ResponseError, match="WRONGPASS"):
        await fast.execute([("PING",)])
    await fast.aclose()

    multiplexed = MultiplexedRedis(bad, timeout_s=5)
    with pytest.raises(ResponseError, match="WRONGPASS"):
        await multiplexed.execute([("PING",)])
    await multiplexed.aclose()

    anonymous = RespPipeline(f"redis://{secure['host']}:{secure['port']}/0", timeout_s=5)
    (reply,) = await anonymous.execute([("GET", "anything")])
    assert str(reply).startswith("NOAUTH")
    await anonymous.aclose()


async def test_tls_url_through_every_client(
    secure: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_url = secure["tls_url"]  # rediss://user:password@127.0.0.1:<tls port>/0?ssl_ca_certs=...
    assert tls_url.startswith("rediss://")
    # The hot-path clients verify the server against the default trust store, which
    # SSL_CERT_FILE replaces (redis-py takes the CA from the URL's ssl_ca_certs).
    monkeypatch.setenv("SSL_CERT_FILE", secure["ca_file"])
    await _round_trip(tls_url)


async def test_tls_refuses_a_server_it_cannot_verify(
    secure: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TLS is verified, not merely encrypted: without the test CA every client refuses."""
    empty = tmp_path / "no-ca.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    url = secure["tls_url"].split("?", 1)[0]
    redis = create_redis(RedisSettings(url=url))
    with pytest.raises(RedisConnectionError):
        await redis.ping()
    await redis.aclose()
    fast = RespPipeline(url, timeout_s=5)
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await fast.execute([("PING",)])
    await fast.aclose()
    multiplexed = MultiplexedRedis(url, timeout_s=5)
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await multiplexed.execute([("PING",)])
    await multiplexed.aclose()
