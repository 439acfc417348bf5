"""One connection's read loop, with fewer steps per read (Hypercorn 0.18.0's trio worker).

``hypercorn/trio/tcp_server.py: TCPServer._read_data`` reads with
``with trio.fail_after(self.config.read_timeout or inf): await self.stream.receive_some(...)``:
a context manager and a cancel scope per read even without a read timeout, and trio's socket
``recv`` first tries to read (which fails while nothing has arrived), then waits, then reads
again and yields once more. On traffic of one message per segment that is a failed ``recv``
syscall and a second pass of trio's run loop for every message. :class:`ReadLoop` reads the
plain-TCP, no-timeout case as ``wait_readable`` then one ``recv``: one syscall and one task
step per read, a checkpoint on each, the same events handed to the protocol in the same order.
With a ``read_timeout`` or TLS it is Hypercorn's loop, unchanged. The loop it replaces is
pinned by ``tests/compat/hypercorn/test_structure.py``.

Once a WebSocket is accepted, its reads need nothing of the HTTP/1.1 layer in between
(``ProtocolWrapper.handle`` → ``H11Protocol.handle``, which copies each read into a buffer,
copies it out again as a ``Data`` event, and tries it against seven event types):
the inbound tap (:mod:`.tap`) sets :attr:`ReadLoop.on_data`, and each read goes to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer


class ReadLoop(TCPServer):
    """Hypercorn's TCPServer, reading a plain socket without a read timeout as
    ``wait_readable`` + ``recv``."""

    #: Set by the inbound tap of an accepted WebSocket: each read (never the EOF) goes to it
    #: instead of through ``ProtocolWrapper.handle``, which would hand it to the same place.
    on_data: Callable[[bytes], Awaitable[None]] | None = None

    async def _read_data(self) -> None:
        stream = self.stream
        if self.config.read_timeout is not None or not isinstance(stream, trio.SocketStream):
            await super()._read_data()
            return
        sock = stream.socket._sock
        handle = self.protocol.handle
        while True:
            try:
                # Waits (a checkpoint) even when bytes are there already: the next
                # epoll round sees them at once.
                await trio.lowlevel.wait_readable(sock)
                data: bytes = sock.recv(MAX_RECV)
            except BlockingIOError:  # pragma: no cover - readable, then nothing to read
                continue
            except (trio.ClosedResourceError, OSError, ValueError):
                # Closed by the relay or by Hypercorn (its close reaper, shutdown, the end of
                # the close handshake: a closed socket's descriptor is -1, a ValueError for
                # the wait), or by the peer (reset): what Hypercorn's loop does on
                # ClosedResourceError and BrokenResourceError.
                break
            on_data = self.on_data
            if on_data is not None and data:
                await on_data(data)
                continue
            await handle(RawData(data))
            if data == b"":
                break
        await handle(Closed())
