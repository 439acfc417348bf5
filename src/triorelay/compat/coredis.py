"""Workarounds for coredis 6.9.0 (pinned exactly in ``pyproject.toml``).

A connection that fails to connect leaks its buffers: ``BaseConnection.__init__`` creates six
anyio memory streams, and ``BaseConnection.run`` closes them only once the TCP connection is
established (``coredis/connection/_base.py``, ``run``: ``self.stream = await self._connect()``
comes before the ``async with`` that owns the streams). While Redis is down, every reconnection
attempt leaves six unclosed streams to the garbage collector, each with a ``ResourceWarning``.
Not reported upstream as of 6.9.0. :class:`ClosingTCPConnection` closes them whatever happens,
and :func:`open_client` makes a client that uses it (``ConnectionPool.from_url`` overrides a
``connection_class`` argument, so it is set on the pool afterwards).
``tests/compat/test_coredis.py`` fails if upstream changes this.

Telling Redis errors apart: coredis raises a class chosen by the error reply's prefix (its
first word, per the RESP spec; ``Parser.EXCEPTION_CLASSES`` in ``coredis/parser.py``) and
strips that prefix from the message, so ``"NOGROUP" in str(error)`` is never true. Two of its
classes matter here, and their hierarchy is a trap: ``NOGROUP`` raises
``StreamConsumerGroupError`` and ``BUSYGROUP`` raises ``StreamDuplicateConsumerGroupError``,
a *subclass* of it; neither is a ``ResponseError``. :func:`is_missing_group` and
:func:`is_existing_group` say which reply an error was; ``tests/compat/test_coredis.py``
checks them against a real redis-server.
"""

from __future__ import annotations

import anyio
import coredis
from coredis.connection import TCPConnection
from coredis.exceptions import (
    ResponseError,
    StreamConsumerGroupError,
    StreamDuplicateConsumerGroupError,
)

__all__ = ["ClosingTCPConnection", "is_existing_group", "is_missing_group", "open_client"]

_BUFFERS = (
    "_write_buffer_in",
    "_write_buffer_out",
    "_push_message_buffer_in",
    "_push_message_buffer_out",
    "_streamed_message_buffer_in",
    "_streamed_message_buffer_out",
)


class ClosingTCPConnection(TCPConnection):
    """coredis's TCP connection, closing its buffers even when the connection never opened."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            for name in _BUFFERS:
                getattr(self, name).close()


def open_client(
    url: str, *, connect_timeout: float, max_connections: int | None = None
) -> coredis.Redis[bytes]:
    """A coredis client for ``url`` (``redis://`` or ``rediss://``) that answers bytes.

    coredis multiplexes commands on its connections, but a blocking command (``XREAD BLOCK``)
    holds one until it returns; ``max_connections`` (coredis's default: 64) bounds them.
    """
    pool = coredis.ConnectionPool.from_url(
        url,
        decode_responses=False,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
    )
    if pool.connection_class is TCPConnection:
        pool.connection_class = ClosingTCPConnection
    return coredis.Redis(connection_pool=pool, decode_responses=False)


def is_missing_group(error: BaseException) -> bool:
    """``error`` is Redis's ``NOGROUP`` reply: no such stream, or no such consumer group."""
    return isinstance(error, StreamConsumerGroupError) and not is_existing_group(error)


def is_existing_group(error: BaseException) -> bool:
    """``error`` is Redis's ``BUSYGROUP`` reply: the consumer group exists already."""
    return isinstance(error, StreamDuplicateConsumerGroupError)


_OUT_OF_MEMORY = "OOM command not allowed"


def is_out_of_memory(error: BaseException) -> bool:
    """``error`` is Redis refusing a write at ``maxmemory`` (the ``OOM`` reply).

    coredis 6.9.0 has no class for it, and inside a script Redis wraps the reply in its own
    ``ERR Error running script`` message, so the one reliable mark is the reply's text (the
    canary test in ``tests/compat/test_coredis.py`` checks it against a real Redis).
    """
    return isinstance(error, ResponseError) and _OUT_OF_MEMORY in str(error)
