"""Lua scripts through redis-py, the same way on one Redis and on a Redis Cluster.

redis-py's own script objects do not fit a cluster: its cluster pipeline refuses ``evalsha``
and ``register_script`` objects there, and a script cached on one node is unknown to another.
Here a script is called by SHA as a plain ``EVALSHA`` command, which both clients route by the
first key (every key of one call shares a hash tag, so one slot: see :mod:`service.store.keys`).
A node that does not know the script (new node, restart, failover, ``SCRIPT FLUSH``) answers
``NOSCRIPT``; the script is then loaded on every primary (``SCRIPT LOAD`` goes to all primaries
on a cluster) and only the calls refused are sent again: a refused call did not run, so this
is safe for scripts that are not idempotent too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from service.store.redis_client import AnyRedis

Arg = bytes | str | int | float


class LuaScript:
    """One script, called by SHA."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    @classmethod
    def named(cls, name: str) -> LuaScript:
        """``service/store/lua/<name>.lua``."""
        return cls(resources.files("service.store").joinpath(f"lua/{name}.lua").read_text())

    def command(self, keys: Sequence[str], args: Sequence[Arg]) -> tuple[Arg, ...]:
        """The ``EVALSHA`` command of one call."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, redis: AnyRedis) -> None:
        """Loads the script on the node, or on every primary of a cluster."""
        await redis.execute_command("SCRIPT LOAD", self.source)

    async def __call__(self, redis: AnyRedis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One call on its own (loading the script first if the node does not know it)."""
        try:
            return await redis.execute_command(*self.command(keys, args))
        except NoScriptError:
            await self.load(redis)
            return await redis.execute_command(*self.command(keys, args))


class ScriptBatch:
    """Script calls and plain commands sent as one non-transactional pipeline (redis-py groups
    a cluster pipeline by node: one round trip per node, replies in the order queued)."""

    def __init__(self, redis: AnyRedis) -> None:
        self._redis = redis
        self._calls: list[tuple[LuaScript | None, tuple[Arg, ...]]] = []
        self._also: dict[str, LuaScript] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> None:
        self._calls.append((script, script.command(keys, args)))

    def command(self, *args: Arg) -> None:
        """A plain command (an ``EVALSHA`` built elsewhere too: see :meth:`uses`)."""
        self._calls.append((None, args))

    def uses(self, script: LuaScript) -> None:
        """``script`` is called by plain ``EVALSHA`` commands: load it if any is refused."""
        self._also[script.sha] = script

    async def execute(self) -> list[Any]:
        """Every reply in order; the first error reply is raised (after every call ran). Calls
        refused with NOSCRIPT are sent again on their own once the scripts are loaded."""
        calls, replies, refused = await self._send_all()
        if refused:
            again = await self._send([calls[i][1] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def execute_once(self) -> list[Any]:
        """Every reply in order, sent once: a call refused with NOSCRIPT comes back as its
        :class:`NoScriptError` (the scripts are loaded by then), for a caller that must send
        the whole batch again rather than the refused calls alone; any other error reply is
        raised."""
        _, replies, _ = await self._send_all()
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        return replies

    async def _send_all(
        self,
    ) -> tuple[list[tuple[LuaScript | None, tuple[Arg, ...]]], list[Any], list[int]]:
        """Sends every queued call once; loads the scripts any refused call needs. Returns
        the calls, their replies and the indexes refused with NOSCRIPT."""
        calls, self._calls = self._calls, []
        if not calls:
            return [], [], []
        replies = await self._send([cmd for _, cmd in calls])
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            scripts = dict(self._also)
            scripts.update((s.sha, s) for i in refused if (s := calls[i][0]) is not None)
            for script in scripts.values():
                await script.load(self._redis)
        return calls, replies, refused

    async def _send(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute(raise_on_error=False))
