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
it. Handlers (``routes/channels.py``, ``routes/flows.py``) only say what to do with messages.

A connection opened with a token is closed at the token's ``exp`` with 4401 ``token expired``
(a deadline on the session's cancel scope: no task of its own), unless its client refreshes
the token in-band first (:meth:`Session.take_controls`). When it ends, one access-log line
says who it was and what it did (never the token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from triorelay.auth.tokens import Identity
from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.compat import message_limits
from triorelay.envelopes import Payload, size_of
from triorelay.errors import CloseCode, Forbidden, RequestError, ServiceError, Unauthorized
from triorelay.hub import Attachment, Connection
from triorelay.observability.counters import RelayCounters, close_label
from triorelay.observability.logs import access_fields
from triorelay.routes.asgi import (
    Query,
    Receive,
    Rejected,
    Send,
    Socket,
    payload_of,
)

if TYPE_CHECKING:
    from triorelay.relay import Relay

C = TypeVar("C", bound=Connection)

access_log = logging.getLogger("triorelay.access")

REFRESH_KEY = '"triorelay"'
"""What a text message that may be a control message (``{"triorelay": "refresh", ...}``, its
keys in any order) contains; only those are parsed."""


@dataclass(slots=True)
class Request:
    """One WebSocket handshake the relay serves: everything a handler starts from.

    ``argument`` is what the path names (a channel, an upstream) or ``""``; ``right`` and
    ``channel`` the right the route needed (checked before the handler runs), which a
    refreshed token must still grant.
    """

    relay: Relay
    path: str
    argument: str
    query: Query
    identity: Identity
    client: str
    right: str
    channel: str | None
    receive: Receive
    send: Send
    #: What the client offered in ``Sec-WebSocket-Protocol``, in its order.
    subprotocols: tuple[str, ...] = ()


class Session(Generic[C]):
    """An accepted WebSocket: its hub connection, its socket, and how its client is read.

    ``tap`` is Hypercorn's reader task delivering the client's messages (the fast path), or
    None on plain ASGI, where :meth:`read_inbound` reads them in this task.
    """

    def __init__(
        self,
        request: Request,
        connection: C,
        socket: Socket,
        tap: hypercorn_compat.InboundTap | None,
    ) -> None:
        self.request = request
        self.relay = request.relay
        self.connection = connection
        self.receive = request.receive
        self.socket = socket
        self.tap = tap
        self._deliver: hypercorn_compat.OnMessages = _discard
        self.scope = trio.CancelScope()
        self.held = False
        self._released = False
        self.released_at = float("-inf")
        self.identity = request.identity
        #: Whether the client may refresh its token in-band (it came with one).
        self.refreshable = request.identity.expires_at is not None
        self._expire_at_deadline()

    def _expire_at_deadline(self) -> None:
        verifier = self.relay.access.verifier
        left = verifier.seconds_left(self.identity) if verifier is not None else None
        if left is not None:
            self.scope.deadline = trio.current_time() + left

    @property
    def expired(self) -> bool:
        """True once the session's token has expired (its deadline has passed)."""
        return self.refreshable and trio.current_time() >= self.scope.deadline

    async def take_controls(self, payloads: list[Payload]) -> list[Payload]:
        """Act on the client's control messages in ``payloads``; return the others.

        The one control message is a token refresh, on a connection opened with a token: a
        text message ``{"triorelay": "refresh", "token": "<jwt>"}``. A valid token for the
        same subject that still grants the connection's right moves its expiry; an invalid
        one closes it with 4401, one without the right with 4403.
        """
        if not self.refreshable or not any(type(p) is str and REFRESH_KEY in p for p in payloads):
            return payloads
        kept: list[Payload] = []
        for payload in payloads:
            token = _refresh_token(payload)
            if token is None:
                kept.append(payload)
            elif not await self._refresh(token):
                break
        return kept

    async def _refresh(self, token: str) -> bool:
        access, request = self.relay.access, self.request
        assert access.verifier is not None
        try:
            identity = await access.verifier.verify(token)
            if identity.sub != self.identity.sub:
                raise Forbidden("a refreshed token must be for the same subject")
            if request.channel is not None:
                access.require_channel(identity, request.right, request.channel)  # type: ignore[arg-type]
            else:
                access.require(identity, request.right)
        except (Unauthorized, Forbidden) as error:
            self.connection.close(error.close_code, str(error))
            return False
        self.identity = identity
        self._expire_at_deadline()
        return True

    async def _from_tap(self, payloads: list[bytes | str]) -> None:
        # While this waits (a full queue, a ``block`` channel, a stalled upstream), the relay
        # holds the peer's reading back: liveness must not take that for a silent peer.
        self.held = True
        try:
            await self._deliver(payloads)
        finally:
            self.release()

    def release(self) -> None:
        """The relay no longer holds the peer's reading back, from now (the rest of the
        delivery, if any, waits for the peer itself: a producer's acks, a job consumer's
        refusals)."""
        self.held = False
        self._released = True  # the time is read at liveness's next look, not per read

    @property
    def last_received(self) -> float:
        """When the peer last showed it is alive (see :class:`~triorelay.lifecycle.Liveness`):
        now while the relay holds its reading back, else the later of its last bytes and the
        end of the last hold."""
        if self.held:
            return trio.current_time()
        if self._released:  # released since the last look: at most a tick ago
            self._released = False
            self.released_at = trio.current_time()
        tap = self.tap
        last = tap.last_received if tap is not None else float("-inf")
        return max(last, self.released_at)

    async def read_inbound(self, deliver: hypercorn_compat.OnMessages) -> bool:
        """Hand the client's messages to ``deliver`` until it disconnects (True), or sends one
        over ``max_message_bytes`` (closed with 1009; False).

        With a tap, Hypercorn's reader task calls ``deliver`` and this only waits for the
        disconnect; on plain ASGI this task reads and delivers one message at a time.
        """
        self._deliver = deliver
        if self.tap is not None:
            await self.tap.start()
            # Only the disconnect comes. Waited for here, not in a helper: an idle connection
            # holds this frame, and each coroutine frame under it costs about 0.2 KB.
            receive = self.receive
            while (await receive())["type"] != "websocket.disconnect":
                pass
            return True
        max_bytes = self.relay.settings.max_message_bytes
        while (event := await self.receive())["type"] == "websocket.receive":
            payload = payload_of(event)
            if size_of(payload) > max_bytes:
                self.connection.close(CloseCode.MESSAGE_TOO_BIG, "message over the limit")
                return False
            await deliver([payload])
        return True

    def take_controls_from_tap(self) -> None:
        """Have the tap hand the client's messages to :meth:`take_controls` (a consumer with a
        token), in Hypercorn's reader task: no task of our own."""

        async def controls(payloads: list[Payload]) -> None:
            await self.take_controls(payloads)

        self._deliver = controls

    async def read_controls(self) -> None:
        """Read the client only for its control messages (a consumer), until it leaves."""

        async def controls(payloads: list[Payload]) -> None:
            await self.take_controls(payloads)

        await self.read_inbound(controls)

    def bind(self, scope: trio.CancelScope) -> None:
        """Let the hub cancel ``scope`` to end the connection, with the close clock running."""
        self.connection.bind(scope, on_close=self.relay.reaper.arm)

    @contextmanager
    def rebound(self) -> Iterator[None]:
        """Make the hub's close of the connection cancel only the ``with`` block.

        Around an open upstream: cancelling the session's scope would also cancel
        trio-websocket's reader task, and the upstream could no longer be closed with a close
        handshake. On leaving, the session's own scope is bound again (and cancelled then if
        the connection was closed meanwhile).
        """
        outer = self.scope
        with trio.CancelScope(deadline=outer.deadline) as inner:
            # The token's expiry too ends the block, not the session's scope, while it runs.
            outer.deadline = float("inf")
            self.bind(inner)
            try:
                yield
            finally:
                outer.deadline = inner.deadline
                self.bind(outer)

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
    request: Request,
    attach: Attachment[C],
    *,
    subscribe: str | None = None,
    subprotocol: str | None = None,
) -> AsyncIterator[Session[C]]:
    """Attach, accept and serve one WebSocket for the ``async with`` block, then close it.

    ``subscribe``: a consumer's channel; the upgrade waits until the broker delivers its
    messages here, so the consumer gets every message published once it is accepted.
    ``subprotocol``: the one the relay chose from the client's offer (sent in the accept).
    Raises :class:`Rejected` (refuse the upgrade) for a RequestError before the accept. The
    block runs in the session's cancel scope: the hub's close (eviction, shutdown) cancels it.
    """
    relay, receive, send = request.relay, request.receive, request.send
    settings = relay.settings
    started = trio.current_time()
    try:
        connection = attach.__enter__()
    except RequestError as error:
        raise Rejected(error) from None
    # What was set up is undone in the ``finally`` below (each step there is safe whether or
    # not it was reached), not by an ExitStack: an idle connection holds this frame for its
    # whole life, and a stack's callbacks cost it about 3 KB.
    session: Session[C] | None = None
    try:
        if subscribe is not None:
            try:
                await relay.hub.broker.wait_watching(subscribe)
            except RequestError as error:
                raise Rejected(error) from None
        relay.reaper.track(connection, send)
        if not settings.compression:
            hypercorn_compat.refuse_compression(send)
        # Fragmented and compressed messages: bounded inside Hypercorn and wsproto too.
        message_limits.limit_inbound(
            send, settings.max_message_bytes, partial(_closed_with_1009, connection)
        )
        if settings.tcp_user_timeout_seconds is not None:
            hypercorn_compat.set_user_timeout(send, settings.tcp_user_timeout_seconds)
        await send(_accept_event(subprotocol))
        hypercorn_compat.release_handshake(send)  # the 101 is out: h11 is not needed again
        relay.counters.opened(connection.role)
        session = Session(request, connection, Socket(receive, send), None)
        # Where Hypercorn allows, its reader task hands each TCP read's messages to the
        # session itself: no task switch per message.
        session.tap = hypercorn_compat.tap_inbound(
            receive,
            send,
            session._from_tap,
            partial(_refuse, connection),
            settings.max_message_bytes,
        )
        direct = session.socket.direct
        if session.tap is not None and direct is not None:
            relay.liveness.track(connection, session, direct)
        else:
            relay.liveness.cannot_track()
        with session.scope:
            session.bind(session.scope)
            try:
                yield session
            except (RequestError, ServiceError) as error:
                connection.close(error.close_code, str(error))
        if connection.close_code is None and not connection.disconnected and session.expired:
            connection.close(CloseCode.TOKEN_EXPIRED, "token expired")
        await session.finish(send)
        _log_access(session, trio.current_time() - started)
    finally:
        try:
            if session is not None:  # accepted
                # Its reader (a closure over it, or a route's): no reference cycle left.
                session._deliver = _discard
                relay.liveness.forget(connection)
                try:
                    if session.tap is not None:
                        session.tap.remove()  # Hypercorn's internals: the one that may fail
                finally:
                    _count_ended(relay.counters, connection)  # however the session ends
        finally:
            relay.reaper.forget(connection)
            attach.__exit__(None, None, None)


def _accept_event(subprotocol: str | None) -> dict[str, object]:
    """The ASGI accept, with the subprotocol the relay chose, if any."""
    if subprotocol is None:
        return {"type": "websocket.accept"}
    return {"type": "websocket.accept", "subprotocol": subprotocol}


def _count_ended(counters: RelayCounters, connection: Connection) -> None:
    counters.closed(
        connection.role,
        close_label(connection.close_code, connection.disconnected),
        (connection.messages_in, connection.messages_out),
        (connection.bytes_in, connection.bytes_out),
    )


def _log_access(session: Session[C], seconds: float) -> None:
    """One line per connection, when it ends: who, where, what, how it ended. Never a token.

    The same figures go as fields (``extra=``), which a JSON log line has as keys.
    """
    if not access_log.isEnabledFor(logging.INFO):  # access log off: nothing to build
        return
    request, connection = session.request, session.connection
    if connection.disconnected or connection.close_code is None:
        ended = "client"
    else:
        ended = str(int(connection.close_code))
    fields = access_fields(
        client=request.client,
        sub=session.identity.sub,
        path=request.path,
        role=connection.role,
        channel=connection.channel_name,
        seconds=seconds,
        messages=(connection.messages_in, connection.messages_out),
        size=(connection.bytes_in, connection.bytes_out),
        close=ended,
    )
    access_log.info(
        "%s sub=%s path=%s role=%s channel=%s seconds=%.3f in=%d/%dB out=%d/%dB close=%s",
        request.client,
        session.identity.sub or "-",
        request.path,
        connection.role,
        connection.channel_name or "-",
        seconds,
        connection.messages_in,
        connection.bytes_in,
        connection.messages_out,
        connection.bytes_out,
        ended,
        extra=fields,
    )


def _refresh_token(payload: Payload) -> str | None:
    """The token of a refresh message, or None if ``payload`` is not one."""
    if type(payload) is not str or REFRESH_KEY not in payload:
        return None
    if not payload.lstrip().startswith("{"):
        return None
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        return None
    if not isinstance(message, dict) or message.get("triorelay") != "refresh":
        return None
    token = message.get("token")
    return token if isinstance(token, str) else ""


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
