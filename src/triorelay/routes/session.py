"""One connection session: the lifecycle every WebSocket route shares, written once.

:func:`open_session` takes an accepted-to-be WebSocket from its ``websocket.connect`` to its
close::

    attach to the hub ─► (consumer: wait until the broker delivers here) ─► bounds on what the
    client may send ─► accept ─► the inbound tap and liveness ─► the handler's body, in a
    cancel scope the hub can cancel ─► the close the hub or the handler asked for

A :class:`~triorelay.errors.RequestError` while attaching refuses the upgrade with its HTTP
status (:class:`~triorelay.routes.asgi.Rejected`); one raised by the body (or a
:class:`~triorelay.errors.ServiceError`) closes the connection with its close code. The close
is sent shielded but bounded: the close reaper drops the socket of a peer that does not take
it. Handlers (``routes/relay.py``, ``routes/flows.py``) only say what to do with messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.compat import message_limits
from triorelay.errors import CloseCode, RequestError, ServiceError
from triorelay.hub import Connection
from triorelay.routes.asgi import Receive, Rejected, Send, Socket, payload_of, wait_for_disconnect

if TYPE_CHECKING:
    from triorelay.relay import Relay

C = TypeVar("C", bound=Connection)


class Session(Generic[C]):
    """An accepted WebSocket: its hub connection, its socket, and how its client is read.

    ``tap`` is Hypercorn's reader task delivering the client's messages (the fast path), or
    None on plain ASGI, where :meth:`read_inbound` reads them in this task.
    """

    def __init__(
        self,
        relay: Relay,
        connection: C,
        receive: Receive,
        socket: Socket,
        tap: hypercorn_compat.InboundTap | None,
    ) -> None:
        self.relay = relay
        self.connection = connection
        self.receive = receive
        self.socket = socket
        self.tap = tap
        self._deliver: hypercorn_compat.OnMessages = _discard
        self.scope = trio.CancelScope()

    async def _from_tap(self, payloads: list[bytes | str]) -> None:
        await self._deliver(payloads)

    async def read_inbound(self, deliver: hypercorn_compat.OnMessages) -> bool:
        """Hand the client's messages to ``deliver`` until it disconnects (True), or sends one
        over ``max_message_bytes`` (closed with 1009; False).

        With a tap, Hypercorn's reader task calls ``deliver`` and this only waits for the
        disconnect; on plain ASGI this task reads and delivers one message at a time.
        """
        self._deliver = deliver
        if self.tap is not None:
            await self.tap.start()
            await wait_for_disconnect(self.receive)
            return True
        max_bytes = self.relay.settings.max_message_bytes
        while (event := await self.receive())["type"] == "websocket.receive":
            payload = payload_of(event)
            if len(payload) > max_bytes:
                self.connection.close(CloseCode.MESSAGE_TOO_BIG, "message over the limit")
                return False
            await deliver([payload])
        return True

    def bind(self, scope: trio.CancelScope) -> None:
        """Let the hub cancel ``scope`` to end the connection, with the close clock running."""
        reaper, connection = self.relay.reaper, self.connection
        connection.bind(scope, on_close=lambda: reaper.arm(connection))

    @contextmanager
    def rebound(self) -> Iterator[None]:
        """Make the hub's close of the connection cancel only the ``with`` block.

        Around an open upstream: cancelling the session's scope would also cancel
        trio-websocket's reader task, and the upstream could no longer be closed with a close
        handshake. On leaving, the session's own scope is bound again (and cancelled then if
        the connection was closed meanwhile).
        """
        with trio.CancelScope() as inner:
            self.bind(inner)
            try:
                yield
            finally:
                self.bind(self.scope)

    async def finish(self, send: Send) -> None:
        """Send the close the hub or the handler asked for, unless the client is already gone."""
        connection = self.connection
        if connection.disconnected or connection.close_code is None:
            return
        # Shielded, but bounded: the reaper drops the socket if the peer does not take it.
        self.relay.reaper.arm(connection)
        with trio.CancelScope(shield=True):
            await send(
                {
                    "type": "websocket.close",
                    "code": int(connection.close_code),
                    "reason": connection.close_reason,
                }
            )


@asynccontextmanager
async def open_session(
    relay: Relay,
    attach: AbstractContextManager[C],
    receive: Receive,
    send: Send,
    *,
    subscribe: str | None = None,
) -> AsyncIterator[Session[C]]:
    """Attach, accept and serve one WebSocket for the ``async with`` block, then close it.

    ``subscribe``: a consumer's channel; the upgrade waits until the broker delivers its
    messages here, so the consumer gets every message published once it is accepted.
    Raises :class:`Rejected` (refuse the upgrade) for a RequestError before the accept. The
    block runs in the session's cancel scope: the hub's close (eviction, shutdown) cancels it.
    """
    settings = relay.settings
    with ExitStack() as stack:
        try:
            connection = stack.enter_context(attach)
            if subscribe is not None:
                await relay.hub.broker.wait_watching(subscribe)
        except RequestError as error:
            raise Rejected(error) from None
        relay.reaper.track(connection, send)
        stack.callback(relay.reaper.forget, connection)
        if not settings.compression:
            hypercorn_compat.refuse_compression(send)
        # Fragmented and compressed messages: bounded inside Hypercorn and wsproto too.
        message_limits.limit_inbound(
            send, settings.max_message_bytes, partial(_closed_with_1009, connection)
        )
        if settings.tcp_user_timeout_seconds is not None:
            hypercorn_compat.set_user_timeout(send, settings.tcp_user_timeout_seconds)
        await send({"type": "websocket.accept"})
        socket = Socket(receive, send)
        session = Session(relay, connection, receive, socket, None)
        # Where Hypercorn allows, its reader task hands each TCP read's messages to the
        # session itself: no task switch per message.
        tap = hypercorn_compat.tap_inbound(
            receive,
            send,
            session._from_tap,
            partial(_refuse, connection),
            settings.max_message_bytes,
        )
        if tap is not None:
            session.tap = tap
            stack.callback(tap.remove)
        if tap is not None and socket.direct is not None:
            relay.liveness.track(connection, tap, socket.direct)
            stack.callback(relay.liveness.forget, connection)
        else:
            relay.liveness.cannot_track()
        with session.scope:
            session.bind(session.scope)
            try:
                yield session
            except (RequestError, ServiceError) as error:
                connection.close(error.close_code, str(error))
        await session.finish(send)


def _refuse(connection: Connection, code: int, reason: str) -> None:
    """Close ``connection`` for what its client sent (invalid UTF-8, an oversized frame)."""
    connection.close(CloseCode(code), reason)


def _closed_with_1009(connection: Connection) -> None:
    """Hypercorn closed the connection with 1009 itself (a fragmented or compressed message
    over the limit): end the handler, so that a peer that ignores the close is dropped."""
    connection.close(CloseCode.MESSAGE_TOO_BIG, "message over the limit")
    connection.disconnected = True  # the close frame is sent: nothing left for finish


async def _discard(payloads: list[bytes | str]) -> None:
    """What a client sends before its handler reads (or a consumer sends at all): dropped."""
