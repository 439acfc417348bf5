"""The coredis 6.9.0 behaviour :mod:`triorelay.compat.coredis` works around or relies on."""

from __future__ import annotations

import coredis
import pytest
from coredis.connection import TCPConnection, TCPLocation

from tests.redis_server import RedisServer, free_port
from triorelay.compat.coredis import (
    ClosingTCPConnection,
    is_existing_group,
    is_missing_group,
    is_out_of_memory,
    open_client,
)


async def _fail_to_connect(connection_class: type[TCPConnection]) -> TCPConnection:
    connection = connection_class(TCPLocation("127.0.0.1", free_port()), connect_timeout=1)
    with pytest.raises(coredis.exceptions.ConnectionError):
        await connection.run()
    return connection


async def test_upstream_leaves_a_failed_connections_buffers_open() -> None:
    """Upstream: a connection that never opened keeps its memory streams open (the leak)."""
    connection = await _fail_to_connect(TCPConnection)
    assert not connection._write_buffer_in._closed
    for name in ("_write_buffer_in", "_write_buffer_out", "_push_message_buffer_in",
                 "_push_message_buffer_out", "_streamed_message_buffer_in",
                 "_streamed_message_buffer_out"):  # fmt: skip
        getattr(connection, name).close()  # no warning from this test itself


async def test_closing_connection_closes_its_buffers_when_it_never_opened() -> None:
    """Ours: the same failure closes every buffer."""
    connection = await _fail_to_connect(ClosingTCPConnection)
    assert connection._write_buffer_in._closed
    assert connection._streamed_message_buffer_out._closed


def test_open_client_uses_the_closing_connection() -> None:
    """The broker's client makes its connections with :class:`ClosingTCPConnection`."""
    client = open_client("redis://127.0.0.1:6379/0", connect_timeout=1)
    assert client.connection_pool.connection_class is ClosingTCPConnection


async def test_a_missing_group_is_told_by_its_class_not_its_message(
    redis_server: RedisServer,
) -> None:
    """Upstream: ``NOGROUP`` (no stream, or no group) raises ``StreamConsumerGroupError``,
    not a ``ResponseError``, with the prefix stripped; :func:`is_missing_group` knows it."""
    async with open_client(redis_server.url, connect_timeout=2) as client:
        with pytest.raises(coredis.exceptions.StreamConsumerGroupError) as read:
            await client.xreadgroup("group", "consumer", {"stream": ">"}, count=1)
        with pytest.raises(coredis.exceptions.StreamConsumerGroupError) as pending:
            await client.xpending("stream", "group", "-", "+", 10, consumer="consumer")
    for caught in (read, pending):
        assert not isinstance(caught.value, coredis.exceptions.ResponseError)
        assert "NOGROUP" not in str(caught.value)
        assert "No such key 'stream' or consumer group 'group'" in str(caught.value)
        assert is_missing_group(caught.value)
        assert not is_existing_group(caught.value)


async def test_an_existing_group_is_told_by_its_class_not_its_message(
    redis_server: RedisServer,
) -> None:
    """Upstream: ``BUSYGROUP`` raises ``StreamDuplicateConsumerGroupError``, a subclass of the
    ``NOGROUP`` class, with the prefix stripped; :func:`is_existing_group` knows it."""
    async with open_client(redis_server.url, connect_timeout=2) as client:
        await client.xgroup_create("stream", "group", "0", mkstream=True)
        with pytest.raises(coredis.exceptions.StreamDuplicateConsumerGroupError) as created:
            await client.xgroup_create("stream", "group", "0", mkstream=True)
    assert isinstance(created.value, coredis.exceptions.StreamConsumerGroupError)
    assert not isinstance(created.value, coredis.exceptions.ResponseError)
    assert "BUSYGROUP" not in str(created.value)
    assert is_existing_group(created.value)
    assert not is_missing_group(created.value)


def test_other_errors_are_neither() -> None:
    """Any other reply (here ``WRONGTYPE``), and errors that are not replies, are neither."""
    for error in (coredis.exceptions.WrongTypeError("wrong kind"), TimeoutError()):
        assert not is_missing_group(error)
        assert not is_existing_group(error)


async def test_a_write_refused_at_maxmemory_is_told_by_its_reply(
    redis_server: RedisServer,
) -> None:
    """Canary: coredis 6.9.0 raises a plain ResponseError for Redis's OOM reply, with the
    reply's text kept, for a command and inside a script alike; other errors are not OOM."""
    async with open_client(redis_server.url, connect_timeout=2) as client:
        await client.config_set({"maxmemory-policy": "noeviction"})  # Redis 6.2: one at a time
        await client.config_set({"maxmemory": "1"})
        with pytest.raises(coredis.exceptions.ResponseError) as plain:
            await client.set("k", "v")
        script = client.register_script("return redis.call('SET', KEYS[1], 'v')")
        with pytest.raises(coredis.exceptions.ResponseError) as scripted:
            await script(keys=["k"])
        await client.config_set({"maxmemory": "0"})
        await client.set("not-a-number", "x")
        with pytest.raises(coredis.exceptions.ResponseError) as other:
            await client.incr("not-a-number")
    assert is_out_of_memory(plain.value)
    assert is_out_of_memory(scripted.value)
    assert not is_out_of_memory(other.value)
