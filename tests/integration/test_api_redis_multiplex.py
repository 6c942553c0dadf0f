"""The API's auto-pipelined Redis connection: replies reach their callers, failures surface
as redis-py's errors, a lost connection is replaced. A single-node client (a cluster's API
uses redis-py's cluster client): on a cluster run these use a single node of their own."""

from __future__ import annotations

import asyncio
import uuid

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.multiplex import MultiplexedRedis
from service.store.resp import pack

pytestmark = pytest.mark.integration


async def test_concurrent_callers_get_their_own_replies(single_redis_url: str) -> None:
    client = MultiplexedRedis(single_redis_url, timeout_s=5)
    prefix = f"mux{uuid.uuid4().hex[:8]}:"
    try:
        await client.execute([("HSET", f"{prefix}{i}", "n", str(i)) for i in range(300)])

        async def one(i: int) -> None:
            if i % 3 == 0:
                replies = await client.execute(
                    [("HGETALL", f"{prefix}{i}"), ("ECHO", f"e{i}"), ("HGETALL", f"{prefix}x")]
                )
                assert replies == [[b"n", str(i).encode()], f"e{i}".encode(), []]
            else:
                assert await client.execute([("HGET", f"{prefix}{i}", "n")]) == [str(i).encode()]

        await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await client.aclose()


async def test_an_error_reply_fails_only_its_caller(single_redis_url: str) -> None:
    client = MultiplexedRedis(single_redis_url, timeout_s=5)
    key = f"mux{uuid.uuid4().hex[:8]}:s"
    try:
        await client.execute([("SET", key, "x")])
        wrong, right = await asyncio.gather(
            client.execute([("HGETALL", key)]), client.execute([("GET", key)]),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert right == [b"x"]
    finally:
        await client.aclose()


async def test_a_lost_connection_is_replaced(single_redis_url: str) -> None:
    client = MultiplexedRedis(single_redis_url, timeout_s=5)
    admin = Redis.from_url(single_redis_url)
    try:
        (client_id,) = await client.execute([("CLIENT", "ID")])
        await admin.execute_command("CLIENT", "KILL", "ID", client_id)
        for _ in range(50):  # the close reaches the client asynchronously
            try:
                (new_id,) = await client.execute([("CLIENT", "ID")])
            except RedisConnectionError:
                continue
            if new_id != client_id:
                break
            await asyncio.sleep(0.02)
        assert new_id != client_id
        assert await client.execute([("PING",)]) == [b"PONG"]
    finally:
        await client.aclose()
        await admin.aclose()


async def test_unreachable_and_silent_servers() -> None:
    refused = MultiplexedRedis("redis://127.0.0.1:1/0", timeout_s=1)
    with pytest.raises(RedisConnectionError):
        await refused.execute([("PING",)])

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    try:
        results = await asyncio.gather(
            client.execute([("PING",)]), client.execute([("PING",)]), return_exceptions=True
        )
        assert all(isinstance(r, RedisTimeoutError | RedisConnectionError) for r in results)
        assert any(isinstance(r, RedisTimeoutError) for r in results)
    finally:
        await client.aclose()
        server.close()


async def test_a_slow_redis_that_keeps_answering_is_waited_for() -> None:
    """The timeout is on silence, not on a command's total wait: commands queued behind others
    on the shared connection (a lane's pipeline behind three others) wait as long as Redis
    keeps answering, here 6 replies 0.1 s apart with a 0.25 s timeout."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            pending += data
            while b"PING\r\n" in pending:
                _, _, pending = pending.partition(b"PING\r\n")
                await asyncio.sleep(0.1)
                writer.write(b"+PONG\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0", timeout_s=0.25)
    try:
        replies = await asyncio.gather(*(client.execute([("PING",)]) for _ in range(6)))
        assert replies == [[b"PONG"]] * 6
    finally:
        await client.aclose()
        server.close()


async def test_packed_pipelines_run_whole_in_the_order_sent(single_redis_url: str) -> None:
    """The consumer's lanes share one client: each lane's pipeline (already in RESP) gets its
    own replies, error replies returned, not raised (the store maps NOSCRIPT itself), and
    Redis runs the pipelines one after the other in the order they were sent."""
    client = MultiplexedRedis(single_redis_url, timeout_s=5)
    key = f"mux{uuid.uuid4().hex[:8]}:order"
    try:

        async def lane(i: int) -> list[object]:
            commands = [("RPUSH", key, f"{i}:{j}") for j in range(200)]
            commands.append(("EVALSHA", "0" * 40, "0"))  # an error reply, returned
            return await client.execute_packed(pack(commands), len(commands))

        results = await asyncio.gather(*(lane(i) for i in range(4)))
        for i, replies in enumerate(results):
            assert replies[:200] == list(range(200 * i + 1, 200 * i + 201))
            assert isinstance(replies[200], hiredis.ReplyError)
            assert str(replies[200]).startswith("NOSCRIPT")
        pushed = await client.execute([("LRANGE", key, 0, -1)])
        assert pushed[0] == [f"{i}:{j}".encode() for i in range(4) for j in range(200)]
        await client.execute([("DEL", key)])
    finally:
        await client.aclose()
