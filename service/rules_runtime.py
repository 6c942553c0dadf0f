"""The rules an instance classifies with, following the active version in Redis.

:class:`RulesWatcher` gives ``current() -> Rules`` (a plain attribute read: it sits on every
request and batch) and keeps it up to date in the background:

1. at start, the active version is read from the registry (:mod:`service.rules_store`); with
   none ever activated, the rules file of the settings (or the packaged default) is in effect;
2. a subscription to ``{rules}:changed`` wakes the watcher as soon as a version is activated;
3. whatever happens to the subscription, the active version is read again every
   ``rules.poll_interval_s`` (default 2 s): a missed message, a dropped connection or a Redis
   failover cost at most one interval. A new version is therefore in use within ~2 s (5 s is
   the promise).

A version that fails to load (deleted by hand, invalid) is logged and the previous rules stay
in use; the watcher never leaves an instance without rules.

The API, the consumer and the sweeper each run one watcher per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from service.rules_store import RulesRegistry
from service.segmentation.rules import Rules, RulesError
from service.settings import Settings
from service.store.keys import Keys
from service.store.redis_client import AnyRedis

log = logging.getLogger(__name__)


class RulesWatcher:
    """``current()``: the active rules of the registry, or ``fallback`` while none is active."""

    def __init__(
        self,
        registry: RulesRegistry,
        redis: AnyRedis,
        *,
        fallback: Rules,
        poll_interval_s: float = 2.0,
        on_change: Callable[[Rules], None] | None = None,
        subscribe: bool = True,
    ) -> None:
        self._registry = registry
        self._subscribe = subscribe
        """False: polling only (tests of the fallback)."""
        self._redis = redis
        self.fallback = fallback
        self._rules = fallback
        self._poll_s = poll_interval_s
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.changes = 0
        """Times the rules in use changed since start."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis: AnyRedis,
        *,
        fallback: Rules,
        on_change: Callable[[Rules], None] | None = None,
    ) -> RulesWatcher:
        registry = RulesRegistry(
            redis, Keys(settings.redis.key_prefix), history_limit=settings.rules.history_limit
        )
        return cls(
            registry,
            redis,
            fallback=fallback,
            poll_interval_s=settings.rules.poll_interval_s,
            on_change=on_change,
        )

    @property
    def registry(self) -> RulesRegistry:
        return self._registry

    def current(self) -> Rules:
        """The rules to classify with now."""
        return self._rules

    async def refresh(self) -> Rules:
        """Reads the active version and switches to it if it is new."""
        version = await self._registry.active_version()
        if version is None:
            target = self.fallback
        elif version == self._rules.version:
            return self._rules
        else:
            try:
                target = await self._registry.load(version)
            except (LookupError, RulesError) as exc:
                log.error(  # noqa: TRY400 - the reason is in the message, no traceback
                    "active rules version cannot be loaded; keeping the rules in use",
                    extra={"version": version, "in_use": self._rules.version, "error": str(exc)},
                )
                return self._rules
        if target.version != self._rules.version:
            log.info("rules changed", extra={"from": self._rules.version, "to": target.version})
            self._rules = target
            self.changes += 1
            if self._on_change is not None:
                self._on_change(target)
        return self._rules

    async def start(self) -> None:
        """First read (errors are logged: the fallback serves until Redis answers), then the
        background loop."""
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - Redis away at start: the loop retries
            log.warning("rules not read at start", extra={"error": repr(exc)})
        self._task = asyncio.create_task(self._run(), name="rules-watcher")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        # redis-py's timed read can swallow a cancellation that lands as its timeout fires;
        # cancel again until the task has really ended (the flag stops the loop regardless).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while not self._stopping:
            pubsub: Any = None
            try:
                if self._subscribe:
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self._registry.keys.rules_channel())
            except Exception as exc:  # noqa: BLE001 - polling still covers every change
                log.debug("rules subscription unavailable", extra={"error": repr(exc)})
                pubsub = None
            try:
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect and carry on polling
                log.warning("rules watcher error; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(self._poll_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    async def _follow(self, pubsub: Any) -> None:
        """Waits for a message (or the poll interval) and refreshes, until stopped."""
        while not self._stopping:
            if pubsub is None:
                await asyncio.sleep(self._poll_s)
            else:
                # Any message (subscription confirmations included) or a timeout: read again.
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll_s)
            await self.refresh()
