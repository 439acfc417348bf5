"""The coredis 6.9.0 behaviour :mod:`triorelay.compat.coredis` works around, and the fix."""

from __future__ import annotations

import coredis
import pytest
from coredis.connection import TCPConnection, TCPLocation

from tests.redis_server import free_port
from triorelay.compat.coredis import ClosingTCPConnection, open_client


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
