"""One Redis connection shared by every concurrent request of an API worker, auto-pipelined
(and by the lanes of a consumer, whose pipelines Redis then runs whole, in the order sent).

The API answers many small requests at once, each needing one round trip. A connection pool
(redis-py) sends each command with its own system call and parses each reply on its own;
here every command queued during one event-loop iteration goes out in one write, and one read
parses every reply that arrived. Redis answers in order on a connection, so replies are handed
back to their callers in the order the commands were queued. Under load this turns dozens of
system calls into one, and it is never slower when idle (a lone command is flushed on the
next loop iteration).

Single node only (a cluster keeps redis-py's cluster client). Failures surface as redis-py's
exception types: a lost connection, or a Redis that owes replies and sends nothing for
``timeout_s``, fails every command in flight (``ConnectionError`` / ``TimeoutError``) and the
next command reconnects. The timeout is on silence, not on each command's total wait: on a
shared connection a command queues behind the others' (a consumer lane's pipeline behind
three others, seconds of work for Redis), and a Redis busy answering them is not a dead one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.resp import Command, RedisEndpoint, pack


class _Group:
    """Commands sent together by one caller, and the replies collected for them."""

    __slots__ = ("expected", "future", "replies")

    def __init__(self, expected: int, future: asyncio.Future[list[Any]]) -> None:
        self.expected = expected
        self.future = future
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MultiplexedRedis) -> None:
        self.client = client
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.time = asyncio.get_running_loop().time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.client._heard_at = self.time()
        waiting = self.client._waiting
        try:
            while (reply := self.reader.gets()) is not False:
                group = waiting[0]
                group.replies.append(reply)
                if len(group.replies) == group.expected:
                    waiting.popleft()
                    if not group.future.done():
                        group.future.set_result(group.replies)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.client._fail(RedisConnectionError(f"unexpected data from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client._protocol is self:
            self.client._fail(RedisConnectionError(f"connection to Redis lost: {exc!r}"))


class MultiplexedRedis:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        e = RedisEndpoint.from_url(url)
        self._host, self._port, self._db = e.host, e.port, e.db
        self._username, self._password, self._ssl = e.username, e.password, e.ssl
        self._timeout = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: deque[_Group] = deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._heard_at = 0.0
        """Loop time Redis last sent bytes, or a first command was queued on an idle
        connection: the watchdog's reference."""
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Replies to ``commands`` (sent together, in order); an error reply raises."""
        if not commands:
            return []
        replies = await self.execute_packed(pack(commands), len(commands))
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
        return replies

    async def execute_packed(self, payload: bytes, count: int) -> list[Any]:
        """Replies to ``count`` commands already in RESP (:func:`pack`), sent together, in
        order; error replies are returned, not raised (as :class:`RespPipeline` does)."""
        if not count:
            return []
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        group = _Group(count, loop.create_future())
        if not self._waiting:
            self._heard_at = loop.time()  # silence is counted from now
        self._waiting.append(group)
        self._outgoing.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._heard_at + self._timeout, self._watch, loop)
        return await group.future

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fails everything in flight once Redis owes replies and has been silent for
        ``timeout_s``; otherwise looks again when that could next be true."""
        self._watchdog = None
        if not self._waiting:
            return
        silent_until = self._heard_at + self._timeout
        if loop.time() < silent_until:
            self._watchdog = loop.call_at(silent_until, self._watch, loop)
            return
        self._fail(
            RedisTimeoutError(
                f"no reply from Redis at {self._host}:{self._port} for {self._timeout}s"
            )
        )

    def _flush(self, protocol: _Protocol) -> None:
        self._flush_scheduled = False
        data, self._outgoing = self._outgoing, []
        if protocol is not self._protocol or protocol.transport is None:
            return  # the connection failed meanwhile; its commands were failed with it
        protocol.transport.write(b"".join(data))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Protocol(self), self._host, self._port, ssl=self._ssl
                    ),
                    self._timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"{self._host}:{self._port}: {exc!r}") from exc
            self._protocol = protocol
            hello: list[Command] = []
            if self._password is not None:
                hello.append(
                    ("AUTH", self._username, self._password)
                    if self._username
                    else ("AUTH", self._password)
                )
            if self._db:
                hello.append(("SELECT", self._db))
            if hello:
                try:
                    await self.execute(hello)
                except ResponseError:
                    self._fail(RedisConnectionError("Redis refused AUTH/SELECT"))
                    raise
            return protocol

    def _fail(self, error: Exception) -> None:
        """Drops the connection and fails every command in flight with ``error``."""
        protocol, self._protocol = self._protocol, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        waiting, self._waiting = self._waiting, deque()
        self._outgoing = []
        for group in waiting:
            if not group.future.done():
                group.future.set_exception(error)

    async def aclose(self) -> None:
        self._fail(RedisConnectionError("client closed"))
