"""The floor for bench/api.py: a bare ASGI callable on uvicorn, no framework.

``GET /c/<customer_id>`` does the same HGETALL as the API and returns the raw hash as JSON:
what uvicorn + redis-py cost before routing, auth, validation and classification.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from redis.asyncio import Redis

from service.store.keys import Keys

_keys = Keys(os.environ.get("SEGMENTS_REDIS__KEY_PREFIX", ""))
_redis = Redis.from_url(os.environ["SEGMENTS_REDIS__URL"])
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    customer_id = scope["path"].rsplit("/", 1)[-1]
    fields = await _redis.hgetall(_keys.customer(customer_id))
    body = orjson.dumps({k.decode(): v.decode("latin-1") for k, v in fields.items()})
    await send({"type": "http.response.start", "status": 200 if fields else 404,
                "headers": _HEADERS})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
