"""Retry with capped exponential backoff for transient store/broker failures."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import BusyLoadingError, ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import StopRequested

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    TryAgainError,
    ConnectionError,
    TimeoutError,
)


async def with_backoff(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial_s: float,
    max_s: float,
    stopping: asyncio.Event | None = None,
    transient: tuple[type[BaseException], ...] = TRANSIENT_REDIS_ERRORS,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Runs ``op`` until it succeeds; transient errors wait and retry, forever.

    Never gives up on its own: giving up would mean committing past unapplied events. Raises
    :class:`StopRequested` if ``stopping`` is set while it waits, so the caller can leave
    without committing.
    """
    delay = initial_s
    while True:
        try:
            return await op()
        except transient as exc:
            if on_retry is not None:
                on_retry(exc)
            log.warning(
                "transient failure, retrying",
                extra={"what": what, "error": type(exc).__name__, "retry_in_s": round(delay, 3)},
            )
            if stopping is not None and stopping.is_set():
                raise StopRequested(what) from exc
            sleep = delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
            if stopping is None:
                await asyncio.sleep(sleep)
            else:
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=sleep)
                    raise StopRequested(what) from exc
                except TimeoutError:
                    pass
            delay = min(delay * 2, max_s)
