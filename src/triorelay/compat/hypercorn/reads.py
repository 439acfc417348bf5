"""One connection's read loop, with fewer steps per read (Hypercorn 0.18.0's trio worker).

``hypercorn/trio/tcp_server.py: TCPServer._read_data`` reads with
``with trio.fail_after(self.config.read_timeout or inf): await self.stream.receive_some(...)``:
a context manager and a cancel scope per read even without a read timeout, and trio's socket
``recv`` first tries to read (which fails while nothing has arrived), then waits, then reads
again and yields once more. On traffic of one message per segment that is a failed ``recv``
syscall and a second pass of trio's run loop for every message. :class:`ReadLoop` reads the
plain-TCP, no-timeout case as ``wait_readable`` then one ``recv``: one syscall and one task
step per read, a checkpoint on each, the same events handed to the protocol in the same order.
With a ``read_timeout`` or TLS it is Hypercorn's loop (under the idle deadline, below). The
loop it replaces is pinned by ``tests/compat/hypercorn/test_structure.py``.

Waiting for a request costs no task either. Hypercorn runs its keep-alive timer
(``TCPServer.idle_task``: ``restart(..., self._idle_timeout)`` when a connection opens and
after each response, ``stop()`` when a request arrives) as a task of its own, started through
``nursery.start`` (a temporary nursery and two cancel scopes) from whichever task restarts it:
about a fifth of the relay's CPU per connection set up in a reconnect storm. After a response
that task is the app's, and under Quart-Trio it is already cancelled by then: Hypercorn closes
the request's stream first (``H11Protocol._maybe_recycle``: ``_close_stream``, which queues
``http.disconnect``, then ``Updated(idle=True)``), Quart-Trio cancels its request's nursery on
that disconnect, and the restart, in the cancelled scope, never gets its timer going; an idle
HTTP keep-alive connection was never closed. :class:`IdleTimer` makes the timer a deadline on
the read loop's own cancel scope instead (plain TCP or TLS, any ``read_timeout``): the same
``keep_alive_timeout``, the same close when it passes. One difference: Hypercorn's task also
closes an idle connection as soon as the server stops; here a connection already idle then is
closed at its deadline or by the server's graceful timeout, whichever comes first (one that
becomes idle after is closed at once).

Once a WebSocket is accepted, its reads need nothing of the HTTP/1.1 layer in between
(``ProtocolWrapper.handle`` → ``H11Protocol.handle``, which copies each read into a buffer,
copies it out again as a ``Data`` event, and tries it against seven event types):
the inbound tap (:mod:`.tap`) sets :attr:`ReadLoop.on_data`, and each read goes to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from math import inf
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import TrioSingleTask

from triorelay.compat.trio_waits import open_socket
from triorelay.compat.wsproto_parser import release_parser


class IdleTimer(TrioSingleTask):
    """``TCPServer.idle_task`` for the read loop: (re)starting sets the deadline of
    :attr:`scope`, the read loop's cancel scope, ``timeout`` from now (now, once the server
    is terminating); stopping lifts it."""

    def __init__(self, timeout: float, terminated: Any) -> None:  # no lock: nothing to guard
        self.timeout = timeout
        self._terminated = terminated
        self.scope = trio.CancelScope()

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        self.scope.deadline = trio.current_time() + (
            0.0 if self._terminated.is_set() else self.timeout
        )

    async def stop(self) -> None:
        self.scope.deadline = inf


class _Ended:
    """A connection's protocol once it has ended: takes any event, holds nothing."""

    __slots__ = ()

    async def handle(self, event: Any) -> None:
        """Nothing is left to tell: the connection is closed."""


ENDED = _Ended()


class ReadLoop(TCPServer):
    """Hypercorn's TCPServer, reading a plain socket without a read timeout as
    ``wait_readable`` + ``recv``."""

    #: Set by the inbound tap of an accepted WebSocket: each read (never the EOF) goes to it
    #: instead of through ``ProtocolWrapper.handle``, which would hand it to the same place.
    on_data: Callable[[bytes], Awaitable[None]] | None = None
    #: The accepted WebSocket's wsproto connection, set by the same tap: its frame parser is
    #: released once the connection has ended (``compat/wsproto_parser.py``), when Hypercorn
    #: no longer holds the stream.
    websocket: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = IdleTimer(self.config.keep_alive_timeout, self.context.terminated)

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            if getattr(getattr(self, "_task_group", None), "ended", False):
                # ``run``'s last step, every task of the connection done (the order
                # ``tests/compat/hypercorn/test_isolation.py`` pins). The protocol refers
                # back to this server (``protocol_send``, in it and in every stream's
                # ``send``): replaced so the connection's objects are freed by reference
                # counting, not left to the cyclic collector; so is wsproto's frame parser,
                # which keeps a cycle of its own. (Overridden here, not by wrapping ``run``:
                # a wrapper's frame would be held for the connection's life.)
                release_parser(self.websocket)
                self.websocket = None
                self.protocol = ENDED  # type: ignore[assignment]

    async def _read_data(self) -> None:
        idle = self.idle_task
        assert isinstance(idle, IdleTimer)
        handle = self.protocol.handle
        stream = self.stream
        if self.config.read_timeout is not None or not isinstance(stream, trio.SocketStream):
            with idle.scope:  # TLS or a read timeout: Hypercorn's loop, under the idle deadline
                await super()._read_data()
            if idle.scope.cancelled_caught:
                await self._close_idle()
                await handle(Closed())
            return
        sock = stream.socket._sock
        with idle.scope:  # its deadline is the keep-alive timer's, while the connection is idle
            while True:
                try:
                    # Waits (a checkpoint) even when bytes are there already: the next
                    # epoll round sees them at once. Not on a socket Hypercorn closed since
                    # the last read (the end of a close handshake): open_socket says so.
                    await trio.lowlevel.wait_readable(open_socket(sock))
                    data: bytes = sock.recv(MAX_RECV)
                except BlockingIOError:  # pragma: no cover - readable, then nothing to read
                    continue
                except (trio.ClosedResourceError, OSError):
                    # Closed by the relay or by Hypercorn (its close reaper, shutdown, the end
                    # of the close handshake), before or while the loop waited, or by the peer
                    # (reset): what Hypercorn's loop does on ClosedResourceError and
                    # BrokenResourceError.
                    break
                if idle.scope.cancel_called:  # the deadline passed as the bytes came
                    break
                on_data = self.on_data
                if on_data is not None and data:
                    await on_data(data)
                    continue
                await handle(RawData(data))
                if data == b"":
                    break
        if idle.scope.cancel_called:
            await self._close_idle()
        await handle(Closed())

    async def _close_idle(self) -> None:
        """What Hypercorn's ``_idle_timeout`` does once its time is up."""
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()
