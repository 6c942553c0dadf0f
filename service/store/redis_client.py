"""Building the Redis client (single node or cluster) from settings."""

from __future__ import annotations

from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.settings import RedisSettings

AnyRedis: TypeAlias = Redis | RedisCluster


def create_redis(settings: RedisSettings) -> AnyRedis:
    common = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "decode_responses": False,
    }
    if settings.cluster:
        return RedisCluster.from_url(settings.url, **common)
    return Redis.from_url(settings.url, health_check_interval=30, **common)  # type: ignore[arg-type]
