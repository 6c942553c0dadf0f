"""A lean pipelined Redis client for the consumer's hot path.

redis-py spends more time packing and parsing a large pipeline (about 25 µs per command) than
Redis spends running our scripts. This client writes a whole pipeline as one buffer and parses
every reply with hiredis in bulk. One connection, one pipeline at a time; everything else
(admin, API, cluster) keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int
Command = Sequence[Arg]


class PackedPipeline(Protocol):
    """What the consumer's store needs of a hot-path client: :class:`RespPipeline` (one
    connection per user) or :class:`service.store.multiplex.MultiplexedRedis` (one shared)."""

    async def execute_packed(self, payload: bytes, count: int) -> list[Any]:
        """Replies to ``count`` commands in RESP, in order, error replies included."""

    async def aclose(self) -> None: ...


def pack(commands: Sequence[Command]) -> bytes:
    """Commands in RESP, as one buffer."""
    out: list[bytes] = []
    append = out.append
    for cmd in commands:
        append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            if isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int):
                data = b"%d" % arg
            else:
                data = arg
            append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def raise_for_errors(replies: list[Any]) -> None:
    """Raises the first error reply as redis-py's exception type."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if message.startswith("NOSCRIPT"):
                raise NoScriptError(message)
            raise ResponseError(message)


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where and how to connect, from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    ssl: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        opts = parse_url(url)
        tls = opts.get("connection_class") is SSLConnection
        return cls(
            host=str(opts.get("host", "localhost")),
            port=int(opts.get("port", 6379)),
            db=int(opts.get("db", 0)),
            username=opts.get("username"),
            password=opts.get("password"),
            ssl=ssl.create_default_context() if tls else None,
        )


class RespPipeline:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        e = RedisEndpoint.from_url(url)
        self._host, self._port, self._db = e.host, e.port, e.db
        self._username, self._password, self._ssl = e.username, e.password, e.ssl
        self._timeout = timeout_s
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Sends all commands in one write; returns every reply (error replies included)."""
        if not commands:
            return []
        return await self.execute_packed(pack(commands), len(commands))

    async def execute_packed(self, payload: bytes, count: int) -> list[Any]:
        """Sends ``count`` commands already in RESP (see :func:`pack`) in one write."""
        if not count:
            return []
        async with self._lock:
            try:
                reader, writer = await self._connected()
                writer.write(payload)
                await writer.drain()
                return await asyncio.wait_for(self._read(reader, count), self._timeout)
            except TimeoutError as exc:
                await self.aclose()
                raise RedisTimeoutError(
                    f"no reply from {self._host}:{self._port} in {self._timeout}s"
                ) from exc
            except (OSError, EOFError, hiredis.ProtocolError) as exc:
                await self.aclose()
                raise RedisConnectionError(f"{self._host}:{self._port}: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._stream is not None:
            _, writer = self._stream
            self._stream = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._stream is not None:
            return self._stream
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=1 << 22),
            self._timeout,
        )
        self._stream = (reader, writer)
        hello: list[Command] = []
        if self._password is not None:
            auth = (
                ("AUTH", self._username, self._password)
                if self._username
                else ("AUTH", self._password)
            )
            hello.append(auth)
        if self._db:
            hello.append(("SELECT", self._db))
        if hello:
            writer.write(pack(hello))
            await writer.drain()
            replies = await asyncio.wait_for(self._read(reader, len(hello)), self._timeout)
            try:
                raise_for_errors(replies)
            except ResponseError:
                await self.aclose()
                raise
        return self._stream

    @staticmethod
    async def _read(reader: asyncio.StreamReader, count: int) -> list[Any]:
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < count:
            data = await reader.read(1 << 20)
            if not data:
                raise EOFError("connection closed by Redis")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        return replies
